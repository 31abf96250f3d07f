"""Training-day selection without Spark or services: a time split, never a random one."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from eventpipe.errors import InvalidArgument
from eventpipe.ml.train import nab_weight, promotion, select_days

DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(6)]  # 03-01 … 03-06 committed


def test_last_n_days_with_the_last_as_hold_out() -> None:
    assert select_days(DAYS, days=3) == (DAYS[3:5], DAYS[5])
    assert select_days(DAYS, days=100) == (DAYS[:5], DAYS[5])  # fewer committed than asked: all of them


def test_since_until_bounds_are_inclusive() -> None:
    assert select_days(DAYS, since=DAYS[1], until=DAYS[3]) == ([DAYS[1], DAYS[2]], DAYS[3])
    assert select_days(DAYS, since=DAYS[4]) == ([DAYS[4]], DAYS[5])
    assert select_days(DAYS, days=2, until=DAYS[3]) == ([DAYS[2]], DAYS[3])  # last N of the bounded days


def test_gaps_in_the_archive_are_skipped_not_filled() -> None:
    sparse = [DAYS[0], DAYS[2], DAYS[5]]
    assert select_days(sparse, since=DAYS[1]) == ([DAYS[2]], DAYS[5])


@pytest.mark.parametrize(
    "kwargs", [{"days": 1}, {"since": date(2026, 3, 6)}, {"until": date(2026, 2, 1)}, {"since": date(2027, 1, 1)}]
)
def test_fewer_than_two_days_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="need at least 2 committed archive days"):  # permanent: no retries
        select_days(DAYS, **kwargs)  # type: ignore[arg-type]


BASELINES = {"zscore": {"f1": 0.55}, "forest": {"f1": 0.60}}


def test_promotion_needs_the_margin_over_the_champion_and_every_baseline() -> None:
    assert promotion(0.62, None, None, BASELINES, 0.01) == (
        True,
        "F1 0.6200 >= best of (zscore 0.5500, forest 0.6000) + 0.01 (no champion yet)",
    )
    refused, reason = promotion(0.605, None, None, BASELINES, 0.01)  # better than both, but not by the margin
    assert not refused and reason == "F1 0.6050 < forest 0.6000 + 0.01 (rivals: zscore 0.5500, forest 0.6000)"
    refused, reason = promotion(0.70, 3, 0.695, BASELINES, 0.01)  # far past the baselines, not past the champion
    assert not refused and reason.startswith("F1 0.7000 < champion v3 0.6950 + 0.01")
    assert promotion(0.70, 3, 0.69, BASELINES, 0.0)[0]


def test_window_score_rewards_early_detection() -> None:
    """NAB's scaled sigmoid: ~1 at the window's start (-1), 0 at its end (0), in between strictly decreasing."""
    assert nab_weight(-1.0) == pytest.approx(0.9866, abs=1e-4) and nab_weight(0.0) == 0.0
    positions = [-1.0, -0.75, -0.5, -0.25, 0.0]
    weights = [nab_weight(p) for p in positions]
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == len(weights)
