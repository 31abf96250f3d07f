"""Small kubectl helpers the k8s-marked tests share: apply objects, read one back, wait for a condition."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from devstack.cluster.node import kubectl

T = TypeVar("T")


def apply_objects(*objects: dict[str, Any]) -> None:
    """``kubectl apply`` of the objects as one List (one API round trip, all or nothing in the client)."""
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def get_object(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    scope = ["-n", namespace] if namespace else []
    return json.loads(kubectl(*scope, "get", kind, name, "-o", "json"))


def wait_for(check: Callable[[], T], what: str, timeout: float = 180, every: float = 1.0) -> T:
    """The first truthy value of ``check``; an AssertionError naming ``what`` if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s")
