"""Small kubectl helpers the k8s-marked tests share: apply objects, read one back, wait for a condition."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from devstack.cluster.node import kubectl

from .polling import wait_for

__all__ = ["apply_objects", "claim_pod", "events_of", "get_object", "task_pod", "wait_for"]


def apply_objects(*objects: dict[str, Any]) -> None:
    """``kubectl apply`` of the objects as one List (one API round trip, all or nothing in the client)."""
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def get_object(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    scope = ["-n", namespace] if namespace else []
    return json.loads(kubectl(*scope, "get", kind, name, "-o", "json"))


def claim_pod(namespace: str, claim: str, command: str, image: str, name: str = "w") -> dict[str, Any]:
    """A pod running ``command`` (sh) with ``claim`` mounted at /d: what makes a WaitForFirstConsumer claim
    provision, and how a test writes or reads a volume's data."""
    container = {"name": "w", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", command],
                 "volumeMounts": [{"name": "d", "mountPath": "/d"}]}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [container],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
    }  # fmt: skip


def events_of(namespace: str, name: str) -> list[str]:
    """The messages of the events about object ``name`` (a PVC, a pod), oldest first."""
    out = kubectl("-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
    items = sorted(json.loads(out)["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [e.get("message", "") for e in items]


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
