"""`make down` stops all the devstack started, `devstack status` lists it, `make status` passes after `make services`.

The down test runs a devstack of its own (EVENTPIPE_DEVSTACK_HOME in a temporary directory) so the shared one
keeps running: it starts the monitoring group there, and the Docker daemon when the host has one installed and
none runs, then runs the real `make down` and looks for every process and port they had. The group's ports are
fixed and the shared devstack's monitoring may hold them, so the test runs itself again in a network namespace
of its own (`unshare -n`, as root), where they are free; the downloads and the Go build happen before, outside it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.monitoring import (
    ALERTMANAGER_PORT,
    PROMETHEUS_PORT,
    PUSHGATEWAY_PORT,
    STATSD_EXPORTER_PORT,
    STATSD_PORT,
    StatsdExporter,
)
from devstack.runtime import REPO_ROOT, home, port_open
from devstack.stack import GROUPS, expand, install
from eventpipe.settings import Settings

MONITORING_PORTS = (PROMETHEUS_PORT, PUSHGATEWAY_PORT, ALERTMANAGER_PORT, STATSD_EXPORTER_PORT, STATSD_PORT)
IN_OWN_NETWORK = "EVENTPIPE_TEST_OWN_NETNS"  # set in the namespace, so the test runs there instead of re-running
EP = f"{sys.executable} -m eventpipe.cli"  # what the Makefile's $(EP) runs, from this interpreter


def _make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), target, f"EP={EP}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (the devstack's config, data and binaries)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and int(proc.name) != os.getpid() and _alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _listening(port: int) -> bool:
    if port_open(port):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the StatsD UDP port
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture()
def own_devstack(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a devstack of its own in ``tmp_path``; whatever a failed test left running is stopped after."""
    env = {**os.environ, "EVENTPIPE_DEVSTACK_HOME": str(tmp_path)}
    yield env
    down = [sys.executable, "-m", "eventpipe.cli", "devstack", "down"]
    subprocess.run(down, env=env, capture_output=True, timeout=300)


@pytest.mark.monitoring
@pytest.mark.slow
def test_make_down_leaves_no_process_or_port_of_the_monitoring_group_and_dockerd(
    own_devstack: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if not os.environ.get(IN_OWN_NETWORK) and os.geteuid() == 0 and shutil.which("unshare"):
        # packages and the StatsD exporter's Go build (minutes) need the network: install them here, into the
        # checkout devstack's cache (installing starts nothing), then run the test where the ports are free
        install(expand(["monitoring"]))
        script = 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -p no:randomly "$1"'
        node = f"{__file__}::{request.node.name}"
        inner = subprocess.run(
            ["unshare", "-n", "sh", "-c", script, sys.executable, node],
            env={**os.environ, IN_OWN_NETWORK: "1"},
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert inner.returncode == 0 and "1 passed" in inner.stdout, inner.stdout[-6000:] + inner.stderr[-2000:]
        return
    busy = [port for port in MONITORING_PORTS if _listening(port)]
    if busy:
        pytest.skip(f"ports {busy} are in use and no network namespace of its own (needs root and unshare)")
    StatsdExporter().install()  # copied from the checkout devstack's cache
    shutil.copytree(home() / "monitoring" / "bin", tmp_path / "monitoring" / "bin", symlinks=True)
    started = subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", "devstack", "up", "--services", "monitoring"],
        env=own_devstack,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert started.returncode == 0, started.stderr[-4000:]
    expected = list(GROUPS["monitoring"])
    dockerd = shutil.which("dockerd") is not None and not Path("/var/run/docker.sock").is_socket()
    if dockerd:  # what `devstack k8s` does before an image build; a daemon found running is not the devstack's
        script = "from devstack.cluster.image import ensure_docker; ensure_docker()"
        subprocess.run([sys.executable, "-c", script], env=own_devstack, check=True, timeout=120)
        expected.append("dockerd")
    pids = {p.stem: int(p.read_text()) for p in (tmp_path / "run").glob("*.pid")}
    assert set(expected) <= set(pids), pids
    assert all(_listening(port) for port in MONITORING_PORTS)

    status = _make("status", own_devstack)  # the data services were not started here: named, and nothing else
    assert status.returncode == 2, status.stdout + status.stderr
    assert status.stderr.startswith("unhealthy: kafka, elasticsearch, s3\n"), status.stderr
    for name in expected:
        assert f"│ {name} " in status.stdout and str(pids[name]) in status.stdout, (name, status.stdout)

    stopped = _make("down", own_devstack)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert {name: pid for name, pid in pids.items() if _alive(pid)} == {}
    assert [port for port in MONITORING_PORTS if _listening(port)] == []
    assert _processes_under(tmp_path) == []
    assert list((tmp_path / "run").glob("*.pid")) == []
    if dockerd:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            assert sock.connect_ex("/var/run/docker.sock") != 0  # nobody answers on the Docker socket


def test_down_leaves_processes_it_did_not_start(own_devstack: dict[str, str], tmp_path: Path) -> None:
    """A daemon found running (here a stand-in, started outside the devstack) has no pidfile, so it stays."""
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], cwd=tmp_path)
    try:
        stopped = _make("down", own_devstack)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert outsider.poll() is None
    finally:
        outsider.kill()
        outsider.wait()


@pytest.mark.services
def test_make_status_passes_after_make_services(services: Settings) -> None:
    """Airflow and PostgreSQL start on demand: not started is not unhealthy."""
    result = _make("status", {**os.environ})
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(f"│ {name} " in result.stdout for name in ("kafka", "elasticsearch", "s3", "airflow"))
