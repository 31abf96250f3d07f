"""The drain's schema fast path must agree with the model: same document, or defer to it."""

from __future__ import annotations

import json
import re

import orjson
import pytest
from pydantic import ValidationError

from eventpipe.events.generator import SCHEMA_BROKEN_KINDS, GeneratorConfig, generate, utc
from eventpipe.events.schema import MAX_EXACT_INTEGER, MAX_METRICS, fast_document, parse_event

CANONICAL = {
    "schema_version": 1,
    "event_id": "0b6c1e9a-1d2f-5f43-9d7e-2a1f3c4b5d6e",
    "source": "iot",
    "device_id": "dev-00042",
    "event_type": "telemetry",
    "event_time": "2024-01-01T10:15:30.123Z",
    "metrics": {"temperature": 21.5, "humidity": 40},
    "attributes": {"region": "eu-west", "firmware": "1.2.0"},
}


def _model_document(raw: bytes) -> dict[str, object] | None:
    try:
        return parse_event(raw).document()
    except (ValidationError, ValueError):
        return None


def _fast(raw: bytes) -> dict[str, object] | None:
    try:
        return fast_document(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def test_generated_records_take_the_fast_path_with_the_models_document() -> None:
    config = GeneratorConfig(
        utc("2024-01-01T00:00:00"), utc("2024-01-01T00:20:00"), rate_per_s=5, seed=3, malformed_rate=0.05
    )
    fast = 0
    for record in generate(config):
        expected = _model_document(record.value)
        got = _fast(record.value)
        if record.malformed in SCHEMA_BROKEN_KINDS:
            assert got is None, record.malformed
            continue
        # valid events (clock-skew ones too: the drain's event-time window judges those)
        assert got is not None
        assert orjson.dumps(got) == orjson.dumps(expected)  # same bytes: same keys, order and values
        fast += 1
    assert fast > 5000


def _variant(**changes: object) -> bytes:
    doc = {**CANONICAL, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


FAST, DEFER_VALID, DEFER_INVALID = "fast", "defer, the model accepts", "defer, the model rejects"


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        (_variant(), FAST),
        (_variant(schema_version=...), FAST),  # default version
        (_variant(metrics=..., attributes=...), FAST),  # default maps
        (_variant(metrics={"count": 3}), FAST),  # int becomes float
        (_variant(event_time="2024-01-01T11:15:30.123+01:00"), DEFER_VALID),  # offset: the model converts to UTC
        (_variant(event_time="2024-01-01T10:15:30.123456Z"), DEFER_VALID),  # microseconds: the document keeps ms
        (_variant(event_time="2024-01-01T10:15:30Z"), DEFER_VALID),
        (_variant(event_time="0999-01-01T10:15:30.000Z"), DEFER_VALID),
        (_variant(event_time="2024-02-30T10:15:30.000Z"), DEFER_INVALID),  # not a date
        (_variant(event_time="2024-01-01T10:15:30.123z"), DEFER_VALID),
        (_variant(event_time=1704104130), DEFER_VALID),
        (_variant(metrics={"temperature": "21.5"}), DEFER_VALID),  # lax string number: the model decides
        (_variant(metrics={"flag": True}), DEFER_INVALID),
        (_variant(metrics={"count": MAX_EXACT_INTEGER}), FAST),
        (_variant(metrics={"count": MAX_EXACT_INTEGER + 1}), DEFER_INVALID),
        (_variant(metrics={"count": -(MAX_EXACT_INTEGER + 1)}), DEFER_INVALID),
        (_variant(metrics={"count": 12345678901234567890123}), DEFER_INVALID),
        (_variant(metrics={"count": str(MAX_EXACT_INTEGER + 1)}), DEFER_INVALID),
        (b'{"metrics": {"reading": 1e400}}', DEFER_INVALID),
        (_variant(metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}), DEFER_INVALID),
        (_variant(metrics={"Bad": 1.0}), DEFER_INVALID),
        (_variant(attributes={"region": 7}), DEFER_INVALID),
        (_variant(attributes={"region": "x" * 257}), DEFER_INVALID),
        (_variant(event_id="short"), DEFER_INVALID),
        (_variant(event_id="abcdefgh\n"), DEFER_INVALID),
        (_variant(event_id="abc/defgh"), DEFER_INVALID),
        (_variant(source="web"), DEFER_INVALID),
        (_variant(schema_version=2), DEFER_INVALID),
        (_variant(schema_version=True), DEFER_VALID),
        (_variant(device_id=""), DEFER_INVALID),
        (_variant(device_id=None), DEFER_INVALID),
        (_variant(event_type="t" * 65), DEFER_INVALID),
        (_variant(extra_field=1), DEFER_INVALID),
        (_variant(device_id=...), DEFER_INVALID),
        (b'{"metrics": {"reading": NaN}}', DEFER_INVALID),
        (b"[1, 2]", DEFER_INVALID),
        (b"not json", DEFER_INVALID),
    ],
)
def test_fast_path_agrees_with_the_model_or_defers(raw: bytes, verdict: str) -> None:
    """Each record's path is pinned: the fast path's document is the model's, or it defers and the model decides."""
    got = _fast(raw)
    if verdict == FAST:
        assert got is not None, "the fast path declined a canonical record"
        assert orjson.dumps(got) == orjson.dumps(_model_document(raw))
        return
    assert got is None, "the fast path took a record it must leave to the model"
    if verdict == DEFER_VALID:
        assert _model_document(raw) is not None
    else:
        with pytest.raises(ValidationError):  # the model rejects it: a dead letter
            parse_event(raw)


def test_fast_path_defers_non_canonical_but_valid_records() -> None:
    """Records the model accepts after coercion are not the fast path's to judge."""
    for raw in (
        _variant(event_time="2024-01-01T11:15:30.123+01:00"),
        _variant(metrics={"temperature": "21.5"}),
    ):
        assert _fast(raw) is None
        assert _model_document(raw) is not None


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"temp": True}, "a boolean is not a metric value (send 1 or 0, or use an attribute)"),
        ({"temp": False}, "a boolean is not a metric value (send 1 or 0, or use an attribute)"),
        (
            {"count": MAX_EXACT_INTEGER + 1},
            "integer 9007199254740993 is beyond 2**53 and cannot be stored exactly as a double",
        ),
        (
            {"count": 12345678901234567890123},
            "integer 12345678901234567890123 is beyond 2**53 and cannot be stored exactly as a double",
        ),
        ({"count": "-9007199254740993"}, "integer -9007199254740993 is beyond 2**53 and cannot be stored exactly"),
    ],
)
def test_metric_values_a_double_would_misrepresent_are_rejected_on_both_paths(
    metrics: dict[str, object], reason: str
) -> None:
    raw = _variant(metrics=metrics)
    assert _fast(raw) is None  # never indexed by the fast path ...
    with pytest.raises(ValidationError, match=re.escape(reason)):  # ... and the model says why
        parse_event(raw)


def test_metric_values_a_double_holds_exactly_are_accepted_on_both_paths() -> None:
    for value in (MAX_EXACT_INTEGER, -MAX_EXACT_INTEGER, 0, 1.5e15, -2.5e-300):
        raw = _variant(metrics={"reading": value})
        assert _fast(raw) == _model_document(raw) is not None
        assert _model_document(raw)["metrics"] == {"reading": float(value)}
    # a float literal is an approximation by nature: accepted; past 2**63 the fast path defers (orjson
    # reads an integer literal that large as a float, so only the model can tell them apart)
    raw = _variant(metrics={"reading": 1e300})
    assert _fast(raw) is None
    assert _model_document(raw)["metrics"] == {"reading": 1e300}
