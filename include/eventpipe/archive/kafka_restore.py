"""Restore drill for Kafka: a night's three broker claims brought back as a scratch KRaft cluster, then checked.

Restored logs carry the cluster id and node ids in ``meta.properties``, and the KRaft metadata log names the
voters 0-2. So the scratch cluster is the live StatefulSet's spec with the same name (pods ``kafka-0..2``:
node id = pod ordinal), the same cluster id, in its own namespace (``kafka-restore``, created by
``deploy/stateful``): its headless Service and the ``controller.quorum.voters`` of its ConfigMap name
``*.kafka-headless.kafka-restore.svc``, never a live node, so it forms its own quorum; its NetworkPolicy lets it
reach nothing outside its namespace, and in its pods the live brokers' names resolve to an address routed nowhere
(where NetworkPolicies are not enforced, as on the devstack, the restored metadata's registrations of the live
brokers would otherwise let a scratch follower fetch from a live leader). No EXTERNAL listener, no snapshot label
on its claims. The check reads only a cluster whose every broker is registered at a scratch address.

A PVC's ``dataSource`` must be in the claim's namespace, so each VolumeSnapshot of ``kafka`` gets a copy in the
scratch namespace: a pre-provisioned VolumeSnapshotContent with the same ``snapshotHandle`` and
``deletionPolicy: Retain`` (deleting the copy never deletes the driver's snapshot). The restored cluster is
checked against the positions the night's pre-hook recorded (``eventpipe.archive.kafka_positions``), then every
scratch object is deleted.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from eventpipe.archive.kafka_positions import KafkaPositions, compare, read_positions
from eventpipe.archive.volumes import GROUP, PLURAL, VERSION, kube_clients, night_snapshots
from eventpipe.settings import KubernetesSettings

SCRATCH_NAMESPACE = "kafka-restore"
DRILL_LABEL = "eventpipe.io/restore-drill"
CONTENTS = "volumesnapshotcontents"
SCRATCH_HEAP = "-Xms384m -Xmx384m"
# Where the scratch pods resolve the live brokers' names: TEST-NET-1 (RFC 5737), routed nowhere
BLACKHOLE = "192.0.2.1"


class KafkaRestoreFailed(RuntimeError):
    """The scratch Kafka did not come up, or its offsets differ from what the pre-hook recorded."""


@dataclass
class KafkaRestoreResult:
    day: str
    namespace: str
    snapshots: list[str]
    topics: int
    partitions: int
    groups: int
    recorded_at: str
    # records beyond the recorded end offsets (written between the pre-hook and each broker's copy)
    records_after_hold: int
    problems: list[str]
    matches: bool
    seconds: dict[str, float] = field(default_factory=dict)
    per_topic: dict[str, dict[str, int]] = field(default_factory=dict)
    per_group: dict[str, dict[str, int]] = field(default_factory=dict)


def _labels(live_namespace: str) -> dict[str, str]:
    return {DRILL_LABEL: live_namespace}


def scratch_config(live: dict[str, Any], live_namespace: str, scratch_namespace: str) -> dict[str, Any]:
    """The live ConfigMap with every ``.<live namespace>.svc`` name moved to the scratch namespace."""
    old, new = f".{live_namespace}.svc", f".{scratch_namespace}.svc"
    data = {key: value.replace(old, new) for key, value in live.get("data", {}).items()}
    voters = [
        voter.rsplit(":", 1)[0].split("@", 1)[-1]
        for text in data.values()
        for line in text.splitlines()
        if line.strip().startswith("controller.quorum.voters=")
        for voter in line.split("=", 1)[1].split(",")
    ]
    if not voters or not all(host.endswith(new) for host in voters):  # every voter a scratch node, none live
        raise KafkaRestoreFailed(f"controller.quorum.voters of {live['metadata']['name']} not moved to {new}")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": live["metadata"]["name"], "labels": _labels(live_namespace)},
        "data": data,
    }


def scratch_statefulset(live: dict[str, Any], scratch_namespace: str) -> dict[str, Any]:
    """The live Kafka StatefulSet as a scratch cluster: same name and node ids, no external listener."""
    live_namespace = live["metadata"]["namespace"]
    spec = copy.deepcopy(live["spec"])
    spec["updateStrategy"] = {"type": "OnDelete"}
    spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    template = spec["template"]
    template["metadata"].setdefault("labels", {}).update(_labels(live_namespace))
    pod = template["spec"]
    pod["terminationGracePeriodSeconds"] = 30
    # The restored metadata still registers brokers 1..N at the live names until each scratch broker registers
    # again, and a follower that fetched from a live leader would copy records the night never had into the
    # scratch (and report its fetch position to the live leader). A NetworkPolicy forbids that only where the
    # network enforces it, so the live names resolve to nowhere in these pods.
    service, replicas = spec["serviceName"], spec["replicas"]
    live_names = [f"{live['metadata']['name']}-{n}.{service}.{live_namespace}.svc" for n in range(replicas)]
    pod["hostAliases"] = [{"ip": BLACKHOLE, "hostnames": [*live_names, *(f"{h}.cluster.local" for h in live_names)]}]
    container = pod["containers"][0]
    drop = {"EXTERNAL_HOST", "EXTERNAL_PORT_BASE", "KAFKA_HEAP_OPTS"}
    container["env"] = [e for e in container.get("env", []) if e["name"] not in drop]
    container["env"].append({"name": "KAFKA_HEAP_OPTS", "value": SCRATCH_HEAP})
    container["resources"] = {"requests": {"cpu": "100m", "memory": "768Mi"}, "limits": {"cpu": "1", "memory": "768Mi"}}
    for claim in spec["volumeClaimTemplates"]:
        claim.pop("status", None)
        claim["metadata"]["labels"] = {**_labels(live_namespace), "app.kubernetes.io/name": "kafka"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": live["metadata"]["name"],
            "namespace": scratch_namespace,
            "labels": _labels(live_namespace),
        },
        "spec": spec,
    }


def scratch_service(live: dict[str, Any]) -> dict[str, Any]:
    """The headless Service the scratch pods' names (and the moved quorum voters) resolve through."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": live["spec"]["serviceName"], "labels": _labels(live["metadata"]["namespace"])},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": live["spec"]["selector"]["matchLabels"],
            "ports": [{"name": "broker", "port": 9092}, {"name": "controller", "port": 9093}],
        },
    }


