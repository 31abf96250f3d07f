"""Pure parts of the StatefulSet data path: snapshot namespaces, pod endpoints, the scratch restore cluster.

The cluster runs of the same code are in tests/test_stateful_snapshots_k8s.py (``make test-k8s``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from eventpipe.archive.volume_restore import SCRATCH, SCRATCH_CLUSTER, scratch_statefulset
from eventpipe.archive.volumes import qualified, snapshot_namespaces
from eventpipe.orchestration.tasks import pod_endpoints
from eventpipe.settings import ArchiveSettings, KubernetesSettings

ROOT = Path(__file__).resolve().parents[1]


def _live_elasticsearch() -> dict:
    docs = yaml.safe_load_all((ROOT / "deploy" / "stateful" / "elasticsearch.yaml").read_text())
    (sts,) = [d for d in docs if d and d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]  # as the devstack overlay adds it: the fs repository's claim
    pod["volumes"].append({"name": "snapshots", "persistentVolumeClaim": {"claimName": "elasticsearch-snapshots"}})
    pod["containers"][0]["volumeMounts"].append({"name": "snapshots", "mountPath": "/usr/share/es/snapshots/x"})
    return sts


def test_snapshot_namespaces_default_to_the_pipelines_and_keep_the_given_order() -> None:
    kube = KubernetesSettings(namespace="pipeline")
    assert snapshot_namespaces(ArchiveSettings(), kube) == ["pipeline"]
    cfg = ArchiveSettings(volume_snapshot_namespaces=" kafka, elastic,kafka,")
    assert snapshot_namespaces(cfg, kube) == ["kafka", "elastic"]
    assert qualified("pipeline", "pvc-20260115", "pipeline") == "pvc-20260115"
    assert qualified("kafka", "data-kafka-0-20260115", "pipeline") == "kafka/data-kafka-0-20260115"


def test_pod_endpoints_replace_only_what_is_set() -> None:
    assert pod_endpoints(KubernetesSettings()) == {}
    kube = KubernetesSettings(pod_es_url="http://elasticsearch.elastic.svc:9200")
    assert pod_endpoints(kube) == {"EVENTPIPE_ES_URL": "http://elasticsearch.elastic.svc:9200"}


def test_scratch_cluster_is_its_own_and_writes_no_repository() -> None:
    live = _live_elasticsearch()
    scratch = scratch_statefulset(live, "elasticsearch-data")
    assert scratch["metadata"] == {
        "name": SCRATCH,
        "namespace": "elastic",
        "labels": {"app.kubernetes.io/name": SCRATCH, "app.kubernetes.io/part-of": "eventpipe"},
    }
    spec = scratch["spec"]
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": SCRATCH}
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == SCRATCH  # not the live policy's pods
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["cluster.name"] == SCRATCH_CLUSTER != "eventpipe"
    assert env["discovery.seed_hosts"] == f"{SCRATCH}-headless.elastic.svc"
    assert "cluster.initial_master_nodes" not in env
    assert "lifecycle" not in container
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert "snapshots" not in mounts and "elasticsearch-data" in mounts
    assert all("persistentVolumeClaim" not in v for v in spec["template"]["spec"]["volumes"])
    (template,) = spec["volumeClaimTemplates"]
    assert "eventpipe.io/snapshot" not in template["metadata"]["labels"]  # never in a nightly's snapshot set
    # the live object is untouched
    assert live["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
