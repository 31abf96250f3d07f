"""The bulk pipeline: one process's pass over planned offset ranges into Elasticsearch.

Throughput (bench/bench_ingest.py): the main thread polls Kafka and turns each batch into a
pre-serialized bulk body (schema fast path, see ``fast_document``) while up to ``inflight``
earlier bulk requests run in a thread pool; their outcomes are settled in submission order.
Records that cannot be indexed become dead letters, buffered and all written before the pass
returns, so the caller commits offsets only after everything was acknowledged.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from eventpipe.events.schema import fast_document, parse_event
from eventpipe.ingest.dlq import ClaimCheck, DeadLetter, DlqLimits, read_limits, write_dead_letters
from eventpipe.ingest.kafka_io import read_ranges
from eventpipe.ingest.offsets import PartitionRange
from eventpipe.ingest.result import DrainResult
from eventpipe.ingest.window import BUDGET_EXCEEDED, INDEX_CREATION, OUT_OF_WINDOW, EventTimeWindow, IndexBudget
from eventpipe.settings import Settings
from eventpipe.storage.elastic import EVENTS_PREFIX, BulkOutcome, IndexAction, bulk_index

INFLIGHT = 2  # bulk requests outstanding while the next batch is read and serialized (measured in bench/)
LETTER_BATCH = 1000  # dead letters buffered before they are written (all are written before the commit)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class LetterSink:
    """Where a drain's dead letters go: the DLQ producer, its limits (read at start-up), the claim check."""

    producer: KafkaProducer
    limits: DlqLimits
    claims: ClaimCheck


@dataclass(frozen=True)
class DrainPass:
    """How one pass reads and writes: the same for the task process and every worker (picklable for ``spawn``)."""

    interval_start: datetime
    batch_size: int
    idle_timeout_s: float
    inflight: int = INFLIGHT
    window: EventTimeWindow = field(default_factory=EventTimeWindow)
    new_index_budget: int = 1  # new daily indices this process may create (its share of the drain's)


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


def existing_event_indices(es) -> set[str]:
    """Names of the daily event indices that exist now (creating one of them costs no shard)."""
    rows = es.cat.indices(index=f"{EVENTS_PREFIX}-*", h="index", format="json", expand_wildcards="all")
    return {row["index"] for row in rows}


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
