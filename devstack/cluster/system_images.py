"""Small container images (pause, CoreDNS, the XCom sidecar) written as ``docker save`` archives, without Docker.

No image registry is reachable here, so the cluster's own images are assembled from locally built binaries:
one layer holding the static binary, a config naming the entrypoint and a numeric non-root user, and the
archive layout ``ctr images import`` understands. Byte-identical inputs give byte-identical archives.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

from devstack.runtime import DevstackError

EPOCH = 0  # fixed mtimes: the digest depends on the binary only


def _layer(binary: Path, path_in_image: str, links: Mapping[str, str], files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in {path_in_image: binary.read_bytes(), **files}.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o755, EPOCH
            tar.addfile(info, io.BytesIO(data))
        for link in _links(links):
            tar.addfile(link)
    return buf.getvalue()


def _links(links: Mapping[str, str]) -> list[tarfile.TarInfo]:
    out = []
    for path, target in sorted(links.items()):
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, EPOCH
        out.append(info)
    return out


def single_binary_archive(
    binary: Path,
    ref: str,
    entrypoint: list[str],
    dest: Path,
    user: str = "65532",
    *,
    links: Mapping[str, str] | None = None,
    files: Mapping[str, bytes] | None = None,
    path_env: str = "/",
) -> Path:
    """Write a ``docker save``-format archive of an image holding only ``binary`` (as ``entrypoint[0]``).

    ``links`` adds symlinks (path in image -> target), e.g. busybox applet names; ``files`` adds small
    executable files (path in image -> content), e.g. a shell script.
    """
    layer = _layer(binary, entrypoint[0], links or {}, files or {})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": [f"PATH={path_env}"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"eventpipe devstack: {binary.name}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
    with tarfile.open(dest, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((config_name, config_bytes), (layer_name, layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))
    return dest


def ctr(socket: str, *args: str, stdin: bytes | None = None, timeout: float = 600) -> str:
    """``ctr`` against the cluster's containerd, in the CRI namespace ``k8s.io``."""
    result = subprocess.run(
        ["ctr", "--address", socket, "--namespace", "k8s.io", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise DevstackError(f"ctr {' '.join(args)} failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode()


def image_refs(socket: str) -> set[str]:
    return set(ctr(socket, "images", "list", "--quiet").split())


def import_archive(socket: str, archive: Path) -> None:
    ctr(socket, "images", "import", str(archive))
