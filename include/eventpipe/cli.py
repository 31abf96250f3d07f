"""eventpipe: the one command every pipeline task runs, in a Kubernetes pod or as a local process.

Arguments carry only the data interval and options. Connection settings and secrets come from the
environment (docs/configuration.md). Run by hand in a checkout whose devstack is running, a command
that finds no S3 keys or connection settings in the environment uses the devstack's own, the ones
`eventpipe devstack env` prints, and says so on stderr.

Exit codes: 0 for success, 3 for a permanent failure that no retry can fix (an invalid argument, a
missing setting, a corrupt archive), anything else for a failure worth retrying.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer

from eventpipe.devstack_env import load_devstack_env, require_s3_keys
from eventpipe.errors import PERMANENT_EXIT_CODE, InvalidArgument, InvalidConfiguration, PermanentError
from eventpipe.events.generator import GeneratorConfig
from eventpipe.params import parse_instant, parse_interval, parse_topics
from eventpipe.results import emit
from eventpipe.settings import Settings

# click exits with 2 for a usage error (unknown option, a value outside an Enum, BadParameter)
USAGE_EXIT_CODE = 2


class ContractApp(typer.Typer):
    """The root command: maps permanent failures and usage errors to ``PERMANENT_EXIT_CODE``.

    Everything else keeps its exit code (1 for an unexpected exception), which the task paths retry.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except PermanentError as exc:
            if not isinstance(exc, InvalidArgument | InvalidConfiguration):  # its message says it all, not a stack
                traceback.print_exc(file=sys.stderr)
            print(f"eventpipe: permanent failure, not retried: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(exc.exit_code) from exc
        except SystemExit as exc:
            if exc.code == USAGE_EXIT_CODE:
                raise SystemExit(PERMANENT_EXIT_CODE) from exc
            raise


app = ContractApp(no_args_is_help=True, add_completion=False, help=__doc__)

Start = Annotated[str, typer.Option("--start", help="Interval start, ISO-8601 (UTC if naive)")]
End = Annotated[str, typer.Option("--end", help="Interval end (exclusive), ISO-8601")]
Topics = Annotated[str, typer.Option("--topics", help="Comma-separated source topics (default: all)")]


# Commands of the dev environment (they bring their own settings) and those that never touch S3.
DEVSTACK_COMMANDS = frozenset({"devstack", "demo"})
WITHOUT_S3 = frozenset({"rollup", "expand"})


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages too")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)


@app.command()
def setup() -> None:
    """Create index templates, topics, buckets and the snapshot repository (idempotent; first task of each DAG)."""
    from eventpipe.bootstrap import run_setup

    emit("setup", run_setup(Settings.from_env()))


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

    lo, hi = parse_interval(start, end)
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
    from eventpipe.metrics import push, push_shard_usage
    from eventpipe.storage.elastic import client
    from eventpipe.storage.shards import shard_usage

    lo, hi = parse_interval(start, end)
    settings = Settings.from_env()
    names = parse_topics(topics)
    results = [drain_interval(settings, t, lo, hi, dry_run=dry_run, batch_size=batch_size) for t in names]
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
    if not dry_run:
        es = client(settings)
        try:
            push_shard_usage(settings, shard_usage(es))  # the drain is what creates daily indices
        finally:
            es.close()
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
    from eventpipe.ingest.manifest import ManifestStore
    from eventpipe.ingest.rollup import rollup_hours
    from eventpipe.storage.elastic import client

    lo, hi = parse_interval(start, end)
    es = client(Settings.from_env())
    manifests = [m for t in parse_topics(topics) for m in ManifestStore(es).between(lo, hi, t)]
    incomplete = [m.doc_id for m in manifests if m.status != "complete"]
    if incomplete:
        # a drain of the interval still running (a concurrent rerun): transient, so retried
        raise RuntimeError(f"drains not complete for: {incomplete}")
    hours = {h for m in manifests for h in m.touched_hours}
    written = rollup_hours(es, hours)
    emit("rollup", {"interval_start": lo.isoformat(), "hours": len(hours), "rollup_documents": written})


@app.command()
def ledger(
    topics: Topics = "",
    dry_run: Annotated[bool, typer.Option(help="Only report uncovered offsets; drain nothing")] = False,
    max_records: Annotated[int, typer.Option(help="Most offsets one check drains (the rest: next run)")] = 1_000_000,
    batch_size: int = 5000,
) -> None:
    """Offset ledger: drain the Kafka offsets no complete drain manifest covers, then roll up their hours."""
    from eventpipe.ingest.ledger import check_ledger
    from eventpipe.ingest.rollup import rollup_hours
    from eventpipe.metrics import push
    from eventpipe.storage.elastic import client

    settings = Settings.from_env()
    results = [
        check_ledger(settings, t, dry_run=dry_run, max_records=max_records, batch_size=batch_size)
        for t in parse_topics(topics)
    ]
    hours = {parse_instant(h) for r in results for h in r.touched_hours}
    written = 0
    if hours:
        es = client(settings)
        try:
            written = rollup_hours(es, hours)
        finally:
            es.close()
    for result in results:
        push(
            settings,
            "ledger",
            {"ledger_uncovered_offsets": result.uncovered, "ledger_remaining_offsets": result.remaining},
            {"topic": result.topic},
        )
    emit(
        "ledger",
        {
            "dry_run": dry_run,
            "uncovered": sum(r.uncovered for r in results),
            "drained": sum(r.drained for r in results),
            "remaining": sum(r.remaining for r in results),
            "rollup_documents": written,
            "topics": [r.as_dict() for r in results],
        },
    )


# Sub-command groups owned by their packages (one line each).
from eventpipe.archive.cli import app as archive_app  # noqa: E402

app.add_typer(archive_app, name="archive")
from eventpipe.ml.cli import ml_app  # noqa: E402

app.add_typer(ml_app, name="ml")
from eventpipe.migrate.cli import migrate_app  # noqa: E402

app.add_typer(migrate_app, name="migrate")
from eventpipe.stateful.cli import app as storage_app  # noqa: E402

app.add_typer(storage_app, name="storage")
# -- end of sub-command groups


def _add_devstack() -> None:
    """`eventpipe devstack` and `eventpipe demo` come from the dev environment (``devstack/``).

    It is installed in a checkout only, never in task images, so the pipeline package does not depend on it.
    """
    try:
        from devstack.cli import register
    except ModuleNotFoundError as exc:
        if exc.name != "devstack":
            raise
        return
    register(app)


_add_devstack()


def _devstack_exports() -> Callable[[], dict[str, str]] | None:
    """What `eventpipe devstack env` prints, as a function; None where the dev environment is not installed."""
    try:
        from devstack.cli import devstack_env
    except ModuleNotFoundError as exc:
        if exc.name != "devstack":
            raise
        return None
    return devstack_env


def _settings_first(command: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` preceded by the settings check: after its arguments parsed, before any work."""

    @functools.wraps(callback)  # typer reads the parameters through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        load_devstack_env(_devstack_exports())  # a hand-run command in a checkout whose devstack runs
        if command not in WITHOUT_S3:
            require_s3_keys()
        return callback(*args, **kwargs)

    return run


def _check_settings_first(group: typer.Typer) -> None:
    """Every pipeline command checks its settings first (the devstack's own commands bring theirs)."""
    for info in group.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        if info.callback and name not in DEVSTACK_COMMANDS:
            info.callback = _settings_first(name, info.callback)
    for sub in group.registered_groups:
        if sub.name not in DEVSTACK_COMMANDS and sub.typer_instance is not None:
            _check_settings_first(sub.typer_instance)


_check_settings_first(app)


def plain_help(doc: str) -> str:
    """Help text from a docstring: RST literals as plain words, each paragraph one line for the terminal to wrap.

    Docstrings are written for code readers (``literals``, lines broken at the source width); `--help`
    shows them to operators, who should read sentences.
    """
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", inspect.cleandoc(doc))  # :class:`x` -> x
    text = text.replace("``", "")
    text = re.sub(r"^`eventpipe[^`]*`:\s*(\w)", lambda m: m.group(1).upper(), text)  # "`eventpipe ml`: x" -> "X"
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs if p.strip())


def _plain_help_everywhere(group: typer.Typer) -> None:
    """Every command's and group's help through ``plain_help`` (typer takes the docstring as it is)."""
    for info in group.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc:
            info.help = plain_help(doc)
    for sub in group.registered_groups:
        doc = typer.main.solve_typer_info_help(sub)
        if doc:
            sub.help = plain_help(doc)
        if sub.typer_instance is not None:
            _plain_help_everywhere(sub.typer_instance)


app.info.help = plain_help(__doc__ or "")
_plain_help_everywhere(app)

if __name__ == "__main__":
    app()
