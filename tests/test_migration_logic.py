"""The migration's pure parts, no services: cluster identities, the cloud snapshot objects, restore objects,
bytes uploaded per pass, exact offset accounting, a saved inventory, and the chain's rollback on a failed verify.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devstack import migration
from devstack.cluster import csi, node
from devstack.cluster.pki import ensure_pki
from devstack.runtime import DevstackError
from eventpipe.errors import InvalidArgument
from eventpipe.migrate.accounting import account
from eventpipe.migrate.cli import load_inventory
from eventpipe.migrate.volumes import (
    Claim,
    CloudSnapshot,
    content_name,
    restore_manifests,
    snapshot_manifests,
    uploaded,
)


def test_the_default_identity_keeps_every_path_and_port_of_the_one_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(node.CLUSTER_ENV, raising=False)
    source = node.identity()
    assert source.name == "source"
    assert (source.api_port, source.etcd_client_port, source.etcd_peer_port) == (6443, 22379, 22380)
    assert source.runtime_root == Path("/var/lib/eventpipe-k8s")
    assert source.runtime_state == Path("/run/eventpipe-k8s")
    assert source.state_subdir == "kubernetes"
    assert source.proc("k8s-etcd") == "k8s-etcd"


def test_the_target_shares_no_state_port_or_process_name_with_the_source() -> None:
    source, target = node.identity("source"), node.identity("target")
    for field in ("api_port", "etcd_client_port", "etcd_peer_port", "runtime_root", "runtime_state", "state_subdir"):
        assert getattr(source, field) != getattr(target, field), field
    assert {source.etcd_client_port, source.etcd_peer_port}.isdisjoint({target.etcd_client_port, target.etcd_peer_port})
    assert not str(target.runtime_root).startswith(f"{source.runtime_root}/")
    assert target.proc("csi-driver") != source.proc("csi-driver")
    assert node.kubeconfig("target").parent.name == "kubernetes-target"


def test_an_unknown_cluster_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(node.CLUSTER_ENV, "staging")
    with pytest.raises(DevstackError, match="EVENTPIPE_K8S_CLUSTER='staging': unknown cluster"):
        node.identity()


def test_each_cluster_has_its_own_ca_so_one_clusters_certificates_mean_nothing_to_the_other(tmp_path: Path) -> None:
    ensure_pki(tmp_path / "source", "devstack", "10.244.0.1", "10.96.0.1", ca_name="source")
    ensure_pki(tmp_path / "target", "devstack", "10.244.0.1", "10.96.0.1", ca_name="target")

    def verify(ca: Path, cert: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True)

    assert verify(tmp_path / "source" / "ca.crt", tmp_path / "source" / "admin.crt").returncode == 0
    rejected = verify(tmp_path / "target" / "ca.crt", tmp_path / "source" / "admin.crt")
    assert rejected.returncode != 0 and "unable to get local issuer certificate" in rejected.stdout + rejected.stderr
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(tmp_path / "target" / "ca.crt")],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "eventpipe-devstack-target-ca" in subject


def test_the_cloud_objects_name_one_store_for_snapshots_listing_and_restores() -> None:
    objs = {o["kind"]: o for o in csi.cloud_objects("http://127.0.0.1:9000", "ak", "sk")}
    secret = objs["Secret"]
    # the keys devstack/csi/cloud.go reads
    assert set(secret["stringData"]) == {"endpoint", "region", "bucket", "prefix", "accessKeyId", "secretAccessKey"}
    assert secret["stringData"]["bucket"] == "eventpipe-snapshots" and secret["stringData"]["prefix"] == "volumes"
    ref = (secret["metadata"]["name"], secret["metadata"]["namespace"])
    params = objs["VolumeSnapshotClass"]["parameters"]
    assert params["cloud"] == "s3" and objs["VolumeSnapshotClass"]["deletionPolicy"] == "Retain"
    for use in ("snapshotter", "snapshotter-list"):
        assert (
            params[f"csi.storage.k8s.io/{use}-secret-name"],
            params[f"csi.storage.k8s.io/{use}-secret-namespace"],
        ) == ref
    restore = objs["StorageClass"]
    assert restore["metadata"]["name"] == csi.CLOUD_RESTORE_CLASS
    assert restore["parameters"]["encrypted"] == "true"  # restored volumes keep their source's ciphertext
    p = restore["parameters"]
    assert (
        p["csi.storage.k8s.io/provisioner-secret-name"],
        p["csi.storage.k8s.io/provisioner-secret-namespace"],
    ) == ref
    [rule] = objs["Role"]["rules"]
    assert rule["resourceNames"] == [ref[0]] and rule["verbs"] == ["get"]  # the snapshotter reads that Secret only


SNAP = CloudSnapshot(
    namespace="kafka", pvc="data-kafka-1", name="data-kafka-1-final", handle="snapshot-abc",
    restore_size=2 << 30, storage="2Gi",
    labels={"app.kubernetes.io/name": "kafka", "eventpipe.io/snapshot": "true", "other": "x"},
)  # fmt: skip


def test_restore_objects_chain_content_snapshot_and_the_claim_the_statefulset_adopts() -> None:
    content, snapshot, claim = restore_manifests(
        SNAP, driver="d.example", snapshot_class="cloud", storage_class="restore"
    )
    assert content["spec"]["source"] == {"snapshotHandle": "snapshot-abc"}
    assert content["spec"]["deletionPolicy"] == "Retain"
    assert content["spec"]["volumeSnapshotRef"] == {"name": snapshot["metadata"]["name"], "namespace": "kafka"}
    assert snapshot["spec"]["source"] == {"volumeSnapshotContentName": content_name(SNAP)}
    assert content["metadata"]["name"] == content_name(SNAP)
    assert claim["metadata"]["name"] == "data-kafka-1"  # the name volumeClaimTemplate "data" of pod kafka-1 expects
    assert claim["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                           "name": snapshot["metadata"]["name"]}  # fmt: skip
    assert claim["spec"]["storageClassName"] == "restore"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    labels = claim["metadata"]["labels"]
    assert labels["eventpipe.io/snapshot"] == "true" and labels["app.kubernetes.io/name"] == "kafka"
    assert "other" not in labels


def test_a_pass_snapshots_every_claim_under_a_deterministic_name() -> None:
    claims = [Claim(namespace="elastic", name="elasticsearch-data-elasticsearch-0", storage="2Gi")]
    [vs] = snapshot_manifests(claims, "precopy", "eventpipe-cloud")
    assert vs["metadata"]["name"] == "elasticsearch-data-elasticsearch-0-precopy"
    assert vs["spec"] == {"volumeSnapshotClassName": "eventpipe-cloud",
                          "source": {"persistentVolumeClaimName": "elasticsearch-data-elasticsearch-0"}}  # fmt: skip
    assert snapshot_manifests(claims, "precopy", "eventpipe-cloud") == [vs]


def test_bytes_uploaded_are_the_chunks_new_to_the_store() -> None:
    before = {"v/chunks/a": 4, "v/chunks/b": 4}
    assert uploaded(before, {**before, "v/chunks/c": 3, "v/chunks/d": 4}) == (2, 7)
    assert uploaded(before, before) == (0, 0)


RANGES = {("t", 0): (10, 15), ("t", 1): (0, 3)}


def test_accounting_is_exact_when_every_offset_is_indexed_or_dead_lettered_once() -> None:
    indexed = [("t", 0, o) for o in (10, 11, 13, 14)] + [("t", 1, o) for o in range(3)] + [("other", 0, 1)]
    result = account(RANGES, indexed, [("t", 0, 12)])
    assert result.exact
    assert (result.offsets, result.indexed, result.dead_lettered) == (8, 7, 1)


def test_accounting_names_gaps_and_duplicates_per_partition_and_ignores_other_ranges() -> None:
    indexed = [("t", 0, o) for o in (10, 11, 12, 14, 15)] + [("t", 1, 0), ("t", 1, 1), ("t", 1, 1)]
    result = account(RANGES, indexed, [("t", 0, 12)])
    p0, p1 = result.partitions
    assert not result.exact
    assert (p0.missing, p0.duplicated) == ([13], [12])  # 12 indexed and dead-lettered; 15 is another range's
    assert (p1.missing, p1.duplicated, p1.missing_count) == ([2], [1], 1)


def test_a_saved_inventory_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such file"):
        load_inventory(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text('{"topics": 1}')
    with pytest.raises(InvalidArgument, match="not an inventory"):
        load_inventory(tmp_path / "bad.json")


class _Ingest:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self, endpoints: dict[str, str], cluster: str) -> None:
        self.calls.append(f"resume on {cluster}")


def _chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, differences: list[str]) -> tuple[Any, list[str]]:
    calls: list[str] = []
    monkeypatch.setattr(migration, "cluster_down", lambda c: calls.append(f"down {c}"))
    monkeypatch.setattr(migration, "cluster_up", lambda c: calls.append(f"up {c}"))
    monkeypatch.setattr(migration, "devstack", lambda c, *a: calls.append(f"{c}: {' '.join(a)}"))
    monkeypatch.setattr(migration, "wipe_target", lambda: calls.append("wipe target") or [])
    chain = migration.Chain(_Ingest(calls), tmp_path / "m")
    for name in ("_pass", "_flush_elasticsearch", "_inventory", "_carry_keys", "_restore"):
        monkeypatch.setattr(chain, name, lambda *a, n=name: calls.append(n) or {})

    def verify() -> dict[str, Any]:
        chain.report.differences = differences
        return {"identical": not differences}

    monkeypatch.setattr(chain, "_verify", verify)
    return chain, calls


def test_a_failed_verify_takes_the_target_down_and_the_source_up_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, calls = _chain(tmp_path, monkeypatch, ["kafka iot.telemetry/0 log_end: source 10, target 9"])
    report = chain.run()
    assert report.outcome == "rolled back" and report.paused_window_s is None
    assert calls[calls.index("down source") :] == [
        "down source", "wipe target", "target: k8s --no-build", "_restore", "target: k8s-stateful --no-build",
        "down target", "up source", "resume on source",
    ]  # fmt: skip
    saved = json.loads((tmp_path / "m" / "report.json").read_text())
    assert saved["differences"] == ["kafka iot.telemetry/0 log_end: source 10, target 9"]


def test_a_passing_verify_switches_and_resumes_on_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain, calls = _chain(tmp_path, monkeypatch, [])
    report = chain.run()
    assert report.outcome == "migrated" and report.paused_window_s is not None
    assert calls[:3] == ["_pass", "pause", "_flush_elasticsearch"]  # the pre-copy runs before the pause
    assert calls[-1] == "resume on target" and "up source" not in calls
    assert [s.name for s in report.steps][-1] == "switch endpoints and resume"


def test_a_step_that_raises_rolls_back_with_its_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain, calls = _chain(tmp_path, monkeypatch, [])

    def broken() -> dict[str, Any]:
        raise TimeoutError("VolumeSnapshots not readyToUse after 1800s: ['kafka/data-kafka-0-final']")

    monkeypatch.setattr(chain, "_restore", broken)
    report = chain.run()
    assert report.outcome == "rolled back"
    assert report.error == "TimeoutError: VolumeSnapshots not readyToUse after 1800s: ['kafka/data-kafka-0-final']"
    assert calls[-3:] == ["down target", "up source", "resume on source"]


def test_devstack_migrate_exits_3_when_the_move_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack import migration_drill
    from devstack.cli import app

    rolled = {"migration": {"outcome": "rolled back", "error": None, "differences": ["index x: source 1, target 0"]}}
    monkeypatch.setattr(migration_drill, "drill", lambda **_: rolled)
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == migration.EXIT_ROLLED_BACK == 3
    assert "index x: source 1, target 0" in result.output


def test_the_paused_window_without_precopy_is_estimated_from_the_same_run() -> None:
    from devstack.migration import MigrationReport, Pass
    from devstack.migration_drill import paused_windows

    report = MigrationReport(
        paused_window_s=400.0,
        passes=[Pass(label="precopy", seconds=90.0, snapshots=6, uploaded_chunks=900, uploaded_bytes=3 << 30),
                Pass(label="final", seconds=12.0, snapshots=6, uploaded_chunks=20, uploaded_bytes=80 << 20)],
    )  # fmt: skip
    assert paused_windows(report) == {"with_precopy_s": 400.0, "without_precopy_estimate_s": 478.0}
    only_final = MigrationReport(paused_window_s=480.0, passes=[report.passes[1]])
    assert paused_windows(only_final) == {"without_precopy_s": 480.0, "without_precopy_estimate_s": None}


def test_the_target_env_file_names_the_host_endpoints_and_is_private(tmp_path: Path) -> None:
    from devstack.cluster.stateful import HOST_ENDPOINTS
    from eventpipe.migrate.cli import target_settings

    path = migration.target_env_file(tmp_path / "t.env")
    assert path.stat().st_mode & 0o777 == 0o600  # holds the S3 credentials
    settings = target_settings(path)
    assert settings.kafka.bootstrap == HOST_ENDPOINTS["EVENTPIPE_KAFKA_BOOTSTRAP"] == "10.244.0.1:31090"
    assert settings.elastic.url == HOST_ENDPOINTS["EVENTPIPE_ES_URL"]
    assert settings.s3.access_key is not None
    # the drill's ingest creates the source topics on a fresh target: with the StatefulSets' durability
    assert (settings.kafka.replication_factor, settings.kafka.min_insync_replicas) == (3, 2)
    assert settings.kafka.retention_ms == -1  # not the brokers' 7 days: a later demo's January would be deleted
    assert settings.elastic.replicas == 1


def test_a_precopy_that_fails_leaves_both_clusters_and_ingest_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, calls = _chain(tmp_path, monkeypatch, [])

    def refused(label: str) -> dict[str, Any]:
        raise PermissionError("S3 refused the credentials (InvalidAccessKeyId)")

    monkeypatch.setattr(chain, "_pass", refused)
    report = chain.run()
    assert report.outcome == "rolled back" and report.error.startswith("PermissionError: S3 refused")
    assert calls == []  # nothing stopped, nothing started, ingest never paused


class _Snapshots:
    """Statuses a snapshot controller reports over time, one list per VolumeSnapshot."""

    def __init__(self, timeline: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        self.timeline = timeline

    def snapshot_status(self, namespace: str, name: str) -> dict[str, Any]:
        seq = self.timeline[(namespace, name)]
        return seq.pop(0) if len(seq) > 1 else seq[0]


def test_a_snapshot_error_the_controller_retries_past_is_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventpipe.migrate import volumes

    monkeypatch.setattr(volumes.time, "sleep", lambda _: None)
    cut = {"error": {"message": "rpc error: code = Unavailable desc = upload to S3 cut"}}
    kube = _Snapshots({("k", "a"): [cut, {"readyToUse": True, "boundVolumeSnapshotContentName": "c"}]})
    ready = volumes.wait_ready(kube, [("k", "a")], 60)  # type: ignore[arg-type]
    assert ready[("k", "a")]["boundVolumeSnapshotContentName"] == "c"


def test_a_snapshot_that_never_turns_ready_times_out_naming_its_last_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventpipe.migrate import volumes

    ticks = iter(range(0, 1000, 10))
    monkeypatch.setattr(volumes.time, "sleep", lambda _: None)
    cut = {"error": {"message": 'rpc error: code = Unavailable desc = snapshot "s": upload interrupted'}}
    kube = _Snapshots({("k", "a"): [cut], ("k", "b"): [{"readyToUse": True}]})
    with pytest.raises(TimeoutError, match=r"after 30s: \['k/a'\]; last errors: .*upload interrupted"):
        volumes.wait_ready(kube, [("k", "a"), ("k", "b")], 30, clock=lambda: next(ticks))  # type: ignore[arg-type]


def test_a_snapshot_the_store_refuses_fails_at_once_naming_it_and_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventpipe.migrate import volumes

    monkeypatch.setattr(volumes.time, "sleep", lambda _: None)
    denied = {"error": {"message": 'failed to take snapshot of the volume pvc-1: "rpc error: code = PermissionDenied '
                        'desc = cloud snapshot s: S3 refused the credentials (SignatureDoesNotMatch)"'}}  # fmt: skip
    kube = _Snapshots({("k", "a"): [{"readyToUse": True}], ("k", "b"): [{}, denied]})
    with pytest.raises(volumes.SnapshotRefused, match=r"^VolumeSnapshot k/b: .*\(SignatureDoesNotMatch\)"):
        volumes.wait_ready(kube, [("k", "a"), ("k", "b")], 900, clock=lambda: 0.0)  # type: ignore[arg-type]


def test_restore_times_come_from_the_target_drivers_log(tmp_path: Path) -> None:
    from devstack.migration_drill import go_duration, restore_times

    log = tmp_path / "target-csi-driver.log"
    log.write_text(
        "2026/12/07 02:38:17 restored cloud snapshot snapshot-a from s3://eventpipe-snapshots/volumes "
        "(16 chunks, 28Mi (29360128 bytes) stored) in 1.463808284s\n"
        "2026/12/07 02:39:00 restored cloud snapshot snapshot-other from s3://b/volumes (1 chunks, 4Mi (4194304 bytes) "
        "stored) in 2s\n"
        "2026/12/07 02:40:00 restored cloud snapshot snapshot-b from s3://b/volumes (300 chunks, 1.1Gi (1181116006 "
        "bytes) stored) in 1m2.5s\n"
    )
    claims = {"snapshot-a": "kafka/data-kafka-0", "snapshot-b": "elastic/data-elasticsearch-1"}
    assert restore_times(log, claims) == [
        {"claim": "kafka/data-kafka-0", "snapshot": "snapshot-a", "chunks": 16, "bytes": 29360128, "seconds": 1.464},
        {"claim": "elastic/data-elasticsearch-1", "snapshot": "snapshot-b", "chunks": 300, "bytes": 1181116006,
         "seconds": 62.5},
    ]  # fmt: skip
    assert go_duration("850ms") == pytest.approx(0.85) and go_duration("1h2m3s") == 3723
