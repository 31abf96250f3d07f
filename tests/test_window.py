"""The event-time window and new-index budget as pure functions (the drain's use of them: tests/test_clocks.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from eventpipe.events.generator import utc
from eventpipe.ingest.drain import _is_creation_failure
from eventpipe.ingest.window import EventTimeWindow, IndexBudget, share
from eventpipe.settings import Settings

WINDOW = EventTimeWindow()
KAFKA = utc("2026-11-20T10:00:00")
KAFKA_MS = int(KAFKA.timestamp() * 1000)


def _ms(delta: timedelta) -> int:
    return KAFKA_MS + int(delta / timedelta(milliseconds=1))


def test_the_window_includes_its_edges_and_nothing_past_them() -> None:
    assert WINDOW.reason(_ms(-timedelta(days=7)), KAFKA_MS) is None
    assert WINDOW.reason(_ms(timedelta(hours=1)), KAFKA_MS) is None
    assert WINDOW.reason(_ms(-timedelta(days=7, milliseconds=1)), KAFKA_MS) == (
        "event_time 2026-11-13T09:59:59.999+00:00 is 7 days, 0:00:00.001 before the record's Kafka timestamp "
        "2026-11-20T10:00:00.000+00:00; the window allows 7 days, 0:00:00 before "
        "(EVENTPIPE_EVENT_TIME_MAX_PAST_HOURS / EVENTPIPE_EVENT_TIME_MAX_FUTURE_MINUTES)"
    )
    assert WINDOW.reason(_ms(timedelta(hours=1, milliseconds=1)), KAFKA_MS).startswith(
        "event_time 2026-11-20T11:00:00.001+00:00 is 1:00:00.001 after the record's Kafka timestamp"
    )
    assert WINDOW.reason(_ms(-timedelta(days=7000)), -1) is None  # no timestamp: nothing to judge by


def test_the_window_comes_from_the_settings() -> None:
    window = EventTimeWindow.from_settings(
        Settings.from_env({"EVENTPIPE_EVENT_TIME_MAX_PAST_HOURS": "48", "EVENTPIPE_EVENT_TIME_MAX_FUTURE_MINUTES": "5"})
    )
    assert window == EventTimeWindow(timedelta(hours=48), timedelta(minutes=5))
    assert EventTimeWindow.from_settings(Settings.from_env({})) == WINDOW


@pytest.mark.parametrize(
    ("start", "hours", "budget"),
    [("2026-11-20T10:00:00", 1, 8), ("2026-11-20T23:00:00", 1, 9), ("2026-11-20T00:00:00", 24, 9)],
)
def test_the_new_index_budget_is_the_days_the_window_spans(start: str, hours: int, budget: int) -> None:
    lo = utc(start)
    assert WINDOW.new_index_budget(lo, lo + timedelta(hours=hours)) == budget
    assert WINDOW.new_index_budget(lo, lo) == WINDOW.new_index_budget(lo, lo + timedelta(minutes=1))  # ledger


def test_the_budget_counts_only_new_indices() -> None:
    budget = IndexBudget(2, existing={"eventpipe-events-2026.11.20"})
    assert budget.admit("eventpipe-events-2026.11.20")
    assert budget.admit("eventpipe-events-1970.01.01") and budget.admit("eventpipe-events-1970.01.01")
    assert budget.admit("eventpipe-events-9999.12.31")
    assert not budget.admit("eventpipe-events-1971.01.01")
    assert budget.admit("eventpipe-events-2026.11.20")  # existing days still index
    assert budget.refusal("eventpipe-events-1971.01.01").startswith(
        "daily index eventpipe-events-1971.01.01 does not exist and this drain already created 2 new indices"
    )
    assert [share(9, n) for n in (1, 2, 3, 4, 12)] == [9, 4, 3, 2, 1]


def test_index_creation_failures_are_told_apart_from_document_rejections() -> None:
    shard_limit = (
        "validation_exception: Validation Failed: 1: this action would add [1] shards, but this cluster "
        "currently has [1000]/[1000] maximum normal shards open;"
    )
    assert _is_creation_failure(shard_limit)
    assert _is_creation_failure("index_not_found_exception: no such index [eventpipe-events-1970.01.01]")
    assert not _is_creation_failure("document_parsing_exception: [1:2] failed to parse field [metrics.t]")
    assert not _is_creation_failure("version_conflict_engine_exception: [x]: version conflict")
