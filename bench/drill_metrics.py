"""The restart drill's arithmetic, apart from any service: percentiles, which phase a sample belongs to,
recovery times from polled samples, the end-of-run accounting and the goal ratios.

``bench/drill_restarts.py`` measures; this module only reduces what it measured, so it is unit-tested
(tests/test_drill_metrics.py) without Kafka, Elasticsearch or a cluster.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least q% of the values at or below it)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p99, max and the count; all None (count 0) when there is nothing to summarize."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


@dataclass
class Phase:
    """One phase of the drill: [start, end) in wall-clock seconds; what was done and measured in it."""

    name: str
    start: float
    end: float
    details: dict[str, Any] = field(default_factory=dict)

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


def by_phase(samples: Iterable[tuple[float, T]], phases: Sequence[Phase]) -> dict[str, list[T]]:
    """Each phase's values, a sample going to the phase its time falls in (outside every phase: dropped)."""
    out: dict[str, list[T]] = {p.name: [] for p in phases}
    for t, value in samples:
        for phase in phases:
            if phase.holds(t):
                out[phase.name].append(value)
                break
    return out


def recovered_at(
    samples: Sequence[tuple[float, T]], since: float, until: float, healthy: Callable[[T], bool]
) -> float | None:
    """When the polled state became healthy for good within [since, until]: the first healthy sample after
    the last unhealthy one; ``since`` if every sample was healthy; None if it was still unhealthy at the end.

    A sample whose value is None (the poll itself failed, e.g. the admin client lost its broker) counts as
    unhealthy: the state was not known to be good.
    """
    window = [(t, v) for t, v in samples if since <= t <= until]
    last_bad = max((t for t, v in window if v is None or not healthy(v)), default=None)
    if last_bad is None:
        return since
    return next((t for t, v in window if t > last_bad and v is not None and healthy(v)), None)


def rejoin_span(samples: Sequence[tuple[float, int | None]], since: float, until: float) -> float | None:
    """Seconds from the first partition back in sync (the count drops below its peak) until the last (0 for good).

    The part of a broker's catch-up that depends on how much it must fetch: a broker that kept its volume
    rejoins every ISR at once (0 here), one that lost it rejoins small partitions first and big ones last.
    None when the count never rose or never came back to 0 in the window.
    """
    window = [(t, v) for t, v in samples if since <= t <= until and v is not None]
    peak = max((v for _, v in window), default=0)
    end = recovered_at(samples, since, until, lambda v: v == 0)
    if peak == 0 or end is None:
        return None
    peak_at = next(t for t, v in window if v == peak)
    first_drop = next((t for t, v in window if t > peak_at and v < peak), end)
    return round(end - first_drop, 1)


def seconds_since(t: float | None, since: float) -> float | None:
    return None if t is None else round(t - since, 1)


@dataclass(frozen=True)
class Accounting:
    """The end of the run: every acked event indexed once or dead-lettered, every offset accounted for."""

    produced: int  # records the producer got an ack for
    send_failures: int  # records whose send failed for good (none expected)
    offsets: int  # sum of the topic's end offsets (it starts at 0)
    indexed: int  # event documents of the topic
    dead_lettered: int  # dead letters of the topic
    duplicate_event_ids: int  # event ids on more than one document
    offsets_on_two: int  # offsets found both indexed and dead-lettered, or twice
    offsets_missing: int  # offsets below the end found nowhere
    acked_ids_missing: int  # ids of acked valid events not found indexed

    @property
    def balanced(self) -> bool:
        return (
            self.produced == self.indexed + self.dead_lettered == self.offsets
            and self.duplicate_event_ids == self.offsets_on_two == self.offsets_missing == self.acked_ids_missing == 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "balanced": self.balanced}


def account(
    produced: int,
    send_failures: int,
    end_offsets: dict[int, int],
    indexed: Sequence[tuple[int, int, str]],
    dead_letters: Sequence[tuple[int, int]],
    acked_valid_ids: Iterable[str],
) -> Accounting:
    """``indexed``: (partition, offset, event id) of every event document; ``dead_letters``: (partition, offset)."""
    ids = Counter(event_id for _, _, event_id in indexed)
    seen = Counter([(p, o) for p, o, _ in indexed] + list(dead_letters))
    expected = {(p, o) for p, end in end_offsets.items() for o in range(end)}
    return Accounting(
        produced=produced,
        send_failures=send_failures,
        offsets=sum(end_offsets.values()),
        indexed=len(indexed),
        dead_lettered=len(dead_letters),
        duplicate_event_ids=sum(1 for n in ids.values() if n > 1),
        offsets_on_two=sum(1 for n in seen.values() if n > 1),
        offsets_missing=len(expected - seen.keys()),
        acked_ids_missing=sum(1 for event_id in acked_valid_ids if event_id not in ids),
    )


@dataclass(frozen=True)
class Goal:
    name: str
    ratio: float | None
    limit: float
    at_most: bool  # True: ratio <= limit is met; False: ratio >= limit

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio <= self.limit if self.at_most else self.ratio >= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": self.ratio, "limit": self.limit, "at_most": self.at_most, "met": self.met}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 2)


def goals(
    baseline_p99: float | None,
    restart_p99s: dict[str, float | None],
    keep_sync_s: float | None,
    lost_sync_s: float | None,
    resolution_s: float = 2.0,
) -> list[Goal]:
    """The issue's goals: freshness p99 with a pod restarting on its PVC <= 2x baseline (one per such phase);
    a broker that lost its PVC takes >= 10x as long to be back in sync as one that kept it."""
    out = [
        Goal(f"freshness p99, {name} / baseline", ratio(p99, baseline_p99), 2.0, at_most=True)
        for name, p99 in restart_p99s.items()
    ]
    # a kept-PVC catch-up shorter than one poll is floored to the poll interval: the ratio is never flattered
    keep = None if keep_sync_s is None else max(keep_sync_s, resolution_s)
    out.append(Goal("back-in-sync time, lost PVC / kept PVC", ratio(lost_sync_s, keep), 10.0, at_most=False))
    return out
