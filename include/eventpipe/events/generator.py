"""Deterministic generator of realistic IoT and business event streams.

Events are spread evenly over an event-time span at a given rate, carry daily cycles and
noise, and include injected anomalies (recorded in a separate ground-truth table, never in
the events) and a share of malformed records (for the dead-letter path): broken payloads, and
valid events from a broken clock, whose ``event_time`` is far from their Kafka timestamp (the
true time) and which the drain dead-letters as ``event_time_out_of_window``. The same seed
gives the same events and ids, so a generated dataset can be reproduced exactly.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from eventpipe.events.schema import Event

IOT_PROFILES: dict[str, dict[str, tuple[float, float, float]]] = {
    # device type -> metric -> (mean, daily amplitude, noise sigma)
    "thermostat": {"temperature": (21.0, 3.0, 0.4), "humidity": (45.0, 6.0, 1.5)},
    "meter": {"power_kw": (2.5, 1.5, 0.2), "voltage": (230.0, 0.0, 1.2)},
    "tracker": {"speed_kmh": (40.0, 15.0, 4.0), "battery_pct": (70.0, 10.0, 1.0)},
}
BUSINESS_TYPES: dict[str, dict[str, tuple[float, float, float]]] = {
    "order": {"amount": (80.0, 25.0, 15.0), "quantity": (3.0, 1.0, 0.8)},
    "payment": {"amount": (80.0, 25.0, 15.0)},
}
REGIONS = ("eu-west", "eu-central", "us-east", "ap-south")
SCHEMA_BROKEN_KINDS = ("not-json", "missing-field", "wrong-type", "bad-time", "non-finite")
# Valid events whose device clock is wrong, each outside the default event-time window
# (docs/schema.md#event-time-window): a real-time clock reset to the epoch, one that jumped to the
# end of the calendar, and one that drifted behind for weeks without a time sync.
CLOCK_SKEW_KINDS = ("epoch-reset", "far-future", "slow-drift")
MALFORMED_KINDS = SCHEMA_BROKEN_KINDS + CLOCK_SKEW_KINDS
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class GeneratorConfig:
    start: datetime
    end: datetime
    rate_per_s: float = 10.0
    devices: int = 50
    business_share: float = 0.2
    anomaly_rate: float = 0.01
    malformed_rate: float = 0.002
    seed: int = 7


@dataclass
class Record:
    """One Kafka record to send: either a valid event or a deliberately broken payload."""

    topic_kind: str  # "iot" | "business"
    key: str
    value: bytes
    timestamp_ms: int
    event: Event | None = None
    malformed: str | None = None
    anomaly: dict[str, object] | None = field(default=None)


def _value(profile: tuple[float, float, float], when: datetime, rng: random.Random) -> float:
    mean, amplitude, sigma = profile
    day_phase = 2 * math.pi * (when.hour * 3600 + when.minute * 60 + when.second) / 86400
    return mean + amplitude * math.sin(day_phase) + rng.gauss(0.0, sigma)


def generate(config: GeneratorConfig) -> Iterator[Record]:
    """Yield records in event-time order; ids are uuid5 of (seed, sequence number)."""
    rng = random.Random(config.seed)
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"eventpipe-generator/{config.seed}")
    fleet = [
        (f"dev-{i:05d}", list(IOT_PROFILES)[i % len(IOT_PROFILES)], REGIONS[i % len(REGIONS)])
        for i in range(config.devices)
    ]
    accounts = [f"acct-{i:04d}" for i in range(max(1, config.devices // 5))]
    span = (config.end - config.start).total_seconds()
    total = int(span * config.rate_per_s)
    for seq in range(total):
        when = config.start + timedelta(seconds=seq / config.rate_per_s + rng.random() / config.rate_per_s)
        when = min(when, config.end - timedelta(milliseconds=1))
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)  # Kafka timestamps are milliseconds
        event_id = str(uuid.uuid5(namespace, str(seq)))
        if rng.random() < config.business_share:
            kind = "business"
            event_type = rng.choice(list(BUSINESS_TYPES))
            account = rng.randrange(len(accounts))
            device_id = accounts[account]
            metrics = {name: round(abs(_value(p, when, rng)), 2) for name, p in BUSINESS_TYPES[event_type].items()}
            attributes = {"region": REGIONS[account % len(REGIONS)], "currency": "EUR"}
        else:
            kind = "iot"
            device_id, device_type, region = fleet[rng.randrange(len(fleet))]
            event_type = "telemetry"
            metrics = {name: round(_value(p, when, rng), 3) for name, p in IOT_PROFILES[device_type].items()}
            attributes = {"device_type": device_type, "region": region, "firmware": f"1.{seq % 3}.0"}
        anomaly = None
        if rng.random() < config.anomaly_rate:
            metric = rng.choice(sorted(metrics))
            profile = (IOT_PROFILES.get(attributes.get("device_type", ""), {}) or BUSINESS_TYPES[event_type])[metric]
            direction = 1 if kind == "business" or rng.random() < 0.5 else -1
            metrics[metric] = round(metrics[metric] + direction * (8 + 4 * rng.random()) * max(profile[2], 1.0), 3)
            anomaly = {
                "event_id": event_id,
                "device_id": device_id,
                "metric": metric,
                "kind": "spike" if direction > 0 else "drop",
                "event_time": when,
            }
        event = Event(
            event_id=event_id,
            source=kind,
            device_id=device_id,
            event_type=event_type,
            event_time=when,
            metrics=metrics,
            attributes=attributes,
        )
        timestamp_ms = int(when.timestamp() * 1000)
        if rng.random() < config.malformed_rate:
            broken = rng.choice(MALFORMED_KINDS)
            yield Record(kind, device_id, _break(event, broken), timestamp_ms, malformed=broken)
            continue
        value = json.dumps(event.document(), separators=(",", ":")).encode()
        yield Record(kind, device_id, value, timestamp_ms, event=event, anomaly=anomaly)


def _break(event: Event, how: str) -> bytes:
    if how in CLOCK_SKEW_KINDS:
        return json.dumps(_skewed(event, how).document(), separators=(",", ":")).encode()
    doc = event.document()
    if how == "not-json":
        return json.dumps(doc).encode()[:-7]
    if how == "missing-field":
        doc.pop("device_id")
    elif how == "wrong-type":
        doc["metrics"] = {"value": "not-a-number"}
    elif how == "bad-time":
        doc["event_time"] = "yesterday afternoon"
    elif how == "non-finite":
        doc["metrics"] = {**doc["metrics"], "reading": float("nan")}  # json.dumps writes NaN
    return json.dumps(doc).encode()


def _skewed(event: Event, how: str) -> Event:
    """The same event as a device with a broken clock reports it (the Kafka timestamp stays true)."""
    true = event.event_time
    if how == "epoch-reset":  # the clock restarted at 1970-01-01 when the device booted, a while ago
        when = EPOCH + timedelta(seconds=true.hour * 3600 + true.minute * 60 + true.second)
    elif how == "far-future":
        when = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    else:  # slow-drift: weeks behind, past the 7-day window
        when = true - timedelta(days=8 + true.minute % 14, seconds=true.second)
    return event.model_copy(update={"event_time": when})


def utc(text: str) -> datetime:
    """Parse an ISO-8601 instant; naive values are taken as UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
