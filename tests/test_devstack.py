"""The devstack as a user meets it: Elasticsearch's banner, the env command, and restarts of unhealthy services."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from devstack.elasticsearch import ElasticsearchNode
from devstack.postgres import Postgres
from devstack.runtime import Service, pid_of, start_process
from eventpipe.settings import Settings

pytestmark = pytest.mark.services


def test_elasticsearch_answers_get_root_like_elasticsearch(services: Settings) -> None:
    banner = httpx.get(f"{services.elastic.url}/", timeout=10).raise_for_status().json()
    assert banner["name"] == "eventpipe-dev"
    assert banner["cluster_name"] == "eventpipe-dev"
    assert banner["cluster_uuid"] and banner["cluster_uuid"] != "_na_"
    assert banner["version"]["number"] == ElasticsearchNode().version()
    assert banner["version"]["lucene_version"].startswith("10.")
    assert banner["tagline"] == "You Know, for Search"
    assert httpx.head(f"{services.elastic.url}/", timeout=10).status_code == 200


def test_env_prints_exports_for_the_airflow_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", "devstack", "env"], capture_output=True, text=True, check=True
    ).stdout
    exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in out.splitlines())
    assert exports["AIRFLOW_HOME"].endswith(os.path.join(".devstack", "airflow"))
    assert exports["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == Postgres().url
    assert exports["AIRFLOW__CORE__DAGS_FOLDER"].endswith("dags")
    assert exports["EVENTPIPE_KAFKA_BOOTSTRAP"] == "127.0.0.1:9092"
    # bash evaluates it back to the same values
    echoed = subprocess.run(
        ["bash", "-c", f'{out}\nprintf %s "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert echoed == Postgres().url


class _HttpProbe(Service):
    """A throwaway service (python -m http.server) so the restart logic is proven without disturbing shared ones."""

    name = "test-http-probe"

    def __init__(self, port: int) -> None:
        self.port = port

    def install(self) -> None:
        return None

    def launch(self) -> None:
        start_process(self.name, [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1"])

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def recover_timeout(self) -> float:
        return 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_restarts_a_running_but_unhealthy_service() -> None:
    """Frozen (SIGSTOP: pid alive, port open, no answers) is unhealthy: `start` restarts it; healthy is left alone."""
    probe = _HttpProbe(_free_port())
    probe.start()
    try:
        first = pid_of(probe.name)
        assert first is not None and probe.healthy()
        probe.start()
        assert pid_of(probe.name) == first  # healthy: left alone
        os.kill(first, signal.SIGSTOP)
        assert not probe.healthy()
        probe.start()
        second = pid_of(probe.name)
        assert probe.healthy()
        assert second not in (None, first)
    finally:
        probe.stop()


def test_install_lanes_keep_maven_serial_and_airflow_after_postgres() -> None:
    """Installs run in parallel lanes; the lanes encode what may not overlap."""
    from devstack.stack import SERVICES, _lanes

    lanes = _lanes([*SERVICES, "spark", "prometheus"])
    assert sorted(name for lane in lanes for name in lane) == sorted([*SERVICES, "spark", "prometheus"])
    maven = next(lane for lane in lanes if "kafka" in lane)
    assert {"elasticsearch", "spark"} <= set(maven)  # one mvn at a time on ~/.m2
    db = next(lane for lane in lanes if "airflow" in lane)
    assert db.index("postgres") < db.index("airflow")  # airflow db migrate needs the database
    assert _lanes(["s3"]) == [["s3"]]
