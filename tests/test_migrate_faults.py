"""Issue 22's faults against the real cluster and the real S3 server: each ends in a clear error or an exact
recovery, and the source volume is never harmed.

Each test owns a namespace, an encrypted claim written with a random payload, and a cloud store of its own: a
prefix in the snapshot bucket, a VolumeSnapshotClass (Delete policy, so the store is emptied when the test's
snapshots go) and a restore StorageClass, both naming a Secret in the test's namespace
(``devstack.cluster.csi.cloud_objects`` with the test's names). A restore claim provisions only once a pod uses
it (WaitForFirstConsumer), so every restore here is a claim plus a reader pod.

The S3 cut stops and restarts the devstack's S3 server (``devstack.s3.S3Server``, always restarted). Run under
``flock /tmp/cluster.lock`` (`make test-k8s`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from devstack.cluster import csi
from devstack.cluster.deploy import xcom_sidecar_image
from devstack.cluster.node import kubeconfig, kubectl
from devstack.runtime import log_path
from devstack.s3 import S3Server
from devstack.stack import DEVSTACK_CREDENTIALS, local_env
from eventpipe.migrate.volumes import SNAPSHOT_LABEL, Claim, Kube, SnapshotRefused, snapshot_manifests, wait_ready
from eventpipe.settings import Settings
from eventpipe.storage.s3 import s3_client

from .k8s_support import apply_objects, claim, claim_pod, events_of, get_object, wait_for
from .test_kubernetes import cluster, stateful  # noqa: F401  (fixtures: the cluster, the StatefulSets)

pytestmark = pytest.mark.k8s

CHUNK = 4 << 20  # devstack/csi/cloud.go cloudChunkSize
CLAIM_SIZE = "128Mi"
WRONG_KEY = "not-the-devstack-secret-key"


@dataclass(frozen=True)
class Store:
    """One test's cloud store and namespace."""

    namespace: str
    prefix: str
    snapshot_class: str
    restore_class: str

    def objects(self, secret_key: str) -> list[dict[str, Any]]:
        return csi.cloud_objects(
            f"http://127.0.0.1:{S3Server.port}", DEVSTACK_CREDENTIALS["AWS_ACCESS_KEY_ID"], secret_key,
            prefix=self.prefix, snapshot_class=self.snapshot_class, restore_class=self.restore_class,
            secret_namespace=self.namespace, deletion_policy="Delete",
        )  # fmt: skip

    def apply(self, secret_key: str = DEVSTACK_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]) -> None:
        """The store's objects, the Secret holding ``secret_key`` (stdin, never argv)."""
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": self.objects(secret_key)}))  # fmt: skip


@pytest.fixture(scope="module")
def s3() -> Any:
    return s3_client(Settings.from_env(local_env()), retries=2)


@pytest.fixture(scope="module")
def image() -> str:
    return xcom_sidecar_image()  # a static busybox already in the node's containerd


@pytest.fixture
def store(s3: Any) -> Iterator[Store]:
    suffix = uuid.uuid4().hex[:6]
    store = Store(f"faults-{suffix}", f"faults-{suffix}", f"faults-cloud-{suffix}", f"faults-restore-{suffix}")
    kubectl("create", "namespace", store.namespace)
    csi.volume_key_secret(store.namespace)
    store.apply()
    yield store
    # the right key again, so the snapshots' Delete policy empties the store through the driver; claims first
    # (a claim restoring from a snapshot holds it), then the snapshots, then what is left
    store.apply()
    ns = store.namespace
    kubectl(
        "-n",
        ns,
        "delete",
        "pod,pvc",
        "--all",
        "--grace-period=1",
        "--wait=true",
        "--timeout=120s",
        check=False,
        timeout=150,
    )
    kubectl("-n", ns, "delete", "volumesnapshot", "--all", "--wait=true", "--timeout=120s", check=False, timeout=150)
    kubectl("delete", "namespace", ns, "--wait=false")
    kubectl("delete", "volumesnapshotclass", store.snapshot_class, "--ignore-not-found")
    kubectl("delete", "storageclass", store.restore_class, "--ignore-not-found")
    left = _keys(s3, store, "")
    for key in left:
        s3.delete_object(Bucket=csi.CLOUD_BUCKET, Key=key)
    assert not left, f"the driver left {len(left)} objects under {store.prefix}/ after the snapshots went: {left[:3]}"


