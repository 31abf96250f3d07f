"""Restore drill from volume snapshots: a day's Elasticsearch claims brought back as a scratch cluster.

The nightly snapshot step took one VolumeSnapshot per Elasticsearch data claim (``eventpipe.archive.volumes``).
This restores each into a new claim (``dataSource`` must be in the snapshot's namespace), starts a scratch
StatefulSet on them from the live one's template, counts the day's documents there and compares them with the
live cluster's and the archive manifest's, then deletes the scratch objects. The scratch cluster gets a cluster
name of its own (a transport handshake with the live nodes, whose addresses its restored state still names, is
refused), no snapshot repository mount and no snapshot label on its claims.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx

from eventpipe.archive.indices import day_index, late_index
from eventpipe.archive.volumes import GROUP, kube_clients, night_snapshots
from eventpipe.settings import ArchiveSettings, KubernetesSettings

SCRATCH = "elasticsearch-restore"
SCRATCH_CLUSTER = "eventpipe-restore"
SCRATCH_HEAP = "-Xms512m -Xmx512m"


class VolumeRestoreFailed(RuntimeError):
    """The scratch cluster did not come up, or its documents differ from the source's."""


@dataclass
class VolumeRestoreResult:
    day: str
    namespace: str
    snapshots: list[str]
    documents: int
    source_documents: int
    manifest_rows: int | None
    matches: bool
    seconds: dict[str, float] = field(default_factory=dict)


def scratch_statefulset(live: dict[str, Any], claim_template: str) -> dict[str, Any]:
    """The live Elasticsearch StatefulSet's spec as a scratch cluster of its own (see the module docstring)."""
    spec = copy.deepcopy(live["spec"])
    labels = {"app.kubernetes.io/name": SCRATCH, "app.kubernetes.io/part-of": "eventpipe"}
    spec["serviceName"] = f"{SCRATCH}-headless"
    spec["selector"] = {"matchLabels": {"app.kubernetes.io/name": SCRATCH}}
    spec["updateStrategy"] = {"type": "OnDelete"}
    spec["template"]["metadata"] = {"labels": labels}
    pod = spec["template"]["spec"]
    pod["terminationGracePeriodSeconds"] = 30
    container = pod["containers"][0]
    container.pop("lifecycle", None)  # the pre-stop hook would register a shutdown in the restored state
    overrides = {
        "cluster.name": SCRATCH_CLUSTER,
        "discovery.seed_hosts": f"{SCRATCH}-headless.{live['metadata']['namespace']}.svc",
        "ES_JAVA_OPTS": SCRATCH_HEAP,
    }
    env = [e for e in container.get("env", []) if e["name"] not in {*overrides, "cluster.initial_master_nodes"}]
    container["env"] = env + [{"name": k, "value": v} for k, v in overrides.items()]
    container["resources"] = {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    keep = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" not in v}  # no repository mount
    container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] in keep | {claim_template}]
    pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] in keep]
    for template in spec["volumeClaimTemplates"]:
        template.pop("status", None)
        template["metadata"]["labels"] = {"app.kubernetes.io/name": SCRATCH}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": SCRATCH, "namespace": live["metadata"]["namespace"], "labels": labels},
        "spec": spec,
    }


def _count(url: str, indices: list[str]) -> int:
    response = httpx.get(
        f"{url}/{','.join(indices)}/_count", params={"ignore_unavailable": "true"}, timeout=60
    ).raise_for_status()
    return int(response.json()["count"])


