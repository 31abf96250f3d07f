"""Small kubectl helpers the k8s-marked tests share: apply objects, read one back, wait for a condition."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from devstack.cluster.node import kubectl

from .polling import wait_for

__all__ = ["apply_objects", "claim", "claim_pod", "events_of", "get_object", "task_pod", "wait_for"]


def apply_objects(*objects: dict[str, Any]) -> None:
    """``kubectl apply`` of the objects as one List (one API round trip, all or nothing in the client)."""
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def claim(
    name: str,
    namespace: str,
    size: str,
    storage_class: str,
    *,
    source: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ReadWriteOnce claim on ``storage_class``; ``source`` names a VolumeSnapshot to restore from."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": storage_class,
        "resources": {"requests": {"storage": size}},
    }
    if source:
        spec["dataSource"] = {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": source}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def claim_pod(
    name: str,
    namespace: str,
    claim_name: str,
    script: str,
    *,
    image: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod that runs ``script`` once with the claim at ``/data``, under the restricted Pod Security profile
    (non-root uid 1000, fsGroup 1000, no capabilities, read-only root): what a task pod of the pipeline gets, so
    a volume that works here works for the StatefulSets too. ``image`` defaults to the project's image."""
    from devstack.cluster.image import IMAGE

    restricted = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    container = {
        "name": "main",
        "image": image or IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "securityContext": restricted,
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
        },
    }


def events_of(namespace: str, name: str) -> list[str]:
    """The messages of the events about object ``name`` (a PVC, a pod), oldest first."""
    out = kubectl("-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
    items = sorted(json.loads(out)["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [e.get("message", "") for e in items]


def get_object(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    scope = ["-n", namespace] if namespace else []
    return json.loads(kubectl(*scope, "get", kind, name, "-o", "json"))


def task_pod(
    task_id: str, args: list[str], worker: Mapping[str, str], environ: Mapping[str, str], *, profile: str = "small"
) -> Any:
    """The pod exactly as the DAG factory (``eventpipe.orchestration.tasks``) builds it in kubernetes mode, on a
    worker whose environment is ``worker`` (the plain settings the pod gets) with ``environ`` set while building;
    the name gets a unique suffix so tests never collide."""
    from eventpipe.orchestration.command import TaskCommand
    from eventpipe.orchestration.tasks import cli_task
    from eventpipe.settings import PLAIN_ENV

    saved = {key: os.environ.get(key) for key in environ}
    os.environ.update(environ)
    try:
        command = TaskCommand(args, env={key: worker[key] for key in PLAIN_ENV if worker.get(key)})
        pod = cli_task(task_id, command, profile=profile, mode="kubernetes").build_pod_request_obj(dry_run=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    pod.metadata.name = f"{pod.metadata.name[:40]}-{uuid.uuid4().hex[:6]}"
    return pod
