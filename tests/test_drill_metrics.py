"""The restart drill's arithmetic (bench/drill_metrics.py): no services, instant."""

from __future__ import annotations

import pytest

from bench.drill_metrics import Phase, account, by_phase, goals, percentile, recovered_at, rejoin_span, summary


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_percentile_refuses_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="percentile of no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="is not in"):
        percentile([1.0], 0)


def test_summary_of_nothing_is_none_not_zero() -> None:
    assert summary([]) == {"n": 0, "p50": None, "p99": None, "max": None}
    assert summary([0.1, 0.3, 0.2]) == {"n": 3, "p50": 0.2, "p99": 0.3, "max": 0.3}


def test_samples_go_to_the_phase_their_time_falls_in() -> None:
    phases = [Phase("a", 0, 10), Phase("b", 10, 20)]
    got = by_phase([(0, "x"), (9.99, "y"), (10, "z"), (19, "w"), (25, "outside"), (-1, "before")], phases)
    assert got == {"a": ["x", "y"], "b": ["z", "w"]}


def test_recovered_at_is_the_first_good_poll_after_the_last_bad_one() -> None:
    urp = [(0, 0), (2, 0), (4, 5), (6, None), (8, 3), (10, 0), (12, 4), (14, 0), (16, 0)]
    assert recovered_at(urp, 0, 16, lambda v: v == 0) == 14  # the flap at 12 counts: it was not over at 10
    assert recovered_at(urp, 13, 16, lambda v: v == 0) == 13  # healthy throughout the window: at once
    assert recovered_at(urp, 0, 12, lambda v: v == 0) is None  # still bad at the window's end


def test_an_unknown_poll_counts_as_not_recovered() -> None:
    health = [(0, "green"), (2, None), (4, "yellow"), (6, "green")]
    assert recovered_at(health, 0, 6, lambda v: v == "green") == 6
    assert recovered_at([(0, "green"), (2, None)], 0, 2, lambda v: v == "green") is None


def test_accounting_balances_when_every_offset_is_indexed_or_dead_lettered_once() -> None:
    indexed = [(0, 0, "e0"), (0, 2, "e2"), (1, 0, "e3")]
    books = account(4, 0, {0: 3, 1: 1}, indexed, [(0, 1)], ["e0", "e2", "e3"])
    assert books.balanced
    assert books.as_dict()["offsets"] == 4


def test_accounting_names_each_kind_of_imbalance() -> None:
    # offset 0/1 missing, offset 0/2 indexed twice under two ids, e0 twice, an acked id never indexed
    indexed = [(0, 0, "e0"), (0, 2, "e2"), (0, 2, "e0")]
    books = account(3, 1, {0: 3}, indexed, [], ["e0", "e2", "lost"])
    assert not books.balanced
    assert (books.duplicate_event_ids, books.offsets_on_two, books.offsets_missing, books.acked_ids_missing) == (
        1,
        1,
        1,
        1,
    )
    # an offset both indexed and dead-lettered is double-counted too
    assert account(1, 0, {0: 1}, [(0, 0, "e0")], [(0, 0)], ["e0"]).offsets_on_two == 1


def test_goals_as_ratios() -> None:
    freshness, sync = goals(10.0, {"b": 15.0}, keep_sync_s=4.0, lost_sync_s=60.0)
    assert (freshness.ratio, freshness.met) == (1.5, True)
    assert (sync.ratio, sync.met) == (15.0, True)
    freshness, sync = goals(10.0, {"c": 25.0}, keep_sync_s=8.0, lost_sync_s=60.0)
    assert (freshness.ratio, freshness.met) == (2.5, False)
    assert (sync.ratio, sync.met) == (7.5, False)


def test_a_kept_pvc_faster_than_one_poll_is_floored_to_the_poll() -> None:
    (sync,) = goals(None, {}, keep_sync_s=0.0, lost_sync_s=30.0, resolution_s=2.0)
    assert sync.ratio == 15.0  # 30 / 2, not a division by zero or an infinite ratio


def test_a_goal_not_measured_is_neither_met_nor_failed() -> None:
    freshness, sync = goals(None, {"b": 5.0}, keep_sync_s=None, lost_sync_s=30.0)
    assert freshness.met is None and sync.met is None


def test_rejoin_span_is_first_to_last_partition_back_in_sync() -> None:
    lost = [(0, 0), (2, 57), (15, 57), (17, 3), (39, 2), (41, 0), (43, 0)]
    assert rejoin_span(lost, 0, 43) == 24.0  # small partitions back at 17, the big ones at 41
    kept = [(0, 57), (28, 57), (30, 0), (32, 0)]
    assert rejoin_span(kept, 0, 32) == 0.0  # every ISR at once
    assert rejoin_span([(0, 0), (2, 0)], 0, 2) is None  # never out of sync
    assert rejoin_span([(0, 5), (2, 4)], 0, 2) is None  # never back
