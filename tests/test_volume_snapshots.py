"""Application-consistent CSI VolumeSnapshots on the real local cluster, with real data copied and restored.

A PVC-backed workload labelled for snapshots writes a marker; the archive's snapshot step (pre-hook write
hold -> Elasticsearch snapshot + VolumeSnapshots -> post-hook) must get a VolumeSnapshot to ``readyToUse``
while the hold is still in place; the snapshot's bytes on the driver's disk hold the marker; a PVC restored
from it (``dataSource``) shows the marker and not what the workload wrote after the snapshot. ``make test-k8s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from devstack.cluster import csi
from devstack.cluster.deploy import apply_deploy, prepare
from devstack.cluster.image import IMAGE
from devstack.cluster.kubernetes import CONTAINERD_SOCKET, KubernetesCluster, kubeconfig, kubectl
from devstack.cluster.system_images import image_refs
from devstack.runtime import DevstackError
from devstack.stack import DATA_SERVICES, up
from eventpipe.archive.indices import day_index, existing, snapshot_name
from eventpipe.archive.snapshot import LIVE_INDICES, post_hook, pre_hook, take_snapshot
from eventpipe.archive.volumes import GROUP, PLURAL, VERSION
from eventpipe.k8s.schemas import volume_snapshot
from eventpipe.settings import Settings

from .k8s_support import apply_objects, claim, claim_pod, get_object, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.services]

SNAPSHOT_LABEL = {"eventpipe.io/snapshot": "true"}  # ArchiveSettings' default selector


_wait_for = partial(wait_for, timeout=120, every=0.5)  # this file's pace: quicker polls, shorter waits


def _exec(namespace: str, pod: str, script: str) -> str:
    return kubectl("-n", namespace, "exec", pod, "--", "sh", "-c", script)


def _write_blocked(es: Elasticsearch, index: str) -> bool:
    blocks = es.indices.get_settings(index=index)[index]["settings"]["index"].get("blocks", {})
    return blocks.get("write") == "true"


@pytest.fixture(scope="module")
def cluster(stack_env: dict[str, str]) -> None:
    """The cluster with CSI and external-snapshotter; the image is built only if the cluster has none yet."""
    if os.geteuid() != 0:
        pytest.fail("the k8s tests need root (bridge, iptables, containers, mounts): run them as root")
    began = time.monotonic()
    try:
        up(DATA_SERVICES)
        KubernetesCluster().start()
        present = f"docker.io/library/{IMAGE}" in image_refs(CONTAINERD_SOCKET)
        print(prepare(build=not present, csi=True))
    except DevstackError as err:
        pytest.fail(f"the local Kubernetes cluster with CSI could not be prepared:\n{err}")
    print(f"\ncluster with CSI ready in {time.monotonic() - began:.1f}s")


@pytest.fixture()
def namespace(cluster: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh namespace (the snapshot step lists labelled PVCs per namespace); its snapshots' data is released."""
    name = f"snap-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig()))  # the snapshot step's client, as outside a pod
    yield name
    # the archive's class retains snapshot data when a VolumeSnapshot goes; hand it back to the driver first
    snapshots = json.loads(kubectl("-n", name, "get", "volumesnapshots", "-o", "json", check=False) or "{}")
    for item in snapshots.get("items", []):
        content = item.get("status", {}).get("boundVolumeSnapshotContentName")
        if content:
            kubectl("patch", "volumesnapshotcontent", content, "--type=merge",
                    "-p", '{"spec":{"deletionPolicy":"Delete"}}', check=False)  # fmt: skip
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_archive_snapshot_step_takes_a_ready_volume_snapshot_inside_the_hold_and_it_restores(
    namespace: str, services: Settings, es: Elasticsearch
) -> None:
    token = uuid.uuid4().hex
    day = date(2023, 1, 1) + timedelta(days=uuid.UUID(token).int % 365)
    if not es.indices.exists(index=day_index(day)):
        es.indices.create(index=day_index(day))  # the day's index (from the template), for the ES snapshot

    # the workload: a labelled PVC, a pod writing a marker into it; an unlabelled PVC must not be snapshotted
    script = f"echo {token} > /data/marker && mkdir -p /data/d && echo nested > /data/d/file && sync && sleep 3600"
    apply_objects(
        claim("state", namespace, "16Mi", csi.STORAGE_CLASS, labels={**SNAPSHOT_LABEL, "app": "workload"}),
        claim("scratch", namespace, "16Mi", csi.STORAGE_CLASS, labels={"app": "workload"}),
        claim_pod("workload", namespace, "state", script),
    )
    _wait_for(lambda: get_object("pod", "workload", namespace)["status"].get("phase") == "Running", "workload Running")
    _wait_for(lambda: token in _exec(namespace, "workload", "cat /data/marker 2>/dev/null || true"), "marker")
    pv = get_object("pvc", "state", namespace)["spec"]["volumeName"]
    assert get_object("pv", pv)["spec"]["csi"]["driver"] == csi.DRIVER_NAME

    cfg = services.archive.model_copy(update={"volume_snapshots": True, "snapshot_ready_timeout_s": 120})
    in_namespace = services.updated(kubernetes={"namespace": namespace, "kubeconfig": str(kubeconfig())})
    # until every checkout applies deploy/ through the devstack overlay, a plain `apply -k deploy` elsewhere
    # points the class back at Portworx: make it ours right before the step (idempotent)
    apply_deploy(devstack_overlay=True)
    opened = datetime.now().astimezone().replace(microsecond=0)
    hold = pre_hook(es, day)
    try:
        held = existing(es, LIVE_INDICES)
        result = take_snapshot(in_namespace, es, cfg, day)
        # still between quiesce and resume: the writes are held and the snapshot is already usable
        assert held and all(_write_blocked(es, index) for index in held), hold
        name = f"state-{day:%Y%m%d}"
        assert result.volume_snapshots == [name]
        snapshot = get_object("volumesnapshot", name, namespace)
        assert snapshot["status"]["readyToUse"] is True
        assert snapshot["spec"]["volumeSnapshotClassName"] == cfg.volume_snapshot_class == "eventpipe-archive"
    finally:
        post_hook(es)
    closed = datetime.now().astimezone() + timedelta(seconds=1)
    assert not any(_write_blocked(es, index) for index in held)
    created = datetime.fromisoformat(snapshot["status"]["creationTime"].replace("Z", "+00:00"))
    assert opened <= created <= closed, (opened, created, closed)
    assert result.snapshot == snapshot_name(day) and day_index(day) in result.indices

    # the snapshot is a real copy of the volume's data on the driver's disk
    content = get_object("volumesnapshotcontent", snapshot["status"]["boundVolumeSnapshotContentName"])
    assert content["spec"]["driver"] == csi.DRIVER_NAME and content["spec"]["deletionPolicy"] == "Retain"
    handle = content["status"]["snapshotHandle"]
    archive = csi.DATA_ROOT / "snapshots" / f"{handle}.img"  # a copy of the volume's ext4 image
    marker = subprocess.run(["debugfs", "-R", "cat /data/marker", str(archive)], capture_output=True, text=True)
    assert marker.stdout.strip() == token, marker.stderr

    # the workload goes on writing; the restore must show the snapshot's state, not this
    _exec(namespace, "workload", "echo after > /data/after && echo changed > /data/marker && sync")

    apply_objects(
        claim("restored", namespace, "16Mi", csi.STORAGE_CLASS, labels={"app": "restore-check"}, source=name),
        claim_pod("reader", namespace, "restored", "cat /data/marker; cat /data/d/file; ls /data"),
    )
    done = _wait_for(
        lambda: get_object("pod", "reader", namespace)["status"].get("phase") in ("Succeeded", "Failed"), "reader done"
    )
    assert done
    reader = get_object("pod", "reader", namespace)
    logs = kubectl("-n", namespace, "logs", "reader")
    assert reader["status"]["phase"] == "Succeeded", logs
    lines = logs.split()
    assert lines[:2] == [token, "nested"], logs
    assert "after" not in lines, logs
    restored_pv = get_object("pv", get_object("pvc", "restored", namespace)["spec"]["volumeName"])
    assert restored_pv["spec"]["csi"]["volumeHandle"] != get_object("pv", pv)["spec"]["csi"]["volumeHandle"]
    assert get_object("pvc", "scratch", namespace)["status"]["phase"] == "Pending"  # unlabelled, no consumer: untouched

    # released with deletionPolicy Delete, the driver deletes the snapshot's data (DeleteSnapshot)
    kubectl("patch", "volumesnapshotcontent", content["metadata"]["name"], "--type=merge",
            "-p", '{"spec":{"deletionPolicy":"Delete"}}')  # fmt: skip
    kubectl("-n", namespace, "delete", "volumesnapshot", name, "--wait=false")
    _wait_for(lambda: not Path(archive).exists(), "snapshot data deleted", timeout=60)
    with contextlib.suppress(Exception):
        es.indices.delete(index=day_index(day))
        es.snapshot.delete(repository=cfg.repository, snapshot=snapshot_name(day))


