"""Drain one topic's records for one data interval into Elasticsearch.

Order of effects, so any failure is safe to retry: plan (or replay) the offset ranges and
persist them in a manifest; index events with deterministic ids; dead-letter what cannot be
indexed; mark the manifest complete; only then commit consumer-group offsets.

Throughput (bench/bench_ingest.py): a bounded pipeline. The main thread polls Kafka and turns
each batch into a pre-serialized bulk body (schema fast path, see ``fast_document``) while up to
``inflight`` earlier bulk requests run in a thread pool; their outcomes are settled in order.
Nothing is committed until every request and every dead letter is acknowledged, so pipelining
changes no guarantee. A large interval is split by partition over worker processes, each running
that pipeline with its own consumer; only the task process commits, after all of them returned.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from eventpipe.events.schema import fast_document, parse_event
from eventpipe.ingest.dlq import ClaimCheck, DeadLetter, DlqLimits, read_limits, write_dead_letters
from eventpipe.ingest.manifest import DrainManifest, ManifestStore
from eventpipe.ingest.offsets import PartitionRange, interval_ranges
from eventpipe.ingest.waiting import records_waiting
from eventpipe.ingest.window import (
    BUDGET_EXCEEDED,
    INDEX_CREATION,
    OUT_OF_WINDOW,
    EventTimeWindow,
    IndexBudget,
    share,
)
from eventpipe.lifetime import die_with_parent
from eventpipe.settings import Settings
from eventpipe.storage.elastic import EVENTS_PREFIX, BulkOutcome, IndexAction, bulk_index, client

log = logging.getLogger(__name__)
CONSUMER_GROUP = "eventpipe-ingest"
INFLIGHT = 2  # bulk requests outstanding while the next batch is read and serialized (measured in bench/)
LETTER_BATCH = 1000  # dead letters buffered before they are written (all are written before the commit)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
    out_of_window: int = 0  # dead-lettered: event_time outside the window of the record's Kafka timestamp
    over_budget: int = 0  # dead-lettered: their day's index would pass this drain's new-index budget
    index_creation_failed: int = 0  # dead-lettered: Elasticsearch refused to create their day's index
    new_indices: list[str] = field(default_factory=list)  # daily indices this drain created
    touched_hours: list[str] = field(default_factory=list)
    bulk_seconds: float = 0.0
    bulk_requests: int = 0
    bulk_retried_items: int = 0  # documents sent again after a 429/5xx item status (e.g. a flood-stage block)
    read_seconds: float = 0.0  # polling Kafka (main thread)
    prepare_seconds: float = 0.0  # validating and serializing batches (main thread)
    wait_seconds: float = 0.0  # waiting for bulk outcomes and writing dead letters (main thread)
    lag: int = 0  # records beyond the group's committed offsets after this drain (all partitions)
    workers: int = 1  # processes that drained the plan (the *_seconds above are summed over them)
    seconds: float = 0.0
    waiting: dict[str, object] | None = None  # empty plan: records of the interval beyond the last drained offset

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
    inflight: int = INFLIGHT,
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
        if not any(r.size for r in manifest.ranges()):  # nothing planned: say if the interval's records wait later
            planned_end = {r.partition: r.end for r in manifest.ranges()}
            waiting = records_waiting(settings, store, consumer, topic, start, end, planned_end)
            if waiting is not None:
                log.warning("drain: %s", waiting.message(topic, start, end))
                result.waiting = waiting.as_dict()
        if dry_run:
            result.consumed = sum(r.size for r in manifest.ranges())
            result.seconds = round(time.perf_counter() - started, 3)
            return result
        execute_manifest(settings, es, store, consumer, manifest, result, batch_size, idle_timeout_s, inflight)
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


@dataclass(frozen=True)
class DrainPass:
    """How one pass reads and writes: the same for the task process and every worker (picklable for ``spawn``)."""

    interval_start: datetime
    batch_size: int
    idle_timeout_s: float
    inflight: int = INFLIGHT
    window: EventTimeWindow = field(default_factory=EventTimeWindow)
    new_index_budget: int = 1  # new daily indices this process may create (its share of the drain's)


def execute_manifest(
    settings: Settings,
    es,
    store: ManifestStore,
    consumer: KafkaConsumer,
    manifest: DrainManifest,
    result: DrainResult,
    batch_size: int,
    idle_timeout_s: float,
    inflight: int = INFLIGHT,
) -> DrainManifest:
    """Save the plan, index or dead-letter exactly its ranges, mark it complete, then commit offsets.

    A large plan is split by partition over worker processes (``EVENTPIPE_DRAIN_WORKERS``), each
    with its own consumer and pipeline: one Python thread cannot keep Elasticsearch busy. Workers
    never commit; the offsets are committed here, once, after every worker returned.
    """
    manifest.attempts += 1
    store.save(manifest)  # persist the plan first: a retry replays exactly these ranges

    touched: set[datetime] = set()
    window = EventTimeWindow.from_settings(settings)
    budget = window.new_index_budget(manifest.interval_start, manifest.interval_end)
    how = DrainPass(manifest.interval_start, batch_size, idle_timeout_s, inflight, window, budget)
    groups = partition_groups(manifest.ranges(), worker_count(settings, manifest.ranges()))
    if len(groups) > 1:
        how = replace(how, new_index_budget=share(budget, len(groups)))
        _drain_in_workers(settings, groups, how, result, touched)
    else:
        drain_ranges(settings, es, consumer, manifest.ranges(), how, result, touched)

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


def drain_ranges(
    settings: Settings,
    es,
    consumer: KafkaConsumer,
    ranges: list[PartitionRange],
    how: DrainPass,
    result: DrainResult,
    touched: set[datetime],
) -> None:
    """Index or dead-letter exactly ``ranges`` through the bounded pipeline; counts go to ``result``."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5)
    try:
        sink = LetterSink(producer, read_limits(settings, producer), ClaimCheck(settings))
        budget = IndexBudget(how.new_index_budget, existing_event_indices(es))
        pipeline = _Pipeline(es, sink, how.interval_start, touched, result, how.window, budget)
        with ThreadPoolExecutor(max_workers=how.inflight, thread_name_prefix="drain-bulk") as pool:
            try:
                batches = read_ranges(consumer, ranges, how.batch_size, how.idle_timeout_s)
                mark = time.perf_counter()
                for records in batches:
                    result.read_seconds += time.perf_counter() - mark
                    pipeline.submit(pool, records, how.inflight)
                    mark = time.perf_counter()
                result.read_seconds += time.perf_counter() - mark
                pipeline.drain()
            finally:
                pipeline.cancel()
    finally:
        producer.close()


