"""A second, independent devstack cluster (the migration target), in sequence with the first on one host.

With the target up on fresh state, nothing of the source is there (its namespaces, a marker ConfigMap), and the
target's API server refuses the source's admin certificate (another CA), while the source's CA does not trust
the target's server. The source goes down with its state kept and comes back with the marker: that is the
migration's rollback. Takes the shared cluster down: run it under ``flock /tmp/cluster.lock`` (`make test-k8s`).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from devstack.cluster import csi
from devstack.cluster.deploy import xcom_sidecar_image
from devstack.cluster.node import identity, kubeconfig, kubectl, pki_dir
from devstack.cluster.podnet import NODE_IP
from devstack.migration import cluster_down, cluster_up, devstack, key_secret, wipe_target
from eventpipe.migrate.volumes import Kube, restore_manifests, take_pass

from .k8s_support import claim_pod
from .test_kubernetes import cluster, stateful  # noqa: F401  (fixtures: the cluster, the StatefulSets)

pytestmark = pytest.mark.k8s


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    pair = (f"migrate-src-{suffix}", f"migrate-dst-{suffix}")
    for ns in pair:
        kubectl("create", "namespace", ns)
    yield pair
    for ns in pair:
        kubectl("delete", "namespace", ns, "--wait=false")
    kubectl("delete", "volumesnapshotcontent", "-l", "eventpipe.io/migration", "--wait=false", check=False)


def test_a_cloud_pass_restores_an_encrypted_claim_through_preprovisioned_objects(namespaces: tuple[str, str]) -> None:
    """The migration's volume path inside one cluster: a pass ships the claim to S3; the key Secret is carried;
    content + snapshot + claim of the same name restore it, and a pod reads the record back."""
    src, dst = namespaces
    image = xcom_sidecar_image()  # a static busybox, already in the node's containerd
    csi.volume_key_secret(src)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "data-probe-0", "namespace": src, "labels": {"eventpipe.io/snapshot": "true"}},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": csi.STORAGE_CLASS_ENCRYPTED,
                      "resources": {"requests": {"storage": "64Mi"}}}}  # fmt: skip
    items = [claim, claim_pod("w", src, "data-probe-0", f"echo record-{src} > /data/f; sync; sleep 3600", image=image)]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    kubectl("-n", src, "wait", "--for=condition=Ready", "pod/w", "--timeout=180s")
    kube = Kube(kubeconfig())
    [snap] = take_pass(kube, kube.claims(src, "eventpipe.io/snapshot=true"), "probe", csi.CLOUD_SNAPSHOT_CLASS, 300)
    assert snap.handle.startswith("snapshot-") and snap.restore_size == 64 << 20
    kube.create(key_secret(dst, kube.secret_data(src, csi.VOLUME_KEY_SECRET)))
    moved = snap.model_copy(update={"namespace": dst})
    classes = {"snapshot_class": csi.CLOUD_SNAPSHOT_CLASS, "storage_class": csi.CLOUD_RESTORE_CLASS}
    for obj in restore_manifests(moved, driver=csi.DRIVER_NAME, **classes):
        kube.create(obj)
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps(claim_pod("w", dst, "data-probe-0", "cat /data/f; sleep 3600", image=image)),
    )
    kubectl("-n", dst, "wait", "--for=condition=Ready", "pod/w", "--timeout=300s")
    assert kubectl("-n", dst, "logs", "w").strip() == f"record-{src}"
    pvc = json.loads(kubectl("-n", dst, "get", "pvc", "data-probe-0", "-o", "json"))
    assert pvc["spec"]["storageClassName"] == csi.CLOUD_RESTORE_CLASS and pvc["status"]["phase"] == "Bound"


def _get(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.usefixtures("stateful")  # the source's kafka namespace and claims: what the target must not see
def test_the_target_cluster_sees_nothing_of_the_source_and_refuses_its_certificates() -> None:
    marker = f"migrate-marker-{uuid.uuid4().hex[:8]}"
    kubectl("-n", "default", "create", "configmap", marker, "--from-literal=cluster=source", cluster="source")
    assert kubectl("get", "namespace", "kafka", "-o", "name", cluster="source").strip() == "namespace/kafka"
    source_admin = (str(pki_dir("source") / "admin.crt"), str(pki_dir("source") / "admin.key"))
    target_api = f"https://{NODE_IP}:{identity('target').api_port}"
    try:
        cluster_down("source")
        wipe_target()
        devstack("target", "k8s", "--no-build")

        assert kubectl("-n", "default", "get", "configmap", marker, "--ignore-not-found", cluster="target") == ""
        assert kubectl("get", "namespace", "kafka", "--ignore-not-found", cluster="target") == ""
        # its own devstack claims only (e.g. the snapshot repository `devstack k8s` makes): none of the source's
        claims = kubectl("get", "pvc", "--all-namespaces", "-o", "name", cluster="target").split()
        assert not [c for c in claims if "kafka" in c or "elasticsearch" in c], claims
        # the source's admin certificate, over a TLS session that trusts the target's server: not a user there
        trusting_target = ssl.create_default_context(cafile=str(pki_dir("target") / "ca.crt"))
        trusting_target.load_cert_chain(*source_admin)
        assert _get(f"{target_api}/api/v1/namespaces", trusting_target) == 401
        # the target's own admin is (the refusal is the certificate, not the server)
        own = ssl.create_default_context(cafile=str(pki_dir("target") / "ca.crt"))
        own.load_cert_chain(str(pki_dir("target") / "admin.crt"), str(pki_dir("target") / "admin.key"))
        assert _get(f"{target_api}/api/v1/namespaces", own) == 200
        # and a client of the source does not trust the target's server certificate
        trusting_source = ssl.create_default_context(cafile=str(pki_dir("source") / "ca.crt"))
        trusting_source.load_cert_chain(*source_admin)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(f"{target_api}/api/v1/namespaces", trusting_source)
    finally:
        cluster_down("target")
        cluster_up("source")
    # the source kept its state through the target's whole life
    assert "cluster" in kubectl("-n", "default", "get", "configmap", marker, "-o", "json", cluster="source")
    kubectl("-n", "default", "delete", "configmap", marker, cluster="source")


@pytest.mark.usefixtures("stateful")
def test_a_drill_moves_the_pipeline_to_the_target_and_accounts_for_every_offset() -> None:
    """The whole move at the devstack's own data size (no fill), ingest live throughout: pre-copy, pause,
    final pass, restore on the target, verify (no difference), resume; after two intervals there every offset
    of the intervals on both sides is indexed or dead-lettered exactly once, and the nightly archive of the day
    holds the events of both sides as indexed. The source comes back up at the end (``restore_source``)."""
    from devstack.migration_drill import drill

    result = drill(precopy=True, rate=50.0, interval_s=20, before=2, after=2, size=None, archive=True)
    migration, books, archive = result["migration"], result["accounting"], result["archive"]
    assert (migration["outcome"], migration["differences"], migration["error"]) == ("migrated", [], None)
    assert [p["label"] for p in migration["passes"]] == ["precopy", "final"]
    assert books["exact"] and books["offsets"] == books["indexed"] + books["dead_lettered"] > 0
    sides = {i["cluster"] for i in result["intervals"]}
    assert sides == {"source", "target"}, result["intervals"]
    assert archive["verified"] and archive["archived_drill_rows"] == archive["indexed_drill_documents"]
    assert all(archive["archived_drill_rows"][side] > 0 for side in ("before_move", "after_move"))
    assert result["ok"], result
    assert kubectl("get", "namespace", "kafka", "-o", "name", cluster="source").strip() == "namespace/kafka"
