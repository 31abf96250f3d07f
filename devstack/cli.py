"""`eventpipe devstack …`: the embedded services as local processes (install, up, down, status, env)."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from devstack.runtime import DevstackError
from devstack.stack import DATA_SERVICES, GROUPS, OPTIONAL_SERVICES, SERVICES, expand
from eventpipe.errors import InvalidArgument
from eventpipe.params import parse_day
from eventpipe.results import emit

app = typer.Typer(
    no_args_is_help=True, help="Local Kafka, Elasticsearch, S3 server, PostgreSQL and Airflow as processes."
)
Services = Annotated[str, typer.Option("--services", help="Comma-separated subset (default: all)")]
Cluster = Annotated[
    str,
    typer.Option(
        "--cluster",
        help="Cluster identity: source (the devstack's cluster) or target (a second one, for migration drills); "
        "default: $EVENTPIPE_K8S_CLUSTER or source",
    ),
]


def _select_cluster(name: str) -> None:
    """Make ``name`` this process's cluster identity; must run before any ``devstack.cluster`` import."""
    import os
    import sys

    if not name:
        return
    if name not in ("source", "target"):
        raise typer.BadParameter(f"--cluster {name!r}: source or target")
    loaded = sys.modules.get("devstack.cluster.node")
    if loaded is not None and loaded.CLUSTER.name != name:  # type: ignore[attr-defined]
        raise typer.BadParameter(f"--cluster {name}: this process already talks to {loaded.CLUSTER.name}")  # type: ignore[attr-defined]
    os.environ["EVENTPIPE_K8S_CLUSTER"] = name


def _services(value: str, default: tuple[str, ...]) -> list[str]:
    """Named services (groups such as "monitoring" expanded), or ``default``; opt-in ones only when named."""
    names = expand(n.strip() for n in value.split(",") if n.strip()) or list(default)
    known = {*SERVICES, *OPTIONAL_SERVICES}
    unknown = sorted(set(names) - known - {"spark"})
    if unknown:
        raise typer.BadParameter(f"unknown services {unknown}; known: {sorted(known)}, spark and {sorted(GROUPS)}")
    return names


def _running(value: str) -> list[str]:
    """The named services that run as processes (spark is a library: installed, never started)."""
    return [n for n in _services(value, tuple(SERVICES)) if n != "spark"]


@app.command("install")
def install(services: Services = "") -> None:
    """Download and build every service (cached under .devstack/)."""
    from devstack.stack import install

    try:
        emit("devstack install (seconds)", install(_services(services, (*SERVICES, "spark"))))
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("up")
def up(services: Services = "") -> None:
    """Start services (idempotent: healthy ones are left alone, unhealthy ones repaired or restarted)."""
    from devstack.stack import up

    try:
        emit("devstack up (seconds)", up(_running(services)))
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("k8s")
def k8s(
    build: Annotated[bool, typer.Option(help="Build and import the eventpipe image (cached by input hash)")] = True,
    csi: Annotated[
        bool, typer.Option(help="Host-path CSI driver, provisioner and external-snapshotter (real VolumeSnapshots)")
    ] = True,
    cluster: Cluster = "",
) -> None:
    """The kubernetes service plus what eventpipe pods need: host services on the pod bridge, the image
    (Debian base, no registry), CRDs, CSI volumes and snapshots, deploy/ and the Secrets. Idempotent; prints
    each step's time."""
    _select_cluster(cluster)
    from devstack.cluster.deploy import prepare
    from devstack.stack import up

    try:
        emit("devstack k8s (seconds)", {**up(["kubernetes"]), **prepare(build=build, csi=csi)})
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("k8s-stateful")
def k8s_stateful(
    build: Annotated[bool, typer.Option(help="Build the Kafka and Elasticsearch images (cached by inputs)")] = True,
    cluster: Cluster = "",
) -> None:
    """Kafka and Elasticsearch as StatefulSets on the cluster (deploy/stateful through its devstack overlay), on
    encrypted CSI volumes; after `devstack k8s`. Waits until every pod is Ready; prints each step's time."""
    _select_cluster(cluster)
    from devstack.cluster.stateful import deploy_stateful

    try:
        emit("devstack k8s-stateful (seconds)", deploy_stateful(build=build))
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("image")
def image() -> None:
    """Build the eventpipe image from the Debian base (skipped when its inputs are unchanged)."""
    from devstack.cluster.image import build_image

    try:
        emit("devstack image", build_image())
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


