"""Parallel drain: a large plan split by partition over worker processes.

One Python thread cannot keep Elasticsearch busy, so above ``EVENTPIPE_DRAIN_PARALLEL_MIN_RECORDS``
each group of partitions runs the bulk pipeline in its own ``spawn``ed process, with its own
Elasticsearch client, consumer (assigned, never committing) and producer. Workers never commit:
the task process commits once, after every worker returned; any failure fails the whole drain.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from eventpipe.ingest.bulk_pipeline import DrainPass, drain_ranges
from eventpipe.ingest.kafka_io import group_consumer
from eventpipe.ingest.offsets import PartitionRange
from eventpipe.ingest.result import DrainResult
from eventpipe.lifetime import die_with_parent
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client


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


def drain_in_workers(
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
    es = client(settings)
    consumer = group_consumer(settings, topic, how.batch_size)
    try:
        drain_ranges(settings, es, consumer, ranges, how, part, touched)
    finally:
        consumer.close(autocommit=False)
        es.close()
    return part, touched
