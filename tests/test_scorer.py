"""The Spark-free scorer's feature and probability arithmetic on hand-made events (no services).

Agreement with Spark itself is tested in test_ml.py on a real hold-out day.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from eventpipe.archive.layout import ARCHIVE_SCHEMA
from eventpipe.ml.features import FEATURES, HISTORY_MS, LEVEL_HOUR, MAD_TO_SIGMA, POINT_FEATURES
from eventpipe.ml.scorer import Baseline, ScoringArtifact, flagged_events, score_readings


def _artifact() -> ScoringArtifact:
    # thermostat/temperature: hour 10 has enough points (25), hour 11 too few (5) -> whole-day baseline
    return ScoringArtifact(
        features=list(POINT_FEATURES),  # the temporal ones are computed, weighted 0 here
        feature_coefficients=[2.0, 0.5, 1.0],
        metric_labels=["amount", "temperature"],
        metric_coefficients=[0.1, -0.2, 0.7],
        intercept=-4.0,
        threshold=0.5,
        baseline=Baseline(
            kind=["thermostat", "thermostat", "thermostat", "order"],
            metric=["temperature", "temperature", "temperature", "amount"],
            hour=[-1, 10, 11, -1],
            median=[21.0, 24.0, 30.0, 80.0],
            mad=[2.0, 1.0, 1.0, 0.0],
            n=[500, 25, 5, 300],
        ),
    )


def _events() -> pa.Table:
    def at(hour: int) -> datetime:
        return datetime(2025, 1, 1, hour, 30, tzinfo=timezone.utc)

    thermostat = [("device_type", "thermostat")]
    rows = [
        ("e1", "iot", "d1", "telemetry", at(10), [("temperature", 34.0), ("humidity", 50.0)], thermostat),
        ("e2", "iot", "d1", "telemetry", at(11), [("temperature", 22.0)], thermostat),
        ("e3", "business", "a1", "order", at(10), [("amount", 80.5)], []),
        ("e4", "iot", "d2", "telemetry", at(10), None, thermostat),
    ]
    names = ["event_id", "source", "device_id", "event_type", "event_time", "metrics", "attributes"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    columns["schema_version"] = [1] * len(rows)
    return pa.Table.from_pydict({f.name: columns[f.name] for f in ARCHIVE_SCHEMA}, schema=ARCHIVE_SCHEMA)


def _p(margin: float) -> float:
    return 1.0 - 1.0 / (1.0 + math.exp(margin))


def test_features_and_probabilities_follow_the_spark_formulas() -> None:
    scored = score_readings(_artifact(), _events()).to_pylist()
    # humidity has no baseline for thermostats and e4 has no metrics: both contribute no reading
    assert [(r["row"], r["metric"]) for r in scored] == [(0, "temperature"), (1, "temperature"), (2, "amount")]
    hot, fallback, order = scored

    z = (34.0 - 24.0) / (1.0 * MAD_TO_SIGMA)  # hourly baseline
    z_day = (34.0 - 21.0) / (2.0 * MAD_TO_SIGMA)
    rel = 10.0 / 24.0
    assert hot["baseline_median"] == 24.0 and hot["z"] == pytest.approx(z, rel=1e-15)
    features = [math.log1p(abs(z)), math.log1p(abs(z_day)), math.log1p(rel)]
    assert [hot[name] for name in POINT_FEATURES] == pytest.approx(features, rel=1e-15)
    margin = 2.0 * features[0] + 0.5 * features[1] + 1.0 * features[2] - 0.2 - 4.0
    assert hot["p_anomaly"] == pytest.approx(_p(margin), abs=1e-15) and hot["flagged"]

    assert fallback["baseline_median"] == 21.0  # only 5 points at hour 11: the whole-day baseline
    assert fallback["z"] == pytest.approx(1.0 / (2.0 * MAD_TO_SIGMA)) and not fallback["flagged"]

    # MAD 0: sigma is floored at 1e-3 * max(|median|, 1) instead of dividing by zero
    assert order["z"] == pytest.approx(0.5 / (80.0 * 1e-3))
    assert order["kind"] == "order"  # no device_type: the event type is the kind


def test_unknown_metric_uses_the_unknown_slot_and_events_keep_their_best_reading() -> None:
    artifact = _artifact().model_copy(update={"metric_labels": ["amount"], "metric_coefficients": [0.1, 3.0]})
    scored = score_readings(artifact, _events()).to_pylist()
    base = score_readings(_artifact(), _events()).to_pylist()
    # temperature is unknown to this artifact: its one-hot weight is the unknown slot's (3.0), not -0.2
    shift = math.log(scored[0]["p_anomaly"] / (1 - scored[0]["p_anomaly"])) - math.log(
        base[0]["p_anomaly"] / (1 - base[0]["p_anomaly"])
    )
    assert shift == pytest.approx(3.2, abs=1e-9)

    flagged = flagged_events(artifact.model_copy(update={"threshold": 0.0}), _events())
    assert sorted(f["event_id"] for f in flagged) == ["e1", "e2", "e3"]
    e1 = next(f for f in flagged if f["event_id"] == "e1")
    assert e1["metric"] == "temperature" and dict(e1["metrics"]) == {"temperature": 34.0, "humidity": 50.0}


def _series(values: list[float], minutes: list[float], device: str = "d1") -> list[tuple]:
    base = datetime(2025, 1, 1, 10, 0, tzinfo=timezone.utc)
    thermostat = [("device_type", "thermostat")]
    return [
        (f"{device}-{i}", "iot", device, "telemetry", base + timedelta(minutes=m), [("temperature", v)], thermostat)
        for i, (v, m) in enumerate(zip(values, minutes, strict=True))
    ]


def _table(rows: list[tuple]) -> pa.Table:
    names = ["event_id", "source", "device_id", "event_type", "event_time", "metrics", "attributes"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    columns["schema_version"] = [1] * len(rows)
    return pa.Table.from_pydict({f.name: columns[f.name] for f in ARCHIVE_SCHEMA}, schema=ARCHIVE_SCHEMA)


def test_temporal_features_see_stuck_values_levels_and_bursts_within_the_history() -> None:
    """Per device and metric, over its earlier readings of the last hour (``HISTORY_MS``), never another device's."""
    artifact = _artifact().model_copy(
        update={
            "baseline": Baseline(
                kind=["thermostat", "thermostat"],
                metric=["temperature", "temperature"],
                hour=[-1, LEVEL_HOUR],
                median=[24.0, 1.0],
                mad=[1.0 / MAD_TO_SIGMA, 0.0],
                n=[500, 10],
                device_id=[None, "d1"],
            )
        }
    )
    # d1: stuck at 25.0 every 10 min (z 1 = its own level: u 0), then 8 readings in one minute
    stuck = _series([25.0] * 7, [0, 10, 20, 30, 40, 50, 60])
    burst = _series([25.5] * 8, [61 + 0.1 * i for i in range(8)])
    other = _series([25.0, 25.0], [5, 15], device="d2")  # same value, another device: never counted for d1
    scored = {r["row"]: r for r in score_readings(artifact, _table(stuck + burst + other)).to_pylist()}
    assert [round(math.expm1(scored[i]["log_same"])) for i in range(7)] == [0, 1, 2, 3, 4, 5, 6]
    assert [scored[i]["log_abs_u"] for i in range(7)] == [0.0] * 7  # z 1 minus d1's level 1
    assert scored[7]["log_abs_u"] == pytest.approx(math.log1p(0.5))
    # the first reading at minute 60 sees minutes 0..50 (the reading exactly an hour back is in the range)
    assert round(math.expm1(scored[6]["log_same"])) == 6 and HISTORY_MS == 60 * 60_000
    # the last burst reading: 8 readings in the last 10 min (7 before it) against ~1 expected from the hour
    n_prev = 6 + 7  # minutes 10..60 and the 7 burst readings before it
    expected = n_prev * 600_000 / HISTORY_MS
    assert scored[14]["log_rate"] == pytest.approx(math.log1p(8) - math.log1p(expected))
    assert scored[14]["log_jump"] == pytest.approx(math.log1p(abs(0.5 - 3.5 / 13)))
    assert scored[16]["log_same"] == pytest.approx(math.log1p(1))  # d2's second reading: only d2's first
    assert scored[16]["log_abs_u"] == pytest.approx(math.log1p(1.0))  # d2 has no level: u = z


