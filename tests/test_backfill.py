"""Backfills as an operator runs them (`airflow backfill create`) on a real Airflow 3 scheduler.

Every test owns a day picked from a random seed (and fresh topics), so counts never mix with
other tests or earlier runs against the same devstack.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta

import pytest
from airflow.dag_processing.dagbag import DagBag
from elasticsearch import Elasticsearch

from devstack.airflow import Airflow
from devstack.airflow_api import AirflowClient, DagRun
from devstack.runtime import REPO_ROOT
from eventpipe.archive.indices import day_bounds, day_index, late_index
from eventpipe.archive.layout import manifest_key
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.ingest.drain import drain_interval
from eventpipe.settings import Settings
from eventpipe.storage.s3 import s3_client

from .airflow_support import ARCHIVE_DAG, INGEST_DAG, backfill, unpaused
from .es_support import dead_letters_of, events_of

pytestmark = [pytest.mark.airflow, pytest.mark.services, pytest.mark.slow]
HOUR = timedelta(hours=1)


def _random_day() -> date:
    """A closed day of 2026 after the DAGs' start_date; random, so reruns on one devstack never collide."""
    return date(2026, 1, 2) + timedelta(days=random.SystemRandom().randrange(300))


def _assert_exact(es: Elasticsearch, topics: dict[str, str], produced) -> None:
    for topic in topics.values():
        indexed, dead = events_of(es, topic), dead_letters_of(es, topic)
        assert indexed + dead == produced.by_topic[topic], topic
    assert sum(events_of(es, t) for t in topics.values()) == produced.valid


def _covering(runs: list[DagRun], start: datetime, end: datetime) -> list[DagRun]:
    """The runs whose data intervals are hours inside [start, end); they must tile it exactly."""
    inside = sorted(
        (r for r in runs if r.data_interval_start and start <= r.data_interval_start < end),
        key=lambda r: r.data_interval_start or start,
    )
    assert [(r.data_interval_start, r.data_interval_end) for r in inside] == [
        (start + i * HOUR, start + (i + 1) * HOUR) for i in range((end - start) // HOUR)
    ], [(r.dag_run_id, r.data_interval_start, r.data_interval_end) for r in runs]
    return inside


def test_ingest_backfill_of_three_hours_is_exact_and_rerunnable(
    airflow: Airflow, api: AirflowClient, services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = utc(f"{_random_day().isoformat()}T09:00:00")
    h3 = h0 + 3 * HOUR
    config = GeneratorConfig(h0, h3, rate_per_s=0.2, malformed_rate=0.01, seed=random.randrange(1_000_000))
    produced = produce(services, config, topics=topics, truth=False)
    conf = {"topics": sorted(topics.values()), "dry_run": False}

    with unpaused(api, services, INGEST_DAG):
        # --to-date is inclusive: logical dates h0..h3 cover [h0, h3) whichever end of its interval a
        # run's logical date marks (plus one empty hour)
        first, runs = backfill(airflow, api, INGEST_DAG, h0, h3, conf=conf)
        assert all(r.state == "success" for r in runs), [(r.dag_run_id, r.state) for r in runs]
        hourly = _covering(runs, h0, h3)
        assert {r.run_type for r in hourly} == {"backfill"}
        _assert_exact(es, topics, produced)
        drains = [api.xcom(INGEST_DAG, r.dag_run_id, "drain") for r in hourly]
        assert sum(d["consumed"] for d in drains) == produced.produced
        assert sum(d["indexed"] for d in drains) == produced.valid
        assert all(d["consumed"] > 0 for d in drains)

        # the operator reruns the same window: runs are cleared and replayed, nothing is added
        second, rerun = backfill(airflow, api, INGEST_DAG, h0, h3, conf=conf, reprocess="completed")
        assert second["id"] != first["id"]
        assert all(r.state == "success" for r in rerun)
        replayed = [api.xcom(INGEST_DAG, r.dag_run_id, "drain") for r in _covering(rerun, h0, h3)]
        assert [d["consumed"] for d in replayed] == [d["consumed"] for d in drains]
        assert all(t["replayed"] and t["created"] == 0 for d in replayed for t in d["topics"])
        _assert_exact(es, topics, produced)


def _dag_ids() -> set[str]:
    return set(DagBag(dag_folder=str(REPO_ROOT / "dags"), safe_mode=False).dag_ids)


def test_archive_backfill_commits_each_day_with_the_elasticsearch_counts(
    airflow: Airflow, api: AirflowClient, services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    if ARCHIVE_DAG not in _dag_ids():
        pytest.skip(f"{ARCHIVE_DAG} is not in the DagBag yet")
    d1 = _random_day()
    days = [d1, d1 + timedelta(days=1)]
    for day in days:  # two closed days: produced and drained interval by interval, like the hourly DAG would
        start, end = day_bounds(day)
        config = GeneratorConfig(start, end, rate_per_s=0.01, seed=random.randrange(1_000_000))
        produce(services, config, topics=topics, truth=False)
        for topic in topics.values():
            drain_interval(services, topic, start, end)

    with unpaused(api, services, ARCHIVE_DAG):
        first, last = day_bounds(days[0])[0], day_bounds(days[-1])[0]
        _, runs = backfill(airflow, api, ARCHIVE_DAG, first, last, conf={"topics": sorted(topics.values())})
    by_day = {r.data_interval_start.date(): r for r in runs if r.data_interval_start}
    assert sorted(by_day) == days
    assert all(r.state == "success" for r in by_day.values()), [(r.dag_run_id, r.state) for r in runs]

    s3 = s3_client(services)
    for day in days:
        manifest = json.loads(s3.get_object(Bucket=services.s3.bucket, Key=manifest_key(day))["Body"].read())
        indices = ",".join((day_index(day), late_index(day)))
        es.indices.refresh(index=indices, ignore_unavailable=True)
        in_es = es.count(index=indices, ignore_unavailable=True)["count"]
        assert manifest["rows"] == in_es > 0, day
