"""Hourly drain of Kafka event topics into Elasticsearch, then hourly rollups."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param
from airflow.timetables.interval import CronDataIntervalTimetable

from eventpipe.events.topics import SOURCE_TOPICS
from eventpipe.orchestration.command import TaskCommand, plain_env
from eventpipe.orchestration.defaults import default_args
from eventpipe.orchestration.tasks import cli_task, execution_mode, setup_task
from eventpipe.sparkjobs.session import spark_task_env

INTERVAL = ["--start", "{{ data_interval_start.isoformat() }}", "--end", "{{ data_interval_end.isoformat() }}"]
TOPICS = ["--topics", "{{ params.topics | join(',') }}"]

with DAG(
    dag_id="eventpipe_ingest",
    description="Drain Kafka → Elasticsearch per hourly interval; dead letters; hourly rollups",
    # an explicit data-interval timetable: in Airflow 3 a cron string gives zero-length intervals
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["eventpipe", "ingest"],
    params={
        "topics": Param(list(SOURCE_TOPICS.values()), type="array", description="Source topics to drain"),
        "dry_run": Param(False, type="boolean", description="Only plan the offset ranges; write nothing"),
    },
    default_args=default_args(
        retries=3, retry_delay=timedelta(minutes=1), execution_timeout=timedelta(minutes=50), backoff=True
    ),
    doc_md="""
### Event ingest

Each run drains **exactly the Kafka records of its data interval** (per-partition offsets of
the interval's start and end timestamps, anchored to neighbouring drain manifests) into daily
`eventpipe-events-YYYY.MM.DD` indices, with the event id as document id: reruns and
backfills never duplicate. Invalid records and Elasticsearch rejections go to the
`events.dlq` topic and the `eventpipe-dlq` index with the reason. Consumer-group offsets
are committed only after Elasticsearch acknowledged every write.

`rollup` recomputes hourly per-device aggregates for every hour the drain touched
(late events included). `score` scores the interval's events with the champion anomaly
model (trained by `eventpipe_train_anomaly_model` on the archive; its exported `scorer.json`,
no Spark start-up) and writes anomalies to `eventpipe-anomalies`; without a champion it
reports `no_champion`.

`ledger` is the offset ledger: it drains Kafka offsets that no complete drain manifest covers
(left between intervals by a gap in the runs, e.g. a paused DAG or `catchup=False` after
downtime), indexes or dead-letters them, rolls up their hours and reports the count as
`eventpipe_ledger_uncovered_offsets`.

* **Trigger with config**: pick topics, or `dry_run` to only see the offset ranges.
* **Backfill**: `airflow backfill create --dag-id eventpipe_ingest --from-date … --to-date …`
* Task output (counts, offset ranges, dead letters) is in each task's log and XCom.
""",
) as dag:
    setup = setup_task()
    drain = cli_task(
        "drain",
        TaskCommand(["drain", *INTERVAL, *TOPICS, "{{ '--dry-run' if params.dry_run else '--no-dry-run' }}"]),
        profile="drain",
    )
    rollup = cli_task("rollup", TaskCommand(["rollup", *INTERVAL, *TOPICS]))
    # the champion anomaly model (trained on the archive) scores the interval's events;
    # with no champion yet the task reports so and succeeds
    score = cli_task(
        "score",
        TaskCommand(["ml", "score", *INTERVAL], env={**plain_env(), **spark_task_env(execution_mode())}),
        profile="spark-driver",
    )
    ledger = cli_task(
        "ledger",
        TaskCommand(["ledger", *TOPICS, "{{ '--dry-run' if params.dry_run else '--no-dry-run' }}"]),
        profile="drain",
    )
    setup >> drain >> [rollup, score, ledger]
