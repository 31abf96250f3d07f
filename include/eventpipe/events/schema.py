"""Event schema v1: one envelope for IoT telemetry and business events.

Producers own ``event_id`` (a UUID or similar, unique per event); it is the Elasticsearch
document id, so producer retries and pipeline reruns never create duplicates.
``event_time`` is when the event happened; the Kafka record timestamp carries the same
instant so interval drains and backfills select records by event time.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

SCHEMA_VERSION = 1

# Bounds (docs/schema.md): each metric or attribute name is a field of the day index, so one
# event may bring at most MAX_METRICS + MAX_ATTRIBUTES of them, under 5% of the index's field
# limit (eventpipe.storage.elastic.TOTAL_FIELDS_LIMIT). Names have no dots, which would create
# object paths that conflict with existing fields.
MAX_METRICS = 32
MAX_ATTRIBUTES = 16
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
MAX_ATTRIBUTE_VALUE = 256

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

# Largest integer a double holds exactly: metrics are stored as doubles (index and archive), so a
# larger integer (a counter, an id sent as a metric) would be silently rounded. Reject it instead.
MAX_EXACT_INTEGER = 2**53
_INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")


def _exact_number(value: object) -> object:
    """Refuse metric values a double would misrepresent: booleans and integers beyond 2**53."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a metric value (send 1 or 0, or use an attribute)")
    number = int(value) if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value) else value
    if isinstance(number, int) and abs(number) > MAX_EXACT_INTEGER:
        raise ValueError(f"integer {number} is beyond 2**53 and cannot be stored exactly as a double")
    return value


MetricValue = Annotated[float, BeforeValidator(_exact_number)]
AttributeValue = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_VALUE)]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    source: Literal["iot", "business"]
    device_id: str = Field(min_length=1, max_length=128, description="Device, terminal or account that emitted it")
    event_type: str = Field(min_length=1, max_length=64, description="e.g. telemetry, order, payment")
    event_time: AwareDatetime
    metrics: dict[Name, MetricValue] = Field(
        default_factory=dict, max_length=MAX_METRICS, description="Numeric readings or amounts"
    )
    attributes: dict[Name, AttributeValue] = Field(
        default_factory=dict, max_length=MAX_ATTRIBUTES, description="Low-cardinality labels"
    )

    @field_validator("event_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, number in value.items() if not math.isfinite(number)]
        if bad:
            names = ", ".join(sorted(bad))
            raise ValueError(f"non-finite metric values (NaN, Infinity or beyond the double range): {names}")
        return value

    def document(self) -> dict[str, object]:
        """The Elasticsearch ``_source``: the event itself, times in ISO-8601 UTC."""
        doc = self.model_dump(mode="json")
        doc["event_time"] = self.event_time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return doc


EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: bytes) -> Event:
    """Validate a Kafka record value; raises ``pydantic.ValidationError`` or ``ValueError``."""
    return EVENT_ADAPTER.validate_json(raw)


# Fast path for the drain: records already in the canonical form that ``Event.document()`` writes
# (what producers built on this schema send) are checked with plain Python on an orjson dict,
# about ten times cheaper than building the model. Everything it accepts the model accepts with
# the same document; anything else (lax coercions, other time formats, every invalid record)
# returns None and goes through ``parse_event``, so dead-letter reasons stay the model's.
_REQUIRED = frozenset({"event_id", "source", "device_id", "event_type", "event_time"})
_ALLOWED = _REQUIRED | {"schema_version", "metrics", "attributes"}
_EVENT_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_NAME = re.compile(NAME_PATTERN[1:-1])
_CANONICAL_TIME = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
_SOURCES = frozenset({"iot", "business"})


_GOOD_NAMES: set[str] = set()  # names seen valid: a fleet uses a few dozen, so most checks are a set lookup


def _good_name(name: str) -> bool:
    if not _NAME.fullmatch(name):
        return False
    if len(_GOOD_NAMES) < 10_000:
        _GOOD_NAMES.add(name)
    return True


def fast_document(value: object) -> dict[str, object] | None:
    """``Event.document()`` of a decoded record in canonical form, or None to use ``parse_event``."""
    if type(value) is not dict:
        return None
    keys = value.keys()
    if not (keys >= _REQUIRED and keys <= _ALLOWED):
        return None
    version = value.get("schema_version", SCHEMA_VERSION)
    event_id = value["event_id"]
    source = value["source"]
    device_id = value["device_id"]
    event_type = value["event_type"]
    event_time = value["event_time"]
    metrics = value.get("metrics", {})
    attributes = value.get("attributes", {})
    if (
        type(version) is not int
        or version != SCHEMA_VERSION
        or type(event_id) is not str
        or not _EVENT_ID.fullmatch(event_id)
        or type(source) is not str
        or source not in _SOURCES
        or type(device_id) is not str
        or not 1 <= len(device_id) <= 128
        or type(event_type) is not str
        or not 1 <= len(event_type) <= 64
        or type(event_time) is not str
        or not _CANONICAL_TIME.fullmatch(event_time)
        or type(metrics) is not dict
        or len(metrics) > MAX_METRICS
        or type(attributes) is not dict
        or len(attributes) > MAX_ATTRIBUTES
    ):
        return None
    try:
        datetime.fromisoformat(event_time)  # a real calendar time, not just the right shape
    except ValueError:
        return None
    floats: dict[str, float] = {}
    for name, number in metrics.items():
        kind = type(number)
        if kind is float:
            if not math.isfinite(number) or abs(number) >= 2**63:
                return None  # orjson reads integers past 64 bits as floats: the model sees the literal
        elif kind is not int or abs(number) > MAX_EXACT_INTEGER:
            return None  # bool (its own type) and inexact integers: the model gives the reason
        if name not in _GOOD_NAMES and not _good_name(name):
            return None
        floats[name] = float(number)
    for name, text in attributes.items():
        if (
            type(text) is not str
            or len(text) > MAX_ATTRIBUTE_VALUE
            or (name not in _GOOD_NAMES and not _good_name(name))
        ):
            return None
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "source": source,
        "device_id": device_id,
        "event_type": event_type,
        "event_time": event_time,
        "metrics": floats,
        "attributes": attributes,
    }


def daily_index(prefix: str, when: datetime) -> str:
    return f"{prefix}-{when.strftime('%Y.%m.%d')}"
