"""The migration drill on the devstack: Kafka and Elasticsearch move from the source cluster to the target.

The two clusters cannot run at the same time on one host (docs/kubernetes.md, "A second cluster"), so the
move is the one an operator makes between two clusters that never see each other, in sequence:

1. pre-copy: cloud snapshots of every Kafka and Elasticsearch PVC while ingest runs;
2. pause ingest at an interval boundary (the running interval finishes; no new one starts);
3. final cloud snapshots (incremental: only the delta since the pre-copy is uploaded), after an ES flush;
4. inventory of the source (saved: the source is down when the target is verified);
5. source down, state kept (it is the rollback);
6. target up on fresh state, the encryption keys carried over, the PVCs restored from S3;
7. the StatefulSets on them;
8. ``migrate verify`` against the inventory;
9. switch the endpoints and resume; on a failed verify: target down, source up, exit 3.

Cluster bring-up and teardown run as ``eventpipe devstack`` subprocesses with ``EVENTPIPE_K8S_CLUSTER`` set,
because a process talks to one cluster identity (``devstack.cluster.node``); the pipeline-facing steps
(snapshots, restore objects, inventory, verification, accounting) are ``eventpipe.migrate``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from devstack.cluster import csi
from devstack.cluster.node import CLUSTER_ENV, identity, kubeconfig, mounts_under
from devstack.cluster.stateful import DURABILITY_ENV, HOST_ENDPOINTS, SNAPSHOT_LOCATION, WORKLOADS
from devstack.runtime import REPO_ROOT, DevstackError, subdir

SELECTOR = "eventpipe.io/snapshot=true"
EXIT_ROLLED_BACK = 3


class Step(BaseModel):
    name: str
    started: datetime
    seconds: float
    detail: dict[str, Any] = Field(default_factory=dict)


class Pass(BaseModel):
    label: str
    seconds: float
    snapshots: int
    uploaded_chunks: int
    uploaded_bytes: int


class MigrationReport(BaseModel):
    outcome: str = "running"  # migrated | rolled back | failed
    steps: list[Step] = Field(default_factory=list)
    passes: list[Pass] = Field(default_factory=list)
    paused_window_s: float | None = None  # from the pause to the resume on the target
    paused_snapshot_s: float | None = None  # the part of the pause spent shipping the final pass
    differences: list[str] = Field(default_factory=list)
    error: str | None = None


class Ingest(Protocol):
    """What the chain needs of the pipeline's ingest: stop at an interval boundary, start again elsewhere."""

    def pause(self) -> None: ...

    def resume(self, endpoints: dict[str, str], cluster: str) -> None: ...


def _say(message: str) -> None:
    print(f"[migrate] {message}", flush=True)


