"""Task defaults every eventpipe DAG shares; DAGs state only what differs (retries, timeout)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from eventpipe.orchestration.callbacks import on_task_failure

OWNER = "data-platform"


def default_args(
    *, retries: int, retry_delay: timedelta, execution_timeout: timedelta, backoff: bool = False
) -> dict[str, Any]:
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": backoff,
        "on_failure_callback": on_task_failure,
        "execution_timeout": execution_timeout,
    }
