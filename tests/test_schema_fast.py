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


@pytest.mark.parametrize(
    "raw",
    [
        _variant(),
        _variant(schema_version=...),  # default version
        _variant(metrics=..., attributes=...),  # default maps
        _variant(metrics={"count": 3}),  # int becomes float
        _variant(event_time="2024-01-01T11:15:30.123+01:00"),  # offset: the model converts to UTC
        _variant(event_time="2024-01-01T10:15:30.123456Z"),  # microseconds: the document keeps ms
        _variant(event_time="2024-01-01T10:15:30Z"),
        _variant(event_time="0999-01-01T10:15:30.000Z"),
        _variant(event_time="2024-02-30T10:15:30.000Z"),  # not a date
        _variant(event_time="2024-01-01T10:15:30.123z"),
        _variant(event_time=1704104130),
        _variant(metrics={"temperature": "21.5"}),  # lax string number: the model decides
        _variant(metrics={"flag": True}),
        _variant(metrics={"count": MAX_EXACT_INTEGER}),
        _variant(metrics={"count": MAX_EXACT_INTEGER + 1}),
        _variant(metrics={"count": -(MAX_EXACT_INTEGER + 1)}),
        _variant(metrics={"count": 12345678901234567890123}),
        _variant(metrics={"count": str(MAX_EXACT_INTEGER + 1)}),
        b'{"metrics": {"reading": 1e400}}',
        _variant(metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}),
        _variant(metrics={"Bad": 1.0}),
        _variant(attributes={"region": 7}),
        _variant(attributes={"region": "x" * 257}),
        _variant(event_id="short"),
        _variant(event_id="abcdefgh\n"),
        _variant(event_id="abc/defgh"),
        _variant(source="web"),
        _variant(schema_version=2),
        _variant(schema_version=True),
        _variant(device_id=""),
        _variant(device_id=None),
        _variant(event_type="t" * 65),
        _variant(extra_field=1),
        _variant(device_id=...),
        b'{"metrics": {"reading": NaN}}',
        b"[1, 2]",
        b"not json",
    ],
)
def test_fast_path_agrees_with_the_model_or_defers(raw: bytes) -> None:
    got = _fast(raw)
    if got is not None:
        assert orjson.dumps(got) == orjson.dumps(_model_document(raw))


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
