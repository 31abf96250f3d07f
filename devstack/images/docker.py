"""The Docker engine the image builds use: Debian's ``docker.io`` (client and daemon of the same release).

No registry is involved anywhere: images are built from a Debian root filesystem (``devstack.images.rootfs``) and
from artifacts the devstack already pins. A rebuild is skipped when the image's ``io.eventpipe.inputs`` label
equals the hash of its inputs, so calling a build function is cheap when nothing changed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from devstack.runtime import DevstackError, log_path, pid_of, run_step, start_process, tail

DOCKER = "/usr/bin/docker"  # Debian's client matches Debian's dockerd; a newer client may want buildx
DOCKER_SOCKET = Path("/var/run/docker.sock")
INPUTS_LABEL = "io.eventpipe.inputs"


def docker_ready() -> bool:
    if not DOCKER_SOCKET.is_socket() or not Path(DOCKER).exists():
        return False
    return subprocess.run([DOCKER, "info"], capture_output=True, check=False).returncode == 0


def ensure_docker() -> None:
    """Use a running Docker engine, or start Debian's dockerd without its bridge and iptables rules.

    Builds use the host network (package registries only). Without iptables rules Docker's FORWARD-DROP policy,
    which breaks pod traffic, never appears; user-defined networks (Compose's) still work, and published ports
    go through docker-proxy on loopback.
    """
    if docker_ready():
        return
    if shutil.which("dockerd") is None or not Path(DOCKER).exists():
        raise DevstackError("Docker is required to build images: apt-get install docker.io (make k8s-host)")
    if pid_of("dockerd") is None:
        start_process(
            "dockerd",
            ["dockerd", "--iptables=false", "--ip-forward=false", "--bridge=none", f"--host=unix://{DOCKER_SOCKET}"],
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if docker_ready():
            return
        if pid_of("dockerd") is None:
            break
        time.sleep(0.5)
    raise DevstackError(f"dockerd did not become ready; log tail:\n{tail(log_path('dockerd'))}")


def image_label(ref: str, label: str = INPUTS_LABEL) -> str | None:
    result = subprocess.run(
        [DOCKER, "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_exists(ref: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True, check=False).returncode == 0


def image_size(ref: str) -> dict[str, object]:
    out = subprocess.run(
        [DOCKER, "image", "inspect", "--format", "{{.Size}} {{.Id}}", ref], capture_output=True, text=True, check=False
    ).stdout.split()
    return {"size_mb": round(int(out[0]) / 1e6), "id": out[1]} if len(out) == 2 else {}


def docker_step(args: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """A long docker command with the devstack's progress lines; raise with the output tail when it fails."""
    import os

    result = run_step([DOCKER, *args], what, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise DevstackError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout
