"""Retrain the anomaly model whenever the archive commits a verified day."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from eventpipe.orchestration.assets import ARCHIVE_ASSET
from eventpipe.orchestration.command import TaskCommand, plain_env
from eventpipe.orchestration.defaults import default_args
from eventpipe.orchestration.tasks import cli_task, execution_mode, setup_task
from eventpipe.sparkjobs.session import spark_task_env

with DAG(
    dag_id="eventpipe_train_anomaly_model",
    description="Spark ML anomaly model: train on archived days, register, promote if better",
    schedule=[ARCHIVE_ASSET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # registry versions are numbered by the run that writes them
    tags=["eventpipe", "ml", "spark"],
    params={
        "days": Param(
            14, type="integer", minimum=2, description="Train on the last N committed days (last = hold-out)"
        ),
        "since": Param("", type="string", description="Only days from this one (YYYY-MM-DD); empty = no bound"),
        "until": Param("", type="string", description="Only days up to this one, the hold-out (YYYY-MM-DD)"),
        "seed": Param(42, type="integer", description="Model seed; the same data and seed give the same model"),
    },
    default_args=default_args(retries=2, retry_delay=timedelta(minutes=5), execution_timeout=timedelta(hours=2)),
    doc_md="""
### Anomaly model training

Runs each time the nightly archive verifies a day (Airflow Asset `s3://eventpipe-archive/events`).

**train** (`eventpipe ml train --days N [--since D --until D]`) reads the last *N* committed archive days through
their manifests, builds robust per-(device type, metric, hour-of-day) deviation features,
fits a Spark ML logistic-regression pipeline on all days but the last, evaluates precision/recall/F1 on the
last day, and registers the version under `s3://eventpipe-archive/models/anomaly/v=NNNN/`
(model, baseline, `metrics.json`, `lineage.json` with the days' manifest sha256).
The version becomes champion (`champion.json`) only if its F1 on the hold-out beats the
current champion's F1 **on the same hold-out** by `EVENTPIPE_PROMOTION_MARGIN` (default 0.01).

The task pod (profile `spark-driver`) is the Spark driver; on Kubernetes it starts executor
pods (`EVENTPIPE_SPARK_*` settings, service account `eventpipe-spark`). The result (version,
F1, promoted or not and why) is in the task log and XCom. Scoring runs in the ingest DAG.
""",
) as dag:
    setup = setup_task()
    train = cli_task(
        "train",
        TaskCommand(
            [
                "ml",
                "train",
                "--days",
                "{{ params.days }}",
                "--since",
                "{{ params.since }}",
                "--until",
                "{{ params.until }}",
                "--seed",
                "{{ params.seed }}",
            ],
            env={**plain_env(), **spark_task_env(execution_mode())},
        ),
        profile="spark-driver",
    )
    setup >> train
