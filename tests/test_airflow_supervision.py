"""The devstack supervises Airflow's components: a crashed scheduler comes back and its runs complete."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from devstack.airflow import COMPONENTS, SUPERVISED, Airflow
from devstack.airflow_api import AirflowClient
from devstack.runtime import port_open, wait_until
from devstack.stack import up
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.settings import Settings

from .airflow_support import INGEST_DAG, unpaused
from .es_support import dead_letters_of, events_of

pytestmark = [pytest.mark.airflow, pytest.mark.services, pytest.mark.slow]


def _group(pgid: int) -> set[int]:
    """Live pids of a process group (from /proc: children reparented to init still count)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


def _restarted(airflow: Airflow, component: str, old_pid: int) -> bool:
    info = airflow.components().get(component, {})
    return info.get("statename") == "RUNNING" and info.get("pid") not in (0, old_pid)


def test_every_component_is_supervised_and_reported(airflow: Airflow) -> None:
    components = airflow.components()
    assert set(components) == set(SUPERVISED) >= set(COMPONENTS)
    assert {info["statename"] for info in components.values()} == {"RUNNING"}
    assert airflow.status()["components"] == dict.fromkeys(SUPERVISED, "RUNNING")


def test_scheduler_killed_mid_run_is_restarted_and_the_run_completes(
    airflow: Airflow, api: AirflowClient, services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    seed = random.SystemRandom().randrange(1_000_000)
    h0 = utc("2026-01-01T00:00:00") + timedelta(hours=seed % (300 * 24))
    produced = produce(
        services, GeneratorConfig(h0, h0 + timedelta(hours=1), 0.3, malformed_rate=0.02, seed=seed), topics=topics
    )
    with unpaused(api, services, INGEST_DAG):
        run = api.trigger(
            INGEST_DAG,
            conf={"topics": sorted(topics.values())},
            logical_date=h0,
            data_interval=(h0, h0 + timedelta(hours=1)),
            run_id=f"supervision__{h0:%Y%m%dT%H}__{seed}",
        )
        # kill the scheduler once the run is under way, as a crash (SIGKILL: no clean shutdown)
        wait_until(
            lambda: any(ti["state"] for ti in api.task_instances(INGEST_DAG, run.dag_run_id)),
            timeout=300,
            name="airflow",
            what="the run's first task scheduled",
        )
        scheduler_pid = int(airflow.components()["scheduler"]["pid"])
        left_behind = _group(scheduler_pid) - {scheduler_pid}  # its LocalExecutor workers and log server
        assert left_behind
        os.kill(scheduler_pid, signal.SIGKILL)
        began = time.monotonic()
        wait_until(lambda: _restarted(airflow, "scheduler", scheduler_pid), timeout=120, name="airflow", what="restart")
        restart_seconds = time.monotonic() - began
        # what the dead scheduler left would hold PostgreSQL row locks: reaped before the restart
        wait_until(
            lambda: not _group(scheduler_pid), timeout=30, name="airflow", what="the dead scheduler's group reaped"
        )

        finished = api.wait(INGEST_DAG, run.dag_run_id, timeout=900)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(INGEST_DAG, run.dag_run_id)}
    assert finished.state == "success", states
    assert restart_seconds < 60
    for topic in topics.values():
        indexed, dead = events_of(es, topic), dead_letters_of(es, topic)
        assert indexed + dead == produced.by_topic[topic], topic
    assert sum(events_of(es, t) for t in topics.values()) == produced.valid
    # `devstack up` on the repaired Airflow is a no-op: healthy services are left alone
    supervisor_pid = airflow.status()["pid"]
    up(["airflow"])
    assert airflow.status()["pid"] == supervisor_pid


def test_devstack_up_restarts_a_component_supervisord_gave_up_on(airflow: Airflow) -> None:
    """A component stopped for good (as FATAL after its retries would be) is started again by `devstack up`."""
    supervisor = airflow._supervisor()
    supervisor.stopProcess("triggerer", True)
    assert airflow.components()["triggerer"]["statename"] == "STOPPED"
    up(["airflow"])
    wait_until(
        lambda: airflow.components()["triggerer"]["statename"] == "RUNNING", timeout=60, name="airflow", what="start"
    )


def test_down_leaves_no_component_behind(airflow: Airflow) -> None:
    """Each component runs in its own process group: stopping supervisord alone would orphan them."""
    pids = [int(info["pid"]) for info in airflow.components().values()]
    assert len(pids) == len(SUPERVISED) and all(pids)
    assert airflow.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not port_open(airflow.port)
    up(["airflow"])  # as the next test module expects it
    assert airflow.healthy()
