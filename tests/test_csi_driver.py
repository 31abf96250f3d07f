"""The devstack CSI driver as a real storage driver: capacity, encryption, expansion, restore, conformance.

``csi``-marked (root and Go, no cluster; ``make test-csi``): the driver's Go tests on real loop devices and,
for cloud snapshots, against the devstack's real S3 server; csi-sanity (kubernetes-csi/csi-test v5) over gRPC
against the driver's socket.
``k8s``-marked (``make test-k8s``): the same behaviour through the kubelet and the API server: ENOSPC in a
pod, a too-large claim's event, an encrypted volume whose image holds no plaintext and whose pod fails to
start with a clear event without its key Secret or with another key, offline expansion (the pod restarts
once, data intact), a refused shrink, a restore into a larger volume.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.cluster import csi
from eventpipe.settings import Settings

from .k8s_support import apply_objects, claim, claim_pod, get_object, wait_for

SANITY_SIZE = 64 << 20  # csi-sanity's volumes (default 10 GiB: sparse, but needless)


def _root() -> None:
    if os.geteuid() != 0 or shutil.which("go") is None:
        pytest.fail("the CSI driver tests need root (loop devices, mounts) and the Go toolchain on PATH")


@pytest.mark.csi
def test_driver_go_tests_pass_on_real_loop_devices(services: Settings) -> None:
    """Includes the cloud-snapshot tests (incremental, checksummed, encrypted, resumed, collected, portable),
    each in a bucket of its own on the devstack's S3 server."""
    _root()
    assert services.s3.endpoint and services.s3.access_key and services.s3.secret_key
    s3 = {
        "EVENTPIPE_CSI_TEST_S3_ENDPOINT": services.s3.endpoint,
        "EVENTPIPE_CSI_TEST_S3_ACCESS_KEY": services.s3.access_key.get_secret_value(),
        "EVENTPIPE_CSI_TEST_S3_SECRET_KEY": services.s3.secret_key.get_secret_value(),
    }
    began = time.monotonic()
    env = {**os.environ, **s3, "GOWORK": "off", "GOFLAGS": "-mod=readonly"}
    cmd = ["go", "test", "-count=1", "-v", "-skip", "^TestCloudSnapshotBench$", "."]  # bench_volumes runs that one
    out = subprocess.run(cmd, cwd=csi.SOURCE, capture_output=True, text=True, env=env, timeout=900)
    passed = [line for line in out.stdout.splitlines() if line.startswith("--- PASS")]
    skipped = [line for line in out.stdout.splitlines() if line.startswith("--- SKIP")]
    print(f"\ngo test: {len(passed)} passed in {time.monotonic() - began:.1f}s")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert not skipped, skipped
    assert sum("TestCloud" in line for line in passed) == 8, out.stdout[-2000:]
    assert len(passed) >= 13, out.stdout[-2000:]  # 8 cloud, 6 capacity, encryption, expansion, restore, names


