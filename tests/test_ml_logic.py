"""Training-day selection without Spark or services: a time split, never a random one."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from eventpipe.errors import InvalidArgument
from eventpipe.ml.train import select_days

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
