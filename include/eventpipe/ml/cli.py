"""`eventpipe ml`: train the anomaly model on archived days, score a data interval with the champion."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from eventpipe.errors import InvalidArgument
from eventpipe.params import parse_interval, parse_optional_day
from eventpipe.results import emit
from eventpipe.settings import Settings

ml_app = typer.Typer(no_args_is_help=True, help=__doc__)


class ScoreSource(str, Enum):
    """Where scoring reads the interval's events (``eventpipe.ml.score.SOURCES``)."""

    elasticsearch = "elasticsearch"
    archive = "archive"


class ScoreEngine(str, Enum):
    """How hourly scoring runs (``eventpipe.ml.score.ENGINES``)."""

    auto = "auto"
    python = "python"
    spark = "spark"


@ml_app.command()
def train(
    days: Annotated[int, typer.Option("--days", help="Use the last N committed archive days (last = hold-out)")] = 0,
    since: Annotated[str, typer.Option("--since", help="First archive day to use, YYYY-MM-DD")] = "",
    until: Annotated[str, typer.Option("--until", help="Last archive day to use (hold-out), YYYY-MM-DD")] = "",
    truth_prefix: Annotated[str, typer.Option(help="S3 prefix of the ground-truth Parquet labels")] = "ground-truth/",
    seed: Annotated[int, typer.Option(help="Model seed (training is deterministic for a seed)")] = 42,
) -> None:
    """Train on committed archive days, register the version, promote it if it beats the champion."""
    from eventpipe.ml.train import TrainParams
    from eventpipe.ml.train import train as run

    if not days and not since:
        raise InvalidArgument("give --days N or --since YYYY-MM-DD")
    settings = Settings.from_env()
    result = run(
        settings,
        days=days or None,
        since=parse_optional_day(since, name="--since"),
        until=parse_optional_day(until, name="--until"),
        truth_prefix=truth_prefix,
        params=TrainParams(seed=seed),
    )
    emit("ml train", result)


@ml_app.command()
def score(
    start: Annotated[str, typer.Option("--start", help="Interval start, ISO-8601 (UTC if naive)")],
    end: Annotated[str, typer.Option("--end", help="Interval end (exclusive), ISO-8601")],
    source: Annotated[ScoreSource, typer.Option(help="Where the events come from")] = ScoreSource.elasticsearch,
    engine: Annotated[
        ScoreEngine, typer.Option(help="python (the champion's scorer.json, no JVM), spark (bulk rescoring), or auto")
    ] = ScoreEngine.auto,
) -> None:
    """Score the interval's events with the champion and write anomalies to Elasticsearch."""
    from eventpipe.ml.score import score as run

    lo, hi = parse_interval(start, end)
    emit("ml score", run(Settings.from_env(), lo, hi, source=source.value, engine=engine.value))


@ml_app.command("export-scorer")
def export_scorer(
    version: Annotated[int, typer.Option("--version", help="Model version; default: the champion")] = 0,
) -> None:
    """Write scorer.json (baseline + coefficients + threshold) for a version trained before it existed."""
    from eventpipe.ml.registry import Registry
    from eventpipe.sparkjobs.session import build_session

    settings = Settings.from_env()
    registry = Registry(settings)
    if not version:
        champion = registry.champion()
        if champion is None:
            raise InvalidArgument("no champion registered; give --version")
        version = champion.version
    artifact = registry.export_scorer(build_session(settings, "eventpipe-ml-export"), version)
    emit(
        "ml export-scorer",
        {"version": version, "threshold": artifact.threshold, "baseline_rows": len(artifact.baseline.hour)},
    )


@ml_app.command()
def explain(
    event_id: Annotated[str, typer.Option("--event-id", help="The event to explain")],
    version: Annotated[int, typer.Option("--version", help="Model version; default: the champion")] = 0,
) -> None:
    """Show a scored event's features and each one's contribution to its score, and the version's lineage."""
    from eventpipe.ml.explain import explain as run

    emit("ml explain", run(Settings.from_env(), event_id, version=version or None))