def worker_count(settings: Settings, ranges: list[PartitionRange]) -> int:
    """How many processes drain this plan: 1 below the size where a process pays for its start-up."""
    busy = sum(r.size > 0 for r in ranges)
    if sum(r.size for r in ranges) < settings.kafka.drain_parallel_min:
        return 1
    wanted = settings.kafka.drain_workers or available_cpus()
    return max(1, min(wanted, busy))


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: the cgroup v2 quota (a pod's CPU limit) if any, else the affinity mask."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 file here: the affinity mask is all there is
    return cpus


def partition_groups(ranges: list[PartitionRange], workers: int) -> list[list[PartitionRange]]:
    """Split the non-empty ranges into at most ``workers`` groups of similar record counts (largest first)."""
    groups: list[list[PartitionRange]] = [[] for _ in range(max(1, workers))]
    sizes = [0] * len(groups)
    for planned in sorted((r for r in ranges if r.size > 0), key=lambda r: (-r.size, r.partition)):
        smallest = sizes.index(min(sizes))
        groups[smallest].append(planned)
        sizes[smallest] += planned.size
    return [group for group in groups if group]


SUMMED = (
    "consumed", "indexed", "created", "dead_lettered", "late", "out_of_window", "over_budget",
    "index_creation_failed", "bulk_seconds", "bulk_requests", "bulk_retried_items", "read_seconds",
    "prepare_seconds", "wait_seconds",
)  # fmt: skip


def existing_event_indices(es) -> set[str]:
    """Names of the daily event indices that exist now (creating one of them costs no shard)."""
    rows = es.cat.indices(index=f"{EVENTS_PREFIX}-*", h="index", format="json", expand_wildcards="all")
    return {row["index"] for row in rows}


def _drain_in_workers(
    settings: Settings,
    groups: list[list[PartitionRange]],
    how: DrainPass,
    result: DrainResult,
    touched: set[datetime],
) -> None:
    """Run ``drain_ranges`` for each group in its own process; any failure fails the drain (nothing committed)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding client threads and sockets
    pool = ProcessPoolExecutor(  # workers end with this process, even a SIGKILLed one (eventpipe.lifetime)
        max_workers=len(groups), mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    )
    with pool:
        futures = [pool.submit(_worker, settings, group, how) for group in groups]
        try:
            parts = [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for part, hours in parts:
        for name in SUMMED:
            setattr(result, name, round(getattr(result, name) + getattr(part, name), 3))
        touched |= hours
        result.new_indices = sorted({*result.new_indices, *part.new_indices})
    result.workers = len(groups)


def _worker(settings: Settings, ranges: list[PartitionRange], how: DrainPass) -> tuple[DrainResult, set[datetime]]:
    """One worker process: its own Elasticsearch client, consumer (assigned, never committing) and producer."""
    topic = ranges[0].topic
    part = DrainResult(topic, "", "", [], False, False)
    touched: set[datetime] = set()
    consumer = group_consumer(settings, topic, how.batch_size)
    try:
        drain_ranges(settings, client(settings), consumer, ranges, how, part, touched)
    finally:
        consumer.close(autocommit=False)
    return part, touched


@dataclass
class _Batch:
    """One poll's records, turned into index actions (pre-serialized) and schema dead letters."""

    records: list[ConsumerRecord]
    actions: list[IndexAction]
    letters: list[DeadLetter]
    outcome: Future[BulkOutcome] | None = None


def prepare_batch(
    records: list[ConsumerRecord],
    hours: dict[str, datetime] | None = None,
    window: EventTimeWindow | None = None,
    budget: IndexBudget | None = None,
) -> _Batch:
    """Validate and serialize ``records``: each valid one becomes an action whose source is its JSON bytes.

    Canonical records take the fast path; the rest go through the model, which either accepts
    them (same document as before) or gives the exact reason for the dead letter. A valid event
    outside the ``window`` of its Kafka timestamp, or whose day's index would pass the ``budget``
    of new indices, is dead-lettered too (docs/schema.md#event-time-window).
    """
    hours = {} if hours is None else hours
    actions: list[IndexAction] = []
    letters: list[DeadLetter] = []
    for record in records:
        try:
            doc = fast_document(orjson.loads(record.value))
        except (orjson.JSONDecodeError, TypeError):
            doc = None
        if doc is not None:
            stamp = str(doc["event_time"])  # canonical: YYYY-MM-DDTHH:MM:SS.mmmZ
            hour = hours.get(stamp[:13])
            if hour is None:
                hour = hours[stamp[:13]] = datetime.fromisoformat(stamp[:13] + ":00:00+00:00")
            day = f"{stamp[:4]}.{stamp[5:7]}.{stamp[8:10]}"
            event_ms = (
                int(hour.timestamp()) * 1000 + int(stamp[14:16]) * 60_000 + int(stamp[17:19]) * 1000 + int(stamp[20:23])
            )
        else:
            try:
                event = parse_event(record.value)
            except (ValidationError, ValueError) as exc:
                letters.append(_letter(record, "schema", _reason(exc)))
                continue
            doc = event.document()
            hour = event.event_time.replace(minute=0, second=0, microsecond=0)
            day = event.event_time.strftime("%Y.%m.%d")
            event_ms = (event.event_time - EPOCH) // timedelta(milliseconds=1)
        if window is not None and (outside := window.reason(event_ms, record.timestamp)) is not None:
            letters.append(_letter(record, OUT_OF_WINDOW, outside))
            continue
        index = f"{EVENTS_PREFIX}-{day}"
        if budget is not None and not budget.admit(index):
            letters.append(_letter(record, BUDGET_EXCEEDED, budget.refusal(index)))
            continue
        doc["kafka"] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        actions.append(IndexAction(index, str(doc["event_id"]), orjson.dumps(doc), (record, hour)))
    return _Batch(records, actions, letters)


class _Pipeline:
    """Bulk requests in flight, settled strictly in submission order; dead letters buffered."""

    def __init__(
        self,
        es,
        sink: LetterSink,
        start: datetime,
        touched: set[datetime],
        result: DrainResult,
        window: EventTimeWindow | None = None,
        budget: IndexBudget | None = None,
    ) -> None:
        self.es = es
        self.window = window
        self.budget = budget
        self.sink = sink
        self.start = start
        self.touched = touched
        self.result = result
        self.hours: dict[str, datetime] = {}
        self.pending: deque[_Batch] = deque()
        self.letters: list[DeadLetter] = []

    def submit(self, pool: ThreadPoolExecutor, records: list[ConsumerRecord], inflight: int) -> None:
        started = time.perf_counter()
        batch = prepare_batch(records, self.hours, self.window, self.budget)
        if batch.actions:
            batch.outcome = pool.submit(bulk_index, self.es, batch.actions)
        self.pending.append(batch)
        prepared = time.perf_counter()
        self.result.prepare_seconds += prepared - started
        while len(self.pending) > inflight:
            self._settle(self.pending.popleft())
        self.result.wait_seconds += time.perf_counter() - prepared

    def drain(self) -> None:
        """Settle every outstanding request, then write the remaining dead letters."""
        started = time.perf_counter()
        while self.pending:
            self._settle(self.pending.popleft())
        self._write_letters()
        self.result.wait_seconds += time.perf_counter() - started
        for name in ("read_seconds", "prepare_seconds", "wait_seconds"):
            setattr(self.result, name, round(getattr(self.result, name), 3))

    def cancel(self) -> None:
        for batch in self.pending:
            if batch.outcome is not None:
                batch.outcome.cancel()

    def _settle(self, batch: _Batch) -> None:
        result = self.result
        outcome = batch.outcome.result() if batch.outcome is not None else BulkOutcome()
        outcome.rejected = _divert_blocked(self.es, outcome, result)
        rejected_ids = set()
        for action, reason in outcome.rejected:
            record, _ = action.ref
            rejected_ids.add(action.doc_id)
            if self.budget is not None and action.index in self.budget.created and _is_creation_failure(reason):
                result.index_creation_failed += 1
                reason = f"Elasticsearch could not create daily index {action.index}: {reason}"
                batch.letters.append(_letter(record, INDEX_CREATION, reason[:2000]))
            else:
                batch.letters.append(_letter(record, "elasticsearch", reason))
        result.out_of_window += sum(letter.error_kind == OUT_OF_WINDOW for letter in batch.letters)
        result.over_budget += sum(letter.error_kind == BUDGET_EXCEEDED for letter in batch.letters)
        for action in batch.actions:
            if action.doc_id not in rejected_ids:
                self.touched.add(action.ref[1])
                new = self.budget is not None and action.index in self.budget.created
                if new and action.index not in result.new_indices:
                    result.new_indices.append(action.index)
        self.letters += batch.letters
        if len(self.letters) >= LETTER_BATCH:
            self._write_letters()
        result.consumed += len(batch.records)
        result.indexed += outcome.acknowledged
        result.created += outcome.created
        result.bulk_seconds = round(result.bulk_seconds + outcome.seconds, 3)
        result.bulk_requests += batch.outcome is not None
        result.bulk_retried_items += outcome.retried_items

    def _write_letters(self) -> None:
        letters, self.letters = self.letters, []
        sink = self.sink
        self.result.dead_lettered += write_dead_letters(
            letters,
            es=self.es,
            producer=sink.producer,
            interval_start=self.start,
            limits=sink.limits,
            claims=sink.claims,
        )


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


# Per-item errors of a bulk request that mean the target index could not be created (not that the
# document is bad): the shard limit (validation_exception "... maximum normal shards open"),
# action.auto_create_index refusing the name, an invalid name.
CREATION_ERRORS = ("validation_exception", "index_not_found_exception", "invalid_index_name_exception")


def _is_creation_failure(reason: str) -> bool:
    return reason.startswith(CREATION_ERRORS) or "maximum normal shards open" in reason


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