def snapshot_copy(
    snapshot: dict[str, Any], content: dict[str, Any], scratch_namespace: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pre-provisioned (Retain) content on the same snapshot handle and the VolumeSnapshot bound to it."""
    live_namespace, name = snapshot["metadata"]["namespace"], snapshot["metadata"]["name"]
    content_name = f"restore-drill-{live_namespace}-{name}"[:253]
    copied = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name, "labels": _labels(live_namespace)},
        "spec": {
            "deletionPolicy": "Retain",  # the copy must never delete the night's snapshot
            "driver": content["spec"]["driver"],
            "source": {"snapshotHandle": content["status"]["snapshotHandle"]},
            "volumeSnapshotClassName": content["spec"].get("volumeSnapshotClassName"),
            "volumeSnapshotRef": {"name": name, "namespace": scratch_namespace},
        },
    }
    bound = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": scratch_namespace, "labels": _labels(live_namespace)},
        "spec": {"source": {"volumeSnapshotContentName": content_name}},
    }
    return copied, bound


def scratch_claim(pvc: str, snapshot: str, template: dict[str, Any], size: str, live_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc, "labels": {**_labels(live_namespace), "app.kubernetes.io/name": "kafka"}},
        "spec": {
            "accessModes": template["spec"]["accessModes"],
            "storageClassName": template["spec"].get("storageClassName"),
            "resources": {"requests": {"storage": size}},
            "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": snapshot},
        },
    }


def _wait_ready(apps: Any, name: str, namespace: str, replicas: int, deadline: float) -> None:
    while True:
        status = apps.read_namespaced_stateful_set(name, namespace).status
        if (status.ready_replicas or 0) >= replicas:
            return
        if time.monotonic() > deadline:
            raise KafkaRestoreFailed(f"scratch Kafka {namespace}/{name}: {status.ready_replicas or 0}/{replicas} ready")
        time.sleep(5)


def summary(
    recorded: KafkaPositions, ends: dict[str, dict[int, int]], groups: dict[str, dict[str, dict[int, int]]]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Per topic: partitions, recorded and restored end offsets (sums); per group: partitions recorded and equal."""
    topics = {
        topic: {
            "partitions": len(parts),
            "recorded": sum(parts.values()),
            "restored": sum(ends.get(topic, {}).get(p, 0) for p in parts),
        }
        for topic, parts in sorted(recorded.end_offsets.items())
    }
    committed = {
        group: {
            "partitions": sum(len(parts) for parts in offsets.values()),
            "equal": sum(
                groups.get(group, {}).get(topic, {}).get(p) == o
                for topic, parts in offsets.items()
                for p, o in parts.items()
            ),
        }
        for group, offsets in sorted(recorded.groups.items())
    }
    return topics, committed


def foreign_brokers(bootstrap: str, suffix: str) -> list[tuple[int, str]]:
    """Brokers the scratch cluster's metadata lists at an address outside the scratch namespace."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="eventpipe-restore-drill")
    try:
        brokers = admin.describe_cluster()["brokers"]
    finally:
        admin.close()
    return [(b["broker_id"], b["host"]) for b in brokers if not b["host"].endswith(suffix)]


def check_positions(
    bootstrap: str, recorded: KafkaPositions, deadline: float, suffix: str
) -> tuple[list[str], Any, Any]:
    """Compare until no difference is left or the deadline passes (leaders are elected and high watermarks
    advance as the restored followers fetch): the last differences, restored end offsets and group offsets."""
    problems: list[str] = ["no answer"]
    ends: dict[str, dict[int, int]] = {}
    groups: dict[str, dict[str, dict[int, int]]] = {}
    while True:
        try:
            strangers = foreign_brokers(bootstrap, suffix)
            if strangers:  # a registration restored from the live cluster: not answered from the scratch yet
                problems = [f"broker {node} still registered at {host}" for node, host in strangers]
            else:
                ends, groups = read_positions(bootstrap)
                problems = compare(recorded, ends, groups)
        except Exception as exc:  # noqa: BLE001  (a cluster still electing leaders: retried until the deadline)
            problems = [f"scratch Kafka not answering: {type(exc).__name__}: {exc}"]
        if not problems or time.monotonic() > deadline:
            return problems, ends, groups
        time.sleep(5)


def restore_kafka(
    kube: KubernetesSettings,
    day: date,
    recorded: KafkaPositions,
    *,
    namespace: str = "kafka",
    statefulset: str = "kafka",
    scratch_namespace: str = SCRATCH_NAMESPACE,
    timeout_s: float = 900.0,
) -> KafkaRestoreResult:
    """Restore ``statefulset``'s claims of ``day`` into a scratch Kafka and check it against ``recorded``."""
    core, apps, custom = kube_clients(kube)
    began = time.monotonic()
    seconds: dict[str, float] = {}
    live = apps.api_client.sanitize_for_serialization(apps.read_namespaced_stateful_set(statefulset, namespace))
    (template,) = live["spec"]["volumeClaimTemplates"]
    claim_template, replicas = template["metadata"]["name"], live["spec"]["replicas"]
    config_volumes = [v["configMap"]["name"] for v in live["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    copies: list[tuple[dict[str, Any], dict[str, Any], str]] = []
    night = night_snapshots(custom, live, namespace, day, KafkaRestoreFailed)
    names = [snap["metadata"]["name"] for snap in night]
    for snap in night:
        status = snap["status"]
        content = custom.get_cluster_custom_object(GROUP, VERSION, CONTENTS, status["boundVolumeSnapshotContentName"])
        copies.append((*snapshot_copy(snap, content, scratch_namespace), status["restoreSize"]))
    cleanup_kafka(kube, namespace, scratch_namespace)
    try:
        for content, snapshot, _ in copies:
            custom.create_cluster_custom_object(GROUP, VERSION, CONTENTS, content)
            custom.create_namespaced_custom_object(GROUP, VERSION, scratch_namespace, PLURAL, snapshot)
        for n, (_, snapshot, size) in enumerate(copies):
            pvc = f"{claim_template}-{statefulset}-{n}"
            claim = scratch_claim(pvc, snapshot["metadata"]["name"], template, size, namespace)
            core.create_namespaced_persistent_volume_claim(scratch_namespace, claim)
        for name in config_volumes:
            live_config = core.api_client.sanitize_for_serialization(core.read_namespaced_config_map(name, namespace))
            scratch = scratch_config(live_config, namespace, scratch_namespace)
            core.create_namespaced_config_map(scratch_namespace, scratch)
        core.create_namespaced_service(scratch_namespace, scratch_service(live))
        apps.create_namespaced_stateful_set(scratch_namespace, scratch_statefulset(live, scratch_namespace))
        seconds["created"] = round(time.monotonic() - began, 1)
        deadline = time.monotonic() + timeout_s
        _wait_ready(apps, statefulset, scratch_namespace, replicas, deadline)
        seconds["ready"] = round(time.monotonic() - began, 1)
        service = live["spec"]["serviceName"]
        bootstrap = ",".join(f"{statefulset}-{n}.{service}.{scratch_namespace}.svc:9092" for n in range(replicas))
        until = min(deadline, time.monotonic() + 300)
        problems, ends, groups = check_positions(bootstrap, recorded, until, f".{scratch_namespace}.svc")
        seconds["checked"] = round(time.monotonic() - began, 1)
    finally:
        cleanup_kafka(kube, namespace, scratch_namespace)
        seconds["cleaned_up"] = round(time.monotonic() - began, 1)
    per_topic, per_group = summary(recorded, ends, groups)
    return KafkaRestoreResult(
        day=day.isoformat(),
        namespace=scratch_namespace,
        snapshots=names,
        topics=len(recorded.end_offsets),
        partitions=recorded.partitions,
        groups=len(recorded.groups),
        recorded_at=recorded.recorded_at.isoformat(),
        records_after_hold=sum(max(0, t["restored"] - t["recorded"]) for t in per_topic.values()),
        problems=problems[:50],
        matches=not problems,
        seconds=seconds,
        per_topic=per_topic,
        per_group=per_group,
    )


def report(result: KafkaRestoreResult) -> str:
    """The drill's report: one line per topic and group, then every difference (none: the restore passed)."""
    lines = [
        f"Kafka restored from the VolumeSnapshots of {result.day} into {result.namespace} "
        f"(pre-hook record {result.recorded_at}): {result.topics} topics, {result.partitions} partitions, "
        f"{result.groups} groups; {result.seconds}",
        f"{'topic':<48} {'parts':>5} {'recorded end':>13} {'restored end':>13}",
    ]
    for topic, row in result.per_topic.items():
        lines.append(f"{topic:<48} {row['partitions']:>5} {row['recorded']:>13} {row['restored']:>13}")
    for group, row in result.per_group.items():
        lines.append(f"group {group:<42} {row['partitions']:>5} committed offsets, {row['equal']} equal to the record")
    passed = "PASS: every recorded offset is there"
    lines.append(passed if result.matches else f"FAIL: {len(result.problems)} differences")
    lines.extend(f"  {problem}" for problem in result.problems)
    return "\n".join(lines)


def cleanup_kafka(
    kube: KubernetesSettings, live_namespace: str, scratch_namespace: str = SCRATCH_NAMESPACE, timeout_s: float = 300.0
) -> None:
    """Delete every scratch object of the drill (idempotent) and wait until its pods and claims are gone."""
    from kubernetes.client.exceptions import ApiException

    core, apps, custom = kube_clients(kube)
    selector = f"{DRILL_LABEL}={live_namespace}"

    def gone(delete: Any) -> None:
        try:
            delete()
        except ApiException as exc:
            if exc.status != 404:
                raise

    for sts in apps.list_namespaced_stateful_set(scratch_namespace, label_selector=selector).items:
        gone(lambda: apps.delete_namespaced_stateful_set(sts.metadata.name, scratch_namespace))  # noqa: B023
    for svc in core.list_namespaced_service(scratch_namespace, label_selector=selector).items:
        gone(lambda: core.delete_namespaced_service(svc.metadata.name, scratch_namespace))  # noqa: B023
    core.delete_collection_namespaced_config_map(scratch_namespace, label_selector=selector)
    deadline = time.monotonic() + timeout_s

    def wait(what: str, listing: Any) -> None:
        while listing(scratch_namespace, label_selector=selector).items:
            if time.monotonic() > deadline:
                raise KafkaRestoreFailed(f"scratch {what} in {scratch_namespace} still present after {timeout_s:.0f}s")
            time.sleep(3)

    wait("pods", core.list_namespaced_pod)
    core.delete_collection_namespaced_persistent_volume_claim(scratch_namespace, label_selector=selector)
    wait("claims", core.list_namespaced_persistent_volume_claim)
    # the copies last: a claim being restored reads its snapshot; Retain keeps the driver's snapshot either way
    snaps = custom.list_namespaced_custom_object(GROUP, VERSION, scratch_namespace, PLURAL, label_selector=selector)
    for snap in snaps["items"]:
        name = snap["metadata"]["name"]
        gone(lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, scratch_namespace, PLURAL, name))  # noqa: B023
    for content in custom.list_cluster_custom_object(GROUP, VERSION, CONTENTS, label_selector=selector)["items"]:
        name = content["metadata"]["name"]
        if content["spec"].get("deletionPolicy") != "Retain":
            raise KafkaRestoreFailed(f"VolumeSnapshotContent {name} is not Retain: not deleting it")
        gone(lambda: custom.delete_cluster_custom_object(GROUP, VERSION, CONTENTS, name))  # noqa: B023