images = typer.Typer(no_args_is_help=True, help="Container images built without a registry (Debian rootfs).")
app.add_typer(images, name="images")


@images.command("build")
def images_build(
    names: Annotated[
        list[str] | None, typer.Argument(help="eventpipe, kafka, elasticsearch, s3, postgres (default: all)")
    ] = None,
) -> None:
    """Build the images (each skipped when its inputs are unchanged); prints each one's tag and time."""
    from devstack.images import build

    try:
        emit("devstack images build", build(names or []))
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("compose")
def compose() -> None:
    """Build Docker Compose (pinned) from the Go module proxy as a CLI plugin under the devstack; prints how to
    use it (`docker --config <dir> compose`, or DOCKER_CONFIG=<dir>)."""
    from devstack.compose import build, config_dir

    try:
        emit("devstack compose", {**build(), "docker_config": str(config_dir())})
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@app.command("down")
def down(services: Services = "", cluster: Cluster = "") -> None:
    """Stop every service this devstack started: the default ones, monitoring, the cluster, and a Docker daemon
    it started for image builds (one it found running stays). With --services: only those. The cluster stopped
    is the one --cluster names (its state is kept)."""
    _select_cluster(cluster)
    from devstack.stack import down

    emit("devstack down", {"stopped": down(_running(services) if services else None)})


@app.command("migrate")
def migrate(
    precopy: Annotated[
        bool, typer.Option(help="Ship a pre-copy pass while ingest runs (only the delta paused)")
    ] = True,
    rate: Annotated[float, typer.Option(help="Events per second of event time while the drill ingests")] = 200.0,
    interval_s: Annotated[int, typer.Option(help="Length of one ingest interval (paced to the clock)")] = 30,
    before: Annotated[int, typer.Option(help="Intervals ingested on the source before the move")] = 2,
    after: Annotated[int, typer.Option(help="Intervals ingested on the target after the move")] = 3,
    restore_source: Annotated[
        bool, typer.Option(help="At the end: target down, source up again (the devstack's home cluster)")
    ] = True,
    size_gb: Annotated[
        float | None, typer.Option(help="Trim the claims, then fill them to about this much data (GB)")
    ] = None,
    archive: Annotated[
        bool, typer.Option(help="Archive and verify the day of the move on the target (the nightly archive's steps)")
    ] = True,
) -> None:
    """The migration drill: Kafka and Elasticsearch move from the source cluster to the target (cloud snapshots,
    restore, verify, switch) with live ingest; then the exact offset accounting. Needs the source cluster and its
    StatefulSets up. Exit 3 when verification failed and the pipeline rolled back to the source."""
    from devstack.migration import EXIT_ROLLED_BACK
    from devstack.migration_drill import drill

    size = int(size_gb * 1e9) if size_gb else None
    result = drill(precopy=precopy, rate=rate, interval_s=interval_s, before=before, after=after,
                   restore_source=restore_source, size=size, archive=archive)  # fmt: skip
    emit("devstack migrate", {k: v for k, v in result.items() if k != "intervals"})
    outcome = result["migration"]["outcome"]
    if outcome != "migrated":
        typer.secho(f"migration {outcome}: {result['migration'].get('error') or result['migration']['differences']}",
                    fg="red", err=True)  # fmt: skip
        raise typer.Exit(EXIT_ROLLED_BACK if outcome == "rolled back" else 1)
    if not result.get("accounting", {}).get("exact", False):
        typer.secho("offset accounting is not exact after the move", fg="red", err=True)
        raise typer.Exit(1)
    if archive and not (result.get("archive") or {}).get("verified"):
        typer.secho(f"the archive of the day across the move did not verify: {result.get('archive')}", fg="red",
                    err=True)  # fmt: skip
        raise typer.Exit(1)


