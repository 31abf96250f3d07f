"""Airflow 3 for the embedded default: ``airflow standalone`` on SQLite with LocalExecutor.

One process group (scheduler, dag-processor, triggerer, api-server) under ``.devstack/airflow``.
Tasks run as local processes (``EVENTPIPE_EXECUTION=local``) against the other devstack
services. The admin password is fixed (``admin``/``admin``) through the passwords file it
writes, so tests and the demo can log in without reading generated secrets.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version as dist_version
from pathlib import Path

import httpx

from eventpipe.devstack.runtime import REPO_ROOT, DevstackError, Service, start_process, subdir
from eventpipe.devstack.stack import local_env

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"  # devstack only: the API binds to 127.0.0.1
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per health poll otherwise


def airflow_home() -> Path:
    return subdir("airflow")


def _bin_dir() -> Path:
    """The venv's bin (not resolved: the venv python is a symlink), where airflow and eventpipe live."""
    return Path(sys.executable).parent


def airflow_bin() -> str:
    candidate = _bin_dir() / "airflow"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("airflow")
    if not found:
        raise DevstackError("the airflow command is missing; run `make setup` (pip install -r requirements.txt)")
    return found


class Airflow(Service):
    name = "airflow"
    port = 8080
    host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment of every Airflow process and of CLI calls against this instance."""
        home = airflow_home()
        env = {
            **local_env(),
            "PATH": f"{_bin_dir()}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            # 2 cores: a few task processes at once is the useful maximum
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        }
        if not os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            # busy timeout 60 s (driver default 5 s): CLI calls such as `airflow backfill create` write
            # while scheduler, DAG processor and API server hold the SQLite lock
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}?timeout=60"
        # Devstack monitoring (opt-in, `make monitoring`): tasks push to its Pushgateway, Airflow sends StatsD.
        from eventpipe.devstack.monitoring import monitoring_env

        env.update(monitoring_env())
        # Explicit AIRFLOW__* settings of the caller win (e.g. an external metadata database).
        env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__")})
        return env

    @property
    def passwords_file(self) -> Path:
        return airflow_home() / "simple_auth_manager_passwords.json"

    def version(self) -> str:
        return dist_version("apache-airflow")

    def cli(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this instance's home and database.

        The devstack's SQLite metadata database can refuse a write with "database is locked" when
        the scheduler writes at the same moment (SQLite fails lock upgrades at once, whatever the
        busy timeout); such a command is rolled back, so it is retried a few times.
        """
        env = {**os.environ, **self.env()}
        for attempt in range(4):
            result = subprocess.run(
                [airflow_bin(), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
            if result.returncode == 0 or "database is locked" not in result.stderr:
                break
            time.sleep(2 + 3 * attempt)
        if check and result.returncode != 0:
            raise DevstackError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def install(self) -> None:
        """Fixed admin password and a migrated metadata DB (cached per Airflow version and DB URL)."""
        self.passwords_file.write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))
        marker = airflow_home() / ".migrated"
        stamp = f"{self.version()} {self.env()['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']}"
        if marker.exists() and marker.read_text() == stamp:
            return
        self.cli("db", "migrate", timeout=900)
        marker.write_text(stamp)

    def launch(self) -> None:
        start_process(self.name, [airflow_bin(), "standalone"], env=self.env(), cwd=airflow_home())

    def health(self) -> dict[str, dict[str, object]]:
        response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5.0)
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        """Metadata DB, scheduler and DAG processor report healthy (what running a DAG needs)."""
        try:
            health = self.health()
        except (httpx.HTTPError, ValueError):
            return False
        return all(
            (health.get(component) or {}).get("status") == "healthy"
            for component in ("metadatabase", "scheduler", "dag_processor")
        )

    def start_timeout(self) -> float:
        return 300.0
