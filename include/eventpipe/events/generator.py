"""Deterministic generator of realistic IoT and business event streams.

Events are spread evenly over an event-time span at a given rate, carry daily cycles, a per-device
offset and noise, and include injected anomalies of the kinds in ``TAXONOMY`` (docs/anomalies.md;
recorded in a separate ground-truth table, per event and per window, never in the events) and a
share of malformed records (for the dead-letter path): broken payloads, and valid events from a
broken clock, whose ``event_time`` is far from their Kafka timestamp (the true time) and which the
drain dead-letters as ``event_time_out_of_window``. The same seed gives the same events and ids,
so a generated dataset can be reproduced exactly.
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
class AnomalyKind:
    """One kind of injected anomaly: its magnitude range (in sigma of the metric's noise) and duration range.

    ``sustained`` kinds last a window (hours or minutes) and every reading inside it is labelled;
    point kinds touch one reading. ``magnitude`` means, per kind: the spike's jump, the shift's offset,
    the drift's offset at the end of its window, the contextual value's distance from the hour's normal
    (the value itself is the normal one of the hour 12 h away), how far below the hour's mean a burst's
    payments are; a stuck sensor has none (it repeats its last reading).
    """

    name: str
    source: str  # "iot" | "business"
    sustained: bool
    magnitude: tuple[float, float]
    duration_h: tuple[float, float] = (0.0, 0.0)


TAXONOMY: dict[str, AnomalyKind] = {
    kind.name: kind
    for kind in (
        AnomalyKind("spike", "iot", False, (3.0, 5.0)),
        AnomalyKind("contextual", "iot", False, (4.0, 20.0)),  # at most 2x the daily amplitude
        AnomalyKind("level_shift", "iot", True, (3.0, 6.0), (2.0, 5.0)),
        AnomalyKind("stuck", "iot", True, (0.0, 0.0), (2.0, 5.0)),
        AnomalyKind("drift", "iot", True, (6.0, 10.0), (3.0, 6.0)),
        AnomalyKind("burst", "business", True, (1.5, 2.5), (0.25, 0.5)),
    )
}
SUSTAINED_IOT = tuple(k.name for k in TAXONOMY.values() if k.sustained and k.source == "iot")
BURST_SPEEDUP = 10.0  # a burst sends payments at this many times the account's usual payment rate


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. ``anomaly_rate`` is the share of events given a point anomaly (spike or
    contextual); ``episodes_per_device_day`` how many sustained episodes (level shift, stuck, drift)
    each IoT device has per day and ``bursts_per_account_day`` how many payment bursts each account has;
    ``device_bias`` spreads devices of one type around their profile (sigma units), as real sensors differ.
    ``kinds`` restricts the injected kinds (default: every kind of ``TAXONOMY``)."""

    start: datetime
    end: datetime
    rate_per_s: float = 10.0
    devices: int = 50
    business_share: float = 0.2
    anomaly_rate: float = 0.01
    malformed_rate: float = 0.002
    seed: int = 7
    episodes_per_device_day: float = 0.3
    bursts_per_account_day: float = 0.5
    device_bias: float = 1.0
    kinds: tuple[str, ...] = tuple(TAXONOMY)


@dataclass(frozen=True)
class AnomalyWindow:
    """Ground truth of one sustained episode: every reading of ``metric`` on ``device_id`` in [start, end)."""

    window_id: str
    kind: str
    device_id: str
    metric: str
    start: datetime
    end: datetime
    magnitude: float
    direction: int


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


def _value(profile: tuple[float, float, float], when: datetime, rng: random.Random, bias: float = 0.0) -> float:
    mean, amplitude, sigma = profile
    return mean + bias * sigma + amplitude * math.sin(_phase(when)) + rng.gauss(0.0, sigma)


def _phase(when: datetime) -> float:
    return 2 * math.pi * (when.hour * 3600 + when.minute * 60 + when.second) / 86400


def _fleet(config: GeneratorConfig) -> list[tuple[str, str, str]]:
    return [
        (f"dev-{i:05d}", list(IOT_PROFILES)[i % len(IOT_PROFILES)], REGIONS[i % len(REGIONS)])
        for i in range(config.devices)
    ]


def _accounts(config: GeneratorConfig) -> list[str]:
    return [f"acct-{i:04d}" for i in range(max(1, config.devices // 5))]


def anomaly_windows(config: GeneratorConfig) -> list[AnomalyWindow]:
    """The sustained episodes of ``config``, decided before any event from their own seeded stream.

    Episodes of one device never overlap (the next starts after the previous ends), so each reading
    has at most one cause; the point kinds are drawn per event, outside episodes.
    """
    rng = random.Random(f"{config.seed}/episodes")
    span_h = (config.end - config.start).total_seconds() / 3600
    windows: list[AnomalyWindow] = []
    sustained = [k for k in SUSTAINED_IOT if k in config.kinds]
    fleet = _fleet(config)
    for device_id, device_type, _region in fleet if sustained and config.episodes_per_device_day > 0 else []:
        t = 0.0
        while True:
            t += rng.expovariate(config.episodes_per_device_day / 24)
            kind = TAXONOMY[rng.choice(sustained)]
            duration = rng.uniform(*kind.duration_h)
            if t + duration >= span_h:
                break
            metric = rng.choice(sorted(IOT_PROFILES[device_type]))
            magnitude = round(rng.uniform(*kind.magnitude), 3)
            begin = config.start + timedelta(hours=t)
            windows.append(
                AnomalyWindow(
                    f"{kind.name}/{device_id}/{len(windows)}",
                    kind.name,
                    device_id,
                    metric,
                    begin,
                    begin + timedelta(hours=duration),
                    magnitude,
                    1 if rng.random() < 0.5 else -1,
                )
            )
            t += duration
    if "burst" in config.kinds and config.bursts_per_account_day > 0 and config.business_share > 0:
        kind = TAXONOMY["burst"]
        for account in _accounts(config):
            t = 0.0
            while True:
                t += rng.expovariate(config.bursts_per_account_day / 24)
                duration = rng.uniform(*kind.duration_h)
                if t + duration >= span_h:
                    break
                begin = config.start + timedelta(hours=t)
                windows.append(
                    AnomalyWindow(
                        f"burst/{account}/{len(windows)}",
                        "burst",
                        account,
                        "amount",
                        begin,
                        begin + timedelta(hours=duration),
                        round(rng.uniform(*kind.magnitude), 3),
                        -1,
                    )
                )
                t += duration
    return sorted(windows, key=lambda w: (w.start, w.window_id))


def _burst_events(config: GeneratorConfig, windows: list[AnomalyWindow]) -> list[tuple[datetime, int, AnomalyWindow]]:
    """(time, n, window) of every extra payment the bursts send: ``BURST_SPEEDUP`` x the account's usual
    payment rate (at least 5 per burst), evenly spread over the burst."""
    per_account_s = config.rate_per_s * config.business_share / len(BUSINESS_TYPES) / len(_accounts(config))
    out = []
    for window in windows:
        if window.kind != "burst":
            continue
        seconds = (window.end - window.start).total_seconds()
        count = max(5, round(BURST_SPEEDUP * per_account_s * seconds))
        for n in range(count):
            when = window.start + timedelta(seconds=seconds * (n + 0.5) / count)
            out.append((when.replace(microsecond=when.microsecond // 1000 * 1000), n, window))
    return sorted(out, key=lambda item: (item[0], item[2].window_id, item[1]))


def generate(config: GeneratorConfig) -> Iterator[Record]:
    """Yield records in event-time order; ids are uuid5 of (seed, sequence number).

    Anomalies are decided by their own seeded streams (``anomaly_windows`` and a per-event one), so
    the normal readings, ids and malformed records of a seed do not depend on the anomaly mix.
    """
    rng = random.Random(config.seed)
    point_rng = random.Random(f"{config.seed}/points")
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"eventpipe-generator/{config.seed}")
    fleet = _fleet(config)
    accounts = _accounts(config)
    bias_rng = random.Random(f"{config.seed}/bias")
    bias = {
        (device_id, metric): bias_rng.gauss(0.0, config.device_bias)
        for device_id, device_type, _ in fleet
        for metric in sorted(IOT_PROFILES[device_type])
    }
    windows = anomaly_windows(config)
    episodes: dict[str, list[AnomalyWindow]] = {}
    for window in windows:
        if window.kind != "burst":
            episodes.setdefault(window.device_id, []).append(window)
    bursts = _burst_events(config, windows)
    next_burst = 0
    last_value: dict[tuple[str, str], float] = {}
    stuck_value: dict[str, float] = {}
    point_kinds = [k for k in ("spike", "contextual") if k in config.kinds]
    span = (config.end - config.start).total_seconds()
    total = int(span * config.rate_per_s)
    for seq in range(total):
        when = config.start + timedelta(seconds=seq / config.rate_per_s + rng.random() / config.rate_per_s)
        when = min(when, config.end - timedelta(milliseconds=1))
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)  # Kafka timestamps are milliseconds
        while next_burst < len(bursts) and bursts[next_burst][0] <= when:
            yield _burst_record(namespace, accounts, *bursts[next_burst], rng=point_rng)
            next_burst += 1
        event_id = str(uuid.uuid5(namespace, str(seq)))
        anomaly: dict[str, object] | None = None
        if rng.random() < config.business_share:
            kind = "business"
            event_type = rng.choice(list(BUSINESS_TYPES))
            account = rng.randrange(len(accounts))
            device_id = accounts[account]
            metrics = {name: round(abs(_value(p, when, rng)), 2) for name, p in BUSINESS_TYPES[event_type].items()}
            attributes = {"region": REGIONS[account % len(REGIONS)], "currency": "EUR"}
            if "spike" in config.kinds and point_rng.random() < config.anomaly_rate:
                metric = point_rng.choice(sorted(metrics))
                magnitude = round(point_rng.uniform(*TAXONOMY["spike"].magnitude), 3)
                metrics[metric] = round(metrics[metric] + magnitude * BUSINESS_TYPES[event_type][metric][2], 2)
                anomaly = _truth(event_id, device_id, metric, "spike", when, magnitude)
        else:
            kind = "iot"
            device_id, device_type, region = fleet[rng.randrange(len(fleet))]
            event_type = "telemetry"
            profiles = IOT_PROFILES[device_type]
            metrics = {name: round(_value(p, when, rng, bias[(device_id, name)]), 3) for name, p in profiles.items()}
            attributes = {"device_type": device_type, "region": region, "firmware": f"1.{seq % 3}.0"}
            active = next((w for w in episodes.get(device_id, ()) if w.start <= when < w.end), None)
            if active is not None:
                metric = active.metric
                sigma = profiles[metric][2]
                if active.kind == "stuck":
                    frozen = stuck_value.setdefault(
                        active.window_id, last_value.get((device_id, metric), metrics[metric])
                    )
                    metrics[metric] = frozen
                elif active.kind == "level_shift":
                    metrics[metric] = round(metrics[metric] + active.direction * active.magnitude * sigma, 3)
                else:  # drift: linear from 0 at the start to the magnitude at the end
                    progress = (when - active.start) / (active.end - active.start)
                    offset = active.direction * active.magnitude * sigma * progress
                    metrics[metric] = round(metrics[metric] + offset, 3)
                anomaly = _truth(event_id, device_id, metric, active.kind, when, active.magnitude, active.window_id)
            elif point_kinds and point_rng.random() < config.anomaly_rate:
                anomaly = _point(point_rng, point_kinds, event_id, device_id, profiles, metrics, when)
            for name, value in metrics.items():
                last_value[(device_id, name)] = value
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
    for burst in bursts[next_burst:]:
        yield _burst_record(namespace, accounts, *burst, rng=point_rng)


def _truth(
    event_id: str,
    device_id: str,
    metric: str,
    kind: str,
    when: datetime,
    magnitude: float,
    window_id: str | None = None,
) -> dict[str, object]:
    """One ground-truth row (``produce.TRUTH_SCHEMA``); ``window_id`` ties a sustained kind's readings together."""
    return {
        "event_id": event_id,
        "device_id": device_id,
        "metric": metric,
        "kind": kind,
        "event_time": when,
        "magnitude": magnitude,
        "window_id": window_id,
    }


def _point(
    rng: random.Random,
    kinds: list[str],
    event_id: str,
    device_id: str,
    profiles: dict[str, tuple[float, float, float]],
    metrics: dict[str, float],
    when: datetime,
) -> dict[str, object] | None:
    """A spike of 3-5sigma, or a contextual value: the normal value of the hour 12 h away, where that is at
    least the contextual minimum in sigma from this hour's (else, near the cycle's crossings, a spike)."""
    kind = rng.choice(kinds)
    if kind == "contextual":
        low = TAXONOMY["contextual"].magnitude[0]
        candidates = [
            m for m in sorted(metrics) if abs(2 * profiles[m][1] * math.sin(_phase(when))) >= low * profiles[m][2]
        ]
        if candidates:
            metric = rng.choice(candidates)
            offset = -2 * profiles[metric][1] * math.sin(_phase(when))
            metrics[metric] = round(metrics[metric] + offset, 3)
            magnitude = round(abs(offset) / profiles[metric][2], 3)
            return _truth(event_id, device_id, metric, "contextual", when, magnitude)
        if "spike" not in kinds:
            return None
    metric = rng.choice(sorted(metrics))
    magnitude = round(rng.uniform(*TAXONOMY["spike"].magnitude), 3)
    direction = 1 if rng.random() < 0.5 else -1
    metrics[metric] = round(metrics[metric] + direction * magnitude * profiles[metric][2], 3)
    return _truth(event_id, device_id, metric, "spike", when, magnitude)


def _burst_record(
    namespace: uuid.UUID, accounts: list[str], when: datetime, n: int, window: AnomalyWindow, *, rng: random.Random
) -> Record:
    """One payment of a burst: small (the window's magnitude in sigma below the hour's mean), always valid."""
    account = accounts.index(window.device_id)
    mean, amplitude, sigma = BUSINESS_TYPES["payment"]["amount"]
    amount = mean + amplitude * math.sin(_phase(when)) - window.magnitude * sigma + rng.gauss(0.0, sigma / 10)
    event_id = str(uuid.uuid5(namespace, f"{window.window_id}/{n}"))
    event = Event(
        event_id=event_id,
        source="business",
        device_id=window.device_id,
        event_type="payment",
        event_time=when,
        metrics={"amount": round(max(amount, 0.5), 2)},
        attributes={"region": REGIONS[account % len(REGIONS)], "currency": "EUR"},
    )
    value = json.dumps(event.document(), separators=(",", ":")).encode()
    truth = _truth(event_id, window.device_id, "amount", "burst", when, window.magnitude, window.window_id)
    return Record("business", window.device_id, value, int(when.timestamp() * 1000), event=event, anomaly=truth)


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
