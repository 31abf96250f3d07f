"""`eventpipe devstack status` (`make status`) fails only for what should run: on-demand services may be idle.

The rows are stubbed: what is under test is the exit-code rule, not the health checks (those run against
the real services in test_devstack.py).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import devstack.stack
from devstack.cli import app


def _row(service: str, *, pid: int | None, healthy: bool) -> dict[str, object]:
    return {"service": service, "port": 1, "pid": pid, "healthy": healthy, "version": "x"}


def _status(monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, object]], *args: str) -> int:
    monkeypatch.setattr(
        devstack.stack, "status", lambda names: [r for r in rows if names is None or r["service"] in names]
    )
    return CliRunner().invoke(app, ["status", *args]).exit_code


DATA_UP = [_row(name, pid=10 + n, healthy=True) for n, name in enumerate(("kafka", "elasticsearch", "s3"))]


def test_after_make_services_status_succeeds_with_airflow_and_postgres_not_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idle = [_row("postgres", pid=None, healthy=False), _row("airflow", pid=None, healthy=False)]
    assert _status(monkeypatch, [*DATA_UP, *idle]) == 0


def test_a_data_service_down_or_a_running_service_unhealthy_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka_down = [_row("kafka", pid=None, healthy=False), *DATA_UP[1:]]
    assert _status(monkeypatch, kafka_down) == 1
    wedged_airflow = [*DATA_UP, _row("airflow", pid=99, healthy=False)]
    assert _status(monkeypatch, wedged_airflow) == 1


def test_a_named_service_must_be_up(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _status(monkeypatch, [*DATA_UP, _row("airflow", pid=None, healthy=False)], "--services", "airflow") == 1
