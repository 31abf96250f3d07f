"""``eventpipe setup``: everything the tasks expect to exist, created once per DAG run.

Index templates and fixed indices, the source and dead-letter topics, the archive and snapshot
buckets and the Elasticsearch snapshot repository. Each step is idempotent (create if missing,
or an idempotent PUT), so the first task of every DAG runs it; tasks and sensors then only use
what is there, and the schema is installed by one task with the rights to do so, not by every
sensor poke on the Airflow worker. It also reports the cluster's shard usage against its limit
(and pushes it as a metric): every new day costs a shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from eventpipe.archive.snapshot import ensure_repository
from eventpipe.events.topics import DLQ_TOPIC, SOURCE_TOPICS, ensure_topics
from eventpipe.metrics import push_shard_usage
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client, ensure_indices
from eventpipe.storage.s3 import ensure_bucket
from eventpipe.storage.shards import shard_usage


@dataclass
class SetupResult:
    topics: list[str]
    buckets: list[str]
    snapshot_repository: str
    shards: dict[str, object] = field(default_factory=dict)  # open shards vs the cluster limit (ShardUsage)
    seconds: dict[str, float] = field(default_factory=dict)


def run_setup(settings: Settings) -> SetupResult:
    """Create (or confirm) templates, indices, topics, buckets and the snapshot repository."""
    seconds: dict[str, float] = {}

    def timed(step: str, started: float) -> None:
        seconds[step] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    es = client(settings)
    try:
        ensure_indices(es, replicas=settings.elastic.replicas)
        timed("indices", started)
        started = time.perf_counter()
        topics = list(SOURCE_TOPICS.values())
        ensure_topics(settings, topics)
        timed("topics", started)
        started = time.perf_counter()
        buckets = list(dict.fromkeys([settings.s3.bucket, settings.archive.snapshot_bucket]))
        for bucket in buckets:
            ensure_bucket(settings, bucket)
        timed("buckets", started)
        started = time.perf_counter()
        ensure_repository(es, settings.archive)
        timed("snapshot_repository", started)
        usage = shard_usage(es)
        push_shard_usage(settings, usage)
    finally:
        es.close()
    return SetupResult([*topics, DLQ_TOPIC], buckets, settings.archive.repository, usage.as_dict(), seconds)
