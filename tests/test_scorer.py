"""The Spark-free scorer's feature and probability arithmetic on hand-made events (no services).

Agreement with Spark itself is tested in test_ml.py on a real hold-out day.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from eventpipe.archive.layout import ARCHIVE_SCHEMA
from eventpipe.ml.features import FEATURES, MAD_TO_SIGMA
from eventpipe.ml.scorer import Baseline, ScoringArtifact, flagged_events, score_readings


def _artifact() -> ScoringArtifact:
    # thermostat/temperature: hour 10 has enough points (25), hour 11 too few (5) -> whole-day baseline
    return ScoringArtifact(
        features=list(FEATURES),
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
    assert [hot[name] for name in FEATURES] == pytest.approx(features, rel=1e-15)
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
