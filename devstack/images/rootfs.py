"""The Debian root filesystem every local image starts from: debootstrap + ``docker import`` (``FROM scratch``).

One rootfs for the task image and the service images, so their layers are shared on disk and in the cluster's
containerd. It comes from the host's own apt mirror (reachable by definition) and is rebuilt only when the
package list or the users change (the tag carries their hash).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from devstack.images.docker import docker_step, image_exists
from devstack.runtime import DevstackError, progress, run_step, subdir

SUITE = "bookworm"
ROOTFS_REPO = "eventpipe/debian-rootfs"
# Python 3.11 (as the official Airflow image) and a JRE 17 (Spark, Kafka), an init for PID 1, curl for health checks.
ROOTFS_PACKAGES = (
    "python3",
    "python3-venv",
    "openjdk-17-jre-headless",
    "dumb-init",
    "ca-certificates",
    "procps",
    "libstdc++6",
    "curl",
)
# airflow 50000:0 as in the official Airflow image (the task image); eventpipe 1000:1000 runs the service images
SERVICE_UID = 1000
PASSWD = (
    "airflow:x:50000:0:airflow:/home/airflow:/bin/bash\n",
    f"eventpipe:x:{SERVICE_UID}:{SERVICE_UID}:eventpipe services:/var/lib/eventpipe:/usr/sbin/nologin\n",
)
SHADOW = ("airflow:*:20000:0:99999:7:::\n", "eventpipe:*:20000:0:99999:7:::\n")
GROUP = (f"eventpipe:x:{SERVICE_UID}:\n",)


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


def rootfs_key() -> str:
    return hashlib.sha256(
        f"{SUITE} {' '.join(ROOTFS_PACKAGES)} {''.join(PASSWD + SHADOW + GROUP)}".encode()
    ).hexdigest()[:12]


def rootfs_image() -> str:
    """``eventpipe/debian-rootfs:<suite>-<hash>``, built by debootstrap once per package list."""
    key = rootfs_key()
    ref = f"{ROOTFS_REPO}:{SUITE}-{key}"
    if image_exists(ref):
        return ref
    if shutil.which("debootstrap") is None:
        raise DevstackError("debootstrap is required for the Debian base: apt-get install debootstrap")
    work = subdir("image") / f"rootfs-{key}"
    if work.exists():
        _umount_below(work)
        shutil.rmtree(work)
    began = time.monotonic()
    cmd = [
        "debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
        "--components=main", SUITE, str(work), debian_mirror(),
    ]  # fmt: skip
    result = run_step(cmd, f"debootstrap {SUITE} ({len(ROOTFS_PACKAGES)} packages + dependencies)")
    _umount_below(work)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise DevstackError(f"debootstrap failed (exit {result.returncode}):\n{output}")
    _slim(work)
    for name, lines in (("passwd", PASSWD), ("shadow", SHADOW), ("group", GROUP)):
        with (work / "etc" / name).open("a") as out:
            out.writelines(lines)
    for home, uid, gid in (("home/airflow", 50000, 0), ("var/lib/eventpipe", SERVICE_UID, SERVICE_UID)):
        (work / home).mkdir(parents=True, exist_ok=True)
        os.chown(work / home, uid, gid)
    archive = subdir("image") / f"rootfs-{key}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(work, arcname=".")
    docker_step(["import", str(archive), ref], f"docker import {ref}")
    archive.unlink()
    shutil.rmtree(work)
    progress(f"rootfs {ref} in {time.monotonic() - began:.0f}s")
    return ref


def _umount_below(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(root))), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


def _slim(root: Path) -> None:
    """Drop what a container never reads: apt caches and lists, docs, man pages, other locales."""
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
