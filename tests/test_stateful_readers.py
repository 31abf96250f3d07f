"""The rule readers against the real devstack Kafka (one broker) and Elasticsearch.

The devstack Kafka has a single broker, so its RF=1 partitions would fall to ISR 0 < min ISR 1 if it
restarted: the Kafka rule must refuse and name exactly the partitions it would take offline.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from elasticsearch import Elasticsearch, NotFoundError
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from eventpipe.settings import Settings
from eventpipe.stateful import es_state, kafka_state
from eventpipe.stateful.rules import DELAYED_TIMEOUT_SETTING, may_restart_broker, may_restart_es_node, roll_order

pytestmark = pytest.mark.services


@pytest.fixture()
def admin(services: Settings) -> Iterator[KafkaAdminClient]:
    admin = kafka_state.admin_client(services.kafka.bootstrap)
    yield admin
    admin.close()


@pytest.fixture()
def own_topics(admin: KafkaAdminClient) -> Iterator[dict[str, int]]:
    """Two fresh topics: one with the broker's default min ISR, one with an override of 1 (RF=1 each)."""
    tag = uuid.uuid4().hex[:8]
    wanted = {f"test-{tag}.roll-a": 3, f"test-{tag}.roll-b": 2}
    admin.create_topics(
        [
            NewTopic(f"test-{tag}.roll-a", 3, 1),
            NewTopic(f"test-{tag}.roll-b", 2, 1, topic_configs={"min.insync.replicas": "1"}),
        ]
    )
    yield wanted
    admin.delete_topics(list(wanted))


def test_single_broker_restart_refused_naming_its_partitions(
    admin: KafkaAdminClient, own_topics: dict[str, int]
) -> None:
    states = kafka_state.partition_states(admin, own_topics)
    (broker,) = kafka_state.broker_ids(admin)
    assert {(s.topic, s.partition) for s in states} == {(t, n) for t, count in own_topics.items() for n in range(count)}
    assert all(s.replicas == (broker,) and s.isr == (broker,) and s.min_isr >= 1 for s in states)
    verdict = may_restart_broker(states, broker)
    assert not verdict.allowed
    assert verdict.blocking == tuple(sorted(f"{t}-{n}" for t, count in own_topics.items() for n in range(count)))
    assert may_restart_broker(states, broker + 1).allowed  # a broker hosting none of them is free to go


def test_effective_min_isr_reads_override_and_broker_default(
    admin: KafkaAdminClient, own_topics: dict[str, int]
) -> None:
    a, b = sorted(own_topics)
    min_isr = kafka_state.effective_min_isr(admin, own_topics)
    assert min_isr[b] == 1  # the topic override
    assert min_isr[a] >= 1  # the broker's default (the devstack sets it to 1 for its single broker)


def test_active_controller_is_rolled_last(admin: KafkaAdminClient) -> None:
    controller = kafka_state.active_controller(admin)
    brokers = kafka_state.broker_ids(admin)
    assert controller in brokers  # combined mode: the devstack node is controller and broker
    assert roll_order(brokers, controller)[-1] == controller


def test_es_health_gates_a_node_restart(es: Elasticsearch) -> None:
    index = f"test-{uuid.uuid4().hex[:8]}-roll"
    es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0})
    try:
        status = es.cluster.health(index=index, wait_for_status="green", timeout="30s")["status"]
        assert status == "green"
        assert may_restart_es_node(es_state.health_status(es, index)).allowed
        # one replica on a one-node cluster can never be assigned: yellow, and the rule refuses
        es.indices.put_settings(index=index, settings={"number_of_replicas": 1})
        assert es_state.health_status(es, index) == "yellow"
        verdict = may_restart_es_node(es_state.health_status(es, index))
        assert not verdict.allowed and verdict.blocking == ("yellow",)
    finally:
        es.indices.delete(index=index)


def test_es_restart_preparation_delays_allocation(es: Elasticsearch) -> None:
    """The devstack's Elasticsearch has no x-pack shutdown module: delayed allocation alone, and said so."""
    index = f"test-{uuid.uuid4().hex[:8]}-roll"
    es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0})
    (node_id,) = es.nodes.info()["nodes"]
    try:
        how = es_state.prepare_restart(es, node_id, f"test {index}", delay="2m", indices=index)
        setting = es.indices.get_settings(index=index, name=DELAYED_TIMEOUT_SETTING, flat_settings=True)
        assert setting[index]["settings"] == {DELAYED_TIMEOUT_SETTING: "2m"}
        modules = {m["name"] for m in es.nodes.info(node_id=node_id)["nodes"][node_id]["modules"]}
        assert how == (es_state.SHUTDOWN_API if "x-pack-shutdown" in modules else es_state.DELAYED_ONLY)
        es_state.finish_restart(es, node_id, how)
    finally:
        es.indices.delete(index=index)


def test_es_restart_preparation_on_a_cluster_without_indices(es: Elasticsearch) -> None:
    """A fresh StatefulSet has no index: nothing to delay, and the restart goes ahead (it was a 404 on ``_all``)."""
    (node_id,) = es.nodes.info()["nodes"]
    none = f"test-{uuid.uuid4().hex[:8]}-absent-*"
    with pytest.raises(NotFoundError, match="index_not_found_exception"):
        es.indices.put_settings(index=none, settings={"index.number_of_replicas": 0}, allow_no_indices=False)
    how = es_state.prepare_restart(es, node_id, f"test {none}", delay="2m", indices=none)
    es_state.finish_restart(es, node_id, how)