def test_scoring_since_keeps_the_history_out_of_the_result() -> None:
    rows = _series([25.0] * 4, [0, 20, 40, 70])
    cut = datetime(2025, 1, 1, 10, 30, tzinfo=timezone.utc)
    whole = score_readings(_artifact(), _table(rows)).to_pylist()
    later = score_readings(_artifact(), _table(rows), since=cut).to_pylist()
    assert [r["row"] for r in later] == [2, 3]
    assert later == whole[2:]  # the history changes nothing but what is returned


def test_a_readings_score_is_a_pure_function_of_its_frames() -> None:
    """Bit-identical features, logit and score for a reading, whatever else was read: a longer history, other
    devices, another row order, two readings of one device in the same millisecond (``explain`` reads one hour
    before the event, hourly scoring one hour before the interval, a rescoring the archive's file order)."""
    rng = random.Random(7)
    minutes = sorted(rng.uniform(0, 300) for _ in range(400))
    rows = [
        *_series([rng.gauss(25.0, 3.0) for _ in minutes], minutes),
        *_series([rng.gauss(23.0, 1.0) for _ in range(300)], [rng.uniform(0, 300) for _ in range(300)], device="d2"),
        *_series([31.125, 19.75], [299.5, 299.5]),  # same millisecond, different values
    ]
    rows = [(f"e{i}", *row[1:]) for i, row in enumerate(rows)]
    artifact = _artifact().model_copy(update={"features": list(FEATURES), "feature_coefficients": [0.7] * 8})
    columns = ["row", "metric", "z", *FEATURES, "logit", "p_anomaly"]

    def by_event(table: pa.Table, since: datetime | None = None) -> dict[str, tuple]:
        scored = score_readings(artifact, table, since).select(columns).to_pylist()
        ids = table.column("event_id").to_pylist()
        return {ids[r["row"]]: tuple(v for k, v in r.items() if k != "row") for r in scored}

    whole = by_event(_table(rows))
    assert len(whole) == len(rows)
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assert by_event(_table(shuffled)) == whole
    # the last two hours, read from one hour before them, as hourly scoring of that interval does
    start = datetime(2025, 1, 1, 13, 0, tzinfo=timezone.utc)
    window = [row for row in rows if row[4] >= start - timedelta(milliseconds=HISTORY_MS)]
    interval = by_event(_table(window[::-1]), since=start)
    assert interval and interval == {k: v for k, v in whole.items() if k in interval}
