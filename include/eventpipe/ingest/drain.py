"""Drain one topic's records for one data interval into Elasticsearch.

Order of effects, so any failure is safe to retry: plan (or replay) the offset ranges and
persist them in a manifest; index events with deterministic ids; dead-letter what cannot be
indexed; mark the manifest complete; only then commit consumer-group offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from eventpipe.events.schema import parse_event
from eventpipe.ingest.dlq import ClaimCheck, DeadLetter, DlqLimits, read_limits, write_dead_letters
from eventpipe.ingest.manifest import DrainManifest, ManifestStore
from eventpipe.ingest.offsets import PartitionRange, interval_ranges
from eventpipe.settings import Settings
from eventpipe.storage.elastic import EVENTS_PREFIX, BulkOutcome, IndexAction, bulk_index, client

log = logging.getLogger(__name__)
CONSUMER_GROUP = "eventpipe-ingest"


@dataclass(frozen=True)
class LetterSink:
    """Where a drain's dead letters go: the DLQ producer, its limits (read at start-up), the claim check."""

    producer: KafkaProducer
    limits: DlqLimits
    claims: ClaimCheck


@dataclass
class DrainResult:
    topic: str
    interval_start: str
    interval_end: str
    partitions: list[dict[str, int | str]]
    replayed: bool
    dry_run: bool
    consumed: int = 0
    indexed: int = 0
    created: int = 0
    dead_lettered: int = 0
    late: int = 0  # events for already archived days, indexed into their late index
    touched_hours: list[str] = field(default_factory=list)
    bulk_seconds: float = 0.0
    bulk_requests: int = 0
    bulk_retried_items: int = 0  # documents sent again after a 429/5xx item status (e.g. a flood-stage block)
    lag: int = 0  # records beyond the group's committed offsets after this drain (all partitions)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def drain_interval(
    settings: Settings,
    topic: str,
    start: datetime,
    end: datetime,
    *,
    dry_run: bool = False,
    batch_size: int = 5000,
    idle_timeout_s: float = 60.0,
) -> DrainResult:
    started = time.perf_counter()
    es = client(settings)
    store = ManifestStore(es)
    consumer = group_consumer(settings, topic, batch_size)
    try:
        manifest = store.get(topic, start, end)
        replayed = manifest is not None
        if manifest is None:
            before = store.neighbour(topic, ending_at=start)
            after = store.neighbour(topic, starting_at=end)
            ranges = interval_ranges(
                consumer,
                topic,
                start,
                end,
                previous_end={r.partition: r.end for r in before.ranges()} if before else None,
                next_start={r.partition: r.start for r in after.ranges()} if after else None,
            )
            manifest = DrainManifest(
                topic=topic, interval_start=start, interval_end=end, partitions=[r.as_dict() for r in ranges]
            )
        result = DrainResult(topic, start.isoformat(), end.isoformat(), manifest.partitions, replayed, dry_run)
        if dry_run:
            result.consumed = sum(r.size for r in manifest.ranges())
            result.seconds = round(time.perf_counter() - started, 3)
            return result
        execute_manifest(settings, es, store, consumer, manifest, result, batch_size, idle_timeout_s)
        result.lag = group_lag(consumer, topic)
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    finally:
        consumer.close(autocommit=False)


def group_consumer(settings: Settings, topic: str, batch_size: int) -> KafkaConsumer:
    """A consumer of the ingest group that never auto-commits: offsets advance only in ``commit_offsets``."""
    return KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=CONSUMER_GROUP,
        client_id=f"eventpipe-drain-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )


def execute_manifest(
    settings: Settings,
    es,
    store: ManifestStore,
    consumer: KafkaConsumer,
    manifest: DrainManifest,
    result: DrainResult,
    batch_size: int,
    idle_timeout_s: float,
) -> DrainManifest:
    """Save the plan, index or dead-letter exactly its ranges, mark it complete, then commit offsets."""
    manifest.attempts += 1
    store.save(manifest)  # persist the plan first: a retry replays exactly these ranges

    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5)
    touched: set[datetime] = set()
    try:
        sink = LetterSink(producer, read_limits(settings, producer), ClaimCheck(settings))
        for records in read_ranges(consumer, manifest.ranges(), batch_size, idle_timeout_s):
            _load_batch(records, es=es, sink=sink, start=manifest.interval_start, touched=touched, result=result)
    finally:
        producer.close()

    result.touched_hours = [hour.isoformat() for hour in sorted(touched)]
    manifest = manifest.model_copy(
        update={
            "status": "complete",
            "consumed": result.consumed,
            "indexed": result.indexed,
            "dead_lettered": result.dead_lettered,
            "touched_hours": sorted(touched),
            "finished_at": datetime.now(timezone.utc),
        }
    )
    store.save(manifest)
    commit_offsets(consumer, manifest.ranges())
    return manifest


