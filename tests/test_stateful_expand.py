"""`eventpipe storage expand`'s refusals and failures, on a fake cluster (error handling only).

The expansion itself is proven on the local Kubernetes cluster (tests/test_stateful_k8s.py, marker k8s).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field, replace

import pytest

from eventpipe.errors import PERMANENT_EXIT_CODE
from eventpipe.stateful.cli import parse_size
from eventpipe.stateful.expand import ClaimState, StepTimeout, Waiter, expand_statefulset
from eventpipe.stateful.gates import NoGate
from eventpipe.stateful.rules import ExpansionNotAllowed, ShrinkRefused, Verdict

GI = 1 << 30


@dataclass
class FakeCluster:
    """Records every change; a resize stays FileSystemResizePending, and a deleted pod may never come back."""

    claims_: dict[str, ClaimState]
    allows: bool = True
    pod_returns: bool = True
    changes: list[str] = field(default_factory=list)

    def claims(self, statefulset: str, template: str) -> list[ClaimState]:
        return list(self.claims_.values())

    def class_allows_expansion(self, statefulset: str, template: str) -> bool:
        return self.allows

    def claim(self, name: str) -> ClaimState:
        return self.claims_[name]

    def request_size(self, claim: str, size: int) -> None:
        self.changes.append(f"request {claim}")
        self.claims_[claim] = replace(self.claims_[claim], requested=size, conditions=("FileSystemResizePending",))

    def pod_uid(self, pod: str) -> str | None:
        return "old"

    def pod_ready(self, pod: str) -> bool:
        return False

    def delete_pod(self, pod: str) -> None:
        self.changes.append(f"delete {pod}")

    def update_template(self, statefulset: str, template: str, size: int) -> None:
        self.changes.append("template")


class ClosedGate(NoGate):
    def check(self, ordinal: int) -> Verdict:
        return Verdict(False, f"broker {ordinal}: 1 partition(s) would drop under min.insync.replicas: t-0", ("t-0",))


def three(sizes: tuple[int, int, int]) -> dict[str, ClaimState]:
    return {f"data-kafka-{n}": ClaimState(f"data-kafka-{n}", f"kafka-{n}", n, s, s) for n, s in enumerate(sizes)}


def instant(timeout_s: float = 10.0) -> Waiter:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return Waiter(timeout_s, 1.0, clock=lambda: now[0], sleep=sleep)


def test_a_shrink_anywhere_refuses_before_any_change() -> None:
    cluster = FakeCluster(three((GI, GI, 4 * GI)))
    with pytest.raises(ShrinkRefused, match="data-kafka-2: cannot shrink from 4294967296 to 2147483648 bytes"):
        expand_statefulset(cluster, NoGate(), "kafka", "data", 2 * GI, instant())
    assert cluster.changes == []


def test_a_class_without_expansion_refuses_before_any_change() -> None:
    cluster = FakeCluster(three((GI, GI, GI)), allows=False)
    with pytest.raises(ExpansionNotAllowed, match="data-kafka-0: its StorageClass does not allow volume expansion"):
        expand_statefulset(cluster, NoGate(), "kafka", "data", 2 * GI, instant())
    assert cluster.changes == []


def test_the_same_size_changes_nothing() -> None:
    cluster = FakeCluster(three((GI, GI, GI)), allows=False)
    report = expand_statefulset(cluster, NoGate(), "kafka", "data", GI, instant())
    assert cluster.changes == [] and report["grown"] == [] and report["restarted"] == []
    assert report["unchanged"] == ["data-kafka-0", "data-kafka-1", "data-kafka-2"]


def test_a_closed_gate_times_out_naming_what_blocks_and_touches_nothing() -> None:
    cluster = FakeCluster(three((GI, GI, GI)))
    with pytest.raises(StepTimeout, match=r"kafka-0: restart gate before growing: not within 10s; last: .*: t-0"):
        expand_statefulset(cluster, ClosedGate(), "kafka", "data", 2 * GI, instant())
    assert cluster.changes == []


def test_a_pod_that_never_returns_stops_the_roll_after_it() -> None:
    cluster = FakeCluster(three((GI, GI, GI)))
    with pytest.raises(StepTimeout, match="kafka-0: back and Ready: not within 10s; last: old pod still there"):
        expand_statefulset(cluster, NoGate(), "kafka", "data", 2 * GI, instant())
    assert cluster.changes == ["request data-kafka-0", "delete kafka-0"]  # kafka-1 and kafka-2 untouched


@pytest.mark.parametrize("size", ["ten", "-1Gi", "0", "1.5"])
def test_bad_sizes_are_invalid_arguments(size: str) -> None:
    from eventpipe.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="--size"):
        parse_size(size)


def test_cli_exits_permanent_for_a_bad_size() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventpipe.cli",
            "storage",
            "expand",
            "--statefulset",
            "kafka",
            "--size",
            "ten",
            "--gate",
            "kafka",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == PERMANENT_EXIT_CODE
    assert "--size 'ten' is not a Kubernetes quantity" in run.stderr
