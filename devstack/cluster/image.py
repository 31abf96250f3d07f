"""The task image, built here without any image registry, and handed to the devstack cluster's containerd.

The Dockerfile's ``BASE=debian`` variant starts from a root filesystem made of Debian packages (debootstrap from
the host's own apt sources, imported with ``docker import``: ``FROM scratch`` in effect) instead of the official
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
import tarfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from devstack.runtime import REPO_ROOT, DevstackError, log_path, pid_of, start_process, subdir, tail

IMAGE = "eventpipe:0.1.0"
DOCKER = "/usr/bin/docker"  # Debian's client matches Debian's dockerd; a newer client may want buildx
DOCKER_SOCKET = Path("/var/run/docker.sock")
SUITE = "bookworm"
ROOTFS_REPO = "eventpipe/debian-rootfs"
# What the image needs from Debian: Python 3.11 (as the official image), a JRE for Spark, an init for PID 1.
ROOTFS_PACKAGES = (
    "python3",
    "python3-venv",
    "openjdk-17-jre-headless",
    "dumb-init",
    "ca-certificates",
    "procps",
    "libstdc++6",
)
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


# -- Docker ----------------------------------------------------------------------------------------------
def docker_ready() -> bool:
    if not DOCKER_SOCKET.is_socket() or not Path(DOCKER).exists():
        return False
    return subprocess.run([DOCKER, "info"], capture_output=True, check=False).returncode == 0


def ensure_docker() -> None:
    """Use a running Docker engine, or start Debian's dockerd without its bridge and iptables rules.

    Builds use the host network (package registries only); no container runs on a Docker network, so
    Docker's FORWARD-DROP rules, which break pod traffic, never appear.
    """
    if docker_ready():
        return
    if shutil.which("dockerd") is None or not Path(DOCKER).exists():
        raise DevstackError("Docker is required to build the image: apt-get install docker.io")
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


def _image_label(ref: str, label: str) -> str | None:
    result = subprocess.run(
        [DOCKER, "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _image_exists(ref: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True, check=False).returncode == 0


# -- Debian root filesystem ------------------------------------------------------------------------------
def debian_mirror() -> str:
    """The Debian archive this host's apt uses (so the image comes from the same, reachable source)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file():
            continue
        text = source.read_text()
        for match in re.finditer(r"^URIs:\s*(\S+)", text, flags=re.M):
            if "security" not in match.group(1):
                return match.group(1)
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, flags=re.M):
            if "security" not in match.group(1):
                return match.group(1)
    raise DevstackError("no Debian mirror found in /etc/apt/sources.list{,.d}; the rootfs is built from it")


def rootfs_image() -> str:
    """``eventpipe/debian-rootfs:<suite>-<hash>``, built by debootstrap once per package list."""
    key = hashlib.sha256(f"{SUITE} {' '.join(ROOTFS_PACKAGES)} {''.join(USER_LINES)}".encode()).hexdigest()[:12]
    ref = f"{ROOTFS_REPO}:{SUITE}-{key}"
    if _image_exists(ref):
        return ref
    if shutil.which("debootstrap") is None:
        raise DevstackError("debootstrap is required for the Debian base: apt-get install debootstrap")
    work = subdir("image") / f"rootfs-{key}"
    if work.exists():
        _umount_below(work)
        shutil.rmtree(work)
    began = time.monotonic()
    _run(
        [
            "debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
            "--components=main", SUITE, str(work), debian_mirror(),
        ],
        f"debootstrap {SUITE} ({len(ROOTFS_PACKAGES)} packages + dependencies)",
    )  # fmt: skip
    _umount_below(work)
    _slim(work)
    with (work / "etc" / "passwd").open("a") as passwd:
        passwd.write(USER_LINES[0])
    with (work / "etc" / "shadow").open("a") as shadow:
        shadow.write(USER_LINES[1])
    (work / "home" / "airflow").mkdir(parents=True, exist_ok=True)
    os.chown(work / "home" / "airflow", 50000, 0)
    archive = subdir("image") / f"rootfs-{key}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(work, arcname=".")
    _run([DOCKER, "import", str(archive), ref], f"docker import {ref}")
    archive.unlink()
    shutil.rmtree(work)
    _say(f"rootfs {ref} in {time.monotonic() - began:.0f}s")
    return ref


def _umount_below(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(root))), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


def _slim(root: Path) -> None:
    """Drop what a batch container never reads: apt caches and lists, docs, man pages, other locales."""
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
        target = root / rel
        if target.exists():
            shutil.rmtree(target)
            target.mkdir()
    locales = root / "usr" / "share" / "locale"
    if locales.exists():
        for child in locales.iterdir():
            if child.is_dir() and child.name not in {"C.UTF-8", "en"}:
                shutil.rmtree(child)


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
    if _image_label(ref, "io.eventpipe.inputs") == key:
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


def _size(ref: str) -> dict[str, object]:
    out = subprocess.run(
        [DOCKER, "image", "inspect", "--format", "{{.Size}} {{.Id}}", ref], capture_output=True, text=True, check=False
    ).stdout.split()
    return {"size_mb": round(int(out[0]) / 1e6), "id": out[1]} if len(out) == 2 else {}


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
    marker = subdir("image") / "imported"
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
