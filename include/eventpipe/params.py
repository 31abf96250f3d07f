"""Parsing of task arguments, shared by the CLI, the sensors and the DAGs: one parser per kind of value.

Templated DAG arguments render to strings (``{{ params.topics | join(',') }}``), so lists arrive
comma-separated. A malformed value raises :class:`~eventpipe.errors.InvalidArgument`, which fails
the task without retries.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from eventpipe.errors import InvalidArgument
from eventpipe.events.generator import utc
from eventpipe.events.topics import SOURCE_TOPICS


def split_csv(value: str | Iterable[str] | None) -> list[str]:
    """Non-empty, stripped items of a comma-separated string (or of a list that was never joined)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item and item.strip()]


def parse_topics(value: str | Iterable[str] | None) -> list[str]:
    """Source topics named in ``value``; none named means all of them."""
    return split_csv(value) or list(SOURCE_TOPICS.values())


def parse_instant(text: str, *, name: str = "time") -> datetime:
    """An ISO-8601 instant; naive values are taken as UTC."""
    try:
        return utc(text)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: expected an ISO-8601 time, got {text!r}") from exc


def parse_interval(start: str, end: str) -> tuple[datetime, datetime]:
    """A data interval [start, end); it must not be empty."""
    lo, hi = parse_instant(start, name="--start"), parse_instant(end, name="--end")
    if hi <= lo:
        raise InvalidArgument(f"--end {end} must be after --start {start}")
    return lo, hi


def parse_day(text: str, *, name: str = "--day") -> date:
    """A day from ``YYYY-MM-DD`` or an ISO timestamp in it (a DAG's ``data_interval_start``)."""
    try:
        return date.fromisoformat(text[:10])
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: expected YYYY-MM-DD, got {text!r}") from exc


def parse_optional_day(text: str, *, name: str = "--day") -> date | None:
    """:func:`parse_day`, with an empty value meaning no day (an unset DAG param renders as '')."""
    return parse_day(text, name=name) if text else None