def test_volume_snapshot_custom_objects_match_the_archive_constants(cluster: None) -> None:
    """The archive talks to the CRDs external-snapshotter installed (served version and plural it uses)."""
    crd = get_object("crd", f"{PLURAL}.{GROUP}")
    served = {v["name"] for v in crd["spec"]["versions"] if v["served"]}
    assert VERSION in served
    assert crd["metadata"]["annotations"]["api-approved.kubernetes.io"].startswith("https://")  # upstream's CRD
    klass = get_object("volumesnapshotclass", "eventpipe-archive")
    assert klass["driver"] == csi.DRIVER_NAME and klass["deletionPolicy"] == "Retain"
    assert csi.healthy()


def test_a_pod_deleted_mid_snapshot_leaves_a_consistent_snapshot_and_an_intact_volume(namespace: str) -> None:
    """The workload's pod is deleted while its volume's snapshot is in progress (a 1 GiB copy of a frozen ext4).

    The driver serialises unstaging behind the copy, so: the snapshot completes; a volume restored from it holds
    the writer's log as whole lines 0..k with no torn line; the original volume mounts again with lines 0..m, m >= k.
    """
    busy = claim("busy", namespace, "1536Mi", csi.STORAGE_CLASS, labels={"app": "mid-snapshot"})
    writer = (
        "dd if=/dev/urandom of=/data/filler bs=1M count=1024 2>/dev/null && sync && "
        "i=0; while true; do echo $i >> /data/log; i=$((i+1)); done"
    )
    apply_objects(busy, claim_pod("writer", namespace, "busy", writer))
    _wait_for(lambda: get_object("pod", "writer", namespace)["status"].get("phase") == "Running", "writer Running")
    _wait_for(
        lambda: int(_exec(namespace, "writer", "wc -l < /data/log 2>/dev/null || echo 0").strip() or 0) > 100,
        "the writer's log",
        timeout=300,
    )
    snapshot = volume_snapshot("busy-mid", namespace, "busy", snapshot_class="eventpipe-archive")
    apply_objects(snapshot)
    ready_at_delete = get_object("volumesnapshot", "busy-mid", namespace).get("status", {}).get("readyToUse")
    kubectl("-n", namespace, "delete", "pod", "writer", "--grace-period=1", "--wait=false")
    assert ready_at_delete is not True  # the snapshot was still in progress when the pod went
    _wait_for(
        lambda: get_object("volumesnapshot", "busy-mid", namespace).get("status", {}).get("readyToUse") is True,
        "snapshot ready",
        timeout=300,
    )
    status = get_object("volumesnapshot", "busy-mid", namespace)["status"]
    assert not status.get("error"), status
    print(f"\nsnapshot ready at pod deletion: {ready_at_delete}; restore size {status.get('restoreSize')}")
    _wait_for(lambda: not _pods(namespace), "writer gone", timeout=300)

    check = "stat -c %s /data/filler; awk 'NR-1 != $0 {print \"torn\", NR, $0; exit 1} END {print NR}' /data/log"
    labels = {"app": "mid-snapshot"}  # the restore is at least the snapshot's size
    restored_claim = claim("restored", namespace, "1536Mi", csi.STORAGE_CLASS, labels=labels, source="busy-mid")
    apply_objects(restored_claim, claim_pod("restored-reader", namespace, "restored", check))
    restored = _finished(namespace, "restored-reader")
    apply_objects(claim_pod("original-reader", namespace, "busy", check))
    original = _finished(namespace, "original-reader")
    assert restored[0] == original[0] == str(1 << 30)
    assert 100 < int(restored[1]) <= int(original[1]), (restored, original)


