"""A second, independent devstack cluster (the migration target), in sequence with the first on one host.

With the target up on fresh state, nothing of the source is there (its namespaces, a marker ConfigMap), and the
target's API server refuses the source's admin certificate (another CA), while the source's CA does not trust
the target's server. The source goes down with its state kept and comes back with the marker: that is the
migration's rollback. Takes the shared cluster down: run it under ``flock /tmp/cluster.lock`` (`make test-k8s`).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
import uuid

import pytest

from devstack.cluster.node import identity, kubectl, pki_dir
from devstack.cluster.podnet import NODE_IP
from devstack.migration import cluster_down, cluster_up, devstack, wipe_target

pytestmark = pytest.mark.k8s


def _get(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_target_cluster_sees_nothing_of_the_source_and_refuses_its_certificates() -> None:
    marker = f"migrate-marker-{uuid.uuid4().hex[:8]}"
    kubectl("-n", "default", "create", "configmap", marker, "--from-literal=cluster=source", cluster="source")
    assert kubectl("get", "namespace", "kafka", "-o", "name", cluster="source").strip() == "namespace/kafka"
    source_admin = (str(pki_dir("source") / "admin.crt"), str(pki_dir("source") / "admin.key"))
    target_api = f"https://{NODE_IP}:{identity('target').api_port}"
    try:
        cluster_down("source")
        wipe_target()
        devstack("target", "k8s", "--no-build")

        assert kubectl("-n", "default", "get", "configmap", marker, "--ignore-not-found", cluster="target") == ""
        assert kubectl("get", "namespace", "kafka", "--ignore-not-found", cluster="target") == ""
        assert kubectl("get", "pvc", "--all-namespaces", "-o", "name", cluster="target") == ""
        # the source's admin certificate, over a TLS session that trusts the target's server: not a user there
        trusting_target = ssl.create_default_context(cafile=str(pki_dir("target") / "ca.crt"))
        trusting_target.load_cert_chain(*source_admin)
        assert _get(f"{target_api}/api/v1/namespaces", trusting_target) == 401
        # the target's own admin is (the refusal is the certificate, not the server)
        own = ssl.create_default_context(cafile=str(pki_dir("target") / "ca.crt"))
        own.load_cert_chain(str(pki_dir("target") / "admin.crt"), str(pki_dir("target") / "admin.key"))
        assert _get(f"{target_api}/api/v1/namespaces", own) == 200
        # and a client of the source does not trust the target's server certificate
        trusting_source = ssl.create_default_context(cafile=str(pki_dir("source") / "ca.crt"))
        trusting_source.load_cert_chain(*source_admin)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(f"{target_api}/api/v1/namespaces", trusting_source)
    finally:
        cluster_down("target")
        cluster_up("source")
    # the source kept its state through the target's whole life
    assert "cluster" in kubectl("-n", "default", "get", "configmap", marker, "-o", "json", cluster="source")
    kubectl("-n", "default", "delete", "configmap", marker, cluster="source")
