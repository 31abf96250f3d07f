"""`eventpipe archive …`: the nightly archive's steps, each a pure function of its day."""

from __future__ import annotations

from datetime import date
from enum import Enum
from typing import Annotated

import typer

from eventpipe.errors import InvalidArgument
from eventpipe.params import parse_day, parse_topics, split_csv
from eventpipe.results import emit
from eventpipe.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Quiesce, snapshot, archive to S3, verify, retention, restore.")
Day = Annotated[str, typer.Option("--day", help="The closed day, YYYY-MM-DD (or an ISO timestamp in it)")]


def _context(day: str | None = None):
    from eventpipe.storage.elastic import client

    settings = Settings.from_env()
    es = client(settings)
    return settings, es, settings.archive, (parse_day(day) if day else date.today())


@app.command()
def quiesce(
    day: Day,
    topics: Annotated[str, typer.Option(help="Comma-separated source topics that must be fully drained")] = "",
    require_closed: Annotated[bool, typer.Option(help="Fail unless every interval of the day drained")] = True,
) -> None:
    """Check every ingest interval of the day completed, then flush and write-block the day's index."""
    from eventpipe.archive.quiesce import quiesce_day

    _, es, _, when = _context(day)
    emit("archive quiesce", quiesce_day(es, when, parse_topics(topics), require_closed=require_closed))


@app.command("snapshot-pre")
def snapshot_pre(day: Day) -> None:
    """Pre-hook: hold writes on the live indices and flush what the snapshot will contain.

    With VolumeSnapshots on, it then records Kafka's end offsets and committed group offsets (inside the hold,
    so the ingest group's are frozen): what a restore of the Kafka claims is checked against.
    """
    from eventpipe.archive.snapshot import pre_hook

    settings, es, cfg, when = _context(day)
    result = pre_hook(es, when)
    if cfg.volume_snapshots:
        from eventpipe.archive.kafka_positions import record_positions, save_positions
        from eventpipe.storage.s3 import ensure_bucket, s3_client

        positions = record_positions(settings.kafka.bootstrap, when)
        ensure_bucket(settings, cfg.snapshot_bucket)
        extra = {"ServerSideEncryption": cfg.sse} if cfg.sse else {}
        key = save_positions(s3_client(settings), cfg.snapshot_bucket, positions, **extra)
        result["kafka_positions"] = {
            "key": f"s3://{cfg.snapshot_bucket}/{key}",
            "topics": len(positions.end_offsets),
            "partitions": positions.partitions,
            "groups": len(positions.groups),
        }
    emit("snapshot pre-hook", result)


@app.command()
def snapshot(day: Day) -> None:
    """Elasticsearch snapshot of the day (+ CSI VolumeSnapshots on Kubernetes when enabled)."""
    from eventpipe.archive.snapshot import take_snapshot
    from eventpipe.metrics import push

    settings, es, cfg, when = _context(day)
    try:
        result = take_snapshot(settings, es, cfg, when)
    except Exception:
        push(settings, "snapshot", {"snapshot_failed": 1})
        raise
    push(settings, "snapshot", {"snapshot_duration_seconds": result.seconds, "snapshot_failed": 0})
    emit("snapshot", result)


@app.command("snapshot-post")
def snapshot_post(day: Day) -> None:
    """Post-hook: lift the holds (always runs, also after a failed snapshot)."""
    from eventpipe.archive.snapshot import post_hook

    _, es, _, _ = _context(day)
    emit("snapshot post-hook", post_hook(es))


@app.command()
def write(
    day: Day,
    volume_snapshots: Annotated[str, typer.Option(help="Comma-separated VolumeSnapshot names to record")] = "",
) -> None:
    """Write the day to S3 as Parquet under staging, copy into the partition, commit with the manifest."""
    from eventpipe.archive.writer import archive_day
    from eventpipe.metrics import push

    settings, es, cfg, when = _context(day)
    names = tuple(split_csv(volume_snapshots))
    result = archive_day(settings, es, cfg, when, volume_snapshots=names)
    push(settings, "archive", {"archive_bytes": result.bytes, "archive_rows": result.rows})
    emit("archive write", result)


@app.command()
def verify(day: Day) -> None:
    """Re-read the archive; match checksums and counts against the manifest and Elasticsearch."""
    import time

    from eventpipe.archive.verify import verify_day
    from eventpipe.metrics import push

    settings, es, cfg, when = _context(day)
    result = verify_day(settings, es, cfg, when)
    # its own group: a push replaces its whole group, and under "archive" it would erase write's bytes and rows
    push(settings, "verify", {"archive_last_success_timestamp_seconds": time.time()})
    emit("archive verify", result)


@app.command("late-sweep")
def late_sweep() -> None:
    """Re-commit archived days whose late index gained events."""
    from eventpipe.archive.late import sweep_late

    settings, es, cfg, _ = _context()
    emit("archive late sweep", sweep_late(settings, es, cfg))


