"""Small kubectl helpers the k8s-marked tests share: apply objects, read one back, wait for a condition."""

from __future__ import annotations

import json
from typing import Any

from devstack.cluster.node import kubectl

from .polling import wait_for

__all__ = ["apply_objects", "get_object", "wait_for"]


def apply_objects(*objects: dict[str, Any]) -> None:
    """``kubectl apply`` of the objects as one List (one API round trip, all or nothing in the client)."""
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def get_object(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    scope = ["-n", namespace] if namespace else []
    return json.loads(kubectl(*scope, "get", kind, name, "-o", "json"))
