"""`eventpipe demo`: the embedded default end to end, through the real Airflow.

Starts every local service, produces one day of events (a fixed day and seed, so a rerun
shows idempotency: same counts, nothing duplicated), runs the ingest DAG over that day and
then the nightly archive DAG for it via Airflow's REST API, and prints what landed where.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import date, datetime, timezone

from rich.console import Console
from rich.table import Table

from eventpipe.archive.indices import day_bounds, day_index, late_index, snapshot_name
from eventpipe.archive.layout import manifest_key
from eventpipe.archive.verify import is_verified
from eventpipe.devstack.stack import SERVICES, local_env, up
from eventpipe.events.generator import GeneratorConfig
from eventpipe.events.produce import produce
from eventpipe.ingest.elastic import DLQ_INDEX, ROLLUP_INDEX, client, ensure_indices
from eventpipe.settings import Settings
from eventpipe.storage.s3 import s3_client

DEMO_DAY = date(2026, 1, 15)
console = Console(stderr=True)


def _run(api, dag_id: str, day: date, conf: dict[str, object], timeout: float) -> dict[str, object]:
    """Trigger the DAG for the day; on a rerun, clear the day's existing run instead (what an operator does)."""
    from eventpipe.devstack.airflow_api import AirflowApiError

    start, end = day_bounds(day)
    api.wait_for_dag(dag_id, timeout=180)
    api.unpause(dag_id)
    try:
        run_id = api.trigger(
            dag_id,
            conf=conf,
            logical_date=start,
            data_interval=(start, end),
            run_id=f"demo__{day.isoformat()}__{uuid.uuid4().hex[:6]}",
        ).dag_run_id
        console.print(f"[bold]{dag_id}[/] run {run_id} triggered; waiting …")
    except AirflowApiError as exc:
        if " 409 " not in str(exc):
            raise
        stamp = start.isoformat()
        run_id = api.dag_runs(dag_id, logical_date_gte=stamp, logical_date_lte=stamp)[0].dag_run_id
        api.request(
            "POST",
            f"/api/v2/dags/{dag_id}/clearTaskInstances",
            json={"dry_run": False, "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": True},
        )
        console.print(f"[bold]{dag_id}[/] already ran for {day}: cleared run {run_id} to rerun it; waiting …")
    began = time.perf_counter()
    time.sleep(3)  # let the scheduler pick the cleared/queued run up before polling its state
    finished = api.wait(dag_id, run_id, timeout=timeout, poll=3)
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(dag_id, run_id)}
    if finished.state != "success":
        raise SystemExit(f"{dag_id} run {run_id} ended {finished.state}: {states}")
    return {"run_id": run_id, "seconds": round(time.perf_counter() - began, 1), "tasks": states}


def run_demo(day: date = DEMO_DAY, rate_per_s: float = 0.2) -> dict[str, object]:
    import os

    from eventpipe.devstack.airflow_api import AirflowClient

    for key, value in local_env().items():
        os.environ.setdefault(key, value)
    console.rule("starting the embedded services")
    timings = up(SERVICES)
    settings = Settings.from_env()
    es = client(settings)
    ensure_indices(es)

    console.rule(f"producing {day} into Kafka")
    start, end = day_bounds(day)
    produced = produce(settings, GeneratorConfig(start, end, rate_per_s=rate_per_s, seed=20260115))
    console.print(
        f"produced {produced.produced} records ({produced.malformed} malformed, {produced.anomalies} anomalies)"
    )

    with AirflowClient() as api:
        console.rule("ingest DAG over the day (one run, data interval = the day)")
        ingest = _run(api, "eventpipe_ingest", day, {}, timeout=1800)
        console.rule("nightly archive DAG for the day")
        archive = _run(api, "eventpipe_archive_nightly", day, {"day": day.isoformat()}, timeout=1800)

    es.indices.refresh(index=[day_index(day), DLQ_INDEX, ROLLUP_INDEX], ignore_unavailable=True)
    s3 = s3_client(settings)
    manifest = json.loads(s3.get_object(Bucket=settings.archive_bucket, Key=manifest_key(day))["Body"].read())
    lo, hi = start.isoformat(), end.isoformat()
    lo_ms, hi_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)  # kafka_timestamp is epoch_millis
    summary = {
        "day": day.isoformat(),
        "services_up_seconds": timings,
        "produced": produced.produced,
        "valid": produced.valid,
        "malformed": produced.malformed,
        "indexed_in_elasticsearch": es.count(index=[day_index(day), late_index(day)], ignore_unavailable=True)["count"],
        "dead_letters": es.count(index=DLQ_INDEX, query={"range": {"kafka_timestamp": {"gte": lo_ms, "lt": hi_ms}}})[
            "count"
        ],
        "hourly_rollups": es.count(index=ROLLUP_INDEX, query={"range": {"hour": {"gte": lo, "lt": hi}}})["count"],
        "snapshot": snapshot_name(day),
        "archive_manifest": f"s3://{settings.archive_bucket}/{manifest_key(day)}",
        "archive_rows": manifest["rows"],
        "archive_files": len(manifest["files"]),
        "archive_revision": manifest["revision"],
        "archive_verified": is_verified(s3, settings.archive_bucket, day),
        "ingest_run": ingest,
        "archive_run": archive,
        "airflow_ui": "http://127.0.0.1:8080  (user admin, password admin)",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    table = Table(title="eventpipe demo", show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
    ok = summary["indexed_in_elasticsearch"] == produced.valid == manifest["rows"] and summary["archive_verified"]
    if not ok:
        raise SystemExit("demo finished but the counts do not line up; see the table above")
    return summary
