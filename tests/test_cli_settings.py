"""A hand-run ``eventpipe`` finds the running devstack's settings itself, and only then; missing S3 keys fail first.

Each case runs the real CLI in a subprocess whose environment holds only PATH, HOME and where to find the code
and the devstack, as a new operator's shell would after a fresh clone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from eventpipe.devstack_env import REMEDY, devstack_home, devstack_running
from eventpipe.errors import PERMANENT_EXIT_CODE
from eventpipe.events.topics import ensure_topics
from eventpipe.settings import Settings

LOADED = "using the running devstack's settings from"
MISSING = f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set; {REMEDY}"


def _bare_env(**extra: str) -> dict[str, str]:
    """A shell with nothing eventpipe-specific in it: PATH, HOME, the code's path and (if set) the devstack home."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    for name in ("PYTHONPATH", "EVENTPIPE_DEVSTACK_HOME"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return {**env, **extra}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )


def _dry_run_args(settings: Settings | None = None) -> list[str]:
    topic = f"test-{uuid.uuid4().hex[:8]}.iot"  # a topic of this test's own: a dry run plans it, writes nothing
    if settings is not None:
        ensure_topics(settings, [topic])
    return ["drain", "--start", "2026-01-01T00:00", "--end", "2026-01-01T01:00", "--topics", topic, "--dry-run"]


@pytest.mark.services
def test_bare_shell_uses_the_running_devstack_and_says_so_once(services: Settings) -> None:
    env = _bare_env()
    home = devstack_home(env)
    assert home is not None and devstack_running(home), f"the services fixture started the devstack in {home}"
    proc = _cli(_dry_run_args(services), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(LOADED) == 1, proc.stderr[-3000:]
    assert f"{LOADED} {home} " in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["dry_run"], result["consumed"]) == (True, 0)


@pytest.mark.services
@pytest.mark.parametrize(
    "deployment",
    [
        {"EVENTPIPE_ES_URL": "http://127.0.0.1:9200"},  # a connection setting given explicitly
        {"EVENTPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:9092"},
        {"KUBERNETES_SERVICE_HOST": "10.96.0.1"},  # a pod
    ],
)
def test_deployment_settings_never_load_the_devstack(services: Settings, deployment: dict[str, str]) -> None:
    proc = _cli(_dry_run_args(), _bare_env(**deployment))
    assert proc.returncode == PERMANENT_EXIT_CODE, proc.stderr[-3000:]
    assert LOADED not in proc.stderr
    assert f"eventpipe: permanent failure, not retried: {MISSING}" in proc.stderr
    assert "Traceback" not in proc.stderr  # the message is the whole story


def test_missing_s3_keys_fail_before_any_work_with_the_remedy(tmp_path: Path) -> None:
    """No devstack runs in an empty devstack home; Kafka and Elasticsearch at closed ports show no work was tried."""
    closed = {"EVENTPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "EVENTPIPE_ES_URL": "http://127.0.0.1:1"}
    proc = _cli(_dry_run_args(), _bare_env(EVENTPIPE_DEVSTACK_HOME=str(tmp_path), **closed))
    assert proc.returncode == PERMANENT_EXIT_CODE, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"eventpipe: permanent failure, not retried: {MISSING}"
    assert proc.stdout == ""


def test_help_needs_no_settings(tmp_path: Path) -> None:
    proc = _cli(["drain", "--help"], _bare_env(EVENTPIPE_DEVSTACK_HOME=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert LOADED not in proc.stderr and "Usage" in proc.stdout