def _load_batch(
    records: list[ConsumerRecord],
    *,
    es,
    sink: LetterSink,
    start: datetime,
    touched: set[datetime],
    result: DrainResult,
) -> None:
    actions: list[IndexAction] = []
    letters: list[DeadLetter] = []
    for record in records:
        try:
            event = parse_event(record.value)
        except (ValidationError, ValueError) as exc:
            letters.append(_letter(record, "schema", _reason(exc)))
            continue
        doc = event.document()
        doc["kafka"] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        index = f"{EVENTS_PREFIX}-{event.event_time.strftime('%Y.%m.%d')}"
        actions.append(IndexAction(index, event.event_id, doc, ref=(record, event.event_time)))
    outcome = bulk_index(es, actions)
    outcome.rejected = _divert_blocked(es, outcome, result)
    rejected_ids = set()
    for action, reason in outcome.rejected:
        record, _ = action.ref
        rejected_ids.add(action.doc_id)
        letters.append(_letter(record, "elasticsearch", reason))
    for action in actions:
        if action.doc_id not in rejected_ids:
            touched.add(action.ref[1].replace(minute=0, second=0, microsecond=0))
    result.dead_lettered += write_dead_letters(
        letters, es=es, producer=sink.producer, interval_start=start, limits=sink.limits, claims=sink.claims
    )
    result.consumed += len(records)
    result.indexed += outcome.acknowledged
    result.created += outcome.created
    result.bulk_seconds = round(result.bulk_seconds + outcome.seconds, 3)
    result.bulk_requests += 1
    result.bulk_retried_items += outcome.retried_items


def _divert_blocked(es, outcome: BulkOutcome, result: DrainResult) -> list[tuple[IndexAction, str]]:
    """Events for a day already quiesced for the archive go to that day's late index.

    Events the blocked index already holds (a rerun or backfill of an archived interval) are
    acknowledged as they are; new ones land in ``eventpipe-events-late-YYYY.MM.DD``, which the
    archive's late sweep re-commits. Returns the rejections that remain for the dead-letter path.
    """
    blocked = [(a, r) for a, r in outcome.rejected if r.startswith("cluster_block_exception")]
    if not blocked:
        return outcome.rejected
    remaining = [(a, r) for a, r in outcome.rejected if not r.startswith("cluster_block_exception")]
    by_index: dict[str, list[IndexAction]] = {}
    for action, _ in blocked:
        by_index.setdefault(action.index, []).append(action)
    late: list[IndexAction] = []
    for index, group in by_index.items():
        found = es.mget(index=index, ids=[a.doc_id for a in group], source=False)["docs"]
        present = {doc["_id"] for doc in found if doc.get("found")}
        result.indexed += len(present)
        late_name = index.replace(f"{EVENTS_PREFIX}-", f"{EVENTS_PREFIX}-late-", 1)
        late += [replace(a, index=late_name) for a in group if a.doc_id not in present]
    if late:
        diverted = bulk_index(es, late)
        outcome.acknowledged += diverted.acknowledged
        outcome.created += diverted.created
        result.late += diverted.acknowledged
        remaining += diverted.rejected
    return remaining


def _letter(record: ConsumerRecord, kind: str, reason: str) -> DeadLetter:
    return DeadLetter(
        record.topic, record.partition, record.offset, record.timestamp, record.value or b"", kind, reason, record.key
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())[:2000]
    return str(exc)[:2000]


def read_ranges(
    consumer: KafkaConsumer, ranges: list[PartitionRange], batch_size: int, idle_timeout_s: float = 60.0
) -> Iterator[list[ConsumerRecord]]:
    """Yield batches of exactly the records inside ``ranges`` (end exclusive)."""
    active = {TopicPartition(r.topic, r.partition): r for r in ranges if r.size > 0}
    if not active:
        return
    consumer.assign(list(active))
    for tp, planned in active.items():
        consumer.seek(tp, planned.start)
    last_progress = time.monotonic()
    while active:
        polled = consumer.poll(timeout_ms=1000, max_records=batch_size)
        batch: list[ConsumerRecord] = []
        for tp, records in polled.items():
            planned = active.get(tp)
            if planned is not None:
                batch.extend(record for record in records if record.offset < planned.end)
        for tp in list(active):
            if consumer.position(tp) >= active[tp].end:
                consumer.pause(tp)
                del active[tp]
        if batch:
            last_progress = time.monotonic()
            yield batch
        elif time.monotonic() - last_progress > idle_timeout_s:
            missing = {f"{tp.topic}/{tp.partition}": (consumer.position(tp), r.end) for tp, r in active.items()}
            raise TimeoutError(f"no records for {idle_timeout_s:.0f}s while draining; position/end: {missing}")


def commit_offsets(consumer: KafkaConsumer, ranges: list[PartitionRange]) -> None:
    """Advance (never rewind) the group's committed offsets, so lag tools see progress even on backfills."""
    offsets = {}
    for planned in ranges:
        tp = TopicPartition(planned.topic, planned.partition)
        committed = consumer.committed(tp) or 0
        if planned.end > committed:
            offsets[tp] = OffsetAndMetadata(planned.end, "", -1)
    if offsets:
        consumer.commit(offsets)


def group_lag(consumer: KafkaConsumer, topic: str) -> int:
    """Records of ``topic`` past the group's committed offsets: what lag dashboards show."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    ends = consumer.end_offsets(partitions)
    return sum(max(0, ends[tp] - (consumer.committed(tp) or 0)) for tp in partitions)
