"""The offset ledger: complete drain manifests must cover every partition without holes.

Interval drains locate offsets by timestamp where no neighbouring manifest anchors them, so
after a gap in the runs (a paused DAG, ``catchup=False`` after downtime) the offsets between
the last drained manifest and the next timestamp-located start belong to no interval;
records with old timestamps that arrived in between would only show up as consumer lag.
The ledger finds, per partition, the offsets in [log start, max(committed, drained end))
that no complete manifest covers and drains them like an interval (indexed or
dead-lettered, deterministic ids, plan saved first, offsets committed after), recording a
``kind="ledger"`` manifest per hole. Late records it finds for an archived day go to that
day's late index, which the archive's late sweep re-commits; the archive's quiesce counts
uncovered offsets as gaps (see ``eventpipe.archive.quiesce``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from kafka import KafkaConsumer, TopicPartition

from eventpipe.ingest.drain import execute_manifest
from eventpipe.ingest.kafka_io import group_consumer
from eventpipe.ingest.manifest import DrainManifest, ManifestStore, ledger_manifest_id
from eventpipe.ingest.offsets import PartitionRange
from eventpipe.ingest.result import DrainResult
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client

log = logging.getLogger(__name__)


@dataclass
class LedgerResult:
    topic: str
    uncovered: int  # offsets no complete manifest covered when the check started
    holes: list[dict[str, int | str]]
    drained: int = 0  # offsets the check drained (indexed + dead-lettered + skipped by compaction)
    indexed: int = 0
    dead_lettered: int = 0
    remaining: int = 0  # offsets still uncovered afterwards (over --max-records, or a dry run)
    touched_hours: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def covered(manifests: list[DrainManifest]) -> dict[int, list[tuple[int, int]]]:
    """Per partition, the merged [start, end) offset ranges of complete manifests."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for manifest in manifests:
        if manifest.status != "complete":
            continue
        for r in manifest.ranges():
            if r.size:
                spans.setdefault(r.partition, []).append((r.start, r.end))
    merged: dict[int, list[tuple[int, int]]] = {}
    for partition, ranges in spans.items():
        out: list[tuple[int, int]] = []
        for start, end in sorted(ranges):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        merged[partition] = out
    return merged


def holes(
    topic: str,
    manifests: list[DrainManifest],
    *,
    log_start: dict[int, int] | None = None,
    committed: dict[int, int | None] | None = None,
) -> list[PartitionRange]:
    """Offsets in [log start, max(committed, highest drained end)) no complete manifest covers.

    Without ``log_start`` (no Kafka at hand) only holes between drained ranges are found.
    """
    spans = covered(manifests)
    partitions = set(spans) | set(log_start or {}) | {p for p, c in (committed or {}).items() if c}
    found: list[PartitionRange] = []
    for partition in sorted(partitions):
        ranges = spans.get(partition, [])
        upper = max([(committed or {}).get(partition) or 0, *(end for _, end in ranges)])
        cursor = (log_start or {}).get(partition, ranges[0][0] if ranges else upper)
        for start, end in ranges:
            if start > cursor and cursor < upper:
                found.append(PartitionRange(topic, partition, cursor, min(start, upper)))
            cursor = max(cursor, end)
        if cursor < upper:
            found.append(PartitionRange(topic, partition, cursor, upper))
    return found


def kafka_bounds(consumer: KafkaConsumer, topic: str) -> tuple[dict[int, int], dict[int, int | None]]:
    """Each partition's first offset (after retention) and the ingest group's committed offset."""
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not tps:
        raise LookupError(f"topic {topic!r} does not exist or has no partitions")
    starts = consumer.beginning_offsets(tps)
    return {tp.partition: starts[tp] for tp in tps}, {tp.partition: consumer.committed(tp) for tp in tps}


def check_ledger(
    settings: Settings,
    topic: str,
    *,
    dry_run: bool = False,
    max_records: int = 1_000_000,
    batch_size: int = 5000,
    idle_timeout_s: float = 60.0,
) -> LedgerResult:
    """Find the offsets of ``topic`` no complete manifest covers and drain up to ``max_records`` of them."""
    started = time.perf_counter()
    es = client(settings)
    store = ManifestStore(es)
    consumer = group_consumer(settings, topic, batch_size)
    try:
        log_start, committed = kafka_bounds(consumer, topic)
        found = holes(topic, list(store.for_topic(topic)), log_start=log_start, committed=committed)
        result = LedgerResult(topic, sum(h.size for h in found), [h.as_dict() for h in found])
        if found:
            log.warning("offset ledger: %d offsets of %s no drain covered: %s", result.uncovered, topic, found)
        budget = 0 if dry_run else max_records
        touched: set[str] = set()
        for hole in found:
            if budget <= 0:
                break
            piece = PartitionRange(hole.topic, hole.partition, hole.start, min(hole.end, hole.start + budget))
            budget -= piece.size
            manifest = store.get_id(ledger_manifest_id(piece))
            if manifest is None:  # a retry replays the same hole under the same id
                now = datetime.now(timezone.utc).replace(microsecond=0)
                manifest = DrainManifest(
                    topic=topic, interval_start=now, interval_end=now, kind="ledger", partitions=[piece.as_dict()]
                )
            drained = DrainResult(topic, "", "", manifest.partitions, False, False)
            execute_manifest(settings, es, store, consumer, manifest, drained, batch_size, idle_timeout_s)
            result.drained += piece.size
            result.indexed += drained.indexed
            result.dead_lettered += drained.dead_lettered
            touched.update(drained.touched_hours)
        result.touched_hours = sorted(touched)
        result.remaining = sum(
            h.size for h in holes(topic, list(store.for_topic(topic)), log_start=log_start, committed=committed)
        )
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    finally:
        consumer.close(autocommit=False)
        es.close()