def _keys(s3: Any, store: Store, under: str) -> list[str]:
    """Object keys in the test's store below ``under`` (``chunks/``, ``snapshots/``, ``pending/`` or all)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=csi.CLOUD_BUCKET, Prefix=f"{store.prefix}/{under}")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _written(store: Store, name: str, mib: int, image: str) -> str:
    """An encrypted claim with ``mib`` MiB of random bytes in /data/payload, its pod left running; the sha256."""
    script = (f"head -c {mib}m /dev/urandom > /data/payload && sync && "
              "echo sum=$(sha256sum /data/payload | cut -d' ' -f1) && sleep 3600")  # fmt: skip
    apply_objects(claim(name, store.namespace, CLAIM_SIZE, csi.STORAGE_CLASS_ENCRYPTED),
                  claim_pod(f"{name}-writer", store.namespace, name, script, image=image))  # fmt: skip
    return _logged_sum(store, f"{name}-writer")


def _logged_sum(store: Store, pod: str, timeout: float = 240) -> str:
    def logged() -> str:
        out = kubectl("-n", store.namespace, "logs", pod, check=False, timeout=15)
        return next((line[4:] for line in out.splitlines() if line.startswith("sum=")), "")

    return wait_for(logged, f"{pod} printing the payload's sha256", timeout=timeout, every=1)


def _sum_in(store: Store, pod: str) -> str:
    """The payload's sha256 as the running pod reads it now (busybox applets run through its shell)."""
    return kubectl("-n", store.namespace, "exec", pod, "--", "sh", "-c", "sha256sum /data/payload").split()[0]


def _restore(store: Store, name: str, snapshot: str, image: str) -> None:
    """A claim restored from VolumeSnapshot ``snapshot`` through the store's restore class, and its reader."""
    reader = "echo sum=$(sha256sum /data/payload | cut -d' ' -f1) && sleep 3600"
    apply_objects(claim(name, store.namespace, CLAIM_SIZE, store.restore_class, source=snapshot),
                  claim_pod(f"{name}-reader", store.namespace, name, reader, image=image))  # fmt: skip


def _snapshot(store: Store, pvc: str, label: str) -> str:
    [obj] = snapshot_manifests([Claim(namespace=store.namespace, name=pvc, storage=CLAIM_SIZE)], label,
                               store.snapshot_class)  # fmt: skip
    apply_objects(obj)
    return obj["metadata"]["name"]


def _event(store: Store, name: str, *needles: str) -> str:
    """The first event about ``name`` whose message holds every needle ("" while there is none)."""
    return next((m for m in events_of(store.namespace, name) if all(n in m for n in needles)), "")


def _pending_unbound(store: Store, claim: str) -> None:
    pvc = get_object("pvc", claim, store.namespace)
    assert pvc["status"]["phase"] == "Pending" and not pvc["spec"].get("volumeName"), pvc["status"]


def _handle(kube: Kube, status: dict[str, Any]) -> str:
    return kube.content_status(status["boundVolumeSnapshotContentName"])["snapshotHandle"]


def _manifest(s3: Any, store: Store, handle: str) -> dict[str, Any]:
    body = s3.get_object(Bucket=csi.CLOUD_BUCKET, Key=f"{store.prefix}/snapshots/{handle}.json")["Body"].read()
    return json.loads(body)