def _pods(namespace: str) -> list[str]:
    return kubectl("-n", namespace, "get", "pods", "-o", "name").split()


def _finished(namespace: str, pod: str) -> list[str]:
    """The pod's log lines, once it Succeeded (its log names a torn line otherwise)."""
    _wait_for(
        lambda: get_object("pod", pod, namespace)["status"].get("phase") in ("Succeeded", "Failed"),
        f"{pod} done",
        timeout=300,
    )
    logs = kubectl("-n", namespace, "logs", pod)
    assert get_object("pod", pod, namespace)["status"]["phase"] == "Succeeded", logs
    return logs.split()


def test_volume_snapshot_retention_keeps_the_newest_nights_and_what_a_restore_uses(namespace: str) -> None:
    """The archive's VolumeSnapshots of four nights (real copies of a claim) and an operator's own one: retention
    with 2 nights kept deletes the oldest nights' (their data too), never the operator's, and not one a claim
    is still being restored from until that claim is gone."""
    from eventpipe.archive.volume_retention import prune_volume_snapshots
    from eventpipe.archive.volumes import snapshot_objects
    from eventpipe.settings import ArchiveSettings, KubernetesSettings

    apply_objects(
        claim("state", namespace, "16Mi", csi.STORAGE_CLASS, labels=SNAPSHOT_LABEL),
        claim_pod("workload", namespace, "state", "echo night > /data/marker && sync && sleep 3600"),
    )
    _wait_for(lambda: get_object("pod", "workload", namespace)["status"].get("phase") == "Running", "workload Running")
    apply_deploy(devstack_overlay=True)  # the archive class on this driver (see the test above)
    cfg = ArchiveSettings(volume_snapshot_namespaces=namespace, snapshot_retention_days=2)
    kube = KubernetesSettings(namespace="eventpipe", kubeconfig=str(kubeconfig()))
    nights = [date(2031, 3, 1) + timedelta(days=n) for n in range(4)]
    names = [f"state-{night:%Y%m%d}" for night in nights]
    manual = volume_snapshot("state-before-upgrade", namespace, "state", snapshot_class=cfg.volume_snapshot_class)
    apply_objects(*[obj for night in nights for obj in snapshot_objects(cfg, night, ["state"], namespace)], manual)
    every = [*names, "state-before-upgrade"]
    _wait_for(
        lambda: all(get_object("volumesnapshot", n, namespace).get("status", {}).get("readyToUse") for n in every),
        "5 VolumeSnapshots readyToUse",
    )
    bound = {n: get_object("volumesnapshot", n, namespace)["status"]["boundVolumeSnapshotContentName"] for n in names}
    handles = {n: get_object("volumesnapshotcontent", c)["status"]["snapshotHandle"] for n, c in bound.items()}
    # a restore in progress from the oldest night: its claim waits for a consumer, so it is not Bound
    apply_objects(claim("restoring", namespace, "16Mi", csi.STORAGE_CLASS, source=names[0]))

    def present() -> set[str]:
        listed = json.loads(kubectl("-n", namespace, "get", "volumesnapshots", "-o", "json"))["items"]
        return {item["metadata"]["name"] for item in listed if not item["metadata"].get("deletionTimestamp")}

    dry = prune_volume_snapshots(cfg, kube, dry_run=True)
    assert dry.deleted == [f"{namespace}/{names[1]}"] and present() == set(every)
    first = prune_volume_snapshots(cfg, kube)
    print(f"\nretention, restore in progress: {first}")
    assert first.nights == [n.isoformat() for n in nights]
    assert first.deleted == [f"{namespace}/{names[1]}"]
    assert first.kept == {f"{namespace}/{names[0]}": "a restore is using it"}
    _wait_for(lambda: present() == set(every) - {names[1]}, "the second night's VolumeSnapshot gone")
    archive = csi.DATA_ROOT / "snapshots" / f"{handles[names[1]]}.img"
    _wait_for(lambda: not archive.exists(), "the pruned night's snapshot data deleted by the driver", timeout=60)
    assert (csi.DATA_ROOT / "snapshots" / f"{handles[names[0]]}.img").exists()

    kubectl("-n", namespace, "delete", "pvc", "restoring", "--wait=true", timeout=120)
    second = prune_volume_snapshots(cfg, kube)
    print(f"retention, restore finished: {second}")
    assert second.deleted == [f"{namespace}/{names[0]}"] and second.kept == {}
    _wait_for(lambda: present() == {names[2], names[3], "state-before-upgrade"}, "the newest 2 nights and the manual")
    assert prune_volume_snapshots(cfg, kube).deleted == []  # idempotent
