"""The node "reboots": the cluster goes down, the kernel's mounts and loop devices go with it, the cluster comes
back, and every Kafka record and Elasticsearch document written before is still there, on the same volumes.

``make test-k8s`` (opt-in). Runs after the other stateful modules (it takes the cluster down). The power cut is
what a reboot does to the host beyond ``devstack down``: nothing stays mounted or attached, so each volume is
staged from its image again (loop device, ext4, the fscrypt key from the node-stage Secret).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from typing import Any

import pytest
from elasticsearch import Elasticsearch, helpers
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from devstack.cluster.csi import DATA_ROOT, KUBELET_ROOT
from devstack.cluster.deploy import prepare
from devstack.cluster.kubernetes import KubernetesCluster
from devstack.cluster.node import kubectl, mounts_under
from devstack.cluster.stateful import HOST_ES_URL, HOST_KAFKA_BOOTSTRAP, WORKLOADS, deploy_stateful, wait_ready

from .test_kubernetes import cluster  # noqa: F401  (the session's cluster fixture)

pytestmark = [pytest.mark.k8s, pytest.mark.services, pytest.mark.slow]

RECORDS, DOCUMENTS = 3000, 2000


def _volume_handles() -> dict[str, str]:
    """claim -> CSI volume handle of every CSI claim in the StatefulSets' namespaces (the same must come back)."""
    handles = {}
    for namespace, *_ in WORKLOADS:
        claims = json.loads(kubectl("-n", namespace, "get", "pvc", "-o", "json"))["items"]
        for claim in (c for c in claims if c["spec"].get("volumeName")):
            pv = json.loads(kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json"))
            if "csi" in pv["spec"]:  # not the shared hostPath snapshot repository claim
                handles[f"{namespace}/{claim['metadata']['name']}"] = pv["spec"]["csi"]["volumeHandle"]
    return handles


def _power_cut() -> dict[str, int]:
    """What a reboot does beyond stopping the processes: unmount everything the kubelet and the driver mounted
    (deepest first) and detach the volumes' loop devices."""
    ours = mounts_under(KUBELET_ROOT) + mounts_under(DATA_ROOT)
    for mount in ours:
        subprocess.run(["umount", "-l", mount], check=False)
    loops = json.loads(subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True).stdout or "{}")
    detached = 0
    for loop in loops.get("loopdevices", []):
        if str(loop.get("back-file") or "").startswith(str(DATA_ROOT)):
            subprocess.run(["losetup", "-d", loop["name"]], check=True)
            detached += 1
    return {"unmounted": len(ours), "detached": detached}


def _kafka_digests(topic: str, partitions: int) -> dict[tuple[int, int], str]:
    consumer = KafkaConsumer(
        bootstrap_servers=HOST_KAFKA_BOOTSTRAP, enable_auto_commit=False, consumer_timeout_ms=15000
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    total = sum(consumer.end_offsets(tps).values())
    seen: dict[tuple[int, int], str] = {}
    while len(seen) < total:
        batch = consumer.poll(timeout_ms=5000)
        if not batch:
            break
        for records in batch.values():
            for r in records:
                seen[(r.partition, r.offset)] = hashlib.sha256(r.value).hexdigest()
    consumer.close()
    return seen


def test_a_node_reboot_keeps_every_record_and_document(cluster: Any) -> None:  # noqa: F811
    deploy_stateful()
    run = uuid.uuid4().hex[:8]
    topic, index = f"test-reboot-{run}", f"test-reboot-{run}"
    admin = KafkaAdminClient(bootstrap_servers=HOST_KAFKA_BOOTSTRAP)
    admin.create_topics([NewTopic(topic, 3, 3)])
    producer = KafkaProducer(bootstrap_servers=HOST_KAFKA_BOOTSTRAP, acks="all", retries=5)
    for n in range(RECORDS):
        producer.send(topic, f"record {n} of {run}".encode(), partition=n % 3)
    producer.flush()
    producer.close()
    before = _kafka_digests(topic, 3)
    assert len(before) == RECORDS
    es = Elasticsearch(HOST_ES_URL)
    es.indices.create(index=index, settings={"number_of_shards": 3, "number_of_replicas": 1})
    helpers.bulk(es, ({"_index": index, "_id": str(n), "n": n, "run": run} for n in range(DOCUMENTS)), refresh=True)
    handles = _volume_handles()

    node = KubernetesCluster()
    assert node.stop()
    cut = _power_cut()
    print(f"\npower cut: {cut}")
    assert not mounts_under(KUBELET_ROOT)
    node.start()
    prepare(build=False)
    wait_ready()

    assert _volume_handles() == handles  # the same volumes, staged again from their images
    assert _kafka_digests(topic, 3) == before
    es = Elasticsearch(HOST_ES_URL)
    es.cluster.health(index=index, wait_for_status="green", timeout="300s")
    assert es.count(index=index)["count"] == DOCUMENTS
    assert es.get(index=index, id=str(DOCUMENTS - 1))["_source"] == {"n": DOCUMENTS - 1, "run": run}
    admin = KafkaAdminClient(bootstrap_servers=HOST_KAFKA_BOOTSTRAP)
    admin.delete_topics([topic])
    es.indices.delete(index=index)
