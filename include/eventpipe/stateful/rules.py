"""Pure restart and expansion rules, as Strimzi's KafkaRoller and ECK's PVC expansion apply them.

Pure functions of plain data, so each is unit-tested without a service; the readers (``kafka_state``,
``es_state``, ``expand``) collect their inputs from Kafka, Elasticsearch and the Kubernetes API.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eventpipe.errors import InvalidArgument, InvalidConfiguration

# --- Kafka (Strimzi's KafkaAvailability) ------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionState:
    """One partition as the restart rule needs it: where its replicas are, which are in sync, its min ISR."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    min_isr: int  # the topic's effective min.insync.replicas (override or broker default)

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"


@dataclass(frozen=True)
class Verdict:
    """A rule's answer: ``allowed``, or the reason it is not and what blocks it (partitions, status)."""

    allowed: bool
    reason: str
    blocking: tuple[str, ...] = ()


def partitions_at_risk(partitions: Iterable[PartitionState], broker: int) -> list[PartitionState]:
    """Partitions with a replica on ``broker`` whose ISR without it falls below their min ISR.

    With acks=all those partitions would refuse writes (NotEnoughReplicas) while the broker is down,
    which is what rolling it would cost; a partition already under min ISR counts too (it stays there).
    """
    return [p for p in partitions if broker in p.replicas and len(set(p.isr) - {broker}) < p.min_isr]


def may_restart_broker(partitions: Iterable[PartitionState], broker: int) -> Verdict:
    """May ``broker`` restart now? Not if any partition it hosts would drop under min.insync.replicas."""
    risky = sorted(partitions_at_risk(partitions, broker), key=lambda p: (p.topic, p.partition))
    if risky:
        names = tuple(p.name for p in risky)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        reason = f"broker {broker}: {len(names)} partition(s) would drop under min.insync.replicas: {shown}"
        return Verdict(False, reason, names)
    return Verdict(True, f"broker {broker}: every partition it hosts keeps min.insync.replicas without it")


def broker_in_sync(partitions: Iterable[PartitionState], broker: int) -> Verdict:
    """Is ``broker`` back in the ISR of every partition it hosts? (The roll's "recovered" check.)"""
    lagging = sorted(p.name for p in partitions if broker in p.replicas and broker not in p.isr)
    if lagging:
        return Verdict(False, f"broker {broker}: not yet in sync for {len(lagging)} partition(s)", tuple(lagging))
    return Verdict(True, f"broker {broker}: in sync for every partition it hosts")


def roll_order(brokers: Iterable[int], active_controller: int | None) -> list[int]:
    """Brokers in restart order: by id, the active controller last (one controller election per roll)."""
    ordered = sorted(set(brokers))
    if active_controller in ordered:
        ordered.remove(active_controller)
        ordered.append(active_controller)
    return ordered


# --- Elasticsearch (ECK) ----------------------------------------------------------------------------------------

DELAYED_TIMEOUT_SETTING = "index.unassigned.node_left.delayed_timeout"


def may_restart_es_node(health_status: str) -> Verdict:
    """May an Elasticsearch node restart now? Only while the cluster is green: every replica assigned,
    so the node's shards have a copy elsewhere (ECK's PDB and upgrade predicate)."""
    if health_status == "green":
        return Verdict(True, "cluster is green")
    return Verdict(
        False, f"cluster is {health_status}, not green: a node restart could lose the last copy", (health_status,)
    )


def delayed_allocation(timeout: str = "5m") -> dict[str, Any]:
    """Index settings body that delays replica reallocation after a node leaves.

    A restarting node then gets its own shard copies back (recovery from its local data) instead of the
    cluster copying them to the remaining nodes and back again.
    """
    return {"settings": {DELAYED_TIMEOUT_SETTING: timeout}}


def restart_shutdown_body(reason: str, allocation_delay: str = "5m") -> dict[str, Any]:
    """Body of ``PUT _nodes/<id>/shutdown`` announcing a restart (not a removal): shards stay put."""
    return {"type": "restart", "reason": reason, "allocation_delay": allocation_delay}


# --- Volume expansion (Strimzi's PvcReconciler, ECK's pvc_expansion) --------------------------------------------


class ShrinkRefused(InvalidArgument):
    """A volume was asked to shrink: no CSI driver can, and neither operator tries."""


class ExpansionNotAllowed(InvalidConfiguration):
    """The claim's StorageClass does not set allowVolumeExpansion."""


def plan_growth(claim: str, current: int, requested: int, class_allows_expansion: bool) -> bool:
    """True if ``claim`` must grow from ``current`` to ``requested`` bytes, False if it already has that size.

    A smaller request raises :class:`ShrinkRefused`; growing under a class without allowVolumeExpansion
    raises :class:`ExpansionNotAllowed` (the API server would reject the patch anyway, less clearly).
    """
    if requested < current:
        raise ShrinkRefused(f"{claim}: cannot shrink from {current} to {requested} bytes; volumes only grow")
    if requested == current:
        return False
    if not class_allows_expansion:
        raise ExpansionNotAllowed(f"{claim}: its StorageClass does not allow volume expansion")
    return True


FILESYSTEM_RESIZE_PENDING = "FileSystemResizePending"
RESIZING = "Resizing"


def needs_pod_restart(conditions: Sequence[str]) -> bool:
    """True when the claim waits for a node-side filesystem resize that only a remount performs.

    The controller side is done (the volume is larger) but the kubelet resizes the filesystem only when
    it stages the volume again: with offline expansion (this host has no CAP_SYS_RESOURCE for an online
    resize2fs) that means restarting the pod, as Strimzi does for FileSystemResizePending.
    """
    return FILESYSTEM_RESIZE_PENDING in conditions
