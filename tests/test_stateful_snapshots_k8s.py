"""The nightly archive's application-consistent snapshot against the Kafka and Elasticsearch StatefulSets.

The three snapshot steps run as task pods exactly as the ``--data cluster`` demo's Airflow launches them
(``devstack.cluster.stateful.data_env``: in-cluster endpoints, the StatefulSet cluster's fs repository claim,
``EVENTPIPE_VOLUME_SNAPSHOT_NAMESPACES=kafka,elastic``): the pre-hook holds the live indices' writes, the snapshot
step takes the Elasticsearch snapshot and one VolumeSnapshot per labelled data claim in ``kafka`` and ``elastic``
(readyToUse while the hold is still in place), the post-hook lifts the hold. The pre-hook also records Kafka's
end offsets and group commits; the restore drill brings the Elasticsearch claims back as a scratch cluster and
the Kafka claims as a scratch KRaft cluster in ``kafka-restore``, checked against that record while the live
topic and group have moved on. VolumeSnapshot retention runs on real snapshots in a namespace of its own.
``make test-k8s``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from devstack.cluster.deploy import task_env
from devstack.cluster.node import kubectl
from devstack.cluster.stateful import HOST_ES_URL, HOST_KAFKA_BOOTSTRAP, data_env
from eventpipe.archive.indices import day_index, existing, snapshot_name
from eventpipe.archive.kafka_restore import DRILL_LABEL, SCRATCH_NAMESPACE
from eventpipe.archive.snapshot import LIVE_INDICES
from eventpipe.ingest.kafka_io import CONSUMER_GROUP

from .k8s_support import task_pod
from .test_kubernetes import _run, cluster, stateful  # noqa: F401  (fixtures: the cluster, the StatefulSets)

pytestmark = [pytest.mark.k8s, pytest.mark.services, pytest.mark.slow]

CLAIMS = {
    "kafka": [f"data-kafka-{n}" for n in range(3)],
    "elastic": [f"elasticsearch-data-elasticsearch-{n}" for n in range(3)],
}


@pytest.fixture(scope="module")
def cluster_es(stateful: Any) -> Iterator[Elasticsearch]:  # noqa: F811
    es = Elasticsearch(HOST_ES_URL, request_timeout=60)
    yield es
    es.close()


def _task_pod(task_id: str, args: list[str]) -> Any:
    """The pod the cluster-data Airflow would launch: its worker environment is task_env() plus data_env()."""
    worker = {**task_env(), **data_env()}
    return task_pod(task_id, args, worker, worker)


def _write_blocked(es: Elasticsearch, index: str) -> bool:
    flat = es.indices.get_settings(index=index, name="index.blocks.write", flat_settings=True)
    return flat.body.get(index, {}).get("settings", {}).get("index.blocks.write") == "true"


def _snapshot(namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("-n", namespace, "get", "volumesnapshot", name, "-o", "json"))


def _drop_snapshot(namespace: str, name: str) -> None:
    """Delete a test VolumeSnapshot and, through deletionPolicy Delete, the driver's copy."""
    out = kubectl("-n", namespace, "get", "volumesnapshot", name, "-o", "json", "--ignore-not-found")
    if not out.strip():
        return
    content = json.loads(out).get("status", {}).get("boundVolumeSnapshotContentName")
    if content:
        kubectl("patch", "volumesnapshotcontent", content, "--type=merge",
                "-p", '{"spec":{"deletionPolicy":"Delete"}}', check=False)  # fmt: skip
    kubectl("-n", namespace, "delete", "volumesnapshot", name, "--wait=false", check=False)


