"""CSI volumes and VolumeSnapshots on the devstack cluster: a host-path driver, its provisioner, external-snapshotter.

What a cloud cluster gets from its storage vendor is assembled here from the Go module proxy (no image
registry, and csi-driver-host-path, external-provisioner and node-driver-registrar are not served there):

- ``eventpipe-csi`` (source in ``devstack/csi``, the project's own): the CSI driver (volumes are directories,
  a snapshot is a tar of one, a restore unpacks it; node publish is a bind mount) which also registers itself
  with the kubelet, and, in a second process, a provisioner built on sig-storage-lib-external-provisioner;
- external-snapshotter ``snapshot-controller`` and the ``csi-snapshotter`` sidecar, with its CRDs and the
  ClusterRoles it ships, each bound to its own client certificate (no cluster-admin).

All four run as host processes next to the kubelet (same mount namespace, so bind mounts need no
propagation settings). ``devstack k8s`` installs them after the cluster is up; everything is idempotent and
cached under ``.devstack/csi`` (binaries keyed by version, the driver by a hash of its source).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from devstack.cluster.node import (
    API_PORT,
    CLUSTER,
    NODE_NAME,
    RUNTIME_ROOT,
    SERVICE_IP,
    kubeconfig,
    kubectl,
    pki_dir,
    state_dir,
)
from devstack.cluster.pki import ensure_pki, write_kubeconfig
from devstack.cluster.podnet import NODE_IP
from devstack.runtime import (
    REPO_ROOT,
    DevstackError,
    TimedSteps,
    log_path,
    pid_of,
    progress,
    run_step,
    start_process,
    stop_process,
    subdir,
    tail,
)

SNAPSHOTTER_MODULE = "github.com/kubernetes-csi/external-snapshotter/v8"
SNAPSHOTTER_CLIENT = "github.com/kubernetes-csi/external-snapshotter/client/v8"
SNAPSHOTTER_VERSION = "v8.7.0"
SNAPSHOTTER_BINARIES = ("snapshot-controller", "csi-snapshotter")
DRIVER_NAME = "hostpath.csi.eventpipe.io"
STORAGE_CLASS = "eventpipe-hostpath"
STORAGE_CLASS_ENCRYPTED = "eventpipe-hostpath-encrypted"
VOLUME_KEY_SECRET = "eventpipe-volume-key"  # per namespace: the encrypted class's node-stage Secret
# Cloud snapshots (devstack/csi/cloud.go): the class ships each snapshot to the S3 server, into the snapshot
# bucket under "volumes/"; the restore class reads the same store (provisioner secret), so a cluster whose node
# never held a volume restores it. One Secret names the store for both, in kube-system (cluster components only).
CLOUD_SNAPSHOT_CLASS = "eventpipe-cloud"
CLOUD_RESTORE_CLASS = "eventpipe-hostpath-encrypted-cloud"
CLOUD_SECRET = "eventpipe-cloud-snapshots"
CLOUD_SECRET_NAMESPACE = "kube-system"
CLOUD_BUCKET = "eventpipe-snapshots"
CLOUD_PREFIX = "volumes"
SANITY_MODULE = "github.com/kubernetes-csi/csi-test/v5"
SANITY_VERSION = "v5.6.0"
SOURCE = REPO_ROOT / "devstack" / "csi"
DATA_ROOT = RUNTIME_ROOT / "csi"  # volumes and snapshots: outside any work tree, next to the kubelet's state
KUBELET_ROOT = RUNTIME_ROOT / "kubelet"
SOCKET = KUBELET_ROOT / "plugins" / DRIVER_NAME / "csi.sock"
REGISTRY = KUBELET_ROOT / "plugins_registry"
SNAPSHOT_CRDS = ("volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots")
# process -> client identity (certificate CN) and the ClusterRole bound to it
IDENTITIES = {
    "csi-provisioner": ("eventpipe:csi-provisioner", "eventpipe-csi-provisioner"),
    "csi-snapshot-controller": ("eventpipe:snapshot-controller", "snapshot-controller-runner"),
    "csi-snapshotter": ("eventpipe:csi-snapshotter", "external-snapshotter-runner"),
}
ROLES = ("csi-driver", "csi-provisioner", "csi-snapshot-controller", "csi-snapshotter")
PROCESSES = tuple(CLUSTER.proc(r) for r in ROLES)  # pidfile names: the target cluster's are prefixed
NO_GROUP_SNAPSHOTS = "--feature-gates=CSIVolumeGroupSnapshot=false"  # the driver has no group controller


def _say(message: str) -> None:
    progress(f"[csi] {message}")


def bin_dir() -> Path:
    return subdir("csi", "bin")


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise DevstackError("the Go toolchain (go 1.26+) is required to build the CSI components; put it on PATH")
    return go


def _nice() -> list[str]:
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def _checked(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise DevstackError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout


def module_dir(go: str, module: str, version: str) -> Path:
    """The read-only module cache copy of ``module@version`` (downloaded through the Go module proxy)."""
    out = _checked(run_step([go, "mod", "download", "-json", f"{module}@{version}"], f"go mod download {module}"),
                   f"go mod download {module}@{version}")  # fmt: skip
    return Path(json.loads(out)["Dir"])


def _env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, "CGO_ENABLED": "0", "GOWORK": "off", **extra}


def _cached(marker: Path, key: str, binaries: Iterable[str]) -> bool:
    """True when ``marker`` records ``key`` and every binary it covers is in place."""
    return marker.exists() and marker.read_text().strip() == key and all((bin_dir() / b).exists() for b in binaries)


def _go_build(go: str, source: Path, version: str, out: str, targets: list[str], *, what: str, goflags: str) -> None:
    """A stripped, reproducible ``go build`` of ``targets`` in ``source`` (niced: the CPU is shared), stamped."""
    ldflags = f"-s -w -X main.version={version}"
    cmd = [*_nice(), go, "build", "-C", str(source), "-trimpath", "-ldflags", ldflags, "-o", out, *targets]
    _checked(run_step(cmd, what, env=_env(GOFLAGS=goflags)), what)


def build_snapshotter(go: str) -> float | None:
    """snapshot-controller and csi-snapshotter from the module; seconds taken, or None when cached.

    The module's go.mod points its client module at ``./client``, which module zips leave out; a writable copy
    without that ``replace`` and with the client pinned to the same release builds with ``-mod=mod``.
    """
    marker = bin_dir() / ".snapshotter"
    if _cached(marker, SNAPSHOTTER_VERSION, SNAPSHOTTER_BINARIES):
        return None
    began = time.monotonic()
    source = subdir("csi", "src") / f"external-snapshotter-{SNAPSHOTTER_VERSION}"
    if not (source / ".prepared").exists():
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(module_dir(go, SNAPSHOTTER_MODULE, SNAPSHOTTER_VERSION), source)
        for path in [source, *source.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        gomod = source / "go.mod"
        lines = [line for line in gomod.read_text().splitlines() if "=> ./client" not in line]
        client = f"\t{SNAPSHOTTER_CLIENT} {SNAPSHOTTER_VERSION}"
        pinned = [client if line.strip().startswith(f"{SNAPSHOTTER_CLIENT} ") else line for line in lines]
        if not any(line.strip() == f"{SNAPSHOTTER_CLIENT} {SNAPSHOTTER_VERSION}" for line in pinned):
            raise DevstackError(f"could not pin {SNAPSHOTTER_CLIENT} in {gomod}; its layout changed")
        gomod.write_text("\n".join(pinned) + "\n")
        (source / ".prepared").write_text(SNAPSHOTTER_VERSION)
    _go_build(
        go,
        source,
        SNAPSHOTTER_VERSION,
        f"{bin_dir()}/",
        [f"./cmd/{name}" for name in SNAPSHOTTER_BINARIES],
        what=f"go build external-snapshotter {SNAPSHOTTER_VERSION} ({', '.join(SNAPSHOTTER_BINARIES)})",
        goflags="-mod=mod",
    )
    marker.write_text(SNAPSHOTTER_VERSION + "\n")
    return round(time.monotonic() - began, 1)


def driver_key() -> str:
    """A hash of the driver's source: the cache key of its binary."""
    digest = hashlib.sha256()
    names = {"go.mod", "go.sum"}
    for path in sorted(p for p in SOURCE.iterdir() if p.name in names or p.name.endswith(".go")):
        if path.name.endswith("_test.go"):
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_driver(go: str) -> float | None:
    """``eventpipe-csi`` from ``devstack/csi``; seconds taken, or None when the binary matches the source."""
    marker = bin_dir() / ".driver"
    key = driver_key()
    if _cached(marker, key, ["eventpipe-csi"]):
        return None
    began = time.monotonic()
    _go_build(
        go,
        SOURCE,
        key,
        str(bin_dir() / "eventpipe-csi"),
        ["."],
        what=f"go build eventpipe-csi ({key})",
        goflags="-mod=readonly",
    )
    marker.write_text(key + "\n")
    return round(time.monotonic() - began, 1)


