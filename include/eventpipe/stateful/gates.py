"""The restart gates ``expand`` waits on: the Kafka and Elasticsearch rules fed by their readers.

Pod ordinal N is Kafka node N (the manifests set ``node.id`` from the ordinal) and Elasticsearch node
``<statefulset>-N`` (``node.name`` is the pod name).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from elasticsearch import Elasticsearch
from kafka import KafkaAdminClient

from eventpipe.stateful import es_state, kafka_state
from eventpipe.stateful.rules import Verdict, broker_in_sync, may_restart_broker, may_restart_es_node, roll_order


@dataclass
class KafkaGate:
    """Strimzi's roll: active controller last; a broker goes only if no partition drops under min ISR."""

    admin: KafkaAdminClient

    def order(self, ordinals: list[int]) -> list[int]:
        return roll_order(ordinals, kafka_state.active_controller(self.admin))

    def check(self, ordinal: int) -> Verdict:
        return may_restart_broker(kafka_state.partition_states(self.admin), ordinal)

    def before_restart(self, ordinal: int, pod: str) -> None:
        """Nothing: the broker's controlled shutdown (SIGTERM, within the grace period) moves leaderships."""

    def after_restart(self, ordinal: int, pod: str) -> None:
        """Nothing: ``recovered`` waits for the broker to rejoin every ISR."""

    def recovered(self, ordinal: int) -> Verdict:
        return broker_in_sync(kafka_state.partition_states(self.admin), ordinal)


@dataclass
class ElasticsearchGate:
    """ECK's roll: only while green; delayed allocation and a restart shutdown record around each restart."""

    es: Elasticsearch
    delay: str = "5m"
    _how: dict[str, tuple[str, str]] = field(default_factory=dict)

    def order(self, ordinals: list[int]) -> list[int]:
        return sorted(ordinals)

    def check(self, ordinal: int) -> Verdict:
        return may_restart_es_node(es_state.health_status(self.es))

    def before_restart(self, ordinal: int, pod: str) -> None:
        (node_id,) = self.es.nodes.info(node_id=pod)["nodes"]  # node.name is the pod name
        self._how[pod] = (node_id, es_state.prepare_restart(self.es, node_id, f"eventpipe storage expand {pod}"))

    def after_restart(self, ordinal: int, pod: str) -> None:
        node_id, how = self._how.pop(pod)
        es_state.finish_restart(self.es, node_id, how)

    def recovered(self, ordinal: int) -> Verdict:
        return may_restart_es_node(es_state.health_status(self.es))


class NoGate:
    """For a StatefulSet with no replication-aware rule: by ordinal, always allowed."""

    def order(self, ordinals: list[int]) -> list[int]:
        return sorted(ordinals)

    def check(self, ordinal: int) -> Verdict:
        return Verdict(True, "no gate")

    def before_restart(self, ordinal: int, pod: str) -> None:
        pass

    def after_restart(self, ordinal: int, pod: str) -> None:
        pass

    def recovered(self, ordinal: int) -> Verdict:
        return Verdict(True, "no gate")
