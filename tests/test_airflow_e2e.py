"""The ingest DAG run by a real Airflow 3 (REST-triggered) against real Kafka and Elasticsearch."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta

import pytest
from elasticsearch import Elasticsearch

from devstack.airflow import Airflow
from devstack.airflow_api import AirflowClient
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.settings import Settings

from .airflow_support import INGEST_DAG, unpaused
from .es_support import dead_letters_of, events_of

pytestmark = [pytest.mark.airflow, pytest.mark.services]


@pytest.fixture(scope="module")
def api(airflow: Airflow, services: Settings) -> Iterator[AirflowClient]:
    with AirflowClient(airflow.url) as client, unpaused(client, services, INGEST_DAG):
        yield client


def test_triggered_run_drains_exactly_its_hour(
    api: AirflowClient, services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    seed = random.SystemRandom().randrange(1_000_000)  # a fresh hour: logical dates are unique per DAG
    h0 = utc("2026-01-01T00:00:00") + timedelta(hours=seed % (300 * 24))
    h1 = h0 + timedelta(hours=1)
    # the hour before and after get events too (in time order): they must stay out of this run's drain;
    # the hour before is below the offsets the drain commits, so the run's offset ledger drains it
    before = produce(
        services, GeneratorConfig(h0 - timedelta(hours=1), h0, 0.05, seed=seed + 1), topics=topics, truth=False
    )
    config = GeneratorConfig(h0, h1, rate_per_s=0.5, malformed_rate=0.02, seed=seed)
    produced = produce(services, config, topics=topics, truth=False)
    produce(services, GeneratorConfig(h1, h1 + timedelta(hours=1), 0.05, seed=seed + 2), topics=topics, truth=False)

    run = api.trigger(
        INGEST_DAG,
        conf={"topics": sorted(topics.values())},
        logical_date=h0,
        data_interval=(h0, h1),
        run_id=f"e2e__{h0:%Y%m%dT%H}__{seed}",
    )
    assert (run.data_interval_start, run.data_interval_end) == (h0, h1)
    finished = api.wait(INGEST_DAG, run.dag_run_id, timeout=900)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(INGEST_DAG, run.dag_run_id)}
    assert finished.state == "success", states
    assert set(states.values()) == {"success"} and {"drain", "rollup", "ledger"} <= set(states)

    for topic in topics.values():
        assert events_of(es, topic) + dead_letters_of(es, topic) == produced.by_topic[topic] + before.by_topic[topic]
    assert sum(events_of(es, t) for t in topics.values()) == produced.valid + before.valid
    dead = sum(dead_letters_of(es, t) for t in topics.values())
    assert dead == produced.malformed + before.malformed and produced.malformed > 0
    ledger = api.xcom(INGEST_DAG, run.dag_run_id, "ledger")
    assert ledger["uncovered"] == ledger["drained"] == before.produced and ledger["remaining"] == 0

    drained = api.xcom(INGEST_DAG, run.dag_run_id, "drain")
    assert drained["interval_start"] == h0.isoformat() and drained["interval_end"] == h1.isoformat()
    assert drained["consumed"] == produced.produced
    assert drained["indexed"] == produced.valid
    assert drained["dead_lettered"] == produced.malformed
    assert {t["topic"] for t in drained["topics"]} == set(topics.values())
    assert drained["touched_hours"] == [h0.isoformat()]
    rolled = api.xcom(INGEST_DAG, run.dag_run_id, "rollup")
    assert rolled["hours"] == 1 and rolled["rollup_documents"] > 0
