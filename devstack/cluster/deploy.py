"""Make the devstack cluster ready for eventpipe pods: image, CRDs, ``deploy/``, Secrets, host services.

Idempotent; each step prints its time. The snapshot CRDs are external-snapshotter's own, installed with its
controller, sidecar and the devstack's host-path CSI driver (``devstack.cluster.csi``), so VolumeSnapshots are
really taken; ``deploy/`` is applied through ``devstack/kubernetes/deploy``, which points the archive's
VolumeSnapshotClass at that driver. PrometheusRule and ServiceMonitor CRDs (and, with ``csi=False``, the
snapshot ones) are made from the schemas the project stores (``eventpipe/k8s/schemas``): accepted and
validated, nothing acts on them.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from devstack.cluster import image, podnet, system_images
from devstack.cluster.kubernetes import CONTAINERD_SOCKET, kubeconfig, kubectl
from devstack.monitoring import grant_kubelet_access
from devstack.runtime import REPO_ROOT, DevstackError, TimedSteps, subdir
from devstack.stack import DEVSTACK_CREDENTIALS, local_env, service

NAMESPACE = "eventpipe"
# (group, version, kind, plural, namespaced, status subresource) -> stored schema file
CRDS: dict[tuple[str, str, str, str, bool, bool], str] = {
    ("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass", "volumesnapshotclasses", False, False): (
        "volumesnapshotclass.v1.json"
    ),
    ("snapshot.storage.k8s.io", "v1", "VolumeSnapshot", "volumesnapshots", True, True): "volumesnapshot.v1.json",
    ("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules", True, False): "prometheusrule.v1.json",
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", True, False): "servicemonitor.v1.json",
}
HOST_SERVICES = ("kafka", "elasticsearch", "s3")
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
# The provider's XCom sidecar: `sh -c 'trap ... sleep 1'`, `cat`, then `kill -2 $(pgrep -u $(id -u) -f sh)`, else a
# /proc walk. Debian's busybox has no pgrep applet, so the image carries eventpipe/k8s/pgrep.sh (stat, tr) as
# /bin/pgrep: the first command works as on the provider's default image, instead of failing into the fallback.
BUSYBOX_APPLETS = ("sh", "cat", "sleep", "kill", "test", "[", "echo", "printf", "id", "stat", "tr")
PGREP = resources.files("eventpipe.k8s").joinpath("pgrep.sh")
APPROVAL = "api-approved.kubernetes.io"


def _say(message: str) -> None:
    print(f"[k8s] {message}", flush=True)


def crd(group: str, version: str, kind: str, plural: str, namespaced: bool, status: bool, schema_file: str) -> dict:
    schema = json.loads(resources.files("eventpipe.k8s").joinpath("schemas", schema_file).read_text())
    schema = {k: v for k, v in schema.items() if k not in {"$schema", "$comment"}}
    entry: dict[str, Any] = {"name": version, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
    if status:
        entry["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "labels": {"app.kubernetes.io/managed-by": "eventpipe-devstack"},
            # *.k8s.io groups are protected; this copy is not the approved upstream object, and says so
            **(
                {"annotations": {APPROVAL: "unapproved, eventpipe devstack copy of the stored schema"}}
                if group.endswith(".k8s.io")
                else {}
            ),
        },
        "spec": {
            "group": group,
            "scope": "Namespaced" if namespaced else "Cluster",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "versions": [entry],
        },
    }


def install_crds(*, snapshot_crds: bool = True) -> None:
    """The stored-schema CRDs; ``snapshot_crds=False`` leaves the snapshot group to external-snapshotter's."""
    items = [crd(*key, schema) for key, schema in CRDS.items() if snapshot_crds or key[0] != SNAPSHOT_GROUP]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps({"apiVersion": "v1",
            "kind": "List", "items": items}))  # fmt: skip
    names = [f"crd/{item['metadata']['name']}" for item in items]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def apply_deploy(*, devstack_overlay: bool = True) -> None:
    """``deploy/``, by default through the overlay that points its VolumeSnapshotClass at the devstack driver."""
    path = REPO_ROOT / "devstack" / "kubernetes" / "deploy" if devstack_overlay else REPO_ROOT / "deploy"
    kubectl("apply", "-k", str(path), timeout=180)


