"""Monitoring end to end: real faults make the deployed alerts fire in the devstack Prometheus and reach
Alertmanager, and every metric the Grafana dashboard queries is one Prometheus really receives.

The pipeline runs as its tasks do (the `eventpipe` CLI in a subprocess, EVENTPIPE_PUSHGATEWAY_URL set), so
metrics travel task -> Pushgateway -> Prometheus (scrape 1 s, rules every 1 s with the devstack's short
`for:`) -> Alertmanager. The monitoring services are shared; each test's alerts carry its own fresh topic or
DAG label, or (snapshot, archive: unlabelled series) are reset by the test, and the groups a test pushes are
deleted from the Pushgateway afterwards so its alerts resolve.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from devstack.monitoring import ALERTMANAGER_PORT, PROMETHEUS_PORT, pushgateway_url
from devstack.runtime import REPO_ROOT
from devstack.stack import GROUPS, up
from eventpipe.archive.indices import day_bounds
from eventpipe.archive.snapshot import post_hook
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client

from .polling import eventually

pytestmark = [pytest.mark.services, pytest.mark.monitoring]

PROMETHEUS = f"http://127.0.0.1:{PROMETHEUS_PORT}"
ALERTMANAGER = f"http://127.0.0.1:{ALERTMANAGER_PORT}"
EVENTPIPE = str(Path(sys.executable).parent / "eventpipe")


@pytest.fixture(scope="module")
def monitoring() -> None:
    up(GROUPS["monitoring"])


@pytest.fixture(scope="module")
def pipeline_env(monitoring: None, stack_env: dict[str, str]) -> dict[str, str]:
    """What a task pod gets: the devstack settings plus the Pushgateway (in-process helpers read os.environ)."""
    return {**os.environ, **stack_env, "EVENTPIPE_PUSHGATEWAY_URL": pushgateway_url()}


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([EVENTPIPE, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert result.returncode == 0, f"eventpipe {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result


def _alerts(**labels: str) -> list[dict[str, Any]]:
    """Active alerts in Alertmanager whose labels include ``labels``."""
    response = httpx.get(
        f"{ALERTMANAGER}/api/v2/alerts",
        params={"filter": [f'{k}="{v}"' for k, v in labels.items()], "active": "true"},
        timeout=10.0,
    )
    response.raise_for_status()
    return [a for a in response.json() if a["status"]["state"] == "active"]


def _prometheus_alerts(alertname: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{PROMETHEUS}/api/v1/alerts", timeout=10.0)
    response.raise_for_status()
    return [a for a in response.json()["data"]["alerts"] if a["labels"]["alertname"] == alertname]


def _query(expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10.0)
    response.raise_for_status()
    return response.json()["data"]["result"]


def _delete_group(**grouping: str) -> None:
    path = "/".join(f"{k}/{v}" for k, v in grouping.items())
    httpx.delete(f"{pushgateway_url()}/metrics/job/eventpipe/{path}", timeout=10.0).raise_for_status()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_dead_letter_flood_fires_in_prometheus_and_reaches_alertmanager(
    pipeline_env: dict[str, str], topics: dict[str, str]
) -> None:
    """A producer emitting 20% malformed records: the drain dead-letters them and EventpipeDlqRateHigh fires."""
    up(("kafka", "elasticsearch"))
    start = utc("2026-06-01T00:00:00") + timedelta(hours=uuid.uuid4().int % 2000)
    config = GeneratorConfig(start, start + timedelta(hours=1), rate_per_s=0.2, malformed_rate=0.2, seed=13)
    produced = produce(_settings(pipeline_env), config, topics=topics, truth=False)
    assert produced.malformed > 0
    iot = topics["iot"]
    try:
        drained = json.loads(
            _cli(pipeline_env, "drain", "--start", start.isoformat(), "--end", config.end.isoformat(), "--topics", iot)
            .stdout.strip()
            .splitlines()[-1]
        )
        assert drained["dead_lettered"] / drained["consumed"] > 0.01

        alert = eventually(lambda: _alerts(alertname="EventpipeDlqRateHigh", topic=iot), "the alert in Alertmanager")
        assert alert[0]["labels"]["severity"] == "warning"
        assert alert[0]["annotations"]["summary"].endswith(
            f"of {iot} records of the last drain went to the dead-letter queue"
        )
        assert alert[0]["annotations"]["runbook_url"] == "docs/runbook.md#eventpipedlqratehigh"
        firing = [a for a in _prometheus_alerts("EventpipeDlqRateHigh") if a["labels"].get("topic") == iot]
        assert firing and firing[0]["state"] == "firing"
    finally:
        _delete_group(task="drain", topic=iot)
    eventually(lambda: not _alerts(alertname="EventpipeDlqRateHigh", topic=iot), "the alert resolving")


@pytest.fixture(scope="module")
def drained_day(pipeline_env: dict[str, str]) -> Iterator[tuple[date, dict[str, str]]]:
    """A small closed day (2023, which no other test uses) produced, drained and quiesced through the CLI."""
    from .test_archive import _forget_day

    up(("kafka", "elasticsearch", "s3"))
    settings = _settings(pipeline_env)
    day = date(2023, 1, 1) + timedelta(days=uuid.uuid4().int % 360)
    _forget_day(settings, day)
    tag = uuid.uuid4().hex[:8]
    topics = {"iot": f"test-{tag}.iot", "business": f"test-{tag}.business"}
    start, end = day_bounds(day)
    config = GeneratorConfig(start, end, rate_per_s=0.01, seed=17, malformed_rate=0.01)
    produce(settings, config, topics=topics, truth=False)
    names = ",".join(topics.values())
    _cli(pipeline_env, "drain", "--start", start.isoformat(), "--end", end.isoformat(), "--topics", names)
    _cli(pipeline_env, "archive", "quiesce", "--day", day.isoformat(), "--topics", names)
    yield day, topics
    for topic in topics.values():
        _delete_group(task="drain", topic=topic)
    post_hook(client(settings))  # idempotent: no write hold outlives a test whose snapshot-post failed
    _forget_day(settings, day)  # indices, manifests, snapshot and archive of the day


def test_failed_snapshot_fires_and_a_retake_resolves(
    pipeline_env: dict[str, str], drained_day: tuple[date, dict[str, str]]
) -> None:
    """The nightly snapshot cannot reach S3 (closed port): EventpipeSnapshotFailed reaches Alertmanager."""
    day = drained_day[0].isoformat()
    broken = {**pipeline_env, "EVENTPIPE_S3_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    # the alert has no per-test label: first see it absent, so an earlier run's alert cannot pass for this one
    eventually(lambda: not _alerts(alertname="EventpipeSnapshotFailed"), "no snapshot alert before the fault")
    _cli(pipeline_env, "archive", "snapshot-pre", "--day", day)
    try:
        failed = _cli(broken, "archive", "snapshot", "--day", day, check=False)
        assert failed.returncode == 1, failed.stderr[-2000:]  # S3 unreachable: transient, Airflow retries
        alert = eventually(lambda: _alerts(alertname="EventpipeSnapshotFailed"), "the alert in Alertmanager")
        assert alert[0]["labels"]["severity"] == "critical"
        _cli(pipeline_env, "archive", "snapshot", "--day", day)  # the retake an operator runs
    finally:
        _cli(pipeline_env, "archive", "snapshot-post", "--day", day)
    eventually(lambda: not _alerts(alertname="EventpipeSnapshotFailed"), "the alert resolving after the retake")


def _dashboard_exprs() -> list[str]:
    configmap = yaml.safe_load((REPO_ROOT / "deploy" / "grafana-dashboard.yaml").read_text())
    dashboard = json.loads(configmap["data"]["eventpipe.json"])
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_match_series_prometheus_receives(
    pipeline_env: dict[str, str], drained_day: tuple[date, dict[str, str]]
) -> None:
    """Run every producer of the dashboard's series, then evaluate each panel query in Prometheus.

    Drain, snapshot, archive write and verify run as CLI tasks. The two Airflow-side series come from
    the real failure callback and DAG-run listener, called here with a DAG id of this test.
    """
    day, topics = drained_day
    began = time.time()
    for task in ("snapshot", "archive", "verify"):  # unlabelled groups: reset, so only this run's pushes count
        _delete_group(task=task)
    _cli(pipeline_env, "archive", "snapshot-pre", "--day", day.isoformat())
    try:
        _cli(pipeline_env, "archive", "snapshot", "--day", day.isoformat())
    finally:
        _cli(pipeline_env, "archive", "snapshot-post", "--day", day.isoformat())
    _cli(pipeline_env, "archive", "write", "--day", day.isoformat())
    _cli(pipeline_env, "archive", "verify", "--day", day.isoformat())
    _cli(pipeline_env, "ledger", "--topics", ",".join(topics.values()))  # the offset ledger's panel

    dag = f"eventpipe_dashboard_test_{uuid.uuid4().hex[:8]}"
    sys.path.insert(0, str(REPO_ROOT / "plugins"))
    try:
        from eventpipe_plugin import DagRunMetrics

        from eventpipe.orchestration.callbacks import on_task_failure

        saved = os.environ.get("EVENTPIPE_PUSHGATEWAY_URL")
        os.environ["EVENTPIPE_PUSHGATEWAY_URL"] = pushgateway_url()
        try:
            on_task_failure({"ti": SimpleNamespace(dag_id=dag, task_id="drain"), "run_id": "test", "exception": "x"})
            DagRunMetrics().on_dag_run_failed(SimpleNamespace(dag_id=dag), "test")
        finally:
            if saved is None:
                os.environ.pop("EVENTPIPE_PUSHGATEWAY_URL")
            else:
                os.environ["EVENTPIPE_PUSHGATEWAY_URL"] = saved
    finally:
        sys.path.remove(str(REPO_ROOT / "plugins"))

    try:
        # every group of this run has been scraped after its push (the drains' topics are this run's own)
        for grouping, since in (
            *(({"task": "drain", "topic": t}, 0.0) for t in topics.values()),
            *(({"task": "ledger", "topic": t}, began) for t in topics.values()),
            ({"task": "snapshot"}, began),
            ({"task": "archive"}, began),
            ({"task": "verify"}, began),
            ({"task": "failure", "dag": dag, "failed_task": "drain"}, began),
            ({"task": "dagrun", "dag": dag}, began),
        ):
            selector = ",".join(f'{k}="{v}"' for k, v in {"job": "eventpipe", **grouping}.items())
            eventually(
                lambda s=selector, t=since: _query(f"push_time_seconds{{{s}}} > {t}"),
                f"a scrape of the push {{{selector}}}",
            )
        received = set(
            httpx.get(f"{PROMETHEUS}/api/v1/label/__name__/values", params={"start": began}, timeout=10.0).json()[
                "data"
            ]
        )
        exprs = _dashboard_exprs()
        used = {name for expr in exprs for name in re.findall(r"\beventpipe_[a-z_]+", expr)}
        assert used, "no eventpipe_* metric found in the dashboard"
        assert not used - received, f"dashboard metrics Prometheus never received: {sorted(used - received)}"
        ours = {*topics.values(), dag}
        for expr in exprs:
            result = _query(expr)
            assert result, f"dashboard query returns nothing: {expr}"
            grouped = re.search(r"by \(([^)]*)\)", expr)
            if grouped:  # per-topic / per-DAG panels: this run's label values are among the series
                keys = [k.strip() for k in grouped.group(1).split(",")]
                assert all(k in r["metric"] for r in result for k in keys), f"{expr} lost its {keys} labels"
                assert {r["metric"][keys[0]] for r in result} & ours, f"{expr} has no series of this run"
    finally:
        _delete_group(task="failure", dag=dag, failed_task="drain")
        _delete_group(task="dagrun", dag=dag)


def test_airflow_statsd_reaches_prometheus_with_mapped_labels(monitoring: None) -> None:
    """Airflow's own metrics client, configured by the devstack Airflow's environment, lands in Prometheus."""
    from devstack.airflow import Airflow

    env = {**os.environ, **Airflow().env()}
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
    assert env["EVENTPIPE_PUSHGATEWAY_URL"] == pushgateway_url()
    dag = f"eventpipe_statsd_test_{uuid.uuid4().hex[:8]}"
    emit = (
        "from airflow.sdk.observability import stats\n"
        f"stats.Stats.incr('ti.finish.{dag}.drain.failed')\n"
        f"stats.Stats.timing('dagrun.duration.success.{dag}', 1500)\n"
    )
    subprocess.run([sys.executable, "-c", emit], env=env, check=True, capture_output=True, timeout=120)
    finished = eventually(lambda: _query(f'airflow_ti_finish{{dag_id="{dag}"}}'), "airflow_ti_finish in Prometheus")
    assert finished[0]["metric"] | {"job": "airflow", "task_id": "drain", "state": "failed"} == finished[0]["metric"]
    duration = eventually(
        lambda: _query(f'airflow_dagrun_duration_seconds{{dag_id="{dag}",state="success",quantile="0.5"}}'),
        "airflow_dagrun_duration_seconds in Prometheus",
    )
    assert float(duration[0]["value"][1]) == 1.5  # StatsD milliseconds, exported in seconds