def crd_documents(go: str) -> list[dict[str, Any]]:
    """The upstream VolumeSnapshot CRDs shipped with the client module of the same release."""
    import yaml

    crd_dir = module_dir(go, SNAPSHOTTER_CLIENT, SNAPSHOTTER_VERSION) / "config" / "crd"
    files = [crd_dir / f"snapshot.storage.k8s.io_{plural}.yaml" for plural in SNAPSHOT_CRDS]
    docs = [yaml.safe_load(path.read_text()) for path in files]
    return [{k: v for k, v in doc.items() if k != "status"} for doc in docs]


def upstream_cluster_roles(go: str) -> list[dict[str, Any]]:
    """The ClusterRoles external-snapshotter ships for its controller and sidecar (bound below to our users)."""
    import yaml

    deploy = module_dir(go, SNAPSHOTTER_MODULE, SNAPSHOTTER_VERSION) / "deploy" / "kubernetes"
    roles = []
    for path in (deploy / "snapshot-controller" / "rbac-snapshot-controller.yaml",
                 deploy / "csi-snapshotter" / "rbac-csi-snapshotter.yaml"):  # fmt: skip
        roles += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ClusterRole"]
    wanted = {role for _, role in IDENTITIES.values()}
    found = {r["metadata"]["name"] for r in roles}
    if not wanted - {"eventpipe-csi-provisioner"} <= found:
        raise DevstackError(f"external-snapshotter {SNAPSHOTTER_VERSION} does not ship the ClusterRoles {wanted}")
    return roles