def devstack(cluster: str, *args: str, timeout: float = 3600) -> None:
    """``eventpipe devstack ARGS`` against ``cluster`` (its own process: the identity is read at import)."""
    log = subdir("logs") / f"migrate-{cluster}.log"
    env = {**os.environ, CLUSTER_ENV: cluster}
    with log.open("a") as out:
        out.write(f"\n$ {CLUSTER_ENV}={cluster} eventpipe devstack {' '.join(args)}\n")
        out.flush()
        result = subprocess.run([sys.executable, "-m", "eventpipe.cli", "devstack", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)  # fmt: skip
    if result.returncode != 0:
        tail = log.read_text()[-3000:]
        raise DevstackError(f"devstack {' '.join(args)} on the {cluster} cluster failed; {log}:\n{tail}")


def cluster_up(cluster: str) -> None:
    """The cluster and its StatefulSets; images are not rebuilt (the migration moves data, not code: a rebuild
    from this checkout would also replace the image the source's pods run)."""
    devstack(cluster, "k8s", "--no-build")
    devstack(cluster, "k8s-stateful", "--no-build")


def cluster_down(cluster: str) -> None:
    devstack(cluster, "down", "--services", "kubernetes")


def wipe_target() -> list[str]:
    """Fresh state for the target cluster: its etcd, PKI, runtime root and state go (never the source's).

    Refused while any target process runs; mounts left under its runtime root are unmounted first.
    """
    from devstack.runtime import pid_of

    target = identity("target")
    running = [p for p in os.listdir(subdir("run")) if p.startswith(target.process_prefix) and p.endswith(".pid")]
    if any(pid_of(p.removesuffix(".pid")) for p in running):
        raise DevstackError(f"the target cluster runs ({running}); stop it before wiping its state")
    removed = []
    for mount in mounts_under(target.runtime_root) + mounts_under(target.runtime_state):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    for path in (subdir(target.state_subdir), target.runtime_root, target.runtime_state):
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    return removed


def target_env_file(path: Path) -> Path:
    """The target's settings as ``migrate verify --target-env`` and the drill's ingest read them: endpoints, the
    StatefulSets' durability (the ingest sets a fresh cluster up), their snapshot repository, the shared S3."""
    from devstack.stack import DEVSTACK_CREDENTIALS

    s3 = {"EVENTPIPE_S3_ENDPOINT": "http://127.0.0.1:9000", **DEVSTACK_CREDENTIALS}
    # the fs repository where the StatefulSets' Elasticsearch has it (``setup`` registers it)
    repository = {"EVENTPIPE_SNAPSHOT_REPOSITORY_TYPE": "fs", "EVENTPIPE_SNAPSHOT_FS_LOCATION": SNAPSHOT_LOCATION}
    values = {**HOST_ENDPOINTS, **DURABILITY_ENV, **repository, **s3}
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def volume_keys(kube: Any) -> dict[str, dict[str, str]]:
    """Each stateful namespace's encryption key Secret data (base64 as stored): a restored volume holds the
    source's ciphertext, so the target needs the same key (an operator moves it through their KMS)."""
    return {ns: kube.secret_data(ns, csi.VOLUME_KEY_SECRET) for ns, *_ in WORKLOADS}


def key_secret(namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": csi.VOLUME_KEY_SECRET, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "eventpipe-devstack"}},
        "type": "Opaque",
        "data": data,
    }  # fmt: skip


class Chain:
    """The steps, each timed into the report; ``run`` returns the report (``outcome`` says how it ended)."""

    def __init__(self, ingest: Ingest, workdir: Path, *, precopy: bool = True, topics: list[str] | None = None):
        from eventpipe.events.topics import SOURCE_TOPICS

        self.ingest, self.workdir, self.precopy = ingest, workdir, precopy
        self.topics = topics or list(SOURCE_TOPICS.values())
        self.report = MigrationReport()
        self.source_down = self.target_up = self.paused = False
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dt%H%M%S")  # in snapshot names: lowercase
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o700)  # the carried keys pass through here
        # both clusters' host endpoints are the same node IP and NodePorts (only one runs at a time)
        self.env_file = target_env_file(workdir / "endpoints.env")

    def settings(self):
        from eventpipe.migrate.cli import target_settings

        return target_settings(self.env_file)

    def step(self, name: str, action: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        started, began = datetime.now(timezone.utc), time.monotonic()
        _say(f"{name} ...")
        detail = action() or {}
        self.report.steps.append(Step(name=name, started=started, seconds=round(time.monotonic() - began, 3),
                                      detail=detail))  # fmt: skip
        _say(f"{name}: {self.report.steps[-1].seconds:.1f}s {json.dumps(detail)[:300]}")
        self.save()
        return detail

    def save(self) -> None:
        (self.workdir / "report.json").write_text(self.report.model_dump_json(indent=1))

    def _pass(self, label: str) -> dict[str, Any]:
        from eventpipe.migrate.volumes import Kube, store_chunks, take_pass, uploaded
        from eventpipe.storage.s3 import s3_client

        kube = Kube(kubeconfig("source"))
        claims = [c for ns, *_ in WORKLOADS for c in kube.claims(ns, SELECTOR)]
        s3 = s3_client(self.settings())
        before = store_chunks(s3, csi.CLOUD_BUCKET, csi.CLOUD_PREFIX)
        began = time.monotonic()
        # named per run: a retried step finds its own snapshots, a later drill never reuses an earlier one's
        snaps = take_pass(kube, claims, f"{label}-{self.run_id}", csi.CLOUD_SNAPSHOT_CLASS)
        seconds = time.monotonic() - began
        chunks, size = uploaded(before, store_chunks(s3, csi.CLOUD_BUCKET, csi.CLOUD_PREFIX))
        self.report.passes.append(Pass(label=label, seconds=round(seconds, 3), snapshots=len(snaps),
                                       uploaded_chunks=chunks, uploaded_bytes=size))  # fmt: skip
        (self.workdir / f"snapshots-{label}.json").write_text(json.dumps([s.model_dump() for s in snaps], indent=1))
        return {"claims": [f"{c.namespace}/{c.name}" for c in claims], "uploaded_bytes": size, "chunks": chunks}

    def _flush_elasticsearch(self) -> dict[str, Any]:
        import urllib.request

        request = urllib.request.Request(f"{HOST_ENDPOINTS['EVENTPIPE_ES_URL']}/_flush", method="POST")
        with urllib.request.urlopen(request, timeout=120) as resp:
            return {"shards": json.loads(resp.read()).get("_shards", {})}

    def _inventory(self) -> dict[str, Any]:
        from eventpipe.migrate.inventory import take_inventory

        taken = take_inventory(self.settings(), self.topics)
        (self.workdir / "inventory.json").write_text(taken.model_dump_json(indent=1))
        return {"partitions": sum(len(p) for p in taken.topics.values()), "indices": len(taken.events_per_index),
                "manifests": len(taken.manifests), "archive_days": len(taken.archive_days)}  # fmt: skip

    def _carry_keys(self) -> dict[str, Any]:
        from eventpipe.migrate.volumes import Kube

        keys = volume_keys(Kube(kubeconfig("source")))
        path = self.workdir / "volume-keys.json"
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
        return {"namespaces": sorted(keys)}

    def _restore(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        from eventpipe.migrate.volumes import CloudSnapshot, Kube, restore_manifests

        kube = Kube(kubeconfig("target"))
        keys = json.loads((self.workdir / "volume-keys.json").read_text())
        for namespace, data in keys.items():
            labels = {"app.kubernetes.io/part-of": "eventpipe"}
            with contextlib.suppress(ApiException):  # exists: a retried step
                kube.core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
            kube.create(key_secret(namespace, data))
        label = self.report.passes[-1].label
        snaps = [CloudSnapshot(**s) for s in json.loads((self.workdir / f"snapshots-{label}.json").read_text())]
        for snap in snaps:
            for obj in restore_manifests(snap, driver=csi.DRIVER_NAME, snapshot_class=csi.CLOUD_SNAPSHOT_CLASS,
                                         storage_class=csi.CLOUD_RESTORE_CLASS):  # fmt: skip
                kube.create(obj)
        return {"claims": [f"{s.namespace}/{s.pvc}" for s in snaps], "from_pass": label}

    def _verify(self, settle_s: float = 300.0) -> dict[str, Any]:
        """Compare the target with the saved inventory. Pods Ready is not the data served yet (partition
        leaders being elected, shards initialising), so a difference or an unreachable side is retried for
        ``settle_s``; what remains then is the verdict."""
        from eventpipe.migrate.cli import load_inventory
        from eventpipe.migrate.inventory import take_inventory
        from eventpipe.migrate.verify import compare

        source = load_inventory(self.workdir / "inventory.json")
        deadline, attempts = time.monotonic() + settle_s, 0
        while True:
            attempts += 1
            try:
                target = take_inventory(self.settings(), self.topics)
                self.report.differences = [str(d) for d in compare(source, target)]
            except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
                target, self.report.differences = None, [f"target inventory failed: {type(exc).__name__}: {exc}"]
            if not self.report.differences or time.monotonic() > deadline:
                break
            time.sleep(10)
        if target is not None:
            (self.workdir / "target-inventory.json").write_text(target.model_dump_json(indent=1))
        return {"identical": not self.report.differences, "differences": len(self.report.differences),
                "attempts": attempts}  # fmt: skip

    def run(self) -> MigrationReport:
        try:
            if self.precopy:
                self.step("pre-copy: cloud snapshots while ingest runs", lambda: self._pass("precopy"))
            self.step("pause ingest at an interval boundary", lambda: self.ingest.pause())
            self.paused, paused = True, time.monotonic()
            self.step("flush Elasticsearch", self._flush_elasticsearch)
            began = time.monotonic()
            self.step("final cloud snapshots", lambda: self._pass("final"))
            self.report.paused_snapshot_s = round(time.monotonic() - began, 3)
            self.step("inventory of the source", self._inventory)
            self.step("carry the volume keys", self._carry_keys)
            self.source_down = True  # from here on a failure brings it back up, even a half-stopped one
            self.step("source down (state kept)", lambda: cluster_down("source"))
            self.step("target: fresh state", lambda: {"removed": wipe_target()})
            self.target_up = True
            self.step("target up", lambda: devstack("target", "k8s", "--no-build"))
            self.step("restore PVCs from the cloud snapshots", self._restore)
            self.step("StatefulSets on the target", lambda: devstack("target", "k8s-stateful", "--no-build"))
            self.step("verify against the inventory", self._verify)
        except Exception as exc:  # noqa: BLE001 - every failure ends in the rollback, with its message
            self.report.error = f"{type(exc).__name__}: {exc}"
            _say(f"failed: {self.report.error}")
        if self.report.error is None and not self.report.differences:
            self.step("switch endpoints and resume", lambda: self.ingest.resume(HOST_ENDPOINTS, "target"))
            self.report.paused_window_s = round(time.monotonic() - paused, 3)
            self.report.outcome = "migrated"
        else:
            self.rollback()
        self.save()
        return self.report

    def rollback(self) -> None:
        """The pipeline back on the source, untouched: target down (if up), source up (if down), ingest resumed
        there (if paused)."""
        try:
            if self.target_up:
                self.step("rollback: target down", lambda: cluster_down("target"))
            if self.source_down:
                self.step("rollback: source up", lambda: cluster_up("source"))
            if self.paused:
                self.step("rollback: resume ingest on the source",
                          lambda: self.ingest.resume(HOST_ENDPOINTS, "source"))  # fmt: skip
            self.report.outcome = "rolled back"
        except Exception as exc:  # noqa: BLE001
            self.report.outcome = "failed"
            self.report.error = f"{self.report.error}; rollback: {type(exc).__name__}: {exc}"


def workdir() -> Path:
    return subdir("migration") / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


__all__ = ["REPO_ROOT", "Chain", "Ingest", "MigrationReport", "cluster_down", "cluster_up", "wipe_target"]
