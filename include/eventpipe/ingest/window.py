"""The event-time window and the new-index budget that follows from it (docs/schema.md#event-time-window).

A device whose clock reset to 1970, or jumped to 9999, sends valid events for days that do not
exist yet or ended long ago; each such day would become a daily index, i.e. a shard. So an event's
``event_time`` must lie within a window around the record's *own* Kafka timestamp (by default 7 days
before to 1 hour after). The bound is deliberately not the drain's data interval: a record re-produced
for a replay carries a Kafka timestamp of now (or its original one) and an old ``event_time``, and is
drained by whatever interval its offset falls into; judged by its own timestamp it is still valid.

The window also bounds how many daily indices one drain can legitimately need: the calendar days that
``[interval start - past, interval end + future]`` spans. A drain creates at most that many new
indices; events that would need more (a producer that stamps Kafka timestamps with the broken clock
too) are dead-lettered as ``index_budget_exceeded`` instead of spending the cluster's shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from eventpipe.settings import Settings

OUT_OF_WINDOW = "event_time_out_of_window"
BUDGET_EXCEEDED = "index_budget_exceeded"
INDEX_CREATION = "index_creation"


@dataclass(frozen=True)
class EventTimeWindow:
    """``event_time`` must lie in ``[kafka_timestamp - past, kafka_timestamp + future]``."""

    past: timedelta = timedelta(days=7)
    future: timedelta = timedelta(hours=1)

    @classmethod
    def from_settings(cls, settings: Settings) -> EventTimeWindow:
        return cls(
            timedelta(hours=settings.kafka.event_time_max_past_hours),
            timedelta(minutes=settings.kafka.event_time_max_future_minutes),
        )

    def reason(self, event_ms: int, kafka_ms: int) -> str | None:
        """Why an event is outside the window of its record's timestamp, or None when it is inside.

        A record without a timestamp (-1, pre-0.10 message format) has nothing to be judged against.
        """
        if kafka_ms < 0:
            return None
        offset_ms = event_ms - kafka_ms
        if -self.past / timedelta(milliseconds=1) <= offset_ms <= self.future / timedelta(milliseconds=1):
            return None
        side = "before" if offset_ms < 0 else "after"
        allowed = self.past if offset_ms < 0 else self.future
        return (
            f"event_time {_iso(event_ms)} is {_span(abs(offset_ms))} {side} the record's Kafka timestamp "
            f"{_iso(kafka_ms)}; the window allows {_span(allowed / timedelta(milliseconds=1))} {side} "
            "(EVENTPIPE_EVENT_TIME_MAX_PAST_HOURS / EVENTPIPE_EVENT_TIME_MAX_FUTURE_MINUTES)"
        )

    def new_index_budget(self, start: datetime, end: datetime) -> int:
        """Calendar days of ``[start - past, end + future]``: the daily indices one drain may create."""
        first = (start - self.past).astimezone(timezone.utc).date()
        last = (max(start, end) + self.future).astimezone(timezone.utc).date()
        return (last - first).days + 1


@dataclass
class IndexBudget:
    """Which event indices exist, and the few new ones this drain (process) may still create."""

    limit: int
    existing: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)

    def admit(self, index: str) -> bool:
        """True if ``index`` exists or may be created; a new one counts against the budget."""
        if index in self.existing or index in self.created:
            return True
        if len(self.created) >= self.limit:
            return False
        self.created.add(index)
        return True

    def refusal(self, index: str) -> str:
        return (
            f"daily index {index} does not exist and this drain already created {len(self.created)} new indices, "
            f"the most its event-time window allows ({sorted(self.created)}); the event is dead-lettered "
            "instead of spending another shard"
        )


def share(limit: int, workers: int) -> int:
    """Each of ``workers`` processes' share of the budget: together they never exceed ``limit``."""
    return max(1, math.floor(limit / max(1, workers)))


def _iso(ms: int) -> str:
    try:
        return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)).isoformat(
            timespec="milliseconds"
        )
    except OverflowError:
        return f"{ms} ms since the epoch"


def _span(ms: float) -> str:
    """Exact, so a value just past the bound never reads like the bound ("7 days, 0:00:00.001")."""
    try:
        text = str(timedelta(milliseconds=ms))
    except OverflowError:
        return f"{ms / 86_400_000:.0f} days"
    return text[:-3] if "." in text else text  # microseconds -> milliseconds