def provisioner_role() -> dict[str, Any]:
    """What the provisioner does: create/delete PVs (with a finalizer), bind claims, read snapshots and the
    provisioner Secret a class names (as external-provisioner's role does)."""
    rules = [
        ("", ["persistentvolumes"], ["get", "list", "watch", "create", "delete", "update", "patch"]),
        ("", ["persistentvolumeclaims"], ["get", "list", "watch", "update"]),
        ("", ["persistentvolumeclaims/status"], ["update", "patch"]),  # the resizer's NodeResizePending
        ("", ["events"], ["list", "watch", "create", "update", "patch"]),
        ("", ["nodes"], ["get", "list", "watch"]),
        ("storage.k8s.io", ["storageclasses"], ["get", "list", "watch"]),
        ("snapshot.storage.k8s.io", ["volumesnapshots", "volumesnapshotcontents"], ["get"]),
        ("", ["secrets"], ["get"]),  # a class's provisioner Secret: the S3 store a cloud snapshot restores from
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "eventpipe-csi-provisioner"},
        "rules": [{"apiGroups": [g], "resources": r, "verbs": v} for g, r, v in rules],
    }


def cluster_objects() -> list[dict[str, Any]]:
    """CSIDriver, StorageClass, bindings of the component identities; the VolumeSnapshotClass is in deploy/."""
    labels = {"app.kubernetes.io/managed-by": "eventpipe-devstack"}
    bindings = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"eventpipe-{process}", "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        for process, (user, role) in IDENTITIES.items()
    ]
    return [
        *bindings,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": DRIVER_NAME, "labels": labels},
            "spec": {
                "attachRequired": False,  # node-local directories: nothing to attach
                "podInfoOnMount": False,
                "volumeLifecycleModes": ["Persistent"],
                "fsGroupPolicy": "File",
            },
        },
        *storage_classes(),
    ]


def storage_classes() -> list[dict[str, Any]]:
    """The devstack's classes, plain and encrypted (``devstack/csi/storageclasses.yaml``, documented there)."""
    import yaml

    return [d for d in yaml.safe_load_all((SOURCE / "storageclasses.yaml").read_text()) if d]