def _wait_scratch(url: str, index: str, timeout_s: float) -> None:
    """Until the scratch cluster answers and the day's index has its primaries (yellow or better)."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            health = httpx.get(
                f"{url}/_cluster/health/{index}", params={"wait_for_status": "yellow", "timeout": "30s"}, timeout=45
            )
            last = health.text[:300]
            if health.status_code == 200 and health.json().get("status") in {"yellow", "green"}:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(5)
    raise VolumeRestoreFailed(f"scratch cluster {SCRATCH} not serving {index} after {timeout_s:.0f}s: {last}")


def restore_volumes(
    es_url: str,
    cfg: ArchiveSettings,
    kube: KubernetesSettings,
    day: date,
    *,
    namespace: str = "elastic",
    statefulset: str = "elasticsearch",
    manifest_rows: int | None = None,
    timeout_s: float = 900.0,
) -> VolumeRestoreResult:
    """Restore ``statefulset``'s claims from the day's VolumeSnapshots into a scratch cluster and compare counts."""
    core, apps, custom = kube_clients(kube)
    seconds: dict[str, float] = {}
    began = time.monotonic()
    live = apps.api_client.sanitize_for_serialization(apps.read_namespaced_stateful_set(statefulset, namespace))
    (template,) = live["spec"]["volumeClaimTemplates"]
    claim_template = template["metadata"]["name"]
    night = night_snapshots(custom, live, namespace, day, VolumeRestoreFailed)
    snapshots = [snap["metadata"]["name"] for snap in night]
    sizes = [snap["status"]["restoreSize"] for snap in night]
    indices = [day_index(day), late_index(day)]
    source_documents = _count(es_url, indices)
    cleanup(namespace, kube)
    try:
        for n, (name, size) in enumerate(zip(snapshots, sizes, strict=True)):
            claim = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"{claim_template}-{SCRATCH}-{n}", "labels": {"app.kubernetes.io/name": SCRATCH}},
                "spec": {
                    "accessModes": template["spec"]["accessModes"],
                    "storageClassName": template["spec"].get("storageClassName"),
                    "resources": {"requests": {"storage": size}},
                    "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": name},
                },
            }
            core.create_namespaced_persistent_volume_claim(namespace, claim)
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{SCRATCH}-headless", "labels": {"app.kubernetes.io/name": SCRATCH}},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"app.kubernetes.io/name": SCRATCH},
                "ports": [{"name": "http", "port": 9200}, {"name": "transport", "port": 9300}],
            },
        }
        core.create_namespaced_service(namespace, service)
        apps.create_namespaced_stateful_set(namespace, scratch_statefulset(live, claim_template))
        seconds["created"] = round(time.monotonic() - began, 1)
        url = f"http://{SCRATCH}-0.{SCRATCH}-headless.{namespace}.svc:9200"
        _wait_scratch(url, day_index(day), timeout_s)
        seconds["serving"] = round(time.monotonic() - began, 1)
        documents = _count(url, indices)
    finally:
        cleanup(namespace, kube)
        seconds["cleaned_up"] = round(time.monotonic() - began, 1)
    matches = documents == source_documents and (manifest_rows is None or documents == manifest_rows)
    result = VolumeRestoreResult(
        day.isoformat(),
        namespace,
        snapshots,
        documents,
        source_documents,
        manifest_rows,
        matches,
        seconds,
    )
    if not matches:
        raise VolumeRestoreFailed(
            f"{day}: {documents} documents restored from volume snapshots, the source holds {source_documents}"
            + (f" and the manifest {manifest_rows}" if manifest_rows is not None else "")
        )
    return result


def cleanup(namespace: str, kube: KubernetesSettings, timeout_s: float = 300.0) -> None:
    """Delete the scratch StatefulSet, its pods' Service and claims (idempotent), and wait until they are gone."""
    from kubernetes.client.exceptions import ApiException

    core, apps, _ = kube_clients(kube)
    selector = f"app.kubernetes.io/name={SCRATCH}"
    for delete in (
        lambda: apps.delete_namespaced_stateful_set(SCRATCH, namespace, propagation_policy="Foreground"),
        lambda: core.delete_namespaced_service(f"{SCRATCH}-headless", namespace),
    ):
        try:
            delete()
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout_s
    while core.list_namespaced_pod(namespace, label_selector=selector).items:
        if time.monotonic() > deadline:
            raise VolumeRestoreFailed(f"scratch pods of {SCRATCH} still present after {timeout_s:.0f}s")
        time.sleep(3)
    core.delete_collection_namespaced_persistent_volume_claim(namespace, label_selector=selector)
    while core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items:
        if time.monotonic() > deadline:
            raise VolumeRestoreFailed(f"scratch claims of {SCRATCH} still present after {timeout_s:.0f}s")
        time.sleep(3)
