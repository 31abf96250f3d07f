"""`eventpipe demo`: the embedded default end to end, through the real Airflow.

Starts every local service, produces a few days of events (fixed days and seed, so a rerun
shows idempotency: same counts, nothing duplicated), and through Airflow's REST API runs the
ingest DAG and the nightly archive DAG for each day, the Spark ML training DAG on the archived
days, the restore drill of the last day (its snapshot and its archive, each checked against the
manifest), and the last day's ingest again so the new champion scores its events; then prints
what landed where.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone

import httpx
from rich.console import Console
from rich.table import Table

from devstack.stack import DATA_SERVICES, SERVICES, local_env, up
from eventpipe.archive.indices import day_bounds, day_index, late_index, snapshot_name
from eventpipe.archive.manifest import is_verified
from eventpipe.archive.manifest import load as load_manifest
from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.events.produce import ProduceResult, produce, truth_key
from eventpipe.settings import Settings
from eventpipe.storage.elastic import ANOMALY_INDEX, DLQ_INDEX, ROLLUP_INDEX, client, ensure_indices
from eventpipe.storage.s3 import s3_client

DEMO_DAY = date(2026, 1, 15)
console = Console(stderr=True)


@contextmanager
def settled_on_failure(api) -> Iterator[None]:
    """A demo that fails leaves its DAGs paused, as one that succeeds does: unpaused, the asset-scheduled
    training would start on its own and race the next demo. The failed runs stay, for their logs."""
    from devstack.airflow_api import AirflowApiError

    try:
        yield
    except BaseException:
        try:
            settled = api.settle()
            console.print(f"[red]demo failed[/]: paused {settled['paused']}, stopped {settled['failed']}")
        except (AirflowApiError, httpx.HTTPError) as exc:  # the demo's own failure is the one to raise
            console.print(f"[red]demo failed, and settling Airflow failed too: {exc}[/]")
        raise


def _run(api, dag_id: str, day: date | None, conf: dict[str, object], timeout: float) -> dict[str, object]:
    """Trigger the DAG for the day; on a rerun, clear the day's existing run instead (what an operator does)."""
    from devstack.airflow_api import AirflowApiError

    api.wait_for_dag(dag_id, timeout=180)
    api.unpause(dag_id)
    try:
        if day is None:  # not interval-bound (the asset-scheduled training)
            run_id = api.trigger(dag_id, conf=conf, run_id=f"demo__{uuid.uuid4().hex[:8]}").dag_run_id
        else:
            start, end = day_bounds(day)
            run_id = api.trigger(
                dag_id,
                conf=conf,
                logical_date=start,
                data_interval=(start, end),
                run_id=f"demo__{day.isoformat()}__{uuid.uuid4().hex[:6]}",
            ).dag_run_id
        console.print(f"[bold]{dag_id}[/] run {run_id} triggered; waiting …")
    except AirflowApiError as exc:
        if exc.status != 409 or day is None:
            raise
        stamp = day_bounds(day)[0].isoformat()
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
    succeeded = sum(state == "success" for state in states.values())
    return {
        "run_id": run_id,
        "seconds": round(time.perf_counter() - began, 1),
        "tasks": f"{succeeded}/{len(states)} ok",
    }


def already_produced(settings: Settings, config: GeneratorConfig) -> bool:
    """True when this devstack already holds these records: ``produce`` writes the ground truth last.

    (Kafka's time index cannot tell: it is monotonic, and the demo's past days were appended after
    later-stamped test records, so offsets_for_times finds nothing for them.)
    """
    from botocore.exceptions import ClientError

    try:
        s3_client(settings).head_object(Bucket=settings.s3.bucket, Key=truth_key(config))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}:
            return False
        raise
    return True


def clear_later_records(settings: Settings, end: datetime) -> None:
    """On the StatefulSets, start from a clean slate when a test or drill left records stamped after the
    demo's days in the pipeline's topics (``devstack.cluster.data_reset`` says why the demo needs that)."""
    from devstack.cluster.data_reset import later_records, reset_pipeline_data

    later = later_records(settings, end)
    if not later:
        return
    console.rule(f"the cluster's topics hold records stamped on or after {end:%Y-%m-%d} (a drill's?): resetting")
    reset = reset_pipeline_data(settings)
    console.print(
        f"deleted topics {reset.topics}, groups {reset.groups}, {len(reset.indices)} indices, "
        f"{reset.es_snapshots} Elasticsearch snapshots, objects {reset.objects}, "
        f"{len(reset.volume_snapshots)} VolumeSnapshots"
    )


