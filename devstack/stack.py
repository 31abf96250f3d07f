"""The embedded default as one unit: install, start, stop and report every local service."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from devstack.elasticsearch import snapshot_root
from devstack.runtime import Service, pid_of, progress, stop_process, subdir

# name -> "module:Class"; start order matters (Airflow last: its tasks need the others).
SERVICES: dict[str, str] = {
    "kafka": "devstack.kafka:Kafka",
    "elasticsearch": "devstack.elasticsearch:ElasticsearchNode",
    "s3": "devstack.s3:S3Server",
    "postgres": "devstack.postgres:Postgres",  # Airflow's metadata database
    "airflow": "devstack.airflow:Airflow",
}
DATA_SERVICES = ("kafka", "elasticsearch", "s3")

# Opt-in: started only when named (`devstack up --services monitoring`, `make monitoring`); a bare
# `devstack up` and the demo start SERVICES. Order: the exporters and Alertmanager before Prometheus.
OPTIONAL_SERVICES: dict[str, str] = {
    # root, a long first build: the production path, task pods and Spark executors on a real cluster
    "kubernetes": "devstack.cluster.kubernetes:KubernetesCluster",
    "statsd-exporter": "devstack.monitoring:StatsdExporter",
    "pushgateway": "devstack.monitoring:Pushgateway",
    "alertmanager": "devstack.monitoring:Alertmanager",
    "prometheus": "devstack.monitoring:Prometheus",
}
GROUPS: dict[str, tuple[str, ...]] = {
    "monitoring": ("statsd-exporter", "pushgateway", "alertmanager", "prometheus"),
}

DEVSTACK_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "eventpipe", "AWS_SECRET_ACCESS_KEY": "eventpipe-secret"}


def service(name: str) -> Service:
    module, cls = {**SERVICES, **OPTIONAL_SERVICES}[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def expand(names: Iterable[str]) -> list[str]:
    """Service names with groups ("monitoring") replaced by their members, first occurrence kept."""
    out: list[str] = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            if member not in out:
                out.append(member)
    return out


def local_env() -> dict[str, str]:
    """Environment every local task and test uses to reach the devstack (pods get it from Kubernetes)."""
    return {
        "EVENTPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
        "EVENTPIPE_ES_URL": "http://127.0.0.1:9200",
        "EVENTPIPE_S3_ENDPOINT": "http://127.0.0.1:9000",
        "EVENTPIPE_S3_REGION": "us-east-1",
        "EVENTPIPE_ARCHIVE_BUCKET": "eventpipe-archive",
        "EVENTPIPE_EXECUTION": "local",
        # the devstack node has no repository-s3 module: fs repository under its path.repo, mirrored to S3
        "EVENTPIPE_SNAPSHOT_REPOSITORY_TYPE": "fs",
        "EVENTPIPE_SNAPSHOT_FS_LOCATION": str(snapshot_root() / "eventpipe-snapshots"),
        # the extra jars a local Spark needs (s3a, Kafka source), resolved by `devstack install`
        "EVENTPIPE_SPARK_JARS_DIR": str(subdir("spark", "jars")),
        **DEVSTACK_CREDENTIALS,
    }


def _install_one(name: str) -> float:
    began = time.perf_counter()
    progress(f"install {name} …")
    if name == "spark":
        from devstack.spark import spark_jars

        spark_jars()
    else:
        service(name).install()
    seconds = round(time.perf_counter() - began, 1)
    progress(f"install {name}: ready in {seconds}s")
    return seconds


# Install lanes run side by side; within a lane, in order. Maven-resolved services share one lane
# (one local repository, written by one mvn at a time); Airflow migrates into PostgreSQL.
INSTALL_LANES: tuple[tuple[str, ...], ...] = (
    ("kafka", "elasticsearch", "spark"),
    ("s3",),
    ("postgres", "airflow"),
)


def _lanes(names: list[str]) -> list[list[str]]:
    lanes = [[name for name in lane if name in names] for lane in INSTALL_LANES]
    lanes += [[name] for name in names if not any(name in lane for lane in INSTALL_LANES)]
    return [lane for lane in lanes if lane]


def install(names: Iterable[str]) -> dict[str, float]:
    """Download/build each service (cached); returns seconds per service and the wall time.

    A cold install is one long Go build (the S3 server) plus downloads and a database migration:
    run in parallel lanes, the others finish under the build instead of after it.
    """
    names = list(names)
    began = time.perf_counter()
    timings: dict[str, float] = {}

    def lane(members: list[str]) -> None:
        for name in members:
            timings[name] = _install_one(name)

    lanes = _lanes(names)
    with ThreadPoolExecutor(max_workers=len(lanes) or 1, thread_name_prefix="install") as pool:
        for future in [pool.submit(lane, members) for members in lanes]:
            future.result()
    if len(lanes) > 1:
        timings["wall"] = round(time.perf_counter() - began, 1)
    return {name: timings[name] for name in [*names, "wall"] if name in timings}


def up(names: Iterable[str]) -> dict[str, float]:
    """Start each service unless healthy already; returns seconds per service."""
    timings = {}
    for name in names:
        began = time.perf_counter()
        service(name).start()
        timings[name] = round(time.perf_counter() - began, 1)
    return timings


# Started on demand by another step, not by `devstack up`: the Docker daemon `devstack k8s` starts for image
# builds when none runs. Only one the devstack started has a pidfile, so one found running is never stopped.
HELPER_PROCESSES: dict[str, int | None] = {"dockerd": None}  # name -> port (dockerd: a unix socket)


def every_service() -> list[str]:
    """All services in start order: the defaults, then the opt-in ones (monitoring, kubernetes)."""
    return [*SERVICES, *OPTIONAL_SERVICES]


def running(name: str) -> bool:
    """Whether this devstack started ``name`` and it still runs (a live pidfile; the cluster: any component)."""
    if name == "kubernetes":
        from devstack.cluster.kubernetes import COMPONENTS, _proc

        return any(pid_of(_proc(c)) for c in COMPONENTS)
    return pid_of(name) is not None


def down(names: Iterable[str] | None = None) -> list[str]:
    """Stop the named services in reverse start order; None: everything this devstack started, helpers too."""
    chosen = every_service() if names is None else list(names)
    stopped = [name for name in reversed(chosen) if name not in HELPER_PROCESSES and service(name).stop()]
    helpers = HELPER_PROCESSES if names is None else [n for n in chosen if n in HELPER_PROCESSES]
    return stopped + [name for name in helpers if stop_process(name)]


def status(names: Iterable[str] | None = None) -> list[dict[str, object]]:
    """One row per service; None: the default services, and every opt-in service and helper that runs."""
    if names is None:
        names = [n for n in every_service() if n in SERVICES or running(n)]
        names += [n for n in HELPER_PROCESSES if running(n)]
    rows = []
    for name in names:
        if name in HELPER_PROCESSES:
            pid = pid_of(name)
            rows.append({"service": name, "port": HELPER_PROCESSES[name], "pid": pid, "healthy": pid is not None})
            rows[-1]["version"] = "?"
        else:
            rows.append(service(name).status())
    return rows
