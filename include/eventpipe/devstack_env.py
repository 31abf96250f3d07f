"""The settings a hand-run ``eventpipe`` needs: the running devstack's when none are given, checked at start.

A task always gets its settings from its deployment (plain env and Kubernetes Secrets). A person who runs
``eventpipe drain …`` in a checkout whose devstack is running should not have to remember
``eval "$(eventpipe devstack env)"``, so the CLI loads that same environment itself, and says so once on stderr.
It never does in a pod or when a connection setting is given explicitly: those settings come from a deployment.
Then the settings the command needs are checked before any work, so a missing S3 key is one clear error
with its remedy, not a failure at the first dead letter.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path

from eventpipe.errors import InvalidConfiguration

# Set explicitly, any of these means the settings come from a deployment (or a person who chose them).
CONNECTION_ENV = ("EVENTPIPE_KAFKA_BOOTSTRAP", "EVENTPIPE_ES_URL", "EVENTPIPE_S3_ENDPOINT")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEVSTACK_DATA_SERVICES = ("kafka", "elasticsearch", "s3")  # pidfiles under <devstack home>/run
REMEDY = (
    'on the devstack, start it (make services) or load its settings: eval "$(eventpipe devstack env)"; '
    "in a deployment, mount the Kubernetes Secret eventpipe-s3 (keys access-key, secret-key) into the task"
)


def in_pod(environ: MutableMapping[str, str]) -> bool:
    return "KUBERNETES_SERVICE_HOST" in environ


def devstack_home(environ: MutableMapping[str, str]) -> Path | None:
    """This checkout's devstack directory (``EVENTPIPE_DEVSTACK_HOME`` or ``<checkout>/.devstack``), if any."""
    if environ.get("EVENTPIPE_DEVSTACK_HOME"):
        return Path(environ["EVENTPIPE_DEVSTACK_HOME"])
    checkout = Path(__file__).resolve().parents[2]  # include/eventpipe/ -> the checkout (absent in images)
    return checkout / ".devstack" if (checkout / "pyproject.toml").exists() else None


def devstack_running(home: Path) -> bool:
    """Whether the devstack in ``home`` runs its data services (each pidfile names a live process)."""
    for name in DEVSTACK_DATA_SERVICES:
        try:
            os.kill(int((home / "run" / f"{name}.pid").read_text().strip()), 0)
        except (OSError, ValueError):
            return False
    return True


def load_devstack_env(
    exports: Callable[[], Mapping[str, str]] | None, environ: MutableMapping[str, str] | None = None
) -> Path | None:
    """Fill ``environ`` (the process's) from the running devstack when the S3 keys are missing.

    ``exports`` computes what `eventpipe devstack env` prints; the CLI passes it in from the dev environment
    (None where that is not installed: task images), since the pipeline package never imports it.
    Only names not set already are added. Returns the devstack home it loaded from, or None when it left
    ``environ`` alone: keys present, a pod, an explicit connection setting, or no running devstack here.
    """
    environ = os.environ if environ is None else environ
    if all(environ.get(k) for k in S3_KEYS) or in_pod(environ) or any(environ.get(k) for k in CONNECTION_ENV):
        return None
    home = devstack_home(environ)
    if exports is None or home is None or not devstack_running(home):
        return None
    try:
        values = exports()
    except RuntimeError as exc:  # DevstackError: e.g. kubernetes execution asked for without the cluster
        print(f"eventpipe: the devstack in {home} runs, but its settings could not be read: {exc}", file=sys.stderr)
        return None
    for key, value in values.items():
        environ.setdefault(key, value)
    print(
        f"eventpipe: no S3 keys or connection settings given; using the running devstack's settings from {home} "
        '(what eval "$(eventpipe devstack env)" exports)',
        file=sys.stderr,
        flush=True,
    )
    return home


def require_s3_keys(environ: MutableMapping[str, str] | None = None) -> None:
    """Fail before any work when the S3 keys are missing (claim checks, archives and models all need S3)."""
    environ = os.environ if environ is None else environ
    missing = [k for k in S3_KEYS if not environ.get(k)]
    if missing:
        raise InvalidConfiguration(f"{' and '.join(missing)} not set; {REMEDY}")
