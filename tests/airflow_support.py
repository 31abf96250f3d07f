"""Shared by the Airflow tests: the devstack Airflow, its REST client and CLI backfills."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from devstack.airflow import Airflow
from devstack.airflow_api import AirflowClient, DagRun
from devstack.stack import up
from eventpipe.events.topics import ensure_topics
from eventpipe.settings import Settings

INGEST_DAG = "eventpipe_ingest"
ARCHIVE_DAG = "eventpipe_archive_nightly"


_settled = False


def start_airflow() -> Airflow:
    """Start (or reuse) the devstack Airflow, settled once per session into a known state.

    Whatever a demo or an earlier run left (unpaused DAGs, queued or running runs) is paused and
    stopped, so no stray run holds a DAG's active-run slot or competes for the two cores.
    """
    global _settled
    up(["airflow"])
    airflow = Airflow()
    if not _settled:
        with AirflowClient(airflow.url) as api:
            for dag_id in (INGEST_DAG, ARCHIVE_DAG):
                api.wait_for_dag(dag_id, timeout=180)
            api.settle()
        _settled = True
    return airflow


@contextmanager
def unpaused(api: AirflowClient, settings: Settings, *dag_ids: str) -> Iterator[AirflowClient]:
    """The DAGs parsed and unpaused (the scheduler runs nothing of a paused DAG, backfills included).

    Unpausing lets the scheduler start each DAG's latest scheduled run over the default topics; they
    must exist, or that run fails and holds the DAG's active-run slot through its retries. Each
    DAG's paused state is restored afterwards.
    """
    ensure_topics(settings)
    was_paused = {dag_id: bool(api.wait_for_dag(dag_id)["is_paused"]) for dag_id in dag_ids}
    for dag_id in dag_ids:
        api.unpause(dag_id)
    try:
        yield api
    finally:
        for dag_id, paused in was_paused.items():
            if paused:
                api.set_paused(dag_id, True)


def backfill(
    airflow: Airflow,
    api: AirflowClient,
    dag_id: str,
    first: datetime,
    last: datetime,
    *,
    conf: dict[str, Any] | None = None,
    reprocess: str | None = None,
    timeout: float = 900.0,
) -> tuple[dict[str, Any], list[DagRun]]:
    """`airflow backfill create` over logical dates [first, last], as an operator runs it; waits for completion.

    Returns the backfill and its runs. A backfill that does not complete in time is cancelled,
    so the next one (only one may run per DAG) is not refused.
    """
    args = ["backfill", "create", "--dag-id", dag_id, "--from-date", first.isoformat(), "--to-date", last.isoformat()]
    if conf is not None:
        args += ["--dag-run-conf", json.dumps(conf)]
    if reprocess:
        args += ["--reprocess-behavior", reprocess]
    known = {b["id"] for b in api.backfills(dag_id)}
    airflow.cli(*args)
    created = [b for b in api.backfills(dag_id) if b["id"] not in known]
    assert len(created) == 1, f"expected one new backfill, got {created}"
    try:
        done = api.wait_backfill(created[0]["id"], timeout=timeout)
    except TimeoutError:
        api.request("PUT", f"/api/v2/backfills/{created[0]['id']}/cancel")
        raise
    runs = api.dag_runs(dag_id, logical_date_gte=first.isoformat(), logical_date_lte=last.isoformat())
    return done, runs