@app.command()
def retention(
    today: Annotated[str, typer.Option("--today", help="Reference day for ages (the run's day)")],
    dry_run: bool = False,
) -> None:
    """Delete indices and snapshots past their age, only for days whose archive verified; with VolumeSnapshots on,
    also the archive's VolumeSnapshots older than the newest EVENTPIPE_SNAPSHOT_RETENTION_DAYS nights."""
    from dataclasses import asdict

    from eventpipe.archive.retention import apply_retention

    settings, es, cfg, when = _context(today)
    result = asdict(apply_retention(settings, es, cfg, when, dry_run=dry_run))
    if cfg.volume_snapshots:
        from eventpipe.archive.kafka_positions import forget_positions
        from eventpipe.archive.volume_retention import prune_volume_snapshots
        from eventpipe.storage.s3 import s3_client

        volumes = prune_volume_snapshots(cfg, settings.kubernetes, dry_run=dry_run)
        if not dry_run:  # a night without snapshots needs no record of what they held
            forget_positions(s3_client(settings), cfg.snapshot_bucket, map(date.fromisoformat, volumes.emptied_nights))
        result["volume_snapshots"] = asdict(volumes)
    emit("archive retention", result)


def _latest(settings: Settings) -> date:
    """The latest committed archive day (what ``--day latest`` means)."""
    from eventpipe.archive.layout import committed_days
    from eventpipe.storage.s3 import s3_client

    days = committed_days(s3_client(settings), settings.s3.bucket)
    if not days:
        raise InvalidArgument("no committed archive day to restore yet")
    return days[-1]


class RestoreSource(str, Enum):
    snapshot = "snapshot"
    archive = "archive"
    both = "both"


@app.command()
def restore(
    day: Day,
    source: Annotated[RestoreSource, typer.Option(help="What to restore from")] = RestoreSource.both,
    into: Annotated[str, typer.Option(help="Target index for the archive restore (default: a scratch index)")] = "",
) -> None:
    """Restore the day's snapshot into a scratch index and/or its archive from S3; check against the manifest."""
    from eventpipe.archive.restore import restore_archive, restore_snapshot

    settings, es, cfg, when = _context(None if day == "latest" else day)
    if day == "latest":
        when = _latest(settings)
    results = {}
    if source in {RestoreSource.snapshot, RestoreSource.both}:
        results["snapshot"] = restore_snapshot(settings, es, cfg, when).__dict__
    if source in {RestoreSource.archive, RestoreSource.both}:
        results["archive"] = restore_archive(settings, es, when, into=into or None).__dict__
    emit("archive restore", {"day": when.isoformat(), **results})


@app.command("restore-volumes")
def restore_volumes(
    day: Day,
    namespace: Annotated[str, typer.Option(help="Namespace of the Elasticsearch StatefulSet and its snapshots")] = (
        "elastic"
    ),
    statefulset: Annotated[str, typer.Option(help="The Elasticsearch StatefulSet whose claims were snapshotted")] = (
        "elasticsearch"
    ),
    manifest: Annotated[
        bool, typer.Option(help="Also compare with the day's archive manifest (--no-manifest: a day not archived)")
    ] = True,
    kafka: Annotated[
        bool, typer.Option(help="Also restore the Kafka claims (when snapshotted) and check the pre-hook's offsets")
    ] = True,
    kafka_namespace: Annotated[str, typer.Option(help="Namespace of the Kafka StatefulSet, its snapshots")] = "kafka",
) -> None:
    """Restore the day's Elasticsearch claims from their VolumeSnapshots into a scratch cluster and compare counts;
    then Kafka's into a scratch KRaft cluster, checked against the offsets the night's pre-hook recorded."""
    import sys

    from eventpipe.archive.manifest import load
    from eventpipe.archive.volume_restore import restore_volumes as restore
    from eventpipe.archive.volumes import snapshot_namespaces
    from eventpipe.storage.s3 import s3_client

    settings, _, cfg, when = _context(None if day == "latest" else day)
    if day == "latest":
        when = _latest(settings)
    if not cfg.volume_snapshots:
        emit("archive restore-volumes", {"day": when.isoformat(), "skipped": "EVENTPIPE_VOLUME_SNAPSHOTS is off"})
        return
    rows = load(s3_client(settings), settings.s3.bucket, when).rows if manifest else None
    result = restore(
        settings.elastic.url,
        cfg,
        settings.kubernetes,
        when,
        namespace=namespace,
        statefulset=statefulset,
        manifest_rows=rows,
    ).__dict__
    if kafka and kafka_namespace in snapshot_namespaces(cfg, settings.kubernetes):
        from eventpipe.archive.kafka_positions import load_positions
        from eventpipe.archive.kafka_restore import KafkaRestoreFailed, report, restore_kafka

        recorded = load_positions(s3_client(settings), cfg.snapshot_bucket, when)
        if recorded is None:
            raise KafkaRestoreFailed(
                f"no Kafka positions recorded for {when} in s3://{cfg.snapshot_bucket}: its pre-hook did not record "
                "them (a night snapshotted before the pre-hook did); --no-kafka restores Elasticsearch alone"
            )
        restored = restore_kafka(settings.kubernetes, when, recorded, namespace=kafka_namespace)
        print(report(restored), file=sys.stderr, flush=True)
        result["kafka"] = restored.__dict__
        emit("archive restore-volumes", result)
        if not restored.matches:
            raise KafkaRestoreFailed(
                f"{when}: the Kafka restored from volume snapshots differs from the pre-hook's record in "
                f"{len(restored.problems)} places, first: {restored.problems[0]}"
            )
        return
    emit("archive restore-volumes", result)
