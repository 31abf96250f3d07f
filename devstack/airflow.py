"""Airflow 3 for the embedded default: its four components supervised, metadata in PostgreSQL, LocalExecutor.

api-server, scheduler, dag-processor and triggerer run as separate programs under supervisord
(the ``supervisor`` package), which restarts one that exits, with backoff while it keeps failing
at start, and logs each exit: a crashed scheduler comes back as the Helm chart's Deployment
would bring it back. The metadata database is the devstack PostgreSQL (``EVENTPIPE_AIRFLOW_DB=sqlite``
falls back to SQLite). Tasks run as local processes (``EVENTPIPE_EXECUTION=local``) against the
other devstack services, or, with ``EVENTPIPE_AIRFLOW_EXECUTION=kubernetes`` when it starts, as
KubernetesPodOperator pods on the devstack cluster (``make k8s`` first): the mode it runs in is recorded,
and asking for the other mode restarts it. The admin password is fixed (``admin``/``admin``) through the passwords
file, so tests and the demo can log in without reading generated secrets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import httpx

from devstack.postgres import Postgres
from devstack.runtime import (
    REPO_ROOT,
    DevstackError,
    Service,
    log_path,
    pid_of,
    progress,
    run_step,
    start_process,
    subdir,
)
from devstack.stack import local_env
from eventpipe.lifetime import child_preexec

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"  # devstack only: the API binds to 127.0.0.1
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# supervisord programs, each `airflow <name>`; the API server first (the others talk to it)
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SUPERVISED = (*COMPONENTS, "reaper")  # plus the event listener that cleans up after an exited component
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per health poll otherwise
# How the devstack Airflow runs tasks ("local" processes or "kubernetes" pods). Not EVENTPIPE_EXECUTION itself:
# tests and the demo export the local task environment (EVENTPIPE_EXECUTION=local) into their own process.
EXECUTION_ENV = "EVENTPIPE_AIRFLOW_EXECUTION"
# Where the kubernetes-mode tasks find Kafka and Elasticsearch: "host" (the devstack's processes, on the node IP)
# or "cluster" (the StatefulSets of `devstack k8s-stateful`; devstack.cluster.stateful.data_env).
DATA_ENV = "EVENTPIPE_AIRFLOW_DATA"


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

    def __init__(self, execution: str | None = None) -> None:
        self.execution = execution or os.environ.get(EXECUTION_ENV) or "local"
        if self.execution not in {"local", "kubernetes"}:
            raise DevstackError(f"{EXECUTION_ENV} must be 'local' or 'kubernetes', not {self.execution!r}")
        self.data = os.environ.get(DATA_ENV) or "host"
        if self.data not in {"host", "cluster"} or (self.data == "cluster" and self.execution != "kubernetes"):
            raise DevstackError(f"{DATA_ENV} must be 'host', or 'cluster' with kubernetes execution, not {self.data!r}")

    @property
    def mode(self) -> str:
        """What the running instance records: the execution mode, plus where the data lives when not the host."""
        return self.execution if self.data == "host" else f"{self.execution} data={self.data}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _execution_file(self) -> Path:
        return airflow_home() / "execution"

    def running_execution(self) -> str | None:
        """The mode the running Airflow was started with (None when it is not running)."""
        if pid_of(self.name) is None:
            return None
        return self._execution_file.read_text().strip() if self._execution_file.exists() else "local"

    def _task_env(self) -> dict[str, str]:
        """What tasks see: the local services, or (kubernetes) the pod view of them and the cluster's connection.

        In kubernetes mode the S3 keys are left out of Airflow's environment: pods get them from Secrets by name.
        """
        if self.execution == "local":
            return local_env()
        from devstack.cluster import deploy, podnet
        from devstack.cluster.kubernetes import kubeconfig

        if not (kubeconfig().exists() and podnet.present()):
            raise DevstackError("Airflow in kubernetes mode needs the devstack cluster: run `make k8s` first")
        env = {
            **deploy.task_env(),
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": deploy.kubernetes_connection(deploy.xcom_sidecar_image()),
        }
        if self.data == "cluster":
            from devstack.cluster.stateful import data_env

            env.update(data_env())
        return env

    def env(self) -> dict[str, str]:
        """Environment of every Airflow process and of CLI calls against this instance."""
        home = airflow_home()
        env = {
            **self._task_env(),
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
            # each task process parses its DAG file again; on 2 loaded cores with the Kubernetes provider
            # imported that took over the default 30 s (the task is then rescheduled, not run)
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        }
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.database_url()
        # Devstack monitoring (opt-in, `make monitoring`): tasks push to its Pushgateway, Airflow sends StatsD.
        from devstack.monitoring import monitoring_env

        env.update(monitoring_env())
        # Explicit AIRFLOW__* settings of the caller win (e.g. an external metadata database).
        env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__")})
        return env

    @staticmethod
    def uses_sqlite() -> bool:
        return os.environ.get("EVENTPIPE_AIRFLOW_DB", "postgres") == "sqlite"

    def database_url(self) -> str:
        """PostgreSQL by default; SQLite only when asked for (it refuses concurrent writes: "database is locked")."""
        if os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        if self.uses_sqlite():
            return f"sqlite:///{airflow_home() / 'airflow.db'}?timeout=60"
        return Postgres().url

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
            result = subprocess.run(  # ends with a killed devstack (eventpipe.lifetime)
                [airflow_bin(), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                preexec_fn=child_preexec(),
            )
            if result.returncode == 0 or "database is locked" not in result.stderr:
                break
            time.sleep(2 + 3 * attempt)
        if check and result.returncode != 0:
            raise DevstackError(f"airflow {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def install(self) -> None:
        """Fixed admin password and a migrated metadata DB (cached per Airflow version and DB URL)."""
        if self.database_url().startswith("postgresql") and not os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            Postgres().start()
        self.passwords_file.write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))
        marker = airflow_home() / ".migrated"
        stamp = f"{self.version()} {self.env()['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']}"
        if marker.exists() and marker.read_text() == stamp:
            return
        result = run_step(
            [airflow_bin(), "db", "migrate"],
            "airflow: migrating the metadata database",
            env={**os.environ, **self.env()},
        )
        if result.returncode != 0:
            raise DevstackError(f"airflow db migrate failed:\n{result.stderr[-4000:]}")
        marker.write_text(stamp)

    @property
    def supervisor_socket(self) -> Path:
        return airflow_home() / "supervisor.sock"

    def supervisor_config(self) -> Path:
        """supervisord's config: one program per component, each restarted when it exits."""
        lines = [
            "[unix_http_server]",
            f"file={self.supervisor_socket}",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{self.supervisor_socket}",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={log_path('airflow-supervisord')}",
            f"pidfile={airflow_home() / 'supervisord.pid'}",
            f"directory={airflow_home()}",
        ]
        for program in COMPONENTS:
            lines += [
                f"[program:{program}]",
                f"command={airflow_bin()} {program}",
                "autostart=true",
                "autorestart=true",  # exited for any reason -> started again
                "startsecs=5",  # an exit sooner counts as a failed start: retried with growing delay (backoff)
                "startretries=20",
                "stopasgroup=true",
                "killasgroup=true",
                "stopwaitsecs=30",
                "redirect_stderr=true",
                f"stdout_logfile={log_path(f'airflow-{program}')}",
                "stdout_logfile_maxbytes=50MB",
                "stdout_logfile_backups=2",
            ]
        lines += [  # kills what an exited component left behind before supervisord restarts it
            "[eventlistener:reaper]",
            f"command={sys.executable} -m devstack.reaper",
            "events=PROCESS_STATE_EXITED",
            "autorestart=true",
            f"stderr_logfile={log_path('airflow-reaper')}",
        ]
        config = airflow_home() / "supervisord.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> None:
        """As every service, plus: running in the other execution mode means a restart in the asked one."""
        running = self.running_execution()
        if running is not None and running != self.mode:
            progress(f"airflow: running {running} tasks; restarting it to run {self.mode} tasks")
            self.stop()
        super().start()

    def launch(self) -> None:
        self._execution_file.write_text(self.mode)
        self.supervisor_socket.unlink(missing_ok=True)
        supervisord = str(_bin_dir() / "supervisord")
        if not Path(supervisord).exists():
            raise DevstackError("supervisord is missing; run `make setup` (pip install -r requirements-dev.txt)")
        start_process(self.name, [supervisord, "-c", str(self.supervisor_config())], env=self.env(), cwd=airflow_home())

    def _supervisor(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def components(self) -> dict[str, dict[str, Any]]:
        """Each component's supervisor state (RUNNING, BACKOFF, FATAL, ...), pid and start time; {} if down."""
        try:
            infos = self._supervisor().getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return {}
        return {info["name"]: info for info in infos}

    def stop(self) -> bool:
        """Stop the components through supervisord (TERM, then KILL of each group after 30 s), then supervisord.

        Killing supervisord's own process group is not enough: each component runs in a group of its own.
        """
        components = self.components()
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self._supervisor().stopAllProcesses(True)
        for info in components.values():  # whatever survived (e.g. supervisord died mid-stop)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if info.get("pid"):
                    os.killpg(int(info["pid"]), signal.SIGKILL)
        return super().stop()

    def recover(self) -> None:
        """Start again any component supervisord gave up on (FATAL after its retries) or that was stopped."""
        for name, info in self.components().items():
            if info["statename"] in {"FATAL", "STOPPED", "EXITED"}:
                logging.getLogger(__name__).warning("airflow %s is %s: starting it again", name, info["statename"])
                self._supervisor().startProcess(name, False)

    def health(self) -> dict[str, dict[str, object]]:
        response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5.0)
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        """Every supervised component RUNNING, and metadata DB, scheduler, DAG processor and triggerer healthy."""
        components = self.components()
        if set(components) != set(SUPERVISED) or any(c["statename"] != "RUNNING" for c in components.values()):
            return False
        try:
            health = self.health()
        except (httpx.HTTPError, ValueError):
            return False
        return all(
            (health.get(component) or {}).get("status") == "healthy"
            for component in ("metadatabase", "scheduler", "dag_processor", "triggerer")
        )

    def start_timeout(self) -> float:
        return 300.0

    def status(self) -> dict[str, object]:
        row = super().status()
        components = self.components()
        row["components"] = {name: info["statename"] for name, info in components.items()}
        row["execution"] = self.running_execution()
        return row
