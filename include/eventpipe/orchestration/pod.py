"""The pod operator every eventpipe task uses: KubernetesPodOperator plus the failure contract.

The provider fails a pod whose container exited non-zero with a plain ``AirflowException``, which
Airflow retries. When the base container exited with ``eventpipe.errors.PERMANENT_EXIT_CODE`` the
failure is re-raised as ``AirflowFailException``: the task fails at once, as it does locally.
``cleanup`` is where the provider inspects the finished pod, in the sync and the deferrable path.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from eventpipe.errors import is_permanent


def container_exit_code(remote_pod: Any, container: str) -> int | None:
    """Exit code of ``container`` in a finished pod, or None while it has not terminated."""
    status = getattr(remote_pod, "status", None)
    for entry in (status.container_statuses if status else None) or []:
        if entry.name == container and entry.state and entry.state.terminated:
            return entry.state.terminated.exit_code
    return None


class EventpipePodOperator(KubernetesPodOperator):
    def cleanup(self, pod: Any, remote_pod: Any, xcom_result: dict | None = None, context: Any = None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowSkipException:
            raise
        except AirflowException as exc:
            code = container_exit_code(remote_pod, self.base_container_name)
            if is_permanent(code):
                note = f"container exited with {code}: a permanent failure, not retried"
                raise AirflowFailException(f"{exc}\n{note}") from exc
            raise
