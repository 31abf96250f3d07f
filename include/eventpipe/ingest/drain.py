"""Drain one topic's records for one data interval into Elasticsearch.

Order of effects, so any failure is safe to retry: plan (or replay) the offset ranges and
persist them in a manifest; index events with deterministic ids; dead-letter what cannot be
indexed; mark the manifest complete; only then commit consumer-group offsets.

This module is that order (the orchestration); the parts live beside it: ``kafka_io`` (the
ingest group's consumer, reading the planned ranges, committing, lag), ``bulk_pipeline`` (one
process's bounded pipeline of bulk requests and dead letters) and ``workers`` (a large plan split
by partition over worker processes). Pipelining and workers change no guarantee: nothing is
committed until every request and every dead letter is acknowledged, and only the task process
commits, after all workers returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone

from kafka import KafkaConsumer

from eventpipe.ingest.bulk_pipeline import INFLIGHT, DrainPass, drain_ranges
from eventpipe.ingest.kafka_io import commit_offsets, group_consumer, group_lag
from eventpipe.ingest.manifest import DrainManifest, ManifestStore
from eventpipe.ingest.offsets import interval_ranges
from eventpipe.ingest.result import DrainResult
from eventpipe.ingest.waiting import records_waiting
from eventpipe.ingest.window import EventTimeWindow, share
from eventpipe.ingest.workers import drain_in_workers, partition_groups, worker_count
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client

log = logging.getLogger(__name__)


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
        es.close()  # its connection pool: a long-lived process (Airflow worker, scheduler) runs many drains


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
        drain_in_workers(settings, groups, how, result, touched)
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