def secrets(namespace: str = NAMESPACE) -> None:
    """The two Secrets task pods mount by name, from the devstack credentials (sent on stdin, not argv)."""
    data = {
        "eventpipe-s3": {
            "access-key": DEVSTACK_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret-key": DEVSTACK_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        },
        # the devstack Elasticsearch has no authentication; empty values mean "no auth" to the client
        "eventpipe-elasticsearch": {"username": "", "password": ""},
    }
    items = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "eventpipe"}},
            "type": "Opaque",
            "stringData": values,
        }
        for name, values in data.items()
    ]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def host_services_for_pods() -> list[str]:
    """Start the data services, restarting (once) those that do not listen on the pod bridge yet."""
    if not podnet.present():
        raise DevstackError(f"{podnet.NODE_IP} is not on this host; start the kubernetes service first")
    restarted = []
    for name in HOST_SERVICES:
        svc = service(name)
        if svc.healthy() and not svc.serves_pods():  # type: ignore[attr-defined]
            _say(f"restarting {name} so it also listens on {podnet.NODE_IP} (one time)")
            svc.stop()
            restarted.append(name)
        svc.start()
        if not svc.serves_pods():  # type: ignore[attr-defined]
            raise DevstackError(f"{name} does not listen on {podnet.NODE_IP}; pods cannot reach it")
    return restarted


def _busybox() -> tuple[Path, str]:
    """The static busybox of Debian's ``busybox-static`` (fetched with ``apt-get download``, not installed)."""
    cache = subdir("kubernetes", "busybox")
    binary, version_file = cache / "root" / "bin" / "busybox", cache / "version"
    if not (binary.exists() and version_file.exists()):
        for old in cache.glob("*.deb"):
            old.unlink()
        for cmd in (["apt-get", "download", "busybox-static"], ["sh", "-c", "dpkg-deb -x *.deb root"]):
            result = subprocess.run(cmd, cwd=cache, capture_output=True, text=True, timeout=300, check=False)
            if result.returncode != 0:
                raise DevstackError(f"{' '.join(cmd)} failed (XCom sidecar busybox):\n{result.stderr[-2000:]}")
        deb = next(cache.glob("*.deb"))
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True)
        version_file.write_text(version.stdout.strip())
    return binary, version_file.read_text().strip()


def xcom_sidecar_image() -> str:
    """The provider's XCom sidecar image (its default, alpine, cannot be pulled here): busybox, FROM scratch.

    Imported into the cluster's containerd once per busybox version; returns the reference.
    """
    binary, version = _busybox()
    applets = hashlib.sha256(" ".join(BUSYBOX_APPLETS).encode() + PGREP.read_bytes()).hexdigest()[:6]
    ref = f"docker.io/eventpipe/xcom-sidecar:busybox-{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}-{applets}"
    if ref not in system_images.image_refs(CONTAINERD_SOCKET):
        archive = subdir("kubernetes", "images") / "xcom-sidecar.tar"
        links = {f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS}
        system_images.single_binary_archive(
            binary,
            ref,
            ["/bin/busybox"],
            archive,
            links=links,
            files={"/bin/pgrep": PGREP.read_bytes()},
            path_env="/bin",
        )
        system_images.import_archive(CONTAINERD_SOCKET, archive)
    return ref


def kubernetes_connection(sidecar_image: str) -> str:
    """``AIRFLOW_CONN_KUBERNETES_DEFAULT`` for a worker on this host: the admin kubeconfig, the local sidecar image."""
    extra = {"kube_config_path": str(kubeconfig()), "in_cluster": False, "xcom_sidecar_container_image": sidecar_image}
    return json.dumps({"conn_type": "kubernetes", "extra": extra})


