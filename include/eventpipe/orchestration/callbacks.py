"""Failure callback: one structured log line operators can alert on, plus a pushed metric."""

from __future__ import annotations

import logging
from typing import Any

from eventpipe.metrics import push
from eventpipe.settings import Settings

log = logging.getLogger("eventpipe.alerts")


def on_task_failure(context: dict[str, Any]) -> None:
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    log.error(
        "eventpipe task failed dag=%s task=%s run=%s error=%s",
        dag_id,
        task_id,
        context.get("run_id"),
        context.get("exception"),
    )
    push(Settings.from_env(), "failure", {"task_failed": 1}, {"dag": dag_id, "failed_task": task_id})
