"""Event schema v1: one envelope for IoT telemetry and business events.

Producers own ``event_id`` (a UUID or similar, unique per event); it is the Elasticsearch
document id, so producer retries and pipeline reruns never create duplicates.
``event_time`` is when the event happened; the Kafka record timestamp carries the same
instant so interval drains and backfills select records by event time.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator

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
AttributeValue = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_VALUE)]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    source: Literal["iot", "business"]
    device_id: str = Field(min_length=1, max_length=128, description="Device, terminal or account that emitted it")
    event_type: str = Field(min_length=1, max_length=64, description="e.g. telemetry, order, payment")
    event_time: AwareDatetime
    metrics: dict[Name, float] = Field(
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
            raise ValueError(f"non-finite metric values: {', '.join(sorted(bad))}")
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


def daily_index(prefix: str, when: datetime) -> str:
    return f"{prefix}-{when.strftime('%Y.%m.%d')}"
