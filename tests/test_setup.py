"""`eventpipe setup` creates what the tasks expect, and a second run changes nothing."""

from __future__ import annotations

import uuid

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaAdminClient

from devstack.elasticsearch import snapshot_root
from eventpipe.bootstrap import run_setup
from eventpipe.events.topics import DLQ_TOPIC, SOURCE_TOPICS
from eventpipe.settings import Settings
from eventpipe.storage.elastic import ANOMALY_INDEX, DLQ_INDEX, MANIFEST_INDEX, ROLLUP_INDEX
from eventpipe.storage.s3 import s3_client

pytestmark = pytest.mark.services


def test_setup_creates_everything_and_is_idempotent(services: Settings, es: Elasticsearch) -> None:
    tag = uuid.uuid4().hex[:8]
    fresh = services.updated(
        s3={"bucket": f"setup-{tag}"},
        archive={
            "repository": f"setup-{tag}",
            "repository_type": "fs",
            "snapshot_bucket": f"setup-snap-{tag}",
            "fs_location": str(snapshot_root() / f"setup-{tag}"),
        },
    )
    s3 = s3_client(fresh)
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {f"setup-{tag}", f"setup-snap-{tag}"}.isdisjoint(buckets)

    first = run_setup(fresh)
    second = run_setup(fresh)

    assert first.buckets == second.buckets == [f"setup-{tag}", f"setup-snap-{tag}"]
    assert {f"setup-{tag}", f"setup-snap-{tag}"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert es.snapshot.get_repository(name=f"setup-{tag}")[f"setup-{tag}"]["type"] == "fs"
    assert es.indices.exists_index_template(name="eventpipe-events")
    # the shard budget every new day draws on: open shards against max_shards_per_node x data nodes
    health = es.cluster.health()
    per_node = int(
        es.cluster.get_settings(include_defaults=True, flat_settings=True)["defaults"]["cluster.max_shards_per_node"]
    )
    assert second.shards["max_shards_per_node"] == per_node
    assert second.shards["limit"] == per_node * health["number_of_data_nodes"]
    assert 0 < int(second.shards["open"]) < second.shards["limit"]  # type: ignore[operator]
    assert all(es.indices.exists(index=i) for i in (DLQ_INDEX, ROLLUP_INDEX, MANIFEST_INDEX, ANOMALY_INDEX))
    admin = KafkaAdminClient(bootstrap_servers=fresh.kafka.bootstrap)
    try:
        assert {*SOURCE_TOPICS.values(), DLQ_TOPIC} <= set(admin.list_topics())
    finally:
        admin.close()
    es.snapshot.delete_repository(name=f"setup-{tag}")