# The node has 2 CPUs: a Spark driver pod (profile spark-driver, 1 CPU) and two executors must fit at once.
DEVSTACK_SPARK_ENV = {"EVENTPIPE_SPARK_EXECUTOR_REQUEST_CORES": "250m", "EVENTPIPE_SPARK_EXECUTOR_MEMORY": "768m"}


SNAPSHOT_CLAIM = "eventpipe-devstack-snapshot-repository"


def host_path_claim(volume: str, namespace: str, claim: str, location: str, mode: str) -> list[dict[str, Any]]:
    """A static hostPath PersistentVolume bound to one claim (``mode``: ReadOnlyMany or ReadWriteMany).

    Pods mount the claim, not a hostPath: Pod Security "baseline" forbids hostPath volumes in pod specs. A
    volume binds one claim, so each namespace that needs the directory gets a volume of its own.
    """
    labels = {"app.kubernetes.io/managed-by": "eventpipe-devstack"}
    common = {"accessModes": [mode], "storageClassName": ""}
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume, "labels": labels},
            "spec": {
                **common,
                "capacity": {"storage": "50Gi"},
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": location, "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace, "labels": labels},
            "spec": {**common, "volumeName": volume, "resources": {"requests": {"storage": "50Gi"}}},
        },
    ]


def apply_items(items: list[dict[str, Any]]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def snapshot_repository_claim(namespace: str = NAMESPACE) -> None:
    """The devstack node's fs snapshot repository as a read-only claim, so the snapshot task pod can mirror it
    to S3."""
    location = local_env()["EVENTPIPE_SNAPSHOT_FS_LOCATION"]
    Path(location).mkdir(parents=True, exist_ok=True)
    apply_items(host_path_claim(SNAPSHOT_CLAIM, namespace, SNAPSHOT_CLAIM, location, "ReadOnlyMany"))


def task_env() -> dict[str, str]:
    """Environment of an Airflow worker or test that launches eventpipe pods on the devstack cluster."""
    return {
        **{k: v for k, v in local_env().items() if k not in DEVSTACK_CREDENTIALS},
        **podnet.pod_env(),
        **DEVSTACK_SPARK_ENV,
        "EVENTPIPE_EXECUTION": "kubernetes",
        "EVENTPIPE_SNAPSHOT_FS_CLAIM": SNAPSHOT_CLAIM,
        "EVENTPIPE_NAMESPACE": NAMESPACE,
        "EVENTPIPE_IMAGE": image.IMAGE,
    }


def cloud_snapshots() -> None:
    """The CSI driver's cloud snapshot objects, naming the devstack's S3 server as the host-process driver sees it."""
    from devstack.cluster import csi as csi_stack
    from devstack.s3 import S3Server

    csi_stack.apply_cloud_objects(f"http://127.0.0.1:{S3Server.port}", DEVSTACK_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                  DEVSTACK_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def prepare(*, build: bool = True, csi: bool = True) -> dict[str, float]:
    """Everything after the cluster is up; returns seconds per step.

    ``csi`` (default): external-snapshotter and the host-path CSI driver, so VolumeSnapshots are real.
    """
    step = TimedSteps(_say)
    timings = step.timings

    step("host services on the pod bridge", host_services_for_pods)
    if build:
        step("image build", image.build_image)
        step("image import", lambda: image.import_image(CONTAINERD_SOCKET))
    step("xcom sidecar image", xcom_sidecar_image)
    step("crds", lambda: install_crds(snapshot_crds=not csi))
    if csi:
        from devstack.cluster import csi as csi_stack

        for name, seconds in csi_stack.install().items():
            timings[f"csi: {name}"] = seconds
        step("cloud snapshot class, restore class, S3 secret", cloud_snapshots)
    step("apply -k deploy", lambda: apply_deploy(devstack_overlay=csi))
    step("secrets", secrets)
    if csi:
        step("volume key secret", lambda: csi_stack.volume_key_secret(NAMESPACE))  # the encrypted class's key
    step("snapshot repository claim", snapshot_repository_claim)
    step("kubelet metrics for Prometheus", grant_kubelet_access)
    return timings
