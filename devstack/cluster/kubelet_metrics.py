"""The devstack Prometheus' read access to the cluster kubelet's ``/metrics`` (volume stats for the storage alerts).

The kubelet (``devstack/kubernetes/kubelet.yaml``) serves https on the node IP, accepts client certificates of
the cluster CA and asks the API server (webhook) whether the client may ``get nodes/metrics``. Prometheus gets
its own certificate (CN ``eventpipe:prometheus``, made with the cluster PKI) and a ClusterRole allowing exactly
that, nothing else: not the API server's admin or kubelet-client certificates.

The scrape job is added to the rendered ``prometheus.yml`` only when the cluster PKI exists (before the first
``devstack k8s`` there is no CA to trust); a cluster that is down is a down target, nothing more.
``devstack k8s`` grants the role and reloads a running Prometheus (``devstack.monitoring.grant_kubelet_access``),
so the order of the two does not matter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devstack.cluster.node import NODE_NAME, SERVICE_IP, kubectl
from devstack.cluster.pki import ensure_pki
from devstack.cluster.podnet import NODE_IP
from devstack.runtime import home

KUBELET_PORT = 10250  # devstack/kubernetes/kubelet.yaml
USER = "eventpipe:prometheus"  # the certificate's CN: pki.identities' "prometheus"
ROLE = "eventpipe-kubelet-metrics"
JOB = "kubelet"  # as kube-prometheus-stack names it: deploy/prometheusrule.yaml selects job="kubelet"
# only what the alerts read: the kubelet exports thousands of other series (REST client, runtime, ...)
KEEP = "kubelet_volume_stats_.+"


def _pki() -> Path:
    """The cluster PKI directory, without creating the cluster's state directory (``node.pki_dir`` would)."""
    return home() / "kubernetes" / "pki"


def rbac_objects() -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/managed-by": "eventpipe-devstack"}
    rbac = "rbac.authorization.k8s.io"
    return [
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": ROLE, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ROLE, "labels": labels},
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": ROLE},
            "subjects": [{"apiGroup": rbac, "kind": "User", "name": USER}],
        },
    ]


def grant() -> None:
    """The ClusterRole and its binding to Prometheus' certificate (idempotent; needs the API server)."""
    items = rbac_objects()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", timeout=30,
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))  # fmt: skip


def scrape_job() -> dict[str, Any] | None:
    """The kubelet scrape job for prometheus.yml, its certificate made if missing; None without a cluster PKI."""
    pki = _pki()
    if not (pki / "ca.crt").exists():
        return None
    ensure_pki(pki, NODE_NAME, NODE_IP, SERVICE_IP)  # adds the prometheus identity to a PKI made before it existed
    return {
        "job_name": JOB,
        "scheme": "https",
        "scrape_timeout": "4s",
        "tls_config": {
            "ca_file": str(pki / "ca.crt"),  # the kubelet's serving certificate names the node IP
            "cert_file": str(pki / "prometheus.crt"),
            "key_file": str(pki / "prometheus.key"),
        },
        "static_configs": [{"targets": [f"{NODE_IP}:{KUBELET_PORT}"], "labels": {"node": NODE_NAME}}],
        "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": KEEP, "action": "keep"}],
    }