@app.command("status")
def status(services: Services = "") -> None:
    """Health, pid and version of each service and of every process the devstack started, and the state of each
    Airflow component. Fails when a started service is unhealthy (or a named one); a service started on demand
    (Airflow, PostgreSQL) may be not started."""
    from rich.console import Console
    from rich.table import Table

    from devstack.stack import status

    rows = status(_running(services) if services else None)
    table = Table("service", "port", "pid", "healthy", "version", "components", title="devstack")
    failing = []
    for row in rows:
        components = row.get("components") or {}
        detail = ", ".join(f"{name} {state}" for name, state in components.items())  # type: ignore[union-attr]
        # Airflow and PostgreSQL start on demand (demo, tests, `devstack up`): in the overview, not running is
        # no failure; a data service down, a running service unhealthy or a named service down is.
        idle = not services and row["pid"] is None and row["service"] not in DATA_SERVICES
        healthy = "not started" if idle and not row["healthy"] else str(row["healthy"])
        if not row["healthy"] and not idle:
            failing.append(row["service"])
        table.add_row(*(str(row[k]) for k in ("service", "port", "pid")), healthy, str(row["version"]), detail)
    Console().print(table)
    if failing:
        typer.secho(f"unhealthy: {', '.join(failing)}", fg="red", err=True)
        raise typer.Exit(1)


@app.command("env")
def env() -> None:
    """Shell exports for the `airflow` CLI and `eventpipe` commands against the devstack.

    Use: eval "$(eventpipe devstack env)"; then `airflow backfill create …` talks to the devstack's
    metadata database and DAGs instead of creating a stray ~/airflow.
    """
    for key, value in sorted(devstack_env().items()):
        typer.echo(f"export {key}={shlex.quote(value)}")


def devstack_env() -> dict[str, str]:
    """What `eventpipe devstack env` exports; a hand-run `eventpipe` loads the same (eventpipe.devstack_env)."""
    from devstack.airflow import Airflow

    return Airflow().env()


def demo(
    day: Annotated[str, typer.Option(help="First day to produce, ingest and archive")] = "2026-01-15",
    days: Annotated[int, typer.Option(help="Number of days (the last one is the model's hold-out)")] = 3,
    rate: Annotated[float, typer.Option(help="Events per second of event time")] = 0.2,
    execution: Annotated[
        str, typer.Option(help="local: tasks as processes; kubernetes: tasks as pods on the devstack cluster")
    ] = "local",
    devstack: Annotated[
        bool, typer.Option(help="Start the process devstack first; --no-devstack: use a running stack (docker compose)")
    ] = True,
    airflow_url: Annotated[str, typer.Option(help="Airflow API of the stack")] = "http://127.0.0.1:8080",
    data: Annotated[
        str,
        typer.Option(
            help="host: Kafka and Elasticsearch are the devstack's processes; cluster (with --execution kubernetes): "
            "their StatefulSets on the cluster (deployed first), RF 3, VolumeSnapshots of their claims nightly"
        ),
    ] = "host",
) -> None:
    """Start everything; produce days; ingest, archive, train and score through Airflow; print a summary."""
    from devstack.demo import run_demo

    if days < 2:
        raise InvalidArgument("--days must be at least 2 (training needs a hold-out day)")
    if execution not in {"local", "kubernetes"}:
        raise InvalidArgument("--execution must be local or kubernetes")
    if execution == "kubernetes" and not devstack:
        raise InvalidArgument("--execution kubernetes runs on the process devstack's cluster: drop --no-devstack")
    if data not in {"host", "cluster"}:
        raise InvalidArgument("--data must be host or cluster")
    if data == "cluster" and execution != "kubernetes":
        raise InvalidArgument(
            "--data cluster runs the tasks as pods beside the StatefulSets: add --execution kubernetes"
        )
    run_demo(parse_day(day), rate, days, execution, start_devstack=devstack, airflow_url=airflow_url, data=data)


def register(root: typer.Typer) -> None:
    """Hook the dev environment into the ``eventpipe`` CLI: ``eventpipe devstack …`` and ``eventpipe demo``."""
    root.add_typer(app, name="devstack")
    root.command("demo")(demo)
