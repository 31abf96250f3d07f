"""Docker Compose, built here from the Go module proxy and installed as a Docker CLI plugin under the devstack.

Debian's ``docker.io`` has no compose plugin, and no release download is reachable, so ``docker compose`` comes
from ``github.com/docker/compose/v5`` at a pinned version. Its go.mod has ``exclude`` directives, so ``go install
module@version`` refuses it; the downloaded module is built as the main module instead (``go build -C``), with
the version stamped in as upstream's Makefile does. The plugin lands in ``.devstack/docker/cli-plugins`` and is
used through ``docker --config .devstack/docker``: nothing is written to system paths.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from devstack.images.docker import DOCKER
from devstack.runtime import DevstackError, progress, run_step, subdir

COMPOSE_MODULE = "github.com/docker/compose/v5"
COMPOSE_VERSION = "v5.6.0"


def config_dir() -> Path:
    """The Docker client configuration directory holding the plugin (``DOCKER_CONFIG``)."""
    return subdir("docker")


def plugin() -> Path:
    return subdir("docker", "cli-plugins") / "docker-compose"


def installed() -> bool:
    marker = plugin().with_name(".docker-compose.version")
    return plugin().exists() and marker.exists() and marker.read_text().strip() == COMPOSE_VERSION


def compose_command() -> list[str]:
    """argv prefix of ``docker compose`` with the devstack's plugin (the client must be Debian's, see DOCKER)."""
    return [DOCKER, "--config", str(config_dir()), "compose"]


def _go(cmd: list[str], what: str, env: dict[str, str]) -> str:
    result = run_step(cmd, what, env=env)
    if result.returncode != 0:
        raise DevstackError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout


def build() -> dict[str, object]:
    """Build the plugin unless the pinned version is installed; niced, since it shares the cores with others."""
    if installed():
        progress(f"docker compose {COMPOSE_VERSION} is installed ({plugin()})")
        return {"built": False, "plugin": str(plugin()), "version": COMPOSE_VERSION}
    go = shutil.which("go")
    if go is None:
        raise DevstackError(f"the Go toolchain (go) is required to build Docker Compose {COMPOSE_VERSION}")
    env = {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off", "GOFLAGS": "-mod=readonly"}
    module = f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"
    directory = json.loads(_go([go, "mod", "download", "-json", module], f"downloading {module}", env))["Dir"]
    partial = plugin().with_name("docker-compose.partial")
    ldflags = f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    build_cmd = [*nice, go, "build", "-C", directory, "-trimpath", "-ldflags", ldflags, "-o", str(partial), "./cmd"]
    _go(build_cmd, f"go build docker compose {COMPOSE_VERSION} (a few minutes on 2 cores, cached after)", env)
    partial.replace(plugin())
    plugin().with_name(".docker-compose.version").write_text(COMPOSE_VERSION + "\n")
    return {"built": True, "plugin": str(plugin()), "version": COMPOSE_VERSION}
