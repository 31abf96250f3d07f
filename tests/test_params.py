"""One parser per kind of task argument, and CLI choices that match what the code accepts."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from eventpipe.archive.cli import RestoreSource
from eventpipe.errors import InvalidArgument
from eventpipe.events.topics import SOURCE_TOPICS
from eventpipe.ml.cli import ScoreSource
from eventpipe.ml.score import SOURCES
from eventpipe.params import parse_day, parse_instant, parse_interval, parse_optional_day, parse_topics, split_csv

ALL = list(SOURCE_TOPICS.values())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ALL),  # an unset DAG param renders empty: every source topic
        (None, ALL),
        (" , ,", ALL),
        ("a", ["a"]),
        ("a,b", ["a", "b"]),
        (" a , b ,", ["a", "b"]),  # what a hand-typed --topics looks like
        (["a", " b", ""], ["a", "b"]),  # a sensor's op_kwarg that was never joined
    ],
)
def test_parse_topics(value: str | list[str] | None, expected: list[str]) -> None:
    assert parse_topics(value) == expected


def test_split_csv_has_no_default() -> None:
    assert split_csv("") == [] and split_csv(None) == []
    assert split_csv("snap-a,,snap-b ") == ["snap-a", "snap-b"]


def test_parse_interval() -> None:
    lo, hi = parse_interval("2026-03-01T10:00", "2026-03-01T11:00:00+00:00")
    assert lo == datetime(2026, 3, 1, 10, tzinfo=timezone.utc) and hi - lo == timedelta(hours=1)
    lo, hi = parse_interval("2026-03-01T10:00:00Z", "2026-03-01T12:00:00+01:00")  # offsets are honoured
    assert hi - lo == timedelta(hours=1)
    for start, end in [("2026-03-01T11:00", "2026-03-01T11:00"), ("2026-03-01T11:00", "2026-03-01T10:00")]:
        with pytest.raises(InvalidArgument, match="must be after"):
            parse_interval(start, end)
    with pytest.raises(InvalidArgument, match="--start: expected an ISO-8601 time, got 'noon'"):
        parse_interval("noon", "2026-03-01T10:00")
    assert parse_instant("2026-03-01").tzinfo is timezone.utc


def test_parse_day() -> None:
    assert parse_day("2026-03-01") == date(2026, 3, 1)
    assert parse_day("2026-03-01T00:00:00+00:00") == date(2026, 3, 1)  # a DAG's data_interval_start
    assert parse_optional_day("") is None
    with pytest.raises(InvalidArgument, match="--since: expected YYYY-MM-DD, got '1st of May'"):
        parse_optional_day("1st of May", name="--since")
    with pytest.raises(InvalidArgument):
        parse_day("2026-02-30")


def test_cli_choices_match_the_code() -> None:
    assert {s.value for s in ScoreSource} == set(SOURCES)
    assert [s.value for s in RestoreSource] == ["snapshot", "archive", "both"]
