"""The operator rules (eventpipe.stateful.rules) on hand-made inputs: pure functions, no service."""

from __future__ import annotations

import pytest

from eventpipe.errors import InvalidArgument, InvalidConfiguration
from eventpipe.stateful.rules import (
    DELAYED_TIMEOUT_SETTING,
    ExpansionNotAllowed,
    PartitionState,
    ShrinkRefused,
    delayed_allocation,
    may_restart_broker,
    may_restart_es_node,
    needs_pod_restart,
    partitions_at_risk,
    plan_growth,
    restart_shutdown_body,
    roll_order,
)


def part(topic: str, partition: int, replicas: tuple[int, ...], isr: tuple[int, ...], min_isr: int = 2):
    return PartitionState(topic, partition, replicas, isr, min_isr)


HEALTHY = [part("t", n, (0, 1, 2), (0, 1, 2)) for n in range(3)]


def test_healthy_rf3_min_isr2_lets_any_broker_restart() -> None:
    for broker in (0, 1, 2):
        verdict = may_restart_broker(HEALTHY, broker)
        assert verdict.allowed and verdict.blocking == ()


def test_broker_refused_when_a_partition_would_drop_under_min_isr() -> None:
    # t-1 has lost broker 2 from its ISR: restarting 0 or 1 leaves it with one in-sync replica < 2
    partitions = [*HEALTHY[:1], part("t", 1, (0, 1, 2), (0, 1)), HEALTHY[2]]
    verdict = may_restart_broker(partitions, 0)
    assert not verdict.allowed
    assert verdict.blocking == ("t-1",)
    assert "broker 0: 1 partition(s) would drop under min.insync.replicas: t-1" in verdict.reason
    assert may_restart_broker(partitions, 1).blocking == ("t-1",)
    assert may_restart_broker(partitions, 2).allowed  # 2 is out of t-1's ISR already: no loss from rolling it


def test_each_topic_uses_its_own_min_isr() -> None:
    partitions = [part("strict", 0, (0, 1, 2), (0, 1, 2), min_isr=3), part("lax", 0, (0, 1, 2), (0, 1, 2), min_isr=1)]
    assert [p.name for p in partitions_at_risk(partitions, 1)] == ["strict-0"]


def test_partitions_without_a_replica_on_the_broker_do_not_block() -> None:
    partitions = [part("elsewhere", 0, (1, 2), (1,))]  # under min ISR, but not hosted on 0
    assert may_restart_broker(partitions, 0).allowed
    assert not may_restart_broker(partitions, 1).allowed


def test_single_broker_rf1_refuses_every_partition() -> None:
    partitions = [part("solo", n, (1,), (1,), min_isr=1) for n in (2, 0, 1)]
    verdict = may_restart_broker(partitions, 1)
    assert verdict.blocking == ("solo-0", "solo-1", "solo-2")  # sorted, named exactly


def test_long_blocking_lists_are_shortened_in_the_reason_only() -> None:
    partitions = [part("many", n, (0,), (0,), min_isr=1) for n in range(12)]
    verdict = may_restart_broker(partitions, 0)
    assert len(verdict.blocking) == 12 and verdict.reason.endswith("and 2 more")


@pytest.mark.parametrize(
    ("brokers", "controller", "expected"),
    [([2, 0, 1], 0, [1, 2, 0]), ([2, 0, 1], 2, [0, 1, 2]), ([1, 0], None, [0, 1]), ([0, 1], 7, [0, 1])],
)
def test_roll_order_puts_the_active_controller_last(brokers, controller, expected) -> None:
    assert roll_order(brokers, controller) == expected


@pytest.mark.parametrize(("status", "allowed"), [("green", True), ("yellow", False), ("red", False)])
def test_es_node_restarts_only_while_green(status: str, allowed: bool) -> None:
    verdict = may_restart_es_node(status)
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.reason.startswith(f"cluster is {status}, not green")


def test_es_restart_bodies() -> None:
    assert delayed_allocation("3m") == {"settings": {DELAYED_TIMEOUT_SETTING: "3m"}}
    assert DELAYED_TIMEOUT_SETTING == "index.unassigned.node_left.delayed_timeout"
    assert restart_shutdown_body("roll es-1") == {"type": "restart", "reason": "roll es-1", "allocation_delay": "5m"}


def test_expansion_grows_or_does_nothing() -> None:
    assert plan_growth("data-kafka-0", 1 << 30, 2 << 30, True) is True
    assert plan_growth("data-kafka-0", 1 << 30, 1 << 30, False) is False  # equal: a no-op, even if not allowed


def test_shrink_is_refused_clearly() -> None:
    with pytest.raises(ShrinkRefused, match=r"data-kafka-0: cannot shrink from 2147483648 to 1073741824 bytes"):
        plan_growth("data-kafka-0", 2 << 30, 1 << 30, True)
    assert issubclass(ShrinkRefused, InvalidArgument)  # permanent: exit code 3, never retried


def test_growth_needs_a_class_that_allows_it() -> None:
    with pytest.raises(ExpansionNotAllowed, match="does not allow volume expansion"):
        plan_growth("elasticsearch-data-es-0", 1 << 30, 2 << 30, False)
    assert issubclass(ExpansionNotAllowed, InvalidConfiguration)


@pytest.mark.parametrize(
    ("conditions", "restart"),
    [(["FileSystemResizePending"], True), (["Resizing"], False), ([], False)],
)
def test_pod_restart_only_for_a_pending_filesystem_resize(conditions: list[str], restart: bool) -> None:
    assert needs_pod_restart(conditions) is restart