@pytest.fixture()
def driver_socket(tmp_path: Path) -> Iterator[Path]:
    """The driver built from this checkout, serving a private socket and data root."""
    _root()
    binary = csi.build_driver_binary()
    socket, root, registry = tmp_path / "csi.sock", tmp_path / "root", tmp_path / "registry"
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen([str(binary), "driver", "--endpoint", str(socket), "--node-id", "sanity-node",
                             "--root", str(root), "--registration-dir", str(registry)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
            time.sleep(0.1)
        yield socket
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.csi
def test_csi_sanity_passes_every_spec_the_driver_claims(driver_socket: Path, tmp_path: Path) -> None:
    sanity = csi.build_sanity(csi._go())
    report = tmp_path / "sanity.json"
    began = time.monotonic()
    out = subprocess.run(
        [str(sanity), f"--csi.endpoint={driver_socket}", f"--csi.mountdir={tmp_path / 'mnt'}",
         f"--csi.stagingdir={tmp_path / 'stage'}", f"--csi.testvolumesize={SANITY_SIZE}",
         f"--csi.testvolumeexpandsize={2 * SANITY_SIZE}", "--ginkgo.no-color", f"--ginkgo.json-report={report}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    specs = [spec for suite in json.loads(report.read_text()) for spec in suite["SpecReports"]]
    states = Counter(spec["State"] for spec in specs)
    skipped = Counter((spec.get("Failure") or {}).get("Message", "") for spec in specs if spec["State"] == "skipped")
    print(f"\ncsi-sanity {csi.SANITY_VERSION}: {dict(states)} in {time.monotonic() - began:.1f}s")
    for reason, count in skipped.most_common():
        print(f"  skipped {count:2d}: {reason}")
    assert out.returncode == 0 and states["failed"] == 0, out.stdout[-6000:]
    assert states["passed"] >= 68
    # a skip is only ever an optional capability the driver does not advertise
    assert all("not supported" in reason or "does not have" in reason for reason in skipped), skipped


# ---- on the cluster ---------------------------------------------------------------------------------------


def _kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    from devstack.cluster.kubernetes import kubectl

    return kubectl(*args, stdin=stdin, check=check)


def _phase(namespace: str, pod: str) -> str:
    return get_object("pod", pod, namespace)["status"].get("phase", "")


def _logs(namespace: str, pod: str) -> str:
    return _kubectl("-n", namespace, "logs", pod)


def _events(namespace: str, name: str) -> list[str]:
    items = json.loads(_kubectl("-n", namespace, "get", "events", "-o", "json"))["items"]
    return [f"{e['reason']}: {e['message']}" for e in items if e["involvedObject"]["name"] == name]


def _finished(namespace: str, pod: str) -> str:
    return wait_for(lambda: _phase(namespace, pod) in ("Succeeded", "Failed") and _phase(namespace, pod), pod)


def _image_of(namespace: str, claim: str) -> Path:
    handle = get_object("pv", get_object("pvc", claim, namespace)["spec"]["volumeName"])["spec"]["csi"]["volumeHandle"]
    return csi.DATA_ROOT / "volumes" / f"{handle}.img"


@pytest.fixture(scope="module")
def csi_cluster() -> None:
    """The running devstack cluster with the driver of this checkout (rebuilt and restarted when it changed)."""
    from devstack.cluster.kubernetes import kubeconfig
    from devstack.runtime import DevstackError

    if os.geteuid() != 0:
        pytest.fail("the k8s tests need root: run them as root")
    if not kubeconfig().exists():
        pytest.fail("the local cluster is not set up: make k8s")
    try:
        print(csi.install())
    except DevstackError as err:
        pytest.fail(f"the CSI driver could not be installed:\n{err}")


@pytest.fixture()
def ns(csi_cluster: None) -> Iterator[str]:
    name = f"csi-{uuid.uuid4().hex[:8]}"
    _kubectl("create", "namespace", name)
    yield name
    _kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.k8s
def test_a_write_past_the_claim_gets_enospc_in_theclaim_pod(ns: str) -> None:
    script = "dd if=/dev/zero of=/data/fill bs=1M count=64 2>&1; echo rc=$?; df -k /data | tail -1"
    apply_objects(claim("small", ns, "16Mi", csi.STORAGE_CLASS), claim_pod("filler", ns, "small", script))
    _finished(ns, "filler")
    logs = _logs(ns, "filler")
    assert "No space left on device" in logs and "rc=1" in logs, logs
    size_kb = int(logs.strip().splitlines()[-1].split()[1])
    assert 8 << 10 < size_kb <= 16 << 10, logs  # the filesystem is the claim's size


@pytest.mark.k8s
def test_a_claim_larger_than_the_node_fails_with_both_sizes(ns: str) -> None:
    apply_objects(claim("huge", ns, "100Ti", csi.STORAGE_CLASS), claim_pod("waiting", ns, "huge", "true"))
    event = wait_for(lambda: [e for e in _events(ns, "huge") if "exceeds the free space" in e], "ProvisioningFailed")
    assert "ResourceExhausted" in event[0] and "102400Gi" in event[0] and "available" in event[0], event
    assert get_object("pvc", "huge", ns)["status"]["phase"] == "Pending"


def _key_secret(ns: str, key_hex: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": csi.VOLUME_KEY_SECRET, "namespace": ns},
            "data": {"key": base64.b64encode(key_hex.encode()).decode()}}  # fmt: skip


@pytest.mark.k8s
def test_encrypted_volume_has_no_plaintext_and_a_missing_or_wrong_key_stops_theclaim_pod(ns: str) -> None:
    record = f"eventpipe-record-{uuid.uuid4().hex}"
    key = os.urandom(32).hex()
    write = f"for i in $(seq 200); do echo {record}; done > /data/records; sync; head -1 /data/records"
    apply_objects(_key_secret(ns, key), claim("secret", ns, "32Mi", csi.STORAGE_CLASS_ENCRYPTED),
           claim_pod("writer", ns, "secret", write))  # fmt: skip
    assert _finished(ns, "writer") == "Succeeded", _logs(ns, "writer")
    assert _logs(ns, "writer").strip() == record
    image = _image_of(ns, "secret")
    _kubectl("-n", ns, "delete", "pod", "writer", "--wait=true", "--timeout=60s")
    staged = image.with_name(f"{image.stem}.staged.json")  # the driver's record of a staged volume
    wait_for(lambda: not staged.exists(), "volume unstaged")
    raw = image.read_bytes()
    assert record.encode() not in raw and b"records" not in raw  # contents and file names are ciphertext
    before = raw

    _kubectl("-n", ns, "delete", "secret", csi.VOLUME_KEY_SECRET)
    apply_objects(claim_pod("nokey", ns, "secret", "cat /data/records"))
    missing = wait_for(lambda: [e for e in _events(ns, "nokey") if "FailedMount" in e], "FailedMount (no Secret)")
    assert csi.VOLUME_KEY_SECRET in missing[0] and "not found" in missing[0], missing

    apply_objects(_key_secret(ns, os.urandom(32).hex()), claim_pod("wrongkey", ns, "secret", "cat /data/records"))
    wrong = wait_for(lambda: [e for e in _events(ns, "wrongkey") if "wrong encryption key" in e], "wrong-key event")
    assert "FailedMount" in wrong[0] and "PermissionDenied" in wrong[0], wrong
    assert _phase(ns, "wrongkey") == "Pending"
    _kubectl("-n", ns, "delete", "pod", "nokey", "wrongkey", "--wait=true", "--timeout=60s")
    assert image.read_bytes() == before  # refused keys touched nothing

    apply_objects(_key_secret(ns, key), claim_pod("reader", ns, "secret", "head -1 /data/records"))
    assert _finished(ns, "reader") == "Succeeded" and _logs(ns, "reader").strip() == record


@pytest.mark.k8s
def test_offline_expansion_restarts_the_pod_once_with_data_intact_and_shrink_is_refused(ns: str) -> None:
    token = uuid.uuid4().hex
    first = claim_pod("first", ns, "grow", f"echo {token} > /data/marker; sleep 3600")
    apply_objects(claim("grow", ns, "32Mi", csi.STORAGE_CLASS), first)
    wait_for(lambda: _phase(ns, "first") == "Running", "first pod running")
    began = time.monotonic()
    _kubectl("-n", ns, "patch", "pvc", "grow", "--type=merge", "-p",
             '{"spec":{"resources":{"requests":{"storage":"96Mi"}}}}')  # fmt: skip
    conditions = wait_for(lambda: [c["type"] for c in get_object("pvc", "grow", ns)["status"].get("conditions", [])
                                    if c["type"] == "FileSystemResizePending"], "FileSystemResizePending")  # fmt: skip
    assert conditions
    assert (
        get_object("pv", get_object("pvc", "grow", ns)["spec"]["volumeName"])["spec"]["capacity"]["storage"] == "96Mi"
    )
    _kubectl("-n", ns, "delete", "pod", "first", "--wait=true", "--timeout=60s")  # the one restart
    apply_objects(claim_pod("second", ns, "grow", "cat /data/marker; df -k /data | tail -1"))
    assert _finished(ns, "second") == "Succeeded"
    lines = _logs(ns, "second").strip().splitlines()
    assert lines[0] == token, lines
    assert int(lines[-1].split()[1]) > 80 << 10, lines
    wait_for(lambda: get_object("pvc", "grow", ns)["status"]["capacity"]["storage"] == "96Mi", "claim capacity 96Mi")
    print(f"\noffline expansion 32Mi -> 96Mi with one pod restart: {time.monotonic() - began:.1f}s")

    from devstack.runtime import DevstackError

    with pytest.raises(DevstackError, match=r"spec.resources.requests.storage"):  # the API server refuses a shrink
        _kubectl("-n", ns, "patch", "pvc", "grow", "--type=merge", "-p",
                 '{"spec":{"resources":{"requests":{"storage":"32Mi"}}}}')  # fmt: skip


@pytest.mark.k8s
def test_a_snapshot_restores_into_a_larger_volume(ns: str) -> None:
    token = uuid.uuid4().hex
    writer = claim_pod("src-writer", ns, "src", f"echo {token} > /data/marker")
    apply_objects(claim("src", ns, "32Mi", csi.STORAGE_CLASS), writer)
    assert _finished(ns, "src-writer") == "Succeeded"
    snapshot = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "snap", "namespace": ns},
                "spec": {"volumeSnapshotClassName": "eventpipe-archive",
                         "source": {"persistentVolumeClaimName": "src"}}}  # fmt: skip
    apply_objects(snapshot)
    wait_for(lambda: get_object("volumesnapshot", "snap", ns).get("status", {}).get("readyToUse"), "snapshot ready")
    apply_objects(claim("bigger", ns, "128Mi", csi.STORAGE_CLASS, source="snap"),
           claim_pod("restored", ns, "bigger", "cat /data/marker; df -k /data | tail -1"))  # fmt: skip
    assert _finished(ns, "restored") == "Succeeded", _logs(ns, "restored")
    lines = _logs(ns, "restored").strip().splitlines()
    assert lines[0] == token and int(lines[-1].split()[1]) > 100 << 10, lines
    content = get_object("volumesnapshot", "snap", ns)["status"]["boundVolumeSnapshotContentName"]
    _kubectl("patch", "volumesnapshotcontent", content, "--type=merge", "-p", '{"spec":{"deletionPolicy":"Delete"}}')