def run_demo(
    first_day: date = DEMO_DAY,
    rate_per_s: float = 0.2,
    days: int = 3,
    execution: str = "local",
    *,
    start_devstack: bool = True,
    airflow_url: str = "http://127.0.0.1:8080",
    data: str = "host",
) -> dict[str, object]:
    """``execution="kubernetes"``: the same runs, every task a pod on the devstack cluster (started first).

    ``data="cluster"`` (with kubernetes): Kafka and Elasticsearch are the StatefulSets (``devstack k8s-stateful``,
    deployed first): the task pods use their Services, this process and Airflow's worker their node ports; topics
    get RF 3, indices 1 replica, and the nightly snapshot also takes VolumeSnapshots of their data claims
    (``devstack.cluster.stateful.data_env``). Archive and snapshot mirror go to buckets of their own.

    ``start_devstack=False``: start nothing, run against the stack the ``EVENTPIPE_*`` endpoints and ``airflow_url``
    point at (the docker compose stack), so both paths print the same summary from the same code.
    """
    import os

    from devstack.airflow import DATA_ENV, EXECUTION_ENV
    from devstack.airflow_api import AirflowClient

    if data not in {"host", "cluster"} or (data == "cluster" and execution != "kubernetes"):
        raise ValueError(f"data={data!r}: 'host', or 'cluster' with execution='kubernetes'")
    if data == "cluster":
        from devstack.cluster.stateful import data_env

        os.environ.update(data_env())  # this process reaches the StatefulSets on the node IP
    for key, value in local_env().items():  # plumbing: the demo sets the devstack's environment up
        os.environ.setdefault(key, value)
    os.environ[EXECUTION_ENV] = execution  # the devstack Airflow restarts if it runs the other mode
    os.environ[DATA_ENV] = data  # ... or the other data
    timings: dict[str, float] = {}
    if execution == "kubernetes":
        from devstack.cluster.deploy import prepare

        console.rule("starting the data services and the local Kubernetes cluster (tasks run as pods)")
        timings = {**up(DATA_SERVICES), **up(["kubernetes"]), **prepare()}
    if data == "cluster":
        from devstack.cluster.stateful import deploy_stateful

        console.rule("Kafka and Elasticsearch as StatefulSets on the cluster (the tasks' data services)")
        timings.update({f"stateful: {k}": v for k, v in deploy_stateful().items()})
    if start_devstack:
        console.rule("starting the embedded services")
        timings.update(up(SERVICES))
    else:
        console.rule(f"using the running stack: Airflow {airflow_url}, Kafka {os.environ['EVENTPIPE_KAFKA_BOOTSTRAP']}")
    settings = Settings.from_env()
    demo_days = [first_day + timedelta(days=n) for n in range(days)]
    start, end = day_bounds(demo_days[0])[0], day_bounds(demo_days[-1])[1]
    if data == "cluster":
        clear_later_records(settings, end)
    es = client(settings)
    ensure_indices(es, replicas=settings.elastic.replicas)

    config = GeneratorConfig(start, end, rate_per_s=rate_per_s, seed=20260115)
    if already_produced(settings, config):
        # a rerun: the days are in Kafka already; sending them again would only add duplicate records
        # (harmless for the events, whose ids are deterministic, but every malformed copy is a dead letter of its own)
        console.rule(f"{demo_days[0]} … {demo_days[-1]} already in Kafka: replaying the pipeline only")
        records = list(generate(config))
        malformed = sum(r.malformed is not None for r in records)
        produced = ProduceResult(len(records), len(records) - malformed, malformed, 0, {}, None, 0.0)
    else:
        console.rule(f"producing {demo_days[0]} … {demo_days[-1]} into Kafka (ground truth to S3)")
        produced = produce(settings, config)
    console.print(
        f"{produced.produced} records for these days ({produced.malformed} malformed, {produced.valid} valid)"
    )

    runs: dict[str, object] = {}
    with AirflowClient(airflow_url) as api, settled_on_failure(api):
        for day in demo_days:
            console.rule(f"{day}: ingest DAG (data interval = the day), then the nightly archive DAG")
            runs[f"ingest {day}"] = _run(api, "eventpipe_ingest", day, {}, timeout=1800)
            runs[f"archive {day}"] = _run(api, "eventpipe_archive_nightly", day, {"day": day.isoformat()}, 1800)
        console.rule("Spark ML training on the archived days (Airflow asset-scheduled DAG)")
        conf = {"days": days, "since": demo_days[0].isoformat(), "until": demo_days[-1].isoformat()}
        runs["train"] = _run(api, "eventpipe_train_anomaly_model", None, conf, timeout=3600)
        trained = api.xcom("eventpipe_train_anomaly_model", str(runs["train"]["run_id"]), "train")  # type: ignore[index]
        console.rule(f"restore drill of {demo_days[-1]}: its snapshot and its archive, each into a scratch index")
        drill_conf = {"day": demo_days[-1].isoformat(), "source": "both"}
        runs["restore drill"] = _run(api, "eventpipe_restore_drill", None, drill_conf, timeout=1800)
        drill = api.xcom("eventpipe_restore_drill", str(runs["restore drill"]["run_id"]), "restore")  # type: ignore[index]
        # --data cluster: the drill also brought the day's Elasticsearch claims back from their VolumeSnapshots
        volumes = (
            api.xcom("eventpipe_restore_drill", str(runs["restore drill"]["run_id"]), "restore_volumes")  # type: ignore[index]
            if data == "cluster"
            else None
        )
        console.rule(f"re-running the ingest of {demo_days[-1]}: the champion now scores its events")
        runs[f"ingest+score {demo_days[-1]}"] = _run(api, "eventpipe_ingest", demo_days[-1], {}, timeout=1800)
        # leave a known state: unpausing made the scheduler start each DAG's latest scheduled run (e.g. a
        # nightly archive of today, waiting on its sensor); pause the DAGs and stop those runs
        settled = api.settle()
        # those runs did none of the demo's work: deleted, so its Airflow shows only the demo's own (green) runs
        for ref in settled["failed"]:
            api.delete_dag_run(*ref.split("/", 1))

    s3 = s3_client(settings)
    lo_ms, hi_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)  # kafka_timestamp is epoch_millis
    es.indices.refresh(index=[DLQ_INDEX, ROLLUP_INDEX, ANOMALY_INDEX, *map(day_index, demo_days)])
    manifests = {day: load_manifest(s3, settings.s3.bucket, day) for day in demo_days}
    last_lo, last_hi = (t.isoformat() for t in day_bounds(demo_days[-1]))
    champion = trained.get("champion")
    summary = {
        "days": f"{demo_days[0]} … {demo_days[-1]}",
        "execution": execution,
        "data": "Kafka and Elasticsearch StatefulSets" if data == "cluster" else "devstack host processes",
        "services_up_seconds": timings,
        "produced": produced.produced,
        "valid": produced.valid,
        "malformed": produced.malformed,
        "indexed_in_elasticsearch": sum(
            es.count(index=[day_index(d), late_index(d)], ignore_unavailable=True)["count"] for d in demo_days
        ),
        "dead_letters": es.count(index=DLQ_INDEX, query={"range": {"kafka_timestamp": {"gte": lo_ms, "lt": hi_ms}}})[
            "count"
        ],
        "hourly_rollups": es.count(
            index=ROLLUP_INDEX, query={"range": {"hour": {"gte": start.isoformat(), "lt": end.isoformat()}}}
        )["count"],
        "snapshots": [snapshot_name(d) for d in demo_days],
        "archive_rows": {d.isoformat(): m.rows for d, m in manifests.items()},
        "archive_revisions": {d.isoformat(): m.revision for d, m in manifests.items()},
        "archive_verified": all(is_verified(s3, settings.s3.bucket, d) for d in demo_days),
        f"restored_{demo_days[-1]}": {
            **{source: drill[source]["documents"] for source in ("snapshot", "archive")},
            **({"volume_snapshots": volumes["documents"]} if volumes else {}),
        },
        "model": {
            "version": trained.get("version"),
            "champion": champion,
            "promoted": trained.get("promoted"),
            "holdout_f1": trained.get("evaluation", {}).get("f1"),
            # the same hold-out day, scored by the rules the model must beat (docs/anomalies.md)
            "baseline_f1": {name: b.get("f1") for name, b in trained.get("baselines", {}).items()},
            "recall_by_kind": trained.get("evaluation", {}).get("recall_by_kind"),
            "reason": trained.get("reason"),
        },
        f"anomalies_scored_{demo_days[-1]}": es.count(
            index=ANOMALY_INDEX,
            query={
                "bool": {
                    "filter": [
                        {"term": {"model_version": str(champion)}},
                        {"range": {"event_time": {"gte": last_lo, "lt": last_hi}}},
                    ]
                }
            },
        )["count"],
        "airflow_runs": runs,
        "left_paused": settled["paused"],
        "stopped_scheduled_runs": settled["failed"],
        "airflow_ui": f"{airflow_url}  (user admin, password admin)",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    table = Table(title="eventpipe demo", show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
    archived = sum(m.rows for m in manifests.values())
    restored_ok = all(drill[source]["matches"] for source in ("snapshot", "archive")) and (
        volumes is None or volumes["matches"]
    )
    ok = (
        summary["indexed_in_elasticsearch"] == produced.valid == archived
        and summary["archive_verified"]
        and restored_ok
    )
    if not ok or champion is None:
        raise SystemExit("demo finished but the counts do not line up or no champion model; see the table above")
    return summary
