"""Kubernetes, CoreDNS and the pause binary, built here from the Go module proxy (no release downloads exist).

``k8s.io/kubernetes`` is not meant to be consumed as a module: its go.mod points every ``k8s.io/*`` staging
repository at ``./staging`` (absent from module zips) and requires them as ``v0.0.0``. A writable copy with the
``replace`` block removed and those requirements pinned to the matching ``v0.<minor>.<patch>`` builds with
``-mod=mod``. The version ldflags matter: without them nodes report ``v0.0.0-master`` and kubectl refuses them.

Binaries land in ``.devstack/kubernetes/bin`` with a version marker; Go's own build cache (``go env GOCACHE``)
is left where it is, so a fresh clone on a machine that built once relinks in a minute or two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from devstack.runtime import DevstackError, subdir

KUBERNETES_VERSION = "v1.34.4"
STAGING_VERSION = "v0.34.4"  # the k8s.io/* staging modules tagged with the same release
COREDNS_VERSION = "v1.14.7"
PAUSE_VERSION = "3.10"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")
BINARIES = (*COMPONENTS, "coredns", "pause")


def bin_dir() -> Path:
    return subdir("kubernetes", "bin")


def _marker() -> str:
    return f"kubernetes={KUBERNETES_VERSION} coredns={COREDNS_VERSION} pause={PAUSE_VERSION}"


def installed() -> bool:
    marker = bin_dir() / ".version"
    return (
        marker.exists()
        and marker.read_text().strip() == _marker()
        and all((bin_dir() / name).exists() for name in BINARIES)
    )


def _ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={KUBERNETES_VERSION}", f"-X {pkg}.gitMajor={major}"]
        flags += [f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def _run(cmd: Sequence[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a build step; print its name and a heartbeat with elapsed seconds while it runs."""
    began = time.monotonic()
    print(f"[kubernetes] {what} ...", flush=True)
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            print(f"[kubernetes] {what}: {time.monotonic() - began:.0f}s", flush=True)

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        result = subprocess.run(
            list(cmd), capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, check=False
        )
    finally:
        done.set()
    if result.returncode != 0:
        raise DevstackError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    print(f"[kubernetes] {what}: done in {time.monotonic() - began:.0f}s", flush=True)
    return result.stdout


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise DevstackError(
            "the Go toolchain (go 1.24+) is required to build Kubernetes; install it and put it on PATH"
        )
    return go


def prepare_source(go: str) -> Path:
    """A writable copy of the module with the staging ``replace`` block removed (cached per version)."""
    source = subdir("kubernetes", "src") / f"kubernetes-{KUBERNETES_VERSION}"
    if (source / ".prepared").exists():
        return source
    module = f"k8s.io/kubernetes@{KUBERNETES_VERSION}"
    info = json.loads(_run([go, "mod", "download", "-json", module], what=f"downloading {module}"))
    if shutil.which("gcc") is None:
        raise DevstackError("gcc is required to build the static pause binary; apt-get install gcc libc6-dev")
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(info["Dir"], source, ignore=shutil.ignore_patterns("vendor", "go.work", "go.work.sum"))
    for path in [source, *source.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    gomod = source / "go.mod"
    text = re.sub(r"\nreplace \(\n.*?\n\)\n", "\n", gomod.read_text(), flags=re.S)
    text = re.sub(r"^(\tk8s\.io/[\w.-]+) v0\.0\.0$", rf"\1 {STAGING_VERSION}", text, flags=re.M)
    if "=> ./staging" in text or re.search(r"k8s\.io/[\w.-]+ v0\.0\.0$", text, flags=re.M):
        raise DevstackError(f"could not unpin the staging modules in {gomod}; its layout changed")
    gomod.write_text(text)
    (source / ".prepared").write_text(KUBERNETES_VERSION)
    return source


def build() -> dict[str, float]:
    """Build every binary unless the version marker says they are current; returns seconds per step."""
    if installed():
        return {}
    go = _go()
    timings: dict[str, float] = {}
    began = time.monotonic()
    source = prepare_source(go)
    timings["source"] = round(time.monotonic() - began, 1)
    staging = bin_dir() / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    env = {"GOFLAGS": "-mod=mod", "GOWORK": "off", "CGO_ENABLED": "0"}
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    step = time.monotonic()
    targets = [f"./cmd/{name}" for name in COMPONENTS]
    _run(
        [*nice, go, "build", "-trimpath", "-ldflags", _ldflags(), "-o", f"{staging}/", *targets],
        what=f"go build Kubernetes {KUBERNETES_VERSION} ({', '.join(COMPONENTS)})",
        env=env,
        cwd=source,
    )
    timings["kubernetes"] = round(time.monotonic() - step, 1)
    step = time.monotonic()
    _run(
        [*nice, go, "install", "-trimpath", "-ldflags", "-s -w", f"github.com/coredns/coredns@{COREDNS_VERSION}"],
        what=f"go install CoreDNS {COREDNS_VERSION}",
        env={"GOBIN": str(staging), "CGO_ENABLED": "0", "GOFLAGS": ""},
    )
    timings["coredns"] = round(time.monotonic() - step, 1)
    step = time.monotonic()
    _run(
        ["gcc", "-Os", "-static", "-o", str(staging / "pause"), str(source / "build" / "pause" / "linux" / "pause.c")],
        what="gcc pause",
    )
    timings["pause"] = round(time.monotonic() - step, 1)
    for name in BINARIES:
        (staging / name).replace(bin_dir() / name)
    staging.rmdir()
    (bin_dir() / ".version").write_text(_marker() + "\n")
    return timings
