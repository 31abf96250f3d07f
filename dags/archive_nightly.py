"""Nightly archive of a closed day: quiesce → snapshot (pre → take → post) → Parquet to S3 → verify → retention."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Param, TaskGroup
from airflow.timetables.interval import CronDataIntervalTimetable

from eventpipe.archive.quiesce import day_is_closed
from eventpipe.events.topics import SOURCE_TOPICS
from eventpipe.orchestration.assets import ARCHIVE_ASSET
from eventpipe.orchestration.command import TaskCommand
from eventpipe.orchestration.defaults import default_args
from eventpipe.orchestration.tasks import cli_task, setup_task

DAY = "{{ params.day or data_interval_start.strftime('%Y-%m-%d') }}"
TOPICS = "{{ params.topics | join(',') }}"

with DAG(
    dag_id="eventpipe_archive_nightly",
    description="Application-consistent snapshot and verified Parquet archive of each closed day",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # a run waiting for its day's ingest (sensor in reschedule mode) must not block a manual run for
    # another day; snapshot hooks of concurrent runs only touch the live indices, never a day's data
    max_active_runs=2,
    tags=["eventpipe", "archive"],
    params={
        "day": Param("", type="string", description="Archive this day (YYYY-MM-DD) instead of the run's data interval"),
        "topics": Param(list(SOURCE_TOPICS.values()), type="array", description="Topics whose drains must be complete"),
    },
    default_args=default_args(retries=2, retry_delay=timedelta(minutes=5), execution_timeout=timedelta(hours=3)),
    doc_md="""
### Nightly archive

For the closed day of the run's data interval (or the `day` given in the trigger form):

1. **wait_for_ingest** — every hourly ingest interval of the day has a complete drain manifest.
2. **quiesce** — flush and write-block `eventpipe-events-YYYY.MM.DD`.
3. **snapshot** group — `pre_hook` holds writes on the live indices (and, with VolumeSnapshots, records
   Kafka's end offsets and committed group offsets for the restore drill), `take` runs the
   Elasticsearch snapshot `eventpipe-YYYY.MM.DD` (S3 repository; CSI VolumeSnapshots of
   labelled PVCs on Kubernetes), `post_hook` lifts the hold **whatever happened**.
4. **write** — Parquet under a staging prefix, copied into `events/date=YYYY-MM-DD/`,
   committed by `_MANIFEST.json` written last (rows, time range, Kafka offsets, sha256 per file,
   snapshot names). SSE is requested on every object. Rerunning a day is a no-op.
5. **verify** — re-reads every file and matches checksums and ids against the manifest and
   Elasticsearch; marks the day verified and updates the `s3://eventpipe-archive/events` asset.
6. **late_sweep** — re-commits archived days whose late index gained events.
7. **retention** — deletes indices and snapshots past their age, only for verified days; with
   VolumeSnapshots on, keeps the newest `EVENTPIPE_SNAPSHOT_RETENTION_DAYS` nights of them (never one a
   restore is using).

Backfill: `airflow backfill create --dag-id eventpipe_archive_nightly --from-date … --to-date …`.
Restore: the `eventpipe_restore_drill` DAG or `eventpipe archive restore --day …`.
""",
) as dag:
    setup = setup_task()
    wait_for_ingest = PythonSensor(
        task_id="wait_for_ingest",
        python_callable=day_is_closed,
        op_kwargs={"day": DAY, "topics": TOPICS},
        mode="reschedule",
        poke_interval=300,
        timeout=int(timedelta(hours=6).total_seconds()),  # a timeout does not retry; ES errors do
    )
    quiesce = cli_task("quiesce", TaskCommand(["archive", "quiesce", "--day", DAY, "--topics", TOPICS]))
    with TaskGroup("snapshot") as snapshot:
        pre_hook = cli_task("pre_hook", TaskCommand(["archive", "snapshot-pre", "--day", DAY]))
        take = cli_task("take", TaskCommand(["archive", "snapshot", "--day", DAY]))
        post_hook = cli_task(
            "post_hook", TaskCommand(["archive", "snapshot-post", "--day", DAY]), trigger_rule="all_done", retries=5
        )
        pre_hook >> take >> post_hook
    volumes = "{{ (ti.xcom_pull(task_ids='snapshot.take') or {}).get('volume_snapshots', []) | join(',') }}"
    write = cli_task(
        "write", TaskCommand(["archive", "write", "--day", DAY, "--volume-snapshots", volumes]), profile="archive"
    )
    verify = cli_task(
        "verify", TaskCommand(["archive", "verify", "--day", DAY]), profile="archive", outlets=[ARCHIVE_ASSET]
    )
    late_sweep = cli_task("late_sweep", TaskCommand(["archive", "late-sweep"]), profile="archive")
    retention = cli_task("retention", TaskCommand(["archive", "retention", "--today", DAY]))

    setup >> wait_for_ingest >> quiesce >> snapshot
    [take, post_hook] >> write >> verify >> [late_sweep, retention]