def cloud_objects(
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    *,
    prefix: str = CLOUD_PREFIX,
    snapshot_class: str = CLOUD_SNAPSHOT_CLASS,
    restore_class: str = CLOUD_RESTORE_CLASS,
    secret_namespace: str = CLOUD_SECRET_NAMESPACE,
    deletion_policy: str = "Retain",
) -> list[dict[str, Any]]:
    """The cloud VolumeSnapshotClass, the class restores from it use, and the Secret naming the S3 store.

    ``endpoint`` is the S3 server as the driver sees it: the driver is a host process, so the host's address.
    Retain: deleting a VolumeSnapshot keeps the cloud copy (a migration's restore point outlives its objects).
    The restore class is the encrypted one plus the provisioner secret; a restored volume keeps the
    ciphertext of its source, so its namespace needs the source's key Secret (a migration carries it over).
    The keywords name another store (a test's own prefix, classes and Secret namespace); the defaults are the
    devstack's one.
    """
    labels = {"app.kubernetes.io/managed-by": "eventpipe-devstack"}
    secret_ref = {"name": CLOUD_SECRET, "namespace": secret_namespace}
    encrypted = next(c for c in storage_classes() if c["metadata"]["name"] == STORAGE_CLASS_ENCRYPTED)
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {**secret_ref, "labels": labels},
            "type": "Opaque",
            "stringData": {"endpoint": endpoint, "region": region, "bucket": CLOUD_BUCKET, "prefix": prefix,
                           "accessKeyId": access_key, "secretAccessKey": secret_key},
        },
        # upstream's snapshotter role leaves secrets out ("enable it if your driver needs secret"): this one only
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "eventpipe-cloud-snapshotter", "namespace": secret_namespace, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [CLOUD_SECRET],
                       "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "eventpipe-cloud-snapshotter", "namespace": secret_namespace, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "eventpipe-cloud-snapshotter"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": IDENTITIES["csi-snapshotter"][0]}],
        },
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": snapshot_class, "labels": {**labels, "eventpipe.io/snapshot-class": "cloud"}},
            "driver": DRIVER_NAME,
            "deletionPolicy": deletion_policy,
            "parameters": {
                "cloud": "s3",
                "csi.storage.k8s.io/snapshotter-secret-name": CLOUD_SECRET,
                "csi.storage.k8s.io/snapshotter-secret-namespace": secret_namespace,
                # ListSnapshots of a pre-provisioned content (a migration's restore) reads the same store
                "csi.storage.k8s.io/snapshotter-list-secret-name": CLOUD_SECRET,
                "csi.storage.k8s.io/snapshotter-list-secret-namespace": secret_namespace,
            },
        },
        {
            **encrypted,
            "metadata": {**encrypted["metadata"], "name": restore_class},
            "parameters": {
                **encrypted["parameters"],
                "csi.storage.k8s.io/provisioner-secret-name": CLOUD_SECRET,
                "csi.storage.k8s.io/provisioner-secret-namespace": secret_namespace,
            },
        },
    ]  # fmt: skip


def apply_cloud_objects(endpoint: str, access_key: str, secret_key: str) -> None:
    """:func:`cloud_objects` applied (credentials on stdin, never argv)."""
    items = cloud_objects(endpoint, access_key, secret_key)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))  # fmt: skip


def volume_key_secret(namespace: str) -> bool:
    """The encrypted class's key Secret in ``namespace``, created once with 32 random bytes; True if created.

    Never replaced: a new key would lock every encrypted volume of the namespace for good.
    """
    import secrets

    if kubectl("-n", namespace, "get", "secret", VOLUME_KEY_SECRET, "-o", "name", check=False, timeout=15):
        return False
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": VOLUME_KEY_SECRET, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "eventpipe-devstack"}},
        "type": "Opaque",
        "stringData": {"key": secrets.token_hex(32)},
    }  # fmt: skip
    kubectl("create", "-f", "-", stdin=json.dumps(secret))
    return True


def build_sanity(go: str) -> Path:
    """csi-sanity (kubernetes-csi/csi-test) from the module proxy, cached like the other binaries."""
    marker, binary = bin_dir() / ".csi-sanity", bin_dir() / "csi-sanity"
    if not _cached(marker, SANITY_VERSION, ["csi-sanity"]):
        source = module_dir(go, SANITY_MODULE, SANITY_VERSION)
        _say(f"building csi-sanity {SANITY_VERSION} (first time only)")
        _go_build(go, source, SANITY_VERSION, str(binary), ["./cmd/csi-sanity"],
                  what=f"go build csi-sanity {SANITY_VERSION}", goflags="-mod=mod")  # fmt: skip
        marker.write_text(SANITY_VERSION + "\n")
    return binary


def build_driver_binary() -> Path:
    """The driver binary (cached by source hash), for running it outside the cluster (csi-sanity)."""
    build_driver(_go())
    return bin_dir() / "eventpipe-csi"


def _kubeconfig_for(process: str) -> Path:
    return state_dir() / f"{process}.kubeconfig"


def _argv(process: str) -> list[str]:
    binary = bin_dir()
    common = [f"--kubeconfig={_kubeconfig_for(process)}"]
    return {
        "csi-driver": [str(binary / "eventpipe-csi"), "driver", f"--driver-name={DRIVER_NAME}",
                       f"--endpoint={SOCKET}", f"--node-id={NODE_NAME}", f"--root={DATA_ROOT}",
                       f"--registration-dir={REGISTRY}"],
        "csi-provisioner": [str(binary / "eventpipe-csi"), "provisioner", f"--driver-name={DRIVER_NAME}",
                            f"--endpoint={SOCKET}", f"--node-id={NODE_NAME}", *common],
        "csi-snapshot-controller": [str(binary / "snapshot-controller"), *common, "--leader-election=false",
                                    NO_GROUP_SNAPSHOTS],
        "csi-snapshotter": [str(binary / "csi-snapshotter"), *common, f"--csi-address={SOCKET}",
                            "--leader-election=false", "--timeout=5m", NO_GROUP_SNAPSHOTS],
    }[process]  # fmt: skip


