"""An inventory of one deployment's pipeline state: what a migration must carry over exactly.

Kafka: every partition's log start and end offsets and the ingest group's committed offset. Elasticsearch:
documents per index (events by topic, dead letters by source topic), and every drain manifest reduced to what
defines correctness (offset ranges, counts, status, touched hours; not when it finished). S3: the archive's
committed days and the ETag of each day's manifest. Two inventories taken with ingest paused are equal when
the target holds the source's state; ``compare`` names every difference.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from elasticsearch import Elasticsearch, helpers
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pydantic import BaseModel, Field

from eventpipe.archive.layout import committed_days, manifest_key
from eventpipe.events.topics import DLQ_TOPIC, SOURCE_TOPICS
from eventpipe.ingest.kafka_io import CONSUMER_GROUP
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS, MANIFEST_INDEX, client
from eventpipe.storage.s3 import s3_client


class PartitionState(BaseModel):
    log_start: int
    log_end: int
    committed: int | None = None  # the ingest group's; None where it never committed


class Inventory(BaseModel):
    """One side of a migration, taken while ingest is paused (persisted as the migration's report)."""

    taken_at: datetime
    kafka_bootstrap: str
    elastic_url: str
    archive_bucket: str
    topics: dict[str, dict[int, PartitionState]] = Field(default_factory=dict)
    events_per_index: dict[str, int] = Field(default_factory=dict)  # of the inventoried topics only
    dead_letters: dict[str, int] = Field(default_factory=dict)  # by source topic
    manifests: dict[str, str] = Field(default_factory=dict)  # manifest id -> digest of its defining fields
    archive_days: dict[str, str] = Field(default_factory=dict)  # day -> ETag of its _MANIFEST.json


def manifest_digest(source: dict) -> str:
    """What defines a drain manifest's outcome; ``finished_at`` and ``attempts`` differ between equal reruns."""
    keep = ("topic", "interval_start", "interval_end", "status", "kind", "partitions", "consumed", "indexed",
            "dead_lettered", "touched_hours")  # fmt: skip
    canonical = json.dumps({k: source.get(k) for k in keep}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def kafka_state(settings: Settings, topics: list[str]) -> dict[str, dict[int, PartitionState]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=None, enable_auto_commit=False)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    try:
        committed = admin.list_group_offsets(CONSUMER_GROUP).get(CONSUMER_GROUP, {})
        state: dict[str, dict[int, PartitionState]] = {}
        for topic in topics:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            starts, ends = consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
            state[topic] = {
                tp.partition: PartitionState(
                    log_start=starts[tp],
                    log_end=ends[tp],
                    committed=committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
                )
                for tp in partitions
            }
        return state
    finally:
        consumer.close()
        admin.close()


def _counts_by(es: Elasticsearch, index: str, field: str, values: list[str], by: str) -> dict[str, int]:
    es.indices.refresh(index=index, ignore_unavailable=True)
    response = es.search(
        index=index,
        size=0,
        query={"terms": {field: values}},
        aggs={"by": {"terms": {"field": by, "size": 10_000}}},
        ignore_unavailable=True,
    )
    buckets = response.get("aggregations", {}).get("by", {}).get("buckets", [])
    return {str(b["key"]): int(b["doc_count"]) for b in buckets}


def elastic_state(es: Elasticsearch, topics: list[str]) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    events = _counts_by(es, EVENTS_ALIAS, "kafka.topic", topics, "_index")
    letters = _counts_by(es, DLQ_INDEX, "source_topic", topics, "source_topic")
    es.indices.refresh(index=MANIFEST_INDEX, ignore_unavailable=True)
    hits = helpers.scan(es, index=MANIFEST_INDEX, query={"query": {"terms": {"topic": topics}}},
                        ignore_unavailable=True)  # fmt: skip
    manifests = {hit["_id"]: manifest_digest(hit["_source"]) for hit in hits}
    return events, letters, manifests


def archive_state(settings: Settings) -> dict[str, str]:
    s3 = s3_client(settings)
    return {
        day.isoformat(): s3.head_object(Bucket=settings.s3.bucket, Key=manifest_key(day))["ETag"]
        for day in committed_days(s3, settings.s3.bucket)
    }


def take_inventory(settings: Settings, topics: list[str], *, archive: bool = True) -> Inventory:
    """The inventory of ``topics`` on the deployment ``settings`` points at (with the dead-letter topic when
    ``topics`` are all the source topics)."""
    es = client(settings)
    try:
        events, letters, manifests = elastic_state(es, topics)
    finally:
        es.close()
    return Inventory(
        taken_at=datetime.now(timezone.utc),
        kafka_bootstrap=settings.kafka.bootstrap,
        elastic_url=settings.elastic.url,
        archive_bucket=settings.s3.bucket,
        # the dead-letter topic is shared by every source topic: its offsets compare only in a whole inventory
        topics=kafka_state(settings, [*topics, DLQ_TOPIC] if set(topics) >= set(SOURCE_TOPICS.values()) else topics),
        events_per_index=events,
        dead_letters=letters,
        manifests=manifests,
        archive_days=archive_state(settings) if archive else {},
    )
