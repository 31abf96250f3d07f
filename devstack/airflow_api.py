"""A small client for Airflow 3's REST API (``/api/v2``), as the tests and the demo use it.

Authenticates like any API user: a JWT from ``POST /auth/token`` (SimpleAuthManager on the
devstack), refreshed once on 401.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from devstack.airflow import ADMIN_PASSWORD, ADMIN_USER

FINISHED = frozenset({"success", "failed"})


class DagRun(BaseModel):
    model_config = ConfigDict(extra="ignore")

    dag_id: str
    dag_run_id: str
    state: str
    run_type: str
    logical_date: datetime | None = None
    data_interval_start: datetime | None = None
    data_interval_end: datetime | None = None
    conf: dict[str, Any] | None = None


class AirflowApiError(RuntimeError):
    """An API call failed; ``status`` is the HTTP status (None when no response came), the message has the body."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


ACTIVE = frozenset({"queued", "running"})


class AirflowClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        username: str = ADMIN_USER,
        password: str = ADMIN_PASSWORD,
        timeout: float = 120.0,  # a loaded 2-core devstack can take tens of seconds per call
    ) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)
        self._credentials = {"username": username, "password": password}
        self._token: str | None = None

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def login(self) -> str:
        response = self._http.post("/auth/token", json=self._credentials)
        if response.status_code not in (200, 201):
            user = self._credentials["username"]
            raise AirflowApiError(
                f"login as {user} failed: {response.status_code} {response.text}", response.status_code
            )
        self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(2):
            token = self._token or self.login()
            response = self._http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            if response.status_code == 401 and attempt == 0:
                self._token = None
                continue
            if response.status_code >= 400:
                raise AirflowApiError(
                    f"{method} {path}: {response.status_code} {response.text[:2000]}", response.status_code
                )
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    # -- DAGs
    def dags(self, dag_id_pattern: str | None = None) -> list[dict[str, Any]]:
        params = {"limit": 100, **({"dag_id_pattern": dag_id_pattern} if dag_id_pattern else {})}
        return list(self.request("GET", "/api/v2/dags", params=params)["dags"])

    def dag(self, dag_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/v2/dags/{dag_id}"))

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Until the DAG processor has parsed and registered ``dag_id``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.dag(dag_id)
            except AirflowApiError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused}))

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self.set_paused(dag_id, False)

    # -- DAG runs
    def trigger(
        self,
        dag_id: str,
        *,
        conf: dict[str, Any] | None = None,
        logical_date: datetime | None = None,
        data_interval: tuple[datetime, datetime] | None = None,
        run_id: str | None = None,
    ) -> DagRun:
        """Trigger a run. A data interval is only honoured together with a logical date (Airflow 3)."""
        body: dict[str, Any] = {"logical_date": logical_date.isoformat() if logical_date else None, "conf": conf or {}}
        if data_interval:
            body["data_interval_start"], body["data_interval_end"] = (d.isoformat() for d in data_interval)
        if run_id:
            body["dag_run_id"] = run_id
        return DagRun.model_validate(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body))

    def dag_run(self, dag_id: str, run_id: str) -> DagRun:
        return DagRun.model_validate(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def dag_runs(self, dag_id: str, **filters: Any) -> list[DagRun]:
        params = {"limit": 100, "order_by": "-id", **filters}
        runs = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params)["dag_runs"]
        return [DagRun.model_validate(r) for r in runs]

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> DagRun:
        """Mark a run ``success``, ``failed`` or ``queued`` (what the UI's "Mark as" does)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        return DagRun.model_validate(self.request("PATCH", path, json={"state": state}))

    def delete_dag_run(self, dag_id: str, run_id: str) -> None:
        """Delete a run; Airflow 3 refuses (409) while it is running, so it is marked failed first."""
        if self.dag_run(dag_id, run_id).state == "running":
            self.set_run_state(dag_id, run_id, "failed")
        self.request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def settle(self, dag_id_pattern: str = "eventpipe_") -> dict[str, list[str]]:
        """A known state: every matching DAG paused and each of its queued or running runs marked failed.

        What an operator does before maintenance, and what tests start from after a demo left DAGs
        unpaused with a scheduled run waiting on a sensor. Returns what was paused and failed.
        """
        paused, failed = [], []
        for dag in self.dags(dag_id_pattern):
            dag_id = dag["dag_id"]
            if not dag["is_paused"]:
                self.set_paused(dag_id, True)
                paused.append(dag_id)
            for state in ACTIVE:
                for run in self.dag_runs(dag_id, state=state):
                    self.set_run_state(dag_id, run.dag_run_id, "failed")
                    failed.append(f"{dag_id}/{run.dag_run_id}")
        return {"paused": paused, "failed": failed}

    def wait(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 2.0) -> DagRun:
        """Until the run has finished (success or failed); raises TimeoutError with its task states."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run.state in FINISHED:
                return run
            if time.monotonic() > deadline:
                states = {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}
                raise TimeoutError(f"{dag_id}/{run_id} still {run.state} after {timeout:.0f}s; tasks: {states}")
            time.sleep(poll)

    # -- tasks, XCom, backfills
    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return list(self.request("GET", path, params={"limit": 100})["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.request("GET", path, params={"deserialize": "true"})["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """A task try's whole log as the UI shows it, one line per record (structured records as JSON)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        content = self.request("GET", path, params={"full_content": "true"}).get("content") or []
        if isinstance(content, str):
            return content
        return "\n".join(line.get("event", "") if isinstance(line, dict) else str(line) for line in content)

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", "/api/v2/backfills", params={"dag_id": dag_id, "limit": 100})["backfills"])

    def wait_backfill(self, backfill_id: int, timeout: float = 900.0, poll: float = 3.0) -> dict[str, Any]:
        """Until the scheduler marks the backfill completed (all its runs finished)."""
        deadline = time.monotonic() + timeout
        while True:
            backfill = dict(self.request("GET", f"/api/v2/backfills/{backfill_id}"))
            if backfill.get("completed_at"):
                return backfill
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} not completed after {timeout:.0f}s: {backfill}")
            time.sleep(poll)
