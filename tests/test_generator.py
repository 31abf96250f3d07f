"""The generator is deterministic, valid where it should be and broken where it says."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from pydantic import ValidationError

from eventpipe.events.generator import (
    BURST_SPEEDUP,
    BUSINESS_TYPES,
    CLOCK_SKEW_KINDS,
    IOT_PROFILES,
    TAXONOMY,
    GeneratorConfig,
    Record,
    anomaly_windows,
    generate,
    utc,
)
from eventpipe.events.schema import Event, parse_event
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
        "not-json": 19,
        "missing-field": 27,
        "wrong-type": 27,
        "bad-time": 24,
        "non-finite": 22,
        "epoch-reset": 19,
        "far-future": 26,
        "slow-drift": 17,
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


# the demo's mix (devstack/demo.py): three days at 0.2 events/s, every kind on by default
DEMO = GeneratorConfig(utc("2026-01-15T00:00:00"), utc("2026-01-18T00:00:00"), rate_per_s=0.2, seed=20260115)


@pytest.fixture(scope="module")
def demo() -> tuple[list[Record], dict[str, Event]]:
    """The demo stream, and the same seed without any anomaly: the anomalies draw from their own seeded
    streams, so every event but the bursts' extra payments exists in both, with the same id and noise."""
    clean = {r.event.event_id: r.event for r in generate(replace(DEMO, kinds=())) if r.event}
    return list(generate(DEMO)), clean


def _sigma(event: Event, metric: str) -> float:
    profile = IOT_PROFILES.get(event.attributes.get("device_type", "")) or BUSINESS_TYPES[event.event_type]
    return profile[metric][2]


def test_default_mix_has_every_kind_with_truth_per_event_and_per_window(demo) -> None:
    records, _clean = demo
    truth = [r.anomaly for r in records if r.anomaly]
    assert {a["kind"] for a in truth} == set(TAXONOMY) == set(DEMO.kinds)
    windows = anomaly_windows(DEMO)
    assert {w.kind for w in windows} == {k for k, spec in TAXONOMY.items() if spec.sustained}
    by_window = {w.window_id: w for w in windows}
    for a in truth:
        if TAXONOMY[str(a["kind"])].sustained:
            window = by_window[str(a["window_id"])]
            assert (window.kind, window.device_id, window.metric) == (a["kind"], a["device_id"], a["metric"])
            assert window.start <= a["event_time"] < window.end
        else:
            assert a["window_id"] is None
    # the ground truth stays out of the events: a labelled event's document looks like any other
    labelled = {str(a["event_id"]) for a in truth}
    for record in records:
        if record.event and record.event.event_id in labelled:
            assert set(json.loads(record.value)) == set(json.loads(records[0].value))
    assert 0.02 < len(truth) / len(records) < 0.08  # anomalies stay rare


def test_same_seed_same_truth() -> None:
    config = replace(DEMO, end=DEMO.start + timedelta(hours=30), rate_per_s=0.5)
    first = [(r.value, r.anomaly) for r in generate(config)]
    assert first == [(r.value, r.anomaly) for r in generate(config)]
    assert anomaly_windows(config) == anomaly_windows(config)
    assert anomaly_windows(config) != anomaly_windows(replace(config, seed=config.seed + 1))


def test_each_kind_has_its_documented_magnitude_and_shape(demo) -> None:
    records, clean = demo
    by_kind: dict[str, list[tuple[Event, dict]]] = {}
    for record in records:
        if record.anomaly and record.event:
            by_kind.setdefault(str(record.anomaly["kind"]), []).append((record.event, record.anomaly))
    windows = {w.window_id: w for w in anomaly_windows(DEMO)}
    for kind in ("spike", "level_shift", "drift", "contextual"):
        low, high = TAXONOMY[kind].magnitude
        for event, truth in by_kind[kind]:
            metric = str(truth["metric"])
            jump = (event.metrics[metric] - clean[event.event_id].metrics[metric]) / _sigma(event, metric)
            if kind == "drift":  # linear from 0 at the window's start to the magnitude at its end
                window = windows[str(truth["window_id"])]
                progress = (event.event_time - window.start) / (window.end - window.start)
                assert abs(jump) == pytest.approx(window.magnitude * progress, abs=0.05)
                assert low <= window.magnitude <= high
            else:
                assert low - 0.05 <= abs(jump) <= high + 0.05, (kind, jump)
                assert abs(jump) == pytest.approx(truth["magnitude"], abs=0.05)
    for event, truth in by_kind["contextual"]:  # the normal value of the hour 12 h away
        profile = IOT_PROFILES[event.attributes["device_type"]][str(truth["metric"])]
        phase = 2 * math.pi * (event.event_time.hour * 3600 + event.event_time.minute * 60 + event.event_time.second)
        offset = -2 * profile[1] * math.sin(phase / 86400)
        metric = str(truth["metric"])
        assert event.metrics[metric] - clean[event.event_id].metrics[metric] == pytest.approx(offset, abs=2e-3)
    stuck: dict[str, set[float]] = {}
    for event, truth in by_kind["stuck"]:
        stuck.setdefault(str(truth["window_id"]), set()).add(event.metrics[str(truth["metric"])])
    assert stuck and all(len(values) == 1 for values in stuck.values())  # one value for the whole window
    for window_id, window in windows.items():
        hours = (window.end - window.start).total_seconds() / 3600
        low, high = TAXONOMY[window.kind].duration_h
        assert low <= hours <= high, window_id


def test_bursts_are_many_small_payments_from_one_account(demo) -> None:
    records, clean = demo
    bursts = [r for r in records if r.anomaly and r.anomaly["kind"] == "burst"]
    assert bursts and all(r.event and r.event.event_id not in clean for r in bursts)  # extra events
    mean, _amplitude, sigma = BUSINESS_TYPES["payment"]["amount"]
    for window in (w for w in anomaly_windows(DEMO) if w.kind == "burst"):
        inside = [r.event for r in bursts if r.event and r.anomaly and r.anomaly["window_id"] == window.window_id]
        assert {(e.device_id, e.event_type) for e in inside} == {(window.device_id, "payment")}
        usual = sum(1 for e in clean.values() if e.device_id == window.device_id and e.event_type == "payment") / (
            (DEMO.end - DEMO.start).total_seconds()
        )
        rate = len(inside) / (window.end - window.start).total_seconds()
        assert rate >= 0.6 * BURST_SPEEDUP * usual, (window.window_id, rate, usual)
        assert all(e.metrics["amount"] < mean + 25 - window.magnitude * sigma + sigma for e in inside)


def test_kinds_can_be_switched_off() -> None:
    config = replace(DEMO, end=DEMO.start + timedelta(hours=30), kinds=("stuck", "contextual"))
    kinds = {r.anomaly["kind"] for r in generate(config) if r.anomaly}
    assert kinds == {"stuck", "contextual"}
