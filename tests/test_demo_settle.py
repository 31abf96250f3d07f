"""A demo that fails leaves Airflow settled (unit tests of error handling: the API is a stand-in)."""

from __future__ import annotations

import pytest

from devstack.airflow_api import AirflowApiError
from devstack.demo import settled_on_failure


class SettleRecorder:
    """Records ``settle`` calls; ``fails`` makes the call itself fail, as an Airflow that went away would."""

    def __init__(self, fails: bool = False) -> None:
        self.calls = 0
        self.fails = fails

    def settle(self) -> dict[str, list[str]]:
        self.calls += 1
        if self.fails:
            raise AirflowApiError("GET /api/v2/dags: 503 Service Unavailable", status=503)
        return {"paused": ["eventpipe_train_anomaly_model"], "failed": ["eventpipe_ingest/demo__2026-01-15__abc"]}


def test_a_failed_demo_pauses_the_dags_and_raises_its_own_error() -> None:
    api = SettleRecorder()
    with pytest.raises(TimeoutError, match="eventpipe_ingest/demo__x still running"), settled_on_failure(api):
        raise TimeoutError("eventpipe_ingest/demo__x still running after 1800s")
    assert api.calls == 1


def test_when_settling_fails_too_the_demo_error_is_still_the_one_raised() -> None:
    api = SettleRecorder(fails=True)
    with pytest.raises(KeyboardInterrupt), settled_on_failure(api):
        raise KeyboardInterrupt
    assert api.calls == 1


def test_a_demo_that_succeeds_settles_nothing_here() -> None:
    api = SettleRecorder()
    with settled_on_failure(api):
        pass
    assert api.calls == 0  # run_demo settles a successful run itself, and deletes the runs it left