def test_an_upload_cut_by_an_s3_outage_resumes_and_is_never_restorable_before_its_commit(
    store: Store, s3: Any, image: str
) -> None:
    """S3 stops once the first chunk is stored: the snapshot reports the cut and is not ready, a restore from
    it is refused; S3 back, the snapshotter's retry resumes from the same frozen copy (chunks stored before the
    cut are reused), commits a manifest whose every chunk is stored with its digest, and a restore reads the
    exact payload back. The source claim still holds it."""
    kube = Kube(kubeconfig())
    ns = store.namespace
    written = _written(store, "data-cut-0", 64, image)
    name = _snapshot(store, "data-cut-0", "cut")
    server = S3Server()
    log_at = log_path("csi-driver").stat().st_size
    began = time.monotonic()
    try:
        wait_for(lambda: _keys(s3, store, "chunks/"), "the first chunk in the store", timeout=120, every=0.05)
        stored_at_cut = len(_keys(s3, store, "chunks/"))
        server.stop()
        cut_s = time.monotonic() - began

        def reported() -> str:
            status = kube.snapshot_status(ns, name)
            assert not status.get("readyToUse"), f"the upload finished before the cut ({cut_s:.1f}s): {status}"
            return (status.get("error") or {}).get("message", "")

        message = wait_for(reported, "the cut on the VolumeSnapshot's status", timeout=90)
        # the cut upload's error, or a retry's while S3 is still away: both say where and that it will be retried
        assert "code = Unavailable" in message and f"s3://{csi.CLOUD_BUCKET}/{store.prefix}" in message, message
        _restore(store, "restored-during-cut", name, image)
        refused = wait_for(lambda: _event(store, "restored-during-cut", f"VolumeSnapshot {ns}/{name} is not ready"),
                           "the restore refused while the upload is cut", timeout=90)  # fmt: skip
        _pending_unbound(store, "restored-during-cut")
    finally:
        server.start()
    down_s = time.monotonic() - began - cut_s
    statuses = wait_ready(kube, [(ns, name)], 300)
    ready_s = time.monotonic() - began
    handle = _handle(kube, statuses[(ns, name)])
    with log_path("csi-driver").open(errors="replace") as log:
        log.seek(log_at)
        cut_lines = [line.strip() for line in log if f"snapshot {handle}: upload to" in line]
    assert any("upload interrupted after" in line for line in cut_lines), cut_lines
    manifest = _manifest(s3, store, handle)
    assert manifest["chunk_size"] == CHUNK and len(manifest["chunks"]) == -(-manifest["size"] // CHUNK)
    for i, digest in enumerate(manifest["chunks"]):
        if digest:
            data = s3.get_object(Bucket=csi.CLOUD_BUCKET, Key=f"{store.prefix}/chunks/{digest}")["Body"].read()
            assert hashlib.sha256(data).hexdigest() == digest, f"chunk {i} is not what the manifest says"
    assert _keys(s3, store, "pending/") == []  # the upload's record went with the commit
    meta = json.loads((csi.DATA_ROOT / "snapshots" / f"{handle}.json").read_text())
    report = meta["upload"]
    assert meta["uploaded"] and report["reused_bytes"] >= CHUNK, report  # resumed: the cut's chunks were kept
    stored = sum(CHUNK for d in manifest["chunks"] if d)  # every chunk but the last is whole; the image is 128Mi
    assert report["uploaded_bytes"] + report["reused_bytes"] == stored, report

    _restore(store, "restored-after", name, image)
    assert _logged_sum(store, "restored-after-reader") == written
    assert _sum_in(store, "data-cut-0-writer") == written  # the source still holds its payload
    print(json.dumps({"cut_after_s": round(cut_s, 2), "chunks_stored_at_cut": stored_at_cut,
                      "s3_down_s": round(down_s, 2), "ready_after_s": round(ready_s, 2), "cut_message": message,
                      "refused_restore": refused, "upload": report, "driver": cut_lines}))  # fmt: skip


def test_wrong_s3_credentials_are_refused_clearly_and_write_nothing(store: Store, s3: Any, image: str) -> None:
    """A class whose Secret holds a wrong secret key: the VolumeSnapshot's status names S3's refusal and
    ``wait_ready`` raises with it at once; nothing reaches the bucket and the claim keeps its data. The key put
    right, the same snapshot completes; a restore with the wrong key again is refused with the same words."""
    kube = Kube(kubeconfig())
    ns = store.namespace
    written = _written(store, "data-creds-0", 16, image)
    store.apply(secret_key=WRONG_KEY)
    name = _snapshot(store, "data-creds-0", "creds")
    began = time.monotonic()
    with pytest.raises(
        SnapshotRefused, match=rf"{ns}/{name}: .*S3 refused the credentials \(SignatureDoesNotMatch\)"
    ) as refused:
        wait_ready(kube, [(ns, name)], 120)
    refused_s = time.monotonic() - began
    assert _keys(s3, store, "") == []
    assert _sum_in(store, "data-creds-0-writer") == written
    assert get_object("pvc", "data-creds-0", ns)["status"]["phase"] == "Bound"

    store.apply()  # the refusal stays on the status until the snapshotter's next retry: wait for ready itself
    fixed = wait_for(lambda: (st := kube.snapshot_status(ns, name)).get("readyToUse") and st,
                     "the same snapshot ready with the key put right", timeout=300)  # fmt: skip
    fixed_s = time.monotonic() - began
    assert _manifest(s3, store, _handle(kube, fixed))["size"] == 128 << 20

    store.apply(secret_key=WRONG_KEY)
    _restore(store, "restored-creds", name, image)
    event = wait_for(lambda: _event(store, "restored-creds", "S3 refused the credentials (SignatureDoesNotMatch)"),
                     "the restore refused with the wrong key", timeout=90)  # fmt: skip
    _pending_unbound(store, "restored-creds")
    print(json.dumps({"refused_after_s": round(refused_s, 2), "ready_after_the_fix_s": round(fixed_s, 2),
                      "refusal": str(refused.value), "restore_event": event}))  # fmt: skip


def test_a_snapshot_whose_store_objects_go_during_its_restore_never_binds_a_claim(
    store: Store, s3: Any, image: str
) -> None:
    """A committed snapshot, then its store loses objects while claims restore from it: a chunk overwritten
    (its digest no longer matches), chunks deleted, the manifest deleted. Each restore ends in an event naming
    the cause (the digests, the missing chunk, the deleted snapshot) and its claim stays Pending, unbound: a
    volume is never made of part of a snapshot."""
    kube = Kube(kubeconfig())
    ns = store.namespace
    _written(store, "data-gone-0", 32, image)
    name = _snapshot(store, "data-gone-0", "gone")
    handle = _handle(kube, wait_ready(kube, [(ns, name)], 300)[(ns, name)])
    chunks = [d for d in _manifest(s3, store, handle)["chunks"] if d]
    bucket, key = csi.CLOUD_BUCKET, f"{store.prefix}/chunks/{{}}".format
    found: dict[str, str] = {}

    tampered = chunks[len(chunks) // 2]
    body = s3.get_object(Bucket=bucket, Key=key(tampered))["Body"].read()
    s3.put_object(Bucket=bucket, Key=key(tampered), Body=bytes([body[0] ^ 0xFF]) + body[1:])
    _restore(store, "restored-tampered", name, image)
    found["tampered"] = wait_for(
        lambda: _event(store, "restored-tampered", f"the manifest says {tampered}; refusing to restore it"),
        "the restore refusing the tampered chunk", timeout=120)  # fmt: skip
    _pending_unbound(store, "restored-tampered")
    s3.put_object(Bucket=bucket, Key=key(tampered), Body=body)  # back as it was: the next fault is another

    for digest in chunks[1::2]:  # every other chunk goes: the restore gets some, then misses one
        s3.delete_object(Bucket=bucket, Key=key(digest))
    _restore(store, "restored-missing", name, image)
    found["missing"] = wait_for(lambda: _event(store, "restored-missing", "is missing from"),
                                "the restore missing a chunk", timeout=120)  # fmt: skip
    assert any(f"({d}) is missing from s3://{bucket}/{store.prefix}" in found["missing"] for d in chunks[1::2])
    _pending_unbound(store, "restored-missing")

    s3.delete_object(Bucket=bucket, Key=f"{store.prefix}/snapshots/{handle}.json")
    _restore(store, "restored-deleted", name, image)
    found["deleted"] = wait_for(
        lambda: _event(store, "restored-deleted", f'snapshot "{handle}" does not exist on this node or in s3://'),
        "the restore of the deleted snapshot", timeout=120)  # fmt: skip
    for restored in ("restored-tampered", "restored-missing", "restored-deleted"):
        _pending_unbound(store, restored)
    # nothing of the failed restores is left on the node: no volume image, finished or partial
    claimed = {p.name.split(".")[0] for p in (csi.DATA_ROOT / "volumes").glob("*.img*")}
    for restored in ("restored-tampered", "restored-missing", "restored-deleted"):
        uid = get_object("pvc", restored, ns)["metadata"]["uid"]
        assert f"pvc-{uid}" not in claimed
    print(json.dumps(found))


class _CheckedIngest:
    """The drill's own ingest (``eventpipe produce`` + ``drain`` per interval); when the chain resumes it, the
    source is first compared with the inventory the chain saved at the pause, before a new interval writes."""

    def __init__(self, ingest: Any, saved: Path, topics: list[str]) -> None:
        self.ingest, self.saved, self.topics = ingest, saved, topics
        self.differences: list[str] | None = None
        self.resumed_at = 0

    def pause(self) -> Any:
        return self.ingest.pause()

    def resume(self, endpoints: dict[str, str], on: str) -> Any:
        from eventpipe.migrate.cli import load_inventory, target_settings
        from eventpipe.migrate.inventory import take_inventory
        from eventpipe.migrate.verify import compare

        before = load_inventory(self.saved)

        def identical() -> bool:  # pods Ready is not yet every leader elected and shard started: settle
            try:
                now = take_inventory(target_settings(self.ingest.env_file), self.topics)
                self.differences = [str(d) for d in compare(before, now)]
            except Exception as exc:  # noqa: BLE001 - retried, and reported if it never settles
                self.differences = [f"inventory failed: {type(exc).__name__}: {exc}"]
            return not self.differences

        with contextlib.suppress(AssertionError):
            wait_for(identical, "the source identical to its inventory at the pause", timeout=240, every=10)
        self.resumed_at = len(self.ingest.intervals)
        return self.ingest.resume(endpoints, on)


@pytest.mark.usefixtures("stateful")
def test_the_target_going_down_mid_restore_rolls_back_to_an_intact_source_and_resumes_ingest(tmp_path: Path) -> None:
    """The migration chain (no pre-copy) with live ingest; while the target's driver restores the first PVC
    from S3, the target cluster goes down. The chain ends "rolled back" with the failure named (the CLI's exit
    3), the source is up with its Kafka offsets, consumer group, documents, manifests and archive days exactly
    as inventoried at the pause, and ingest runs its next interval on the source. Takes the source down: the
    whole test holds the cluster lock."""
    from devstack import migration
    from devstack.cluster.node import identity
    from devstack.migration_drill import DrillIngest
    from eventpipe.events.topics import SOURCE_TOPICS

    topics = list(SOURCE_TOPICS.values())
    chain_dir = tmp_path / "chain"
    env_file = migration.target_env_file(tmp_path / "ingest.env")
    first = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
    drill = DrillIngest(env_file, first, length=timedelta(seconds=20), rate=50.0)
    ingest = _CheckedIngest(drill, chain_dir / "inventory.json", topics)
    chain = migration.Chain(ingest, chain_dir, precopy=False, topics=topics)  # type: ignore[arg-type]
    real_down, one_down_at_a_time = migration.cluster_down, threading.Lock()

    def cluster_down(name: str) -> None:  # the cut and the rollback both stop the target: one after the other
        with one_down_at_a_time:
            real_down(name)

    partials = identity("target").runtime_root / "csi" / "volumes"
    cut: dict[str, Any] = {}
    done = threading.Event()

    def cut_the_target_mid_restore() -> None:
        restoring = "restore PVCs from the cloud snapshots"
        while not done.is_set():  # only once the restore objects exist (an older target's leftovers are wiped)
            if any(s.name == restoring for s in chain.report.steps) and (found := list(partials.glob("*.partial"))):
                cut.update(at=datetime.now(timezone.utc).isoformat(), restoring=found[0].name)
                began = time.monotonic()
                cluster_down("target")
                cut["down_s"] = round(time.monotonic() - began, 1)
                return
            time.sleep(0.1)

    migration_cluster_down = pytest.MonkeyPatch()
    migration_cluster_down.setattr(migration, "cluster_down", cluster_down)
    watcher = threading.Thread(target=cut_the_target_mid_restore, name="cut-target", daemon=True)
    began = time.monotonic()
    report = None
    try:
        drill.one_interval()
        drill.start()
        watcher.start()
        report = chain.run()
        done.set()
        watcher.join(timeout=120)
        wait_for(lambda: len(drill.intervals) > ingest.resumed_at or drill.error, "an interval on the source", 300)
    finally:
        done.set()
        drill.pause()
        migration_cluster_down.undo()
        if report is None or report.outcome != "rolled back":  # whatever happened, the source ends up
            migration.cluster_down("target")
            migration.cluster_up("source")
        _forget_final_snapshots(chain.run_id)
    took = time.monotonic() - began
    steps = {s.name: s.seconds for s in report.steps}
    print(json.dumps({"cut": cut, "error": report.error, "steps": steps, "total_s": round(took, 1),
                      "resumed": drill.intervals[-1].model_dump(mode="json")}, default=str))  # fmt: skip
    assert cut, "the target never restored a PVC: no cut happened"
    assert report.outcome == "rolled back"
    assert report.error is not None and "on the target cluster failed" in report.error, report.error
    assert list(steps)[-3:] == ["rollback: target down", "rollback: source up", "rollback: resume ingest on the source"]
    assert ingest.differences == [], ingest.differences
    resumed = drill.intervals[ingest.resumed_at]  # the first interval after the rollback: consumed on the source
    assert drill.error is None and resumed.cluster == "source" and resumed.drained["consumed"] > 0, resumed


def _forget_final_snapshots(run_id: str) -> None:
    """The chain's final VolumeSnapshots of this run: the cloud copies go too (their contents turned Delete),
    chunks other snapshots share stay (the driver collects only unused ones)."""
    label = f"{SNAPSHOT_LABEL}=final-{run_id}"
    for ns in ("kafka", "elastic"):
        out = kubectl("-n", ns, "get", "volumesnapshot", "-l", label, "-o", "json", check=False)
        for snap in json.loads(out or '{"items": []}')["items"]:
            if content := (snap.get("status") or {}).get("boundVolumeSnapshotContentName"):
                kubectl("patch", "volumesnapshotcontent", content, "--type=merge",
                        "-p", '{"spec": {"deletionPolicy": "Delete"}}', check=False)  # fmt: skip
        kubectl("-n", ns, "delete", "volumesnapshot", "-l", label, "--wait=false", check=False)
