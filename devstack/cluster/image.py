"""The task image, built here without any image registry, and handed to the devstack cluster's containerd.

The Dockerfile's ``BASE=debian`` variant starts from the Debian root filesystem the service images share
(``devstack.images.rootfs``: debootstrap from the host's own apt sources, ``docker import``) instead of the official
Airflow image, and takes Spark's extra jars from the devstack's Maven resolution instead of a Maven container.
Everything else (requirements, the package, DAGs, the non-root user 50000:0) is the same Dockerfile path.

Rebuilds are skipped when the inputs are unchanged: the image carries a label with the hash of the build
context (Dockerfile, requirements, include/, dags/, plugins/, docker/, the Spark pom and jars) and the rootfs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from devstack.images.docker import DOCKER, ensure_docker, image_label
from devstack.images.docker import image_size as _size  # a seam the import tests replace
from devstack.images.rootfs import rootfs_image
from devstack.runtime import REPO_ROOT, DevstackError, subdir

IMAGE = "eventpipe:0.1.0"
CONTEXT_PATHS = (
    "Dockerfile",
    "requirements.txt",
    "pyproject.toml",
    "include",
    "dags",
    "plugins",
    "docker",
    "devstack/maven/spark/pom.xml",
)
USER_LINES = ("airflow:x:50000:0:airflow:/home/airflow:/bin/bash\n", "airflow:*:20000:0:99999:7:::\n")


def _say(message: str) -> None:
    print(f"[image] {message}", flush=True)


def _run(cmd: Sequence[str], what: str, *, stdin: int | None = None, env: dict[str, str] | None = None) -> str:
    """Run a long step, printing its name and elapsed seconds every 30 s; raise with the output tail."""
    began = time.monotonic()
    _say(f"{what} ...")
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            _say(f"{what}: {time.monotonic() - began:.0f}s")

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        result = subprocess.run(
            list(cmd), capture_output=True, text=True, stdin=stdin, env={**os.environ, **(env or {})}, check=False
        )
    finally:
        done.set()
    if result.returncode != 0:
        raise DevstackError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    _say(f"{what}: {time.monotonic() - began:.1f}s")
    return result.stdout


# -- the image -------------------------------------------------------------------------------------------
def _files(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for rel in paths:
        path = REPO_ROOT / rel
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                and not any(part.endswith(".egg-info") for part in p.parts)
            )  # fmt: skip
        elif path.is_file():
            out.append(path)
    return out


def _context(spark_jars: list[Path]) -> tuple[Path, str]:
    """A clean build context (only what the Dockerfile copies) and the hash of its contents."""
    context = subdir("image") / "context"
    shutil.rmtree(context, ignore_errors=True)
    digest = hashlib.sha256()
    for src in _files(CONTEXT_PATHS):
        rel = src.relative_to(REPO_ROOT)
        dest = context / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        digest.update(f"{rel}\0{oct(src.stat().st_mode & 0o777)}\0".encode() + src.read_bytes())
    (context / "spark-jars").mkdir()
    for jar in spark_jars:
        shutil.copy2(jar, context / "spark-jars" / jar.name)
        digest.update(jar.name.encode())
    return context, digest.hexdigest()[:16]


def build_image(ref: str = IMAGE) -> dict[str, object]:
    """Build ``ref`` from the Debian base unless an image with the same inputs exists; returns timings."""
    from devstack.spark import spark_jars

    began = time.monotonic()
    ensure_docker()
    base = rootfs_image()
    context, inputs = _context(spark_jars())
    key = f"{inputs}-{base.rsplit('-', 1)[-1]}"
    if image_label(ref) == key:
        _say(f"{ref} is current (inputs {key})")
        return {"built": False, "seconds": round(time.monotonic() - began, 1), "inputs": key, **_size(ref)}
    secret = []
    if ca_bundle := _ca_bundle():
        secret = ["--secret", f"id=build-ca,src={ca_bundle}"]
    _run(
        [
            DOCKER, "build", "--network=host", "--build-arg", "BASE=debian", "--build-arg", f"DEBIAN_ROOTFS={base}",
            *secret, "--label", f"io.eventpipe.inputs={key}", "--tag", ref, str(context),
        ],
        f"docker build {ref} (BASE=debian)",
        env={"DOCKER_BUILDKIT": "1"},
    )  # fmt: skip
    return {"built": True, "seconds": round(time.monotonic() - began, 1), "inputs": key, **_size(ref)}


def _ca_bundle() -> str | None:
    """The CA bundle this host's pip trusts (PIP_CERT, SSL_CERT_FILE or Debian's), for pip inside the build."""
    debian = "/etc/ssl/certs/ca-certificates.crt"
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), debian):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _save_into(containerd_socket: str, ref: str) -> None:
    """``docker save ref | ctr images import -``, into the namespace the kubelet uses."""
    save = subprocess.Popen([DOCKER, "save", ref], stdout=subprocess.PIPE)
    try:
        _run(
            ["ctr", "--address", containerd_socket, "--namespace", "k8s.io", "images", "import", "-"],
            f"import {ref} into the cluster's containerd",
            stdin=save.stdout.fileno() if save.stdout else None,
        )
    finally:
        with contextlib.suppress(Exception):
            if save.stdout:
                save.stdout.close()
        save.wait()
    if save.returncode != 0:
        raise DevstackError(f"docker save {ref} failed (exit {save.returncode})")


def import_marker(name: str) -> Path:
    """The record of the image id last imported as ``name``: one per image, so importing one never erases another's."""
    return subdir("image", "imports") / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def import_image(containerd_socket: str, ref: str = IMAGE) -> bool:
    """Copy ``ref`` into the cluster's containerd unless the same image id is there; True if imported."""
    image_id = _size(ref).get("id")
    if image_id is None:
        raise DevstackError(f"image {ref} does not exist; build it first")
    name = ref if "/" in ref.split(":")[0] else f"docker.io/library/{ref}"
    listing = subprocess.run(
        ["ctr", "--address", containerd_socket, "--namespace", "k8s.io", "images", "list", f"name=={name}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    marker = import_marker(name)
    if name in listing and marker.exists() and marker.read_text() == f"{name} {image_id}":
        return False
    began = time.monotonic()
    try:
        _save_into(containerd_socket, ref)
    except DevstackError as exc:
        # containerd 1.6 can garbage-collect a layer snapshot the replaced tag shared with the new image while
        # the import unpacks it ("parent snapshot ... does not exist"); the same import then succeeds
        if "does not exist: not found" not in str(exc):
            raise
        _say(f"containerd lost a layer snapshot during the import ({str(exc).splitlines()[-1][:160]}); once more")
        _save_into(containerd_socket, ref)
    marker.write_text(f"{name} {image_id}")
    _say(f"imported {ref} in {time.monotonic() - began:.1f}s")
    return True
