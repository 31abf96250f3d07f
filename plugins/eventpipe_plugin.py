"""Airflow plugin: publish DAG-run outcomes as Prometheus gauges for the pipeline's alerts.

`eventpipe_dag_last_success_timestamp{dag=...}` is what the "missing nightly archive"
alert watches; failures bump `eventpipe_dag_run_failed`. Runs only when a Pushgateway is set.
"""

from __future__ import annotations

import time

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from eventpipe.metrics import push
from eventpipe.settings import Settings


class DagRunMetrics:
    @hookimpl
    def on_dag_run_success(self, dag_run, msg: str) -> None:
        if dag_run.dag_id.startswith("eventpipe_"):
            push(Settings.from_env(), "dagrun", {"dag_last_success_timestamp": time.time()}, {"dag": dag_run.dag_id})

    @hookimpl
    def on_dag_run_failed(self, dag_run, msg: str) -> None:
        if dag_run.dag_id.startswith("eventpipe_"):
            push(Settings.from_env(), "dagrun", {"dag_run_failed": 1}, {"dag": dag_run.dag_id})


class EventpipePlugin(AirflowPlugin):
    name = "eventpipe"
    listeners = [DagRunMetrics()]
