"""`eventpipe`: the one command every task runs, in a Kubernetes pod or as a local process.

Arguments carry only the data interval and options; connection settings and secrets come
from the environment (see ``eventpipe.settings``).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Annotated

import typer

from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.ingest.topics import SOURCE_TOPICS
from eventpipe.results import emit
from eventpipe.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

Start = Annotated[str, typer.Option("--start", help="Interval start, ISO-8601 (UTC if naive)")]
End = Annotated[str, typer.Option("--end", help="Interval end (exclusive), ISO-8601")]
Topics = Annotated[str, typer.Option("--topics", help="Comma-separated source topics (default: all)")]


def _topics(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()] or list(SOURCE_TOPICS.values())


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)


def _interval(start: str, end: str) -> tuple[datetime, datetime]:
    lo, hi = utc(start), utc(end)
    if hi <= lo:
        raise typer.BadParameter(f"--end {end} must be after --start {start}")
    return lo, hi


@app.command()
def produce(
    start: Start,
    end: End,
    rate: Annotated[float, typer.Option(help="Events per second of event time")] = 10.0,
    devices: int = 50,
    business_share: float = 0.2,
    anomaly_rate: float = 0.01,
    malformed_rate: float = 0.002,
    seed: int = 7,
    realtime: Annotated[bool, typer.Option(help="Pace sends to the event clock")] = False,
    truth: Annotated[bool, typer.Option(help="Write anomaly ground truth to S3")] = True,
) -> None:
    """Generate a realistic event stream over [start, end) into Kafka."""
    from eventpipe.events.produce import produce as run

    lo, hi = _interval(start, end)
    config = GeneratorConfig(lo, hi, rate, devices, business_share, anomaly_rate, malformed_rate, seed)
    emit("produce", run(Settings.from_env(), config, realtime=realtime, truth=truth))


@app.command()
def drain(
    start: Start,
    end: End,
    topics: Topics = "",
    dry_run: Annotated[bool, typer.Option(help="Plan offset ranges only; write nothing")] = False,
    batch_size: int = 5000,
) -> None:
    """Drain the Kafka records of [start, end) into Elasticsearch; dead-letter the rest."""
    from eventpipe.ingest.drain import drain_interval
    from eventpipe.metrics import push

    lo, hi = _interval(start, end)
    settings = Settings.from_env()
    results = [drain_interval(settings, t, lo, hi, dry_run=dry_run, batch_size=batch_size) for t in _topics(topics)]
    for result in results:
        if not dry_run:
            push(
                settings,
                "drain",
                {
                    "records_drained": result.indexed,
                    "dlq_records": result.dead_lettered,
                    "kafka_lag_records": result.lag,
                    "bulk_latency_seconds": result.bulk_seconds / max(result.bulk_requests, 1),
                    "drain_seconds": result.seconds,
                },
                {"topic": result.topic},
            )
    emit(
        "drain",
        {
            "interval_start": lo.isoformat(),
            "interval_end": hi.isoformat(),
            "dry_run": dry_run,
            "consumed": sum(r.consumed for r in results),
            "indexed": sum(r.indexed for r in results),
            "dead_lettered": sum(r.dead_lettered for r in results),
            "touched_hours": sorted({h for r in results for h in r.touched_hours}),
            "topics": [r.as_dict() for r in results],
        },
    )


@app.command()
def rollup(start: Start, end: End, topics: Topics = "") -> None:
    """Recompute hourly rollups for every hour the interval's drains touched."""
    from eventpipe.ingest.elastic import client
    from eventpipe.ingest.manifest import ManifestStore
    from eventpipe.ingest.rollup import rollup_hours

    lo, hi = _interval(start, end)
    es = client(Settings.from_env())
    manifests = [m for t in _topics(topics) for m in ManifestStore(es).between(lo, hi, t)]
    incomplete = [m.doc_id for m in manifests if m.status != "complete"]
    if incomplete:
        raise typer.BadParameter(f"drains not complete for: {incomplete}")
    hours = {h for m in manifests for h in m.touched_hours}
    written = rollup_hours(es, hours)
    emit("rollup", {"interval_start": lo.isoformat(), "hours": len(hours), "rollup_documents": written})


