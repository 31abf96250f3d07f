"""Pure parts of the Kafka volume restore drill: the scratch KRaft cluster's objects and the offset check.

The cluster run of the same code is in tests/test_stateful_snapshots_k8s.py (``make test-k8s``).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from eventpipe.archive.kafka_positions import KafkaPositions, compare, positions_key
from eventpipe.archive.kafka_restore import (
    BLACKHOLE,
    DRILL_LABEL,
    KafkaRestoreFailed,
    KafkaRestoreResult,
    report,
    scratch_config,
    scratch_service,
    scratch_statefulset,
    snapshot_copy,
    summary,
)
from eventpipe.ingest.kafka_io import CONSUMER_GROUP
from eventpipe.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _live(kind: str) -> dict:
    docs = yaml.safe_load_all((ROOT / "deploy" / "stateful" / "kafka.yaml").read_text())
    (obj,) = [d for d in docs if d and d["kind"] == kind and d["metadata"]["name"] in {"kafka", "kafka-config"}]
    if kind == "StatefulSet":  # as the devstack overlay adds them: the EXTERNAL listener on the node IP
        obj["spec"]["template"]["spec"]["containers"][0]["env"] += [
            {"name": "EXTERNAL_HOST", "value": "10.244.0.1"},
            {"name": "EXTERNAL_PORT_BASE", "value": "31091"},
        ]
    return obj


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_scratch_config_moves_the_quorum_and_the_advertised_names_to_the_scratch_namespace() -> None:
    live = _live("ConfigMap")
    scratch = scratch_config(live, "kafka", "kafka-restore")
    voters = _props(scratch["data"]["server.properties"])["controller.quorum.voters"]
    assert voters == ",".join(f"{n}@kafka-{n}.kafka-headless.kafka-restore.svc:9093" for n in range(3))
    assert ".kafka.svc" not in "".join(scratch["data"].values())  # no live name left, in the start script either
    assert "kafka-headless.kafka-restore.svc:9092" in scratch["data"]["start.sh"]
    assert scratch["data"]["cluster-id"] == live["data"]["cluster-id"]  # restored meta.properties carry it
    assert scratch["metadata"] == {"name": "kafka-config", "labels": {DRILL_LABEL: "kafka"}}


def test_scratch_config_refuses_a_config_whose_voters_it_cannot_move() -> None:
    live = _live("ConfigMap")
    live["data"]["server.properties"] = live["data"]["server.properties"].replace(".kafka.svc", ".kafka.example")
    with pytest.raises(KafkaRestoreFailed, match=r"controller\.quorum\.voters of kafka-config not moved"):
        scratch_config(live, "kafka", "kafka-restore")


def test_scratch_statefulset_keeps_names_and_node_ids_and_drops_the_external_listener() -> None:
    live = _live("StatefulSet")
    scratch = scratch_statefulset(live, "kafka-restore")
    assert scratch["metadata"]["name"] == "kafka" and scratch["metadata"]["namespace"] == "kafka-restore"
    spec = scratch["spec"]
    assert spec["replicas"] == 3 and spec["serviceName"] == "kafka-headless"  # pods kafka-0..2: node ids 0-2
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "EXTERNAL_HOST" not in env and "EXTERNAL_PORT_BASE" not in env
    assert "POD_INDEX" in env  # node.id = pod ordinal, as in the live set
    assert spec["template"]["metadata"]["labels"][DRILL_LABEL] == "kafka"
    (aliases,) = spec["template"]["spec"]["hostAliases"]  # the live brokers' names lead nowhere from the scratch
    assert aliases["ip"] == BLACKHOLE and "kafka-1.kafka-headless.kafka.svc" in aliases["hostnames"]
    assert "kafka-2.kafka-headless.kafka.svc.cluster.local" in aliases["hostnames"]
    assert not any("kafka-restore" in host for host in aliases["hostnames"])
    (claims,) = spec["volumeClaimTemplates"]
    assert "eventpipe.io/snapshot" not in claims["metadata"]["labels"]  # the nightly never snapshots the scratch
    assert live["spec"]["updateStrategy"] == {"type": "RollingUpdate"}  # the live object is not modified
    service = scratch_service(live)
    assert service["metadata"]["name"] == "kafka-headless" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_snapshot_copy_is_retained_and_points_at_the_same_handle() -> None:
    snap = {"metadata": {"name": "data-kafka-0-20260115", "namespace": "kafka"}}
    content = {
        "spec": {"driver": "hostpath.csi.eventpipe.io", "volumeSnapshotClassName": "eventpipe-archive"},
        "status": {"snapshotHandle": "snap-123"},
    }
    copied, bound = snapshot_copy(snap, content, "kafka-restore")
    assert copied["spec"]["deletionPolicy"] == "Retain"
    assert copied["spec"]["source"] == {"snapshotHandle": "snap-123"}
    assert copied["spec"]["volumeSnapshotRef"] == {"name": "data-kafka-0-20260115", "namespace": "kafka-restore"}
    assert bound["spec"]["source"] == {"volumeSnapshotContentName": copied["metadata"]["name"]}
    assert bound["metadata"]["namespace"] == "kafka-restore" and "eventpipe.io/day" not in bound["metadata"]["labels"]


def _recorded() -> KafkaPositions:
    return KafkaPositions(
        day=date(2026, 1, 15),
        recorded_at=datetime(2026, 1, 16, 0, 5, tzinfo=timezone.utc),
        bootstrap="kafka.kafka.svc:9092",
        end_offsets={"events.iot": {0: 100, 1: 50}, "events.business": {0: 7}},
        groups={CONSUMER_GROUP: {"events.iot": {0: 90, 1: 50}}, "monitor": {"events.iot": {0: 10}}},
        held_groups=[CONSUMER_GROUP],
    )


def test_compare_passes_with_more_records_and_equal_held_commits() -> None:
    recorded = _recorded()
    ends = {"events.iot": {0: 104, 1: 50}, "events.business": {0: 7}}
    groups = {CONSUMER_GROUP: {"events.iot": {0: 90, 1: 50}}, "monitor": {"events.iot": {0: 12}}}
    assert compare(recorded, ends, groups) == []
    per_topic, per_group = summary(recorded, ends, groups)
    assert per_topic["events.iot"] == {"partitions": 2, "recorded": 150, "restored": 154}
    assert per_group[CONSUMER_GROUP] == {"partitions": 2, "equal": 2}


def test_compare_names_every_difference() -> None:
    recorded = _recorded()
    ends = {"events.iot": {0: 97}}
    groups = {CONSUMER_GROUP: {"events.iot": {0: 91}}, "monitor": {"events.iot": {0: 9}}}
    assert compare(recorded, ends, groups) == [
        "topic events.business: missing (1 partitions recorded)",
        "events.iot/0: end offset 97 < recorded 100 (3 lost)",
        "events.iot/1: partition missing (end offset 50 recorded)",
        f"group {CONSUMER_GROUP} events.iot/0: committed 91 != recorded 90",
        f"group {CONSUMER_GROUP} events.iot/1: no committed offset (recorded 50)",
        "group monitor events.iot/0: committed 9 < recorded 10",
    ]


def test_positions_round_trip_and_report() -> None:
    recorded = _recorded()
    assert KafkaPositions.model_validate_json(recorded.model_dump_json()) == recorded
    assert positions_key(recorded.day) == "volume-snapshots/date=2026-01-15/kafka.json"
    per_topic, per_group = summary(recorded, {"events.iot": {0: 100, 1: 50}}, {})
    result = KafkaRestoreResult(
        "2026-01-15", "kafka-restore", [], 2, 3, 2, "t", 0, ["events.business/0: …"], False, {}, per_topic, per_group
    )
    text = report(result)
    assert "FAIL: 1 differences" in text and "events.iot" in text and f"group {CONSUMER_GROUP}" in text


@pytest.mark.services
def test_the_record_is_stored_read_and_forgotten_in_the_real_s3(services: Settings) -> None:
    """The pre-hook's record through the devstack's S3 server: saved, read back equal, gone once retention
    deleted its night's snapshots (and a night never recorded reads as None, which the drill reports)."""
    from eventpipe.archive.kafka_positions import forget_positions, load_positions, save_positions
    from eventpipe.storage.s3 import ensure_bucket, s3_client

    s3, bucket = s3_client(services), services.archive.snapshot_bucket
    ensure_bucket(services, bucket)
    recorded = _recorded().model_copy(update={"day": date(2030, 1, 1) + timedelta(days=uuid.uuid4().int % 3000)})
    assert load_positions(s3, bucket, recorded.day) is None
    assert save_positions(s3, bucket, recorded) == positions_key(recorded.day)
    assert load_positions(s3, bucket, recorded.day) == recorded
    assert forget_positions(s3, bucket, [recorded.day]) == [positions_key(recorded.day)]
    assert load_positions(s3, bucket, recorded.day) is None
