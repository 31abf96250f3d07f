"""A clean slate for the demo on the StatefulSets, when a test or drill has left later records there.

A drain reads ``[O(start), O(end))`` through Kafka's time index, which is monotone in offset order. The demo's days
lie in the past (2026-01-15 on), and a migration drill, which moves the pipeline itself, writes its real topics at
today's times. Once such records precede the demo's in a partition, ``O`` of every demo boundary is the first
later-stamped record, each demo interval is empty, and its events only reach the late indices when the ledger
accounts for them, after their days were archived: training then finds no archive. The pipeline is right to do
that; the demo is what assumes a topic holding no records newer than its days. On the devstack's own StatefulSets,
the demo therefore clears what belongs to the pipeline there before producing: its topics and consumer group, its
indices and Elasticsearch snapshots, the cluster buckets and the archive's VolumeSnapshots.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from elasticsearch import NotFoundError
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from devstack.cluster.kubernetes import kubeconfig
from devstack.runtime import DevstackError
from eventpipe.archive.volume_retention import delete_archive_snapshot, list_archive_snapshots
from eventpipe.archive.volumes import kube_clients, snapshot_namespaces
from eventpipe.events.topics import DLQ_TOPIC, SOURCE_TOPICS
from eventpipe.ingest.kafka_io import CONSUMER_GROUP
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client
from eventpipe.storage.s3 import delete_keys, s3_client

PIPELINE_TOPICS = (*SOURCE_TOPICS.values(), DLQ_TOPIC)
PIPELINE_INDICES = "eventpipe-*"


@dataclass
class ResetResult:
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    indices: list[str] = field(default_factory=list)
    es_snapshots: int = 0
    objects: dict[str, int] = field(default_factory=dict)  # bucket -> objects deleted
    volume_snapshots: list[str] = field(default_factory=list)


def later_records(
    settings: Settings, after: datetime, topics: Iterable[str] = SOURCE_TOPICS.values()
) -> dict[str, list[int]]:
    """Partitions of ``topics`` (the pipeline's source topics) holding a record stamped at or after ``after``."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        stamp = int(after.timestamp() * 1000)
        found: dict[str, list[int]] = {}
        existing = consumer.topics()  # asking for a missing topic's partitions may auto-create it (7-day retention)
        for topic in (t for t in topics if t in existing):
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            hits = consumer.offsets_for_times({tp: stamp for tp in tps}) if tps else {}
            partitions = sorted(tp.partition for tp, hit in hits.items() if hit is not None)
            if partitions:
                found[topic] = partitions
        return found
    finally:
        consumer.close()


def reset_pipeline_data(settings: Settings, *, timeout_s: float = 120.0) -> ResetResult:
    """Delete the pipeline's state on the StatefulSets (never the host services': the caller points
    ``settings`` at the cluster, with its own buckets). Each part is idempotent, and the topics, whose later
    records are why a reset is needed, go last: a reset cut short is found, and done whole, by the next demo."""
    result = ResetResult()
    es = client(settings)
    repository = settings.archive.repository
    try:
        names = [s["snapshot"] for s in es.snapshot.get(repository=repository, snapshot="*")["snapshots"]]
    except NotFoundError:
        names = []  # no repository yet: the pipeline's setup registers it
    if names:
        es.options(request_timeout=300).snapshot.delete(repository=repository, snapshot=",".join(names))
    result.es_snapshots = len(names)
    result.indices = sorted(es.indices.get(index=PIPELINE_INDICES, expand_wildcards="all"))
    if result.indices:
        es.indices.delete(index=",".join(result.indices))

    s3 = s3_client(settings)
    buckets = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in (settings.s3.bucket, settings.archive.snapshot_bucket):
        if bucket in buckets:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            result.objects[bucket] = delete_keys(s3, bucket, keys)

    _, _, custom = kube_clients(settings.kubernetes.model_copy(update={"kubeconfig": str(kubeconfig())}))
    for namespace in snapshot_namespaces(settings.archive, settings.kubernetes):
        for snap in list_archive_snapshots(custom, namespace):
            delete_archive_snapshot(custom, namespace, snap.name, snap.content)  # as retention does: data freed
            result.volume_snapshots.append(f"{namespace}/{snap.name}")

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, request_timeout_ms=30_000)
    try:
        if any(g["group_id"] == CONSUMER_GROUP for g in admin.list_groups()):
            # kafka-python 3: {group: error name}; a group deleted in between is as good as deleted
            answer = admin.delete_groups([CONSUMER_GROUP])
            if answer.get(CONSUMER_GROUP) not in {"OK", "GroupIdNotFoundError"}:
                raise DevstackError(f"deleting consumer group {CONSUMER_GROUP}: {answer}")
            result.groups = [CONSUMER_GROUP]
        result.topics = sorted(set(PIPELINE_TOPICS) & set(admin.list_topics()))
        if result.topics:
            admin.delete_topics(result.topics, timeout_ms=30_000, raise_errors=False)  # a gone one is fine
        deadline = time.monotonic() + timeout_s
        while set(result.topics) & set(admin.list_topics()):  # deletion is asynchronous: recreating needs it done
            if time.monotonic() > deadline:
                raise DevstackError(f"topics {result.topics} still listed {timeout_s:.0f}s after their deletion")
            time.sleep(1)
    finally:
        admin.close()
    return result