def _produce_and_commit(topic: str, per_partition: int, committed: int) -> None:
    """``per_partition`` more records (acks=all) into each of the topic's 3 partitions, then the ingest group's
    commit at ``committed`` per partition, as a drain commits after its manifest is complete."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    producer = KafkaProducer(bootstrap_servers=HOST_KAFKA_BOOTSTRAP, acks="all", linger_ms=5)
    for n in range(per_partition * 3):
        producer.send(topic, value=f"record-{n}".encode(), partition=n % 3)
    producer.flush(timeout=60)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=HOST_KAFKA_BOOTSTRAP, group_id=CONSUMER_GROUP, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(3)]
    consumer.assign(tps)
    consumer.commit({tp: OffsetAndMetadata(committed, "", -1) for tp in tps})
    consumer.close(autocommit=False)


def test_archive_snapshot_covers_the_kafka_and_elasticsearch_claims_inside_the_hold(
    stateful: Any,  # noqa: F811
    cluster_es: Elasticsearch,
) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    day = date(2022, 1, 1) + timedelta(days=uuid.uuid4().int % 365)
    wanted = [(ns, f"{claim}-{day:%Y%m%d}") for ns, claims in CLAIMS.items() for claim in claims]
    setup = _run(stateful, _task_pod("setup", ["setup"]), timeout=600)
    assert setup.exit_code == 0, setup.logs[-3000:]
    topic = f"restore-drill-{uuid.uuid4().hex[:8]}"  # its own topic; the ingest group's commits on it go with it
    admin = KafkaAdminClient(bootstrap_servers=HOST_KAFKA_BOOTSTRAP)
    admin.create_topics([NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": "2"})])
    _produce_and_commit(topic, 100, 60)  # before the hold: 300 records, the group at 60 per partition
    if not cluster_es.indices.exists(index=day_index(day)):
        cluster_es.indices.create(index=day_index(day))  # from the template the setup pod installed
    cluster_es.index(index=day_index(day), id=f"marker-{day}", document={"event_id": f"marker-{day}"}, refresh=True)
    try:
        pre = _run(stateful, _task_pod("pre_hook", ["archive", "snapshot-pre", "--day", day.isoformat()]))
        assert pre.exit_code == 0, pre.logs[-3000:]
        held = pre.xcom["held"] if pre.xcom else []
        assert held and sorted(held) == sorted(existing(cluster_es, LIVE_INDICES)), pre.xcom
        recorded = pre.xcom["kafka_positions"]
        assert recorded["key"].endswith(f"volume-snapshots/date={day.isoformat()}/kafka.json")
        assert recorded["topics"] >= 1 and recorded["partitions"] >= 3 and recorded["groups"] >= 1, recorded

        take = _run(stateful, _task_pod("take", ["archive", "snapshot", "--day", day.isoformat()]), timeout=900)
        assert take.exit_code == 0, take.logs[-3000:]
        result = take.xcom or {}
        assert result["volume_snapshots"] == [f"{ns}/{name}" for ns, name in wanted], result
        assert result["state"] == "SUCCESS" and day_index(day) in result["indices"]
        assert result["mirrored_files"] > 0  # the pods' read-only view of the StatefulSet cluster's repository
        # between pre- and post-hook: every volume snapshot is usable and the writes are still held
        sizes = {}
        for namespace, name in wanted:
            snap = _snapshot(namespace, name)
            assert snap["status"]["readyToUse"] is True, snap["status"]
            assert snap["metadata"]["labels"]["eventpipe.io/day"] == day.isoformat()
            sizes[f"{namespace}/{name}"] = snap["status"]["restoreSize"]
        assert all(_write_blocked(cluster_es, index) for index in held)
        print(f"\nvolume snapshots of {day} ({result['seconds']} s for the step): {json.dumps(sizes)}")

        post = _run(stateful, _task_pod("post_hook", ["archive", "snapshot-post", "--day", day.isoformat()]))
        assert post.exit_code == 0, post.logs[-3000:]
        assert sorted((post.xcom or {})["released"]) == sorted(held)
        assert not any(_write_blocked(cluster_es, index) for index in held)
        snapshots = cluster_es.snapshot.get(repository=data_env_repository(), snapshot=snapshot_name(day))
        assert snapshots["snapshots"][0]["state"] == "SUCCESS"
        _produce_and_commit(topic, 50, 90)  # the live cluster moves on after the snapshot: 450 records, group at 90

        # the restore drill from those volume snapshots: a scratch cluster in elastic holds the day as the source does
        args = ["archive", "restore-volumes", "--day", day.isoformat(), "--no-manifest"]
        drill = _run(stateful, _task_pod("restore_volumes", args), timeout=1800)
        assert drill.exit_code == 0, drill.logs[-3000:]
        restored = drill.xcom or {}
        source = cluster_es.count(index=day_index(day))["count"]
        assert restored["documents"] == restored["source_documents"] == source >= 1, restored
        assert restored["snapshots"] == [name for ns, name in wanted if ns == "elastic"]
        kafka = restored["kafka"]
        # the snapshot's topic as the pre-hook recorded it, not as the live one is now (450 records, group at 90)
        assert kafka["per_topic"][topic] == {"partitions": 3, "recorded": 300, "restored": 300}, kafka["per_topic"]
        assert kafka["per_group"][CONSUMER_GROUP]["equal"] == kafka["per_group"][CONSUMER_GROUP]["partitions"]
        assert kafka["matches"] is True and kafka["problems"] == [] and kafka["namespace"] == SCRATCH_NAMESPACE
        assert kafka["snapshots"] == [name for ns, name in wanted if ns == "kafka"]
        print(f"volume restore drill of {day}: {json.dumps({k: v for k, v in restored.items() if k != 'kafka'})}")
        totals = {k: v for k, v in kafka.items() if k not in {"per_topic", "per_group"}}
        print(f"kafka restore drill of {day}: {json.dumps(totals)}")
        print(f"  {topic}: {kafka['per_topic'][topic]}; group {CONSUMER_GROUP}: {kafka['per_group'][CONSUMER_GROUP]}")
        print(f"  every topic: {json.dumps(kafka['per_topic'])}")
        leftovers = kubectl("-n", "elastic", "get", "sts,pvc,svc", "-l", "app.kubernetes.io/name=elasticsearch-restore")
        assert not leftovers.strip(), leftovers
        scratch = kubectl("-n", SCRATCH_NAMESPACE, "get", "sts,pvc,svc,cm,volumesnapshot", "-l", DRILL_LABEL)
        copies = kubectl("get", "volumesnapshotcontent", "-l", DRILL_LABEL, "-o", "name")
        assert not scratch.strip() and not copies.strip(), (scratch, copies)
        for namespace, name in wanted:  # the night's snapshots outlive the drill's copies of them
            assert _snapshot(namespace, name)["status"]["readyToUse"] is True
    finally:
        with contextlib.suppress(Exception):
            admin.delete_topics([topic])
            admin.close()
        with contextlib.suppress(Exception):
            cluster_es.snapshot.delete(repository=data_env_repository(), snapshot=snapshot_name(day))
        with contextlib.suppress(Exception):
            cluster_es.indices.delete(index=day_index(day))
        for namespace, name in wanted:
            _drop_snapshot(namespace, name)


def data_env_repository() -> str:
    from eventpipe.settings import Settings

    return Settings.from_env({**task_env(), **data_env()}).archive.repository
