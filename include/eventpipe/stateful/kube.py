"""``expand.Cluster`` on the Kubernetes API (the ``kubernetes`` client the cncf-kubernetes provider brings)."""

from __future__ import annotations

import copy
import time
from typing import Any

from eventpipe.stateful.expand import ClaimState

ANNOTATION = "eventpipe.io/expanded-by"


def _bytes(quantity: str | None) -> int:
    from kubernetes.utils import parse_quantity

    return int(parse_quantity(quantity)) if quantity else 0


class KubeCluster:
    """One namespace's operations; claims are named ``<template>-<statefulset>-<ordinal>`` by the controller."""

    def __init__(self, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.storage = client.StorageV1Api()
        self._pods: dict[str, tuple[str, int]] = {}  # claim -> (pod, ordinal), filled by claims()

    def _template(self, statefulset: str, template: str) -> Any:
        sts = self.apps.read_namespaced_stateful_set(statefulset, self.namespace)
        for claim in sts.spec.volume_claim_templates or []:
            if claim.metadata.name == template:
                return sts, claim
        raise LookupError(f"statefulset {statefulset} has no volumeClaimTemplate {template}")

    def claims(self, statefulset: str, template: str) -> list[ClaimState]:
        sts, _ = self._template(statefulset, template)
        for n in range(sts.spec.replicas or 0):
            self._pods[f"{template}-{statefulset}-{n}"] = (f"{statefulset}-{n}", n)
        return [self.claim(f"{template}-{statefulset}-{n}") for n in range(sts.spec.replicas or 0)]

    def class_allows_expansion(self, statefulset: str, template: str) -> bool:
        _, claim = self._template(statefulset, template)
        name = claim.spec.storage_class_name
        if not name:
            raise LookupError(f"{template} in {statefulset}: no storageClassName, cannot tell if it may grow")
        return bool(self.storage.read_storage_class(name).allow_volume_expansion)

    def claim(self, name: str) -> ClaimState:
        pvc = self.core.read_namespaced_persistent_volume_claim(name, self.namespace)
        pod, ordinal = self._pods[name]
        status = pvc.status
        return ClaimState(
            name=name,
            pod=pod,
            ordinal=ordinal,
            requested=_bytes((pvc.spec.resources.requests or {}).get("storage")),
            capacity=_bytes((status.capacity or {}).get("storage") if status else None),
            conditions=tuple(c.type for c in (status.conditions or []) if c.status == "True") if status else (),
        )

    def request_size(self, claim: str, size: int) -> None:
        body = {"spec": {"resources": {"requests": {"storage": str(size)}}}}
        self.core.patch_namespaced_persistent_volume_claim(claim, self.namespace, body)

    def pod_uid(self, pod: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return str(self.core.read_namespaced_pod(pod, self.namespace).metadata.uid)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pod_ready(self, pod: str) -> bool:
        status = self.core.read_namespaced_pod(pod, self.namespace).status
        return any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))

    def delete_pod(self, pod: str) -> None:
        self.core.delete_namespaced_pod(pod, self.namespace)

    def update_template(self, statefulset: str, template: str, size: int) -> None:
        """New size in the claim template: orphan-delete the StatefulSet (pods and PVCs stay) and recreate it."""
        from kubernetes import client

        sts, claim = self._template(statefulset, template)
        if _bytes(claim.spec.resources.requests.get("storage")) >= size:
            return
        fresh = copy.deepcopy(sts)
        fresh.metadata = client.V1ObjectMeta(
            name=sts.metadata.name,
            namespace=sts.metadata.namespace,
            labels=sts.metadata.labels,
            annotations={**(sts.metadata.annotations or {}), ANNOTATION: "eventpipe storage expand"},
        )
        fresh.status = None
        for template_claim in fresh.spec.volume_claim_templates:
            if template_claim.metadata.name == template:
                template_claim.spec.resources.requests["storage"] = str(size)
        self.apps.delete_namespaced_stateful_set(
            statefulset, self.namespace, body=client.V1DeleteOptions(propagation_policy="Orphan")
        )
        self._wait_gone(statefulset)
        self.apps.create_namespaced_stateful_set(self.namespace, fresh)

    def _wait_gone(self, statefulset: str, timeout_s: float = 60.0) -> None:
        """Orphan deletion is asynchronous (a finalizer releases the pods first): wait for the name to be free."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.apps.read_namespaced_stateful_set(statefulset, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(1)
        raise TimeoutError(f"statefulset {statefulset} still there {timeout_s:.0f}s after its orphan deletion")
