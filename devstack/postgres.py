"""PostgreSQL for the devstack Airflow's metadata, from Debian's ``postgresql`` package.

Airflow's scheduler, DAG processor, API server and CLI write to the metadata database at once;
SQLite refuses such writes with "database is locked", PostgreSQL (what production uses) does not.
The cluster lives under ``.devstack/postgres`` and listens on loopback only. PostgreSQL refuses
to run as root, so as root the server runs as Debian's ``postgres`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from devstack.runtime import DevstackError, Service, pid_of, port_open, start_process, subdir

PG_MAJOR = "15"  # Debian 12's postgresql
DATABASE = "airflow"
USER = "airflow"
PASSWORD = "airflow"  # devstack only: loopback, trust-free md5 auth inside a throwaway cluster


def _bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise DevstackError(
        f"PostgreSQL's {name} is missing; install Debian's server package: apt-get install -y postgresql"
    )


def _run_as() -> list[str]:
    """argv prefix that drops root to the ``postgres`` user (a non-root developer runs it as themself)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise DevstackError("running as root needs the 'postgres' user: apt-get install -y postgresql") from exc
    return ["runuser", "-u", "postgres", "--"]


class Postgres(Service):
    name = "postgres"
    port = 5433  # not 5432: leave the distribution's own cluster alone
    host = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return subdir("postgres") / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}:{PASSWORD}@{self.host}:{self.port}/{DATABASE}"

    def version(self) -> str:
        return PG_MAJOR

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def install(self) -> None:
        """initdb once (a cluster whose PG_VERSION exists is kept), then role and database on first start."""
        if not Path("/usr/lib/postgresql").exists():
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=False)
        initdb = _bin("initdb")
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        pwfile = self.data_dir.parent / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        result = subprocess.run(
            [
                *_run_as(),
                initdb,
                "-D",
                str(self.data_dir),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise DevstackError(f"initdb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def launch(self) -> None:
        argv = [
            *_run_as(),
            _bin("postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"port={self.port}",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            "max_connections=200",  # scheduler, API server, DAG processor, triggerer and every task process
            "-c",
            "fsync=off",  # a throwaway devstack database: durability across power loss is not needed
        ]
        start_process(self.name, argv)

    def healthy(self) -> bool:
        if not port_open(self.port, self.host):
            return False
        probe = subprocess.run(
            [_bin("psql"), "-h", self.host, "-p", str(self.port), "-U", USER, "-d", "postgres", "-tAc", "select 1"],
            env={**os.environ, "PGPASSWORD": PASSWORD},
            capture_output=True,
            text=True,
            check=False,
        )
        return probe.returncode == 0 and probe.stdout.strip() == "1"

    def start(self) -> None:
        super().start()
        self.ensure_database()

    def stop(self) -> bool:
        """Fast shutdown (SIGTERM would wait for every pooled client to disconnect)."""
        if pid_of(self.name) is not None and (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [*_run_as(), _bin("pg_ctl"), "-D", str(self.data_dir), "stop", "-m", "fast", "-w", "-t", "30"],
                capture_output=True,
                check=False,
            )
        return super().stop()

    def ensure_database(self) -> None:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        base = [_bin("psql"), "-h", self.host, "-p", str(self.port), "-U", USER, "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*base, f"select 1 from pg_database where datname='{DATABASE}'"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        if exists.stdout.strip() != "1":
            subprocess.run([*base, f"create database {DATABASE}"], env=env, capture_output=True, check=True)