@app.command()
def demo(
    day: Annotated[str, typer.Option(help="First day to produce, ingest and archive")] = "2026-01-15",
    days: Annotated[int, typer.Option(help="Number of days (the last one is the model's hold-out)")] = 3,
    rate: Annotated[float, typer.Option(help="Events per second of event time")] = 0.2,
) -> None:
    """Start everything; produce days; ingest, archive, train and score through Airflow; print a summary."""
    from datetime import date

    from eventpipe.demo import run_demo

    if days < 2:
        raise typer.BadParameter("--days must be at least 2 (training needs a hold-out day)")
    run_demo(date.fromisoformat(day), rate, days)


devstack = typer.Typer(no_args_is_help=True, help="Local Kafka, Elasticsearch, S3 server and Airflow as processes.")
app.add_typer(devstack, name="devstack")
Services = Annotated[str, typer.Option("--services", help="Comma-separated subset (default: all)")]


def _services(value: str, default: tuple[str, ...]) -> list[str]:
    from eventpipe.devstack.stack import SERVICES

    names = [n.strip() for n in value.split(",") if n.strip()] or list(default)
    unknown = sorted(set(names) - set(SERVICES) - {"spark"})
    if unknown:
        raise typer.BadParameter(f"unknown services {unknown}; known: {sorted(SERVICES)} and spark")
    return names


@devstack.command("install")
def devstack_install(services: Services = "") -> None:
    """Download and build every service (cached under .devstack/)."""
    from eventpipe.devstack.stack import DEFAULT_SERVICES, install

    emit("devstack install (seconds)", install(_services(services, (*DEFAULT_SERVICES, "spark"))))


@devstack.command("up")
def devstack_up(services: Services = "") -> None:
    """Start services (idempotent: healthy ones are left alone); kubernetes only when named."""
    from eventpipe.devstack.runtime import DevstackError
    from eventpipe.devstack.stack import DEFAULT_SERVICES, up

    try:
        emit("devstack up (seconds)", up(n for n in _services(services, DEFAULT_SERVICES) if n != "spark"))
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@devstack.command("k8s")
def devstack_k8s(
    build: Annotated[bool, typer.Option(help="Build and import the eventpipe image (cached by input hash)")] = True,
) -> None:
    """The kubernetes service plus what eventpipe pods need: host services on the pod bridge, the image
    (Debian base, no registry), CRDs, deploy/ and the Secrets. Idempotent; prints each step's time."""
    from eventpipe.devstack.k8s_deploy import prepare
    from eventpipe.devstack.runtime import DevstackError
    from eventpipe.devstack.stack import up

    try:
        emit("devstack k8s (seconds)", {**up(["kubernetes"]), **prepare(build=build)})
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@devstack.command("image")
def devstack_image() -> None:
    """Build the eventpipe image from the Debian base (skipped when its inputs are unchanged)."""
    from eventpipe.devstack.image import build_image
    from eventpipe.devstack.runtime import DevstackError

    try:
        emit("devstack image", build_image())
    except DevstackError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc


@devstack.command("down")
def devstack_down(services: Services = "") -> None:
    """Stop services started by `devstack up`."""
    from eventpipe.devstack.stack import SERVICES, down

    emit("devstack down", {"stopped": down(n for n in _services(services, tuple(SERVICES)) if n != "spark")})


@devstack.command("status")
def devstack_status(services: Services = "") -> None:
    """Health, pid and version of each service."""
    from rich.console import Console
    from rich.table import Table

    from eventpipe.devstack.stack import DEFAULT_SERVICES, status

    rows = status(n for n in _services(services, DEFAULT_SERVICES) if n != "spark")
    table = Table("service", "port", "pid", "healthy", "version", title="devstack")
    for row in rows:
        table.add_row(*(str(row[k]) for k in ("service", "port", "pid", "healthy", "version")))
    Console().print(table)
    if not all(row["healthy"] for row in rows):
        raise typer.Exit(1)


# Sub-command groups owned by their packages (one line each).
from eventpipe.archive.cli import app as archive_app  # noqa: E402

app.add_typer(archive_app, name="archive")
from eventpipe.ml.cli import ml_app  # noqa: E402

app.add_typer(ml_app, name="ml")
# -- end of sub-command groups

if __name__ == "__main__":
    app()
