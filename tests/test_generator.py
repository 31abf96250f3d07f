"""The generator is deterministic, valid where it should be and broken where it says."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from eventpipe.events.generator import CLOCK_SKEW_KINDS, GeneratorConfig, generate, utc
from eventpipe.events.schema import parse_event
from eventpipe.ingest.window import EventTimeWindow

CONFIG = GeneratorConfig(utc("2026-11-20T00:00:00"), utc("2026-11-20T00:30:00"), rate_per_s=2, malformed_rate=0.05)


def test_same_seed_same_stream() -> None:
    first = [(r.key, r.value, r.timestamp_ms) for r in generate(CONFIG)]
    second = [(r.key, r.value, r.timestamp_ms) for r in generate(CONFIG)]
    assert first == second
    assert len(first) == 3600


def test_records_stay_in_span_and_ids_are_unique() -> None:
    records = list(generate(CONFIG))
    lo, hi = CONFIG.start.timestamp() * 1000, CONFIG.end.timestamp() * 1000
    assert all(lo <= r.timestamp_ms < hi for r in records)
    ids = [r.event.event_id for r in records if r.event]
    assert len(ids) == len(set(ids))


def test_malformed_records_fail_validation_and_valid_ones_pass() -> None:
    records = list(generate(CONFIG))
    malformed = [r for r in records if r.malformed]
    kinds = Counter(r.malformed for r in malformed)
    assert kinds == {
        "not-json": 29,
        "missing-field": 11,
        "wrong-type": 34,
        "bad-time": 27,
        "non-finite": 18,
        "epoch-reset": 23,
        "far-future": 24,
        "slow-drift": 23,
    }
    for record in malformed:
        if record.malformed in CLOCK_SKEW_KINDS:
            continue
        with pytest.raises((ValidationError, ValueError)):
            parse_event(record.value)
    for record in records:
        if record.event:
            assert parse_event(record.value) == record.event


def test_clock_skew_records_are_valid_events_outside_the_default_window() -> None:
    """A broken clock writes a valid event; only its distance from the (true) Kafka timestamp gives it away."""
    window = EventTimeWindow()
    skewed = [r for r in generate(CONFIG) if r.malformed in CLOCK_SKEW_KINDS]
    years = {}
    for record in skewed:
        event_time = parse_event(record.value).event_time
        event_ms = int(event_time.timestamp() * 1000)
        assert window.reason(event_ms, record.timestamp_ms) is not None, record.value
        years.setdefault(record.malformed, set()).add(event_time.year)
    assert years == {"epoch-reset": {1970}, "far-future": {9999}, "slow-drift": {2026}}


def test_anomalies_are_far_from_normal_values() -> None:
    records = [r for r in generate(GeneratorConfig(CONFIG.start, CONFIG.end, rate_per_s=5, anomaly_rate=0.05))]
    anomalies = [r for r in records if r.anomaly]
    assert len(anomalies) > 100
    assert all(r.event is not None and r.anomaly["event_id"] == r.event.event_id for r in anomalies if r.event)