def _start(process: str, build_key: str) -> bool:
    """Start ``process`` unless it runs the current build already (a rebuilt binary restarts it); True if it
    (re)started."""
    name = CLUSTER.proc(process)
    started = subdir("csi", "run") / f"{name}.build"
    if pid_of(name) is not None and started.exists() and started.read_text() == build_key:
        return False
    stop_process(name)
    start_process(name, _argv(process))
    started.write_text(build_key)
    return True


def driver_registered() -> bool:
    """The kubelet registered the driver: it shows in the node's CSINode object."""
    out = kubectl("get", "csinode", NODE_NAME, "-o", "json", check=False, timeout=15)
    drivers = (json.loads(out).get("spec", {}).get("drivers") or []) if out else []
    return any(d.get("name") == DRIVER_NAME for d in drivers)


def healthy() -> bool:
    return all(pid_of(p) is not None for p in PROCESSES) and driver_registered()


def _wait(check: Callable[[], bool], role: str, what: str, timeout: float) -> None:
    process = CLUSTER.proc(role)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid_of(process) is None:
            raise DevstackError(f"{process} exited while waiting for {what}; log tail:\n{tail(log_path(process))}")
        time.sleep(0.5)
    raise DevstackError(f"{what} not reached in {timeout:.0f}s; {process} log tail:\n{tail(log_path(process))}")


def install() -> dict[str, float]:
    """Build (cached), install CRDs/RBAC/driver objects, start the four processes; seconds per step."""
    if not kubeconfig().exists():
        raise DevstackError("the kubernetes devstack service is not set up; run `eventpipe devstack k8s` first")
    if not REGISTRY.parent.exists():
        raise DevstackError(f"{KUBELET_ROOT} is missing: the kubelet has not run on this host yet")
    go = _go()
    step = TimedSteps(_say)
    timings = step.timings

    step("build eventpipe-csi", lambda: build_driver(go))

    def identities() -> None:
        ensure_pki(
            pki_dir(), NODE_NAME, NODE_IP, SERVICE_IP, ca_name=CLUSTER.name
        )  # creates the CSI identities if missing
        for process in IDENTITIES:
            write_kubeconfig(_kubeconfig_for(process), pki_dir(), process, f"https://{NODE_IP}:{API_PORT}")

    step("identities", identities)

    def crds() -> None:
        docs = crd_documents(go)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))  # fmt: skip
        kubectl("wait", "--for=condition=Established", "--timeout=60s",
                *[f"crd/{d['metadata']['name']}" for d in docs])  # fmt: skip

    step("snapshot CRDs", crds)

    def objects() -> None:
        items = [*upstream_cluster_roles(go), provisioner_role(), *cluster_objects()]
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))  # fmt: skip

    step("RBAC, CSIDriver, StorageClass", objects)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    DATA_ROOT.chmod(0o700)
    driver_build = driver_key()

    def driver() -> None:
        if _start("csi-driver", driver_build):
            # the sidecars hold a connection to the old socket: csi-snapshotter exits on its next call ("Lost
            # connection to CSI driver, exiting") and nothing restarts it, so they restart with the driver
            for sidecar in ("csi-provisioner", "csi-snapshotter"):
                stop_process(CLUSTER.proc(sidecar))
        _wait(driver_registered, "csi-driver", "the kubelet registering the CSI driver", 60)

    step("driver registered", driver)
    step("provisioner", lambda: _start("csi-provisioner", driver_build))
    # volumes work from here on; snapshots need the (larger, cached) external-snapshotter build
    step("build external-snapshotter", lambda: build_snapshotter(go))
    step("snapshot-controller + csi-snapshotter", lambda: [
        _start(p, SNAPSHOTTER_VERSION) for p in ("csi-snapshot-controller", "csi-snapshotter")])  # fmt: skip
    time.sleep(1)
    for process in PROCESSES:
        if pid_of(process) is None:
            raise DevstackError(f"{process} exited right after its start; log tail:\n{tail(log_path(process))}")
    return timings


def stop() -> list[str]:
    """Stop the CSI processes (before the kubelet, so it can still unpublish volumes while it drains pods)."""
    return [p for p in reversed(PROCESSES) if stop_process(p)]
