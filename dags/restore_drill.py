"""Weekly restore drill: a snapshot into a scratch index and an archived day from S3, checked against the manifest."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from eventpipe.orchestration.command import TaskCommand
from eventpipe.orchestration.defaults import default_args
from eventpipe.orchestration.tasks import cli_task, setup_task, volume_snapshots_taken

with DAG(
    dag_id="eventpipe_restore_drill",
    description="Prove the backups restore: snapshot → scratch index, archive → scratch index, both vs manifest",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["eventpipe", "archive", "drill"],
    params={
        "day": Param("latest", type="string", description="Day to restore (YYYY-MM-DD) or 'latest' committed day"),
        "source": Param("both", enum=["both", "snapshot", "archive"], description="What to restore"),
    },
    default_args=default_args(retries=1, retry_delay=timedelta(minutes=5), execution_timeout=timedelta(hours=2)),
    doc_md="""
### Restore drill

Restores the chosen day (default: the latest committed archive day) twice — from its
Elasticsearch snapshot into `restore-eventpipe-events-…` and from its Parquet archive into
`restore-archive-eventpipe-events-…` — and fails unless both hold exactly the ids the day's
manifest lists. Scratch indices are replaced on every run.

Where the nightly snapshot takes VolumeSnapshots (`EVENTPIPE_VOLUME_SNAPSHOTS`), `restore_volumes`
also restores the Elasticsearch data claims from the day's VolumeSnapshots into a scratch StatefulSet and
fails unless it holds the day's documents as the live cluster and the manifest do; then the Kafka claims into a
scratch KRaft cluster in `kafka-restore`, failing unless every offset the night's pre-hook recorded is there.

For a real restore into a new cluster: `eventpipe archive restore --day D --source archive
--into eventpipe-events-YYYY.MM.DD` (see docs/runbook.md).
""",
) as dag:
    setup = setup_task()
    setup >> cli_task(
        "restore",
        TaskCommand(["archive", "restore", "--day", "{{ params.day }}", "--source", "{{ params.source }}"]),
        profile="archive",
    )
    if volume_snapshots_taken():
        setup >> cli_task("restore_volumes", TaskCommand(["archive", "restore-volumes", "--day", "{{ params.day }}"]))
