"""The README's shell blocks, executed verbatim against the devstack, so the docs cannot drift.

Every shell block in README.md and docs/*.md is either run here (``<!-- readme-test: NAME -->`` above it)
or marked ``<!-- readme-test: skip: REASON -->`` with the reason it cannot run in the test suite.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta

import pytest
from elasticsearch import Elasticsearch

from devstack.airflow import Airflow
from devstack.airflow_api import FINISHED, AirflowClient, DagRun
from devstack.runtime import REPO_ROOT, wait_until
from eventpipe.events.generator import GeneratorConfig, generate, utc
from eventpipe.events.topics import SOURCE_TOPICS
from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS

from .airflow_support import INGEST_DAG

pytestmark = [pytest.mark.airflow, pytest.mark.services, pytest.mark.slow]

BLOCK = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) -->\n```bash\n(?P<body>.*?)```", re.DOTALL)
SHELL_FENCE = re.compile(r"^```(?:bash|sh|shell|console)\s*$")
MARKER = re.compile(r"^<!-- readme-test: (?:(?P<name>[\w-]+)|skip: (?P<reason>\S.*\S)) -->$")
RUN_HERE = {"backfill", "trigger", "clear"}  # the README blocks the tests below execute
# the laptop-with-Docker blocks: run verbatim by tests/test_compose.py (make test-compose: root, Docker, opt-in)
RUN_BY_COMPOSE_TEST = {"compose-env", "compose-up", "compose-restart", "compose-down"}
HOURS = (utc("2026-03-02T00:00"), utc("2026-03-02T03:00"))  # what the README's blocks produce and backfill


def readme_blocks() -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer((REPO_ROOT / "README.md").read_text())}


def run_block(name: str) -> subprocess.CompletedProcess[str]:
    """Run one README block as a user pastes it: bash, in the repo, in an environment free of devstack settings."""
    # the session's devstack (EVENTPIPE_DEVSTACK_HOME, when tests run against another checkout's) is kept
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "EVENTPIPE_")) or k == "EVENTPIPE_DEVSTACK_HOME"
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_blocks()[name]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"README block {name!r} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def api(airflow: Airflow) -> Iterator[AirflowClient]:
    with AirflowClient(airflow.url) as client:
        yield client
        client.set_paused(INGEST_DAG, True)


def _hourly_runs(api: AirflowClient) -> list[DagRun]:
    start, end = HOURS
    runs = api.dag_runs(INGEST_DAG, logical_date_gte=start.isoformat(), logical_date_lte=end.isoformat())
    return sorted(
        (r for r in runs if r.data_interval_start and r.data_interval_start < end), key=lambda r: r.dag_run_id
    )


def _all_finished(api: AirflowClient) -> bool:
    runs = _hourly_runs(api)
    return len(runs) == 3 and all(r.state in FINISHED for r in runs)


def _drain_try(api: AirflowClient, run: DagRun) -> int:
    (drain,) = [ti for ti in api.task_instances(INGEST_DAG, run.dag_run_id) if ti["task_id"] == "drain"]
    return int(drain["try_number"])


def _indexed(es: Elasticsearch) -> tuple[int, int]:
    start, end = HOURS
    es.indices.refresh(index=[EVENTS_ALIAS, DLQ_INDEX])
    window = {"range": {"event_time": {"gte": start.isoformat(), "lt": end.isoformat()}}}
    topics = {"terms": {"kafka.topic": sorted(SOURCE_TOPICS.values())}}
    indexed = es.count(index=EVENTS_ALIAS, query={"bool": {"filter": [window, topics]}})["count"]
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    in_hours = {"range": {"kafka_timestamp": {"gte": lo, "lt": hi}}}
    of_topics = {"terms": {"source_topic": sorted(SOURCE_TOPICS.values())}}  # not another test's letters
    dead = es.count(index=DLQ_INDEX, query={"bool": {"filter": [in_hours, of_topics]}})["count"]
    return indexed, dead


def test_readme_has_the_airflow_cli_blocks() -> None:
    blocks = readme_blocks()
    assert set(blocks) >= {"backfill", "trigger", "clear"}
    assert all('eval "$(eventpipe devstack env)"' in blocks[name] for name in RUN_HERE)


def test_readme_airflow_cli_blocks_run_verbatim(api: AirflowClient, es: Elasticsearch) -> None:
    # the README's produce command, as data: what the backfilled hours must hold
    valid = sum(
        r.malformed is None for r in generate(GeneratorConfig(*HOURS, rate_per_s=0.2, malformed_rate=0.0, seed=7))
    )
    known = {b["id"] for b in api.backfills(INGEST_DAG)}

    run_block("backfill")
    created = [b for b in api.backfills(INGEST_DAG) if b["id"] not in known]
    assert len(created) == 1, created
    api.wait_backfill(created[0]["id"], timeout=900)
    runs = _hourly_runs(api)
    assert [(r.data_interval_start, r.data_interval_end) for r in runs] == [
        (HOURS[0] + timedelta(hours=i), HOURS[0] + timedelta(hours=i + 1)) for i in range(3)
    ]
    assert all(r.state == "success" for r in runs), [(r.dag_run_id, r.state) for r in runs]
    assert _indexed(es) == (valid, 0)

    before = {r.dag_run_id for r in api.dag_runs(INGEST_DAG, run_type="manual")}
    run_block("trigger")
    wait_until(
        lambda: bool({r.dag_run_id for r in api.dag_runs(INGEST_DAG, run_type="manual")} - before),
        timeout=60,
        name="airflow",
        what="the triggered run",
    )
    (triggered,) = [r for r in api.dag_runs(INGEST_DAG, run_type="manual") if r.dag_run_id not in before]
    assert triggered.conf == {"dry_run": True}
    assert api.wait(INGEST_DAG, triggered.dag_run_id, timeout=600).state == "success"

    tries = {r.dag_run_id: _drain_try(api, r) for r in runs}
    run_block("clear")
    wait_until(lambda: _all_finished(api), timeout=900, name="airflow", what="the cleared runs rerun")
    rerun = _hourly_runs(api)
    assert [r.dag_run_id for r in rerun] == [r.dag_run_id for r in runs]
    assert all(r.state == "success" for r in rerun)
    assert all(_drain_try(api, r) > tries[r.dag_run_id] for r in rerun)  # really run again
    assert _indexed(es) == (valid, 0)  # replayed, nothing duplicated


def test_every_shell_block_is_run_or_marked_with_a_reason() -> None:
    """A shell block a user would paste either runs in this suite or says why it cannot."""
    unmarked, names = [], set()
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        lines = path.read_text().splitlines()
        inside = False
        for number, line in enumerate(lines):
            if line.startswith("```"):
                if not inside and SHELL_FENCE.match(line):
                    marker = MARKER.match(lines[number - 1]) if number else None
                    if marker is None:
                        unmarked.append(f"{path.relative_to(REPO_ROOT)}:{number + 1}")
                    elif marker["name"]:
                        assert path.name == "README.md", f"{path}: only README blocks run here"
                        names.add(marker["name"])
                inside = not inside
    assert unmarked == []
    assert names == RUN_HERE | RUN_BY_COMPOSE_TEST  # each named block is run by a test, and each test's block exists
