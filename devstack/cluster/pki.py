"""The devstack cluster's PKI and kubeconfigs: one CA, a certificate per component, a service-account key.

Made once with ``openssl`` under ``.devstack/kubernetes/pki`` (keys 0600) and reused, so kubeconfigs handed to
tests and Airflow stay valid across restarts. The API server certificate names the node IP (the pods' route to
the API) and the ``kubernetes`` Service IP, besides loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.runtime import DevstackError

DAYS = "3650"


@dataclass(frozen=True)
class Identity:
    """One client (or server) certificate: file stem, CN and optional O (the RBAC group)."""

    name: str
    common_name: str
    group: str = ""
    sans: tuple[str, ...] = ()


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        raise DevstackError(f"openssl {args[0]} failed: {result.stderr[-2000:]}")


def identities(node_name: str, node_ip: str, service_ip: str) -> list[Identity]:
    api_sans = (
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:localhost",
        "IP:127.0.0.1",
        f"IP:{service_ip}",
        f"IP:{node_ip}",
    )
    return [
        Identity("apiserver", "kube-apiserver", sans=api_sans),
        Identity("kubelet-server", f"system:node:{node_name}", "system:nodes", (f"IP:{node_ip}", f"DNS:{node_name}")),
        Identity("admin", "kubernetes-admin", "system:masters"),
        Identity("controller-manager", "system:kube-controller-manager"),
        Identity("scheduler", "system:kube-scheduler"),
        Identity("kubelet", f"system:node:{node_name}", "system:nodes"),
        Identity("kube-proxy", "system:kube-proxy", "system:node-proxier"),
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        # the CSI components (devstack.cluster.csi), each bound to its own ClusterRole
        Identity("csi-provisioner", "eventpipe:csi-provisioner"),
        Identity("csi-snapshot-controller", "eventpipe:snapshot-controller"),
        Identity("csi-snapshotter", "eventpipe:csi-snapshotter"),
        # the devstack Prometheus reading the kubelet's /metrics (devstack.cluster.kubelet_metrics)
        Identity("prometheus", "eventpipe:prometheus"),
    ]


def ensure_pki(pki: Path, node_name: str, node_ip: str, service_ip: str, *, ca_name: str = "source") -> None:
    """Create whatever part of the PKI is missing (the CA first: everything else is signed by it).

    Each cluster identity (``ca_name``) gets its own CA, so one cluster's certificates mean nothing to another.
    """
    if shutil.which("openssl") is None:
        raise DevstackError("openssl is required to create the cluster certificates; apt-get install openssl")
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    if not (pki / "ca.crt").exists():
        for stale in pki.iterdir():
            stale.unlink()
        _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
        subject = "/CN=eventpipe-devstack-ca" if ca_name == "source" else f"/CN=eventpipe-devstack-{ca_name}-ca"
        _openssl("req", "-x509", "-new", "-nodes", "-key", "ca.key", "-subj", subject,
                 "-days", DAYS, "-out", "ca.crt", cwd=pki)  # fmt: skip
    for ident in identities(node_name, node_ip, service_ip):
        if (pki / f"{ident.name}.crt").exists():
            continue
        subject = f"/O={ident.group}/CN={ident.common_name}" if ident.group else f"/CN={ident.common_name}"
        usage = "serverAuth,clientAuth" if ident.sans else "clientAuth"
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        ext.append(f"extendedKeyUsage={usage}")
        if ident.sans:
            ext.append(f"subjectAltName={','.join(ident.sans)}")
        (pki / f"{ident.name}.ext").write_text("\n".join(ext) + "\n")
        _openssl("genrsa", "-out", f"{ident.name}.key", "2048", cwd=pki)
        _openssl("req", "-new", "-key", f"{ident.name}.key", "-subj", subject, "-out", f"{ident.name}.csr", cwd=pki)
        _openssl("x509", "-req", "-in", f"{ident.name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", DAYS, "-extfile", f"{ident.name}.ext", "-out", f"{ident.name}.crt", cwd=pki)  # fmt: skip
        (pki / f"{ident.name}.csr").unlink()
        (pki / f"{ident.name}.ext").unlink()
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, pki: Path, user: str, server: str) -> Path:
    """A kubeconfig for one identity, pointing at the files (so rotating a cert needs no rewrite)."""
    path.write_text(
        "\n".join(
            [
                "apiVersion: v1",
                "kind: Config",
                "clusters:",
                "- name: eventpipe-devstack",
                "  cluster:",
                f"    certificate-authority: {pki / 'ca.crt'}",
                f"    server: {server}",
                "users:",
                f"- name: {user}",
                "  user:",
                f"    client-certificate: {pki / f'{user}.crt'}",
                f"    client-key: {pki / f'{user}.key'}",
                "contexts:",
                "- name: eventpipe-devstack",
                f"  context: {{cluster: eventpipe-devstack, user: {user}}}",
                "current-context: eventpipe-devstack",
                "",
            ]
        )
    )
    path.chmod(0o600)
    return path
