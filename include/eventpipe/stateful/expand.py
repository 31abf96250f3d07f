"""Grow a StatefulSet's volumes one pod at a time, each step gated like Strimzi's and ECK's rolls.

Every claim is checked before any is touched (a shrink on the third pod must not leave the first two
grown). Then, per pod in the gate's order: request the new size on its PVC; wait until the controller
side is done (capacity reached, or ``FileSystemResizePending``); if the filesystem waits for a remount
(offline expansion), wait for the gate (no partition under min ISR / cluster green), prepare, delete the
pod and wait for it to be Ready again; then verify the capacity and wait for the gate once more, so the
next pod starts from a healthy cluster. Finally the StatefulSet's claim template gets the new size, so
pods added later match (templates are immutable: orphan-delete and recreate, as ECK does).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from eventpipe.stateful.rules import Verdict, needs_pod_restart, plan_growth


@dataclass(frozen=True)
class ClaimState:
    """One pod's claim: what it asks for (spec), what it has (status), and its resize conditions."""

    name: str
    pod: str
    ordinal: int
    requested: int  # spec.resources.requests.storage, bytes
    capacity: int  # status.capacity.storage, bytes
    conditions: tuple[str, ...] = ()


class Cluster(Protocol):
    """The Kubernetes operations the expansion needs (``kube.KubeCluster`` is the real one)."""

    def claims(self, statefulset: str, template: str) -> list[ClaimState]: ...
    def class_allows_expansion(self, statefulset: str, template: str) -> bool: ...
    def claim(self, name: str) -> ClaimState: ...
    def request_size(self, claim: str, size: int) -> None: ...
    def pod_uid(self, pod: str) -> str | None: ...
    def pod_ready(self, pod: str) -> bool: ...
    def delete_pod(self, pod: str) -> None: ...
    def update_template(self, statefulset: str, template: str, size: int) -> None: ...


class Gate(Protocol):
    """The service's restart rule (``gates``): who goes in which order, and whether one may go now."""

    def order(self, ordinals: list[int]) -> list[int]: ...
    def check(self, ordinal: int) -> Verdict: ...
    def before_restart(self, ordinal: int, pod: str) -> None: ...
    def after_restart(self, ordinal: int, pod: str) -> None: ...
    def recovered(self, ordinal: int) -> Verdict: ...


class StepTimeout(TimeoutError):
    """A step waited longer than allowed; the message says for what and the last reason (retryable)."""


@dataclass
class Waiter:
    """Polls a condition until true or ``timeout_s``; injectable clock and sleep keep unit tests instant."""

    timeout_s: float = 600.0
    interval_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def until(self, what: str, condition: Callable[[], tuple[bool, str]]) -> None:
        deadline = self.clock() + self.timeout_s
        while True:
            done, reason = condition()
            if done:
                return
            if self.clock() >= deadline:
                raise StepTimeout(f"{what}: not within {self.timeout_s:.0f}s; last: {reason}")
            self.sleep(self.interval_s)


@dataclass
class Timeline:
    """What happened when, in seconds since the start: the expansion drill's timeline."""

    clock: Callable[[], float] = time.monotonic
    start: float = field(default=0.0)
    events: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def mark(self, pod: str, event: str) -> None:
        self.events.append({"t_s": round(self.clock() - self.start, 1), "pod": pod, "event": event})


def check_all(claims: list[ClaimState], size: int, class_allows: bool) -> list[ClaimState]:
    """The claims that must grow, after checking every one (shrink or a fixed class: nothing is touched)."""
    grow = []
    for claim in claims:
        current = max(claim.requested, claim.capacity)
        if plan_growth(claim.name, current, size, class_allows) or claim.capacity < size:
            grow.append(claim)
    return grow


def expand_statefulset(
    cluster: Cluster, gate: Gate, statefulset: str, template: str, size: int, waiter: Waiter | None = None
) -> dict[str, object]:
    """Grow every claim of ``template`` in ``statefulset`` to ``size`` bytes, one pod at a time."""
    waiter = waiter or Waiter()
    timeline = Timeline(waiter.clock)
    claims = cluster.claims(statefulset, template)
    if not claims:
        raise LookupError(f"statefulset {statefulset}: no claims of template {template}")
    grow = check_all(claims, size, cluster.class_allows_expansion(statefulset, template))
    by_ordinal = {c.ordinal: c for c in grow}
    restarted = []
    for ordinal in gate.order(sorted(by_ordinal)):
        claim = by_ordinal[ordinal]
        if _grow_one(cluster, gate, claim, size, waiter, timeline):
            restarted.append(claim.pod)
    if grow:
        cluster.update_template(statefulset, template, size)
        timeline.mark(statefulset, "claim template updated")
    return {
        "statefulset": statefulset,
        "template": template,
        "size_bytes": size,
        "grown": [c.name for c in grow],
        "unchanged": sorted({c.name for c in claims} - {c.name for c in grow}),
        "restarted": restarted,
        "timeline": timeline.events,
    }


def _grow_one(cluster: Cluster, gate: Gate, claim: ClaimState, size: int, waiter: Waiter, timeline: Timeline) -> bool:
    """One pod's step; True if its pod was restarted for an offline filesystem resize."""
    pod = claim.pod
    waiter.until(f"{pod}: restart gate before growing", lambda: _open(gate.check(claim.ordinal)))
    cluster.request_size(claim.name, size)
    timeline.mark(pod, f"requested {size} bytes")

    def controller_done() -> tuple[bool, str]:
        now = cluster.claim(claim.name)
        done = now.capacity >= size or needs_pod_restart(now.conditions)
        return done, f"capacity {now.capacity}, conditions {list(now.conditions)}"

    waiter.until(f"{claim.name}: controller resize", controller_done)
    restarted = needs_pod_restart(cluster.claim(claim.name).conditions)
    if restarted:
        timeline.mark(pod, "FileSystemResizePending: restarting the pod")
        waiter.until(f"{pod}: restart gate", lambda: _open(gate.check(claim.ordinal)))
        old_uid = cluster.pod_uid(pod)
        gate.before_restart(claim.ordinal, pod)
        cluster.delete_pod(pod)
        waiter.until(f"{pod}: back and Ready", lambda: _replaced_and_ready(cluster, pod, old_uid))
        gate.after_restart(claim.ordinal, pod)
        timeline.mark(pod, "pod Ready again")

    def grown() -> tuple[bool, str]:
        now = cluster.claim(claim.name)
        return now.capacity >= size, f"capacity {now.capacity} of {size}"

    waiter.until(f"{claim.name}: filesystem capacity", grown)
    timeline.mark(pod, "capacity verified")
    waiter.until(f"{pod}: back in sync", lambda: _open(gate.recovered(claim.ordinal)))
    timeline.mark(pod, "back in sync")
    return restarted


def _open(verdict: Verdict) -> tuple[bool, str]:
    return verdict.allowed, verdict.reason


def _replaced_and_ready(cluster: Cluster, pod: str, old_uid: str | None) -> tuple[bool, str]:
    uid = cluster.pod_uid(pod)
    if uid is None or uid == old_uid:
        return False, "old pod still there" if uid else "no pod yet"
    return cluster.pod_ready(pod), "new pod not Ready yet"
