"""A real single-node Kubernetes for the devstack: the production path (task pods, Spark executors) run here.

Opt-in (``eventpipe devstack up --services kubernetes`` or ``make k8s``): it needs root, builds Kubernetes from
the Go module proxy on first use (15-25 minutes on 2 idle cores; about an hour with everything ``make k8s``
builds, see docs/kubernetes.md; then cached) and is not needed by local mode.

Layout: etcd 3.4, the cluster's own containerd 1.6 (CRI, separate from Docker's), kube-apiserver,
kube-controller-manager, kube-scheduler, kubelet, kube-proxy (iptables) and CoreDNS, all pinned. The node IP is
``10.244.0.1`` on a bridge this service owns (``k8sbr0``); the API server listens there so pods reach it through
the ``kubernetes`` Service, and host services (Kafka, Elasticsearch, S3) offer a listener there for pods.
State (PKI, kubeconfigs, etcd, logs) lives under ``.devstack/kubernetes``; container and kubelet state under
``/var/lib/eventpipe-k8s`` and ``/run/eventpipe-k8s`` (mount points do not belong in a work tree). A second
cluster (``EVENTPIPE_K8S_CLUSTER=target``, ``devstack.cluster.node``) has its own copies of all of these.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Template

from devstack.cluster import binaries, csi, system_images
from devstack.cluster.node import (  # noqa: F401  (re-exported: the cluster's names)
    API_PORT,
    CLUSTER,
    CONTAINERD_SOCKET,
    DNS_IP,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    NODE_NAME,
    POD_CIDR,
    RUNTIME_ROOT,
    RUNTIME_STATE,
    SERVICE_CIDR,
    SERVICE_IP,
    kubeconfig,
    kubectl,
    kubectl_binary,
    pki_dir,
    state_dir,
)
from devstack.cluster.pki import ensure_pki, write_kubeconfig
from devstack.cluster.podnet import BRIDGE, BRIDGE_MAC, NODE_IP
from devstack.runtime import (
    REPO_ROOT,
    DevstackError,
    Service,
    log_path,
    pid_of,
    port_open,
    start_process,
    stop_process,
    subdir,
    tail,
)

TEMPLATES = REPO_ROOT / "devstack" / "kubernetes"
PAUSE_IMAGE = f"docker.io/eventpipe/pause:{binaries.PAUSE_VERSION}"
COREDNS_IMAGE = f"docker.io/eventpipe/coredns:{binaries.COREDNS_VERSION.lstrip('v')}"
CNI_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
# host binary -> Debian package that provides it
HOST_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "etcd": "etcd-server",
    "iptables": "iptables",
    "ip": "iproute2",
    "openssl": "openssl",
}
# Traffic rules this service owns (chain FORWARD): pods talk to each other and to the node, nothing else.
FORWARD_RULES = (
    ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
    ["-i", BRIDGE, "-j", "DROP"],
    ["-o", BRIDGE, "-j", "DROP"],
)
# component -> pidfile name; stop order is the reverse of this
COMPONENTS = ("etcd", "containerd", "apiserver", "controller-manager", "scheduler", "kubelet", "kube-proxy")


def _proc(component: str) -> str:
    """The pidfile/log name of a component of this process's cluster (``k8s-etcd``, ``target-k8s-etcd``)."""
    return CLUSTER.proc(f"k8s-{component}")


def _say(message: str) -> None:
    print(f"[kubernetes] {message}", flush=True)


def _run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise DevstackError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result


def _render(template: str, dest: Path) -> Path:
    values = {
        "state": str(state_dir()),
        "runtime_root": str(RUNTIME_ROOT),
        "runtime_state": str(RUNTIME_STATE),
        "containerd_socket": CONTAINERD_SOCKET,
        "pause_image": PAUSE_IMAGE,
        "coredns_image": COREDNS_IMAGE,
        "cni_bin_dir": str(_cni_dir()),
        "bridge": BRIDGE,
        "node_ip": NODE_IP,
        "node_name": NODE_NAME,
        "pod_cidr": POD_CIDR,
        "dns_ip": DNS_IP,
    }
    text = Template((TEMPLATES / template).read_text()).substitute(values)
    if not dest.exists() or dest.read_text() != text:
        dest.write_text(text)
    return dest


def _cni_dir() -> Path:
    for candidate in CNI_DIRS:
        if all((candidate / plugin).exists() for plugin in CNI_PLUGINS):
            return candidate
    raise DevstackError(
        f"CNI plugins {CNI_PLUGINS} not found in {[str(d) for d in CNI_DIRS]}; "
        "apt-get install containernetworking-plugins"
    )


def check_prerequisites() -> None:
    """Fail early, naming the package, instead of half-starting a cluster."""
    if os.geteuid() != 0:
        raise DevstackError("the kubernetes devstack service needs root (network bridge, iptables, containers)")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool, path=_path()) is None})
    if missing:
        raise DevstackError(f"missing host packages for kubernetes: apt-get install {' '.join(missing)}")
    _cni_dir()
    if not Path("/sys/fs/cgroup").exists():
        raise DevstackError("no cgroup filesystem at /sys/fs/cgroup; the kubelet cannot run containers here")


def _probe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # noqa: BLE001 - a probe that fails is just "not ready"
        return False


def _path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


class KubernetesCluster(Service):
    name = "kubernetes"
    port = API_PORT

    def version(self) -> str:
        return binaries.KUBERNETES_VERSION

    def install(self) -> None:
        check_prerequisites()
        began = time.monotonic()
        timings = binaries.build()
        if timings:
            _say(f"built binaries in {time.monotonic() - began:.0f}s: {timings}")

    # -- health ------------------------------------------------------------------------------------------
    def _api_ready(self) -> bool:
        if not (pki_dir() / "admin.crt").exists() or not port_open(API_PORT, NODE_IP):
            return False
        context = ssl.create_default_context(cafile=str(pki_dir() / "ca.crt"))
        context.load_cert_chain(str(pki_dir() / "admin.crt"), str(pki_dir() / "admin.key"))
        with urllib.request.urlopen(f"https://{NODE_IP}:{API_PORT}/readyz", context=context, timeout=5) as resp:
            return resp.status == 200

    def _node_ready(self) -> bool:
        out = kubectl("get", "node", NODE_NAME, "-o", "json", check=False, timeout=15)
        if not out:
            return False
        conditions = json.loads(out)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _dns_ready(self) -> bool:
        """A live CoreDNS pod reports Ready (pod-level: a deployment's status can be stale after a restart)."""
        out = kubectl(
            "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "json", check=False, timeout=15
        )
        pods = json.loads(out).get("items", []) if out else []
        return any(
            not pod["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
            for pod in pods
        )

    def healthy(self) -> bool:
        try:
            return self._api_ready() and self._node_ready() and self._dns_ready()
        except (OSError, ValueError, DevstackError, subprocess.TimeoutExpired):
            return False

    # -- start -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.healthy():
            self.launch()

    def launch(self) -> None:
        """Bring up whatever part is not running, in dependency order, timing each step."""
        total = time.monotonic()
        self._step("install", self.install)
        self._step("network", self._network)
        self._step("pki", self._pki)
        self._step("etcd", self._etcd)
        self._step("containerd", self._containerd)
        self._step("images", self._images)
        self._step("apiserver", self._apiserver)
        self._step("controller-manager+scheduler", self._controllers)
        self._step("kubelet+kube-proxy", self._node)
        self._step("node Ready", lambda: self._wait(self._node_ready, "kubelet", "node Ready", 120))
        self._step("coredns", self._coredns)
        _say(f"cluster healthy in {time.monotonic() - total:.1f}s (kubeconfig: {kubeconfig()})")

    @staticmethod
    def _step(what: str, action: Callable[[], None]) -> None:
        began = time.monotonic()
        action()
        _say(f"{what}: {time.monotonic() - began:.1f}s")

    @staticmethod
    def _wait(check: Callable[[], bool], component: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if check():
                    return
            if pid_of(_proc(component)) is None:
                raise DevstackError(f"{component} is not running while waiting for {what}; log tail:\n"
                                    f"{tail(log_path(_proc(component)))}")  # fmt: skip
            time.sleep(0.5)
        raise DevstackError(f"{what} not reached in {timeout:.0f}s; {component} log tail:\n"
                            f"{tail(log_path(_proc(component)))}")  # fmt: skip

    @staticmethod
    def _network() -> None:
        """The node bridge, forwarding limited to the pod bridge, and bridged traffic seen by iptables."""
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        if NODE_IP not in _run(["ip", "-4", "addr", "show", "dev", BRIDGE]).stdout:
            _run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
        # A bridge without an assigned MAC takes the lowest MAC of its ports, so it changed whenever a pod's veth
        # came or went, and pods whose ARP entry for the node IP was stale lost their connections to the host
        # services for seconds (seen as S3 connect timeouts). A fixed address (assign type 3, "set") never moves.
        if Path(f"/sys/class/net/{BRIDGE}/addr_assign_type").read_text().strip() != "3":
            _run(["ip", "link", "set", BRIDGE, "address", BRIDGE_MAC])
        _run(["ip", "link", "set", BRIDGE, "up"])
        if shutil.which("modprobe", path=_path()):  # built in on some kernels; the sysctl check below tells
            _run(["modprobe", "br_netfilter"], check=False)
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            path = Path("/proc/sys") / key
            if not path.exists():
                raise DevstackError(f"{path} is missing: the kernel lacks {key.split('/')[1]} support for pods")
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        # inserted in reverse so they end up in FORWARD_RULES order at the top of the chain
        for rule in reversed(FORWARD_RULES):
            if _run(["iptables", "-C", "FORWARD", *rule], check=False).returncode != 0:
                _run(["iptables", "-I", "FORWARD", "1", *rule])
        # Docker (if it manages iptables) drops forwarded traffic by policy; let the pod bridge through it.
        docker_rule = ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
        if _run(["iptables", "-L", "DOCKER-USER", "-n"], check=False).returncode == 0 and (
            _run(["iptables", "-C", "DOCKER-USER", *docker_rule], check=False).returncode != 0
        ):
            _run(["iptables", "-I", "DOCKER-USER", "1", *docker_rule])

    @staticmethod
    def _pki() -> None:
        ensure_pki(pki_dir(), NODE_NAME, NODE_IP, SERVICE_IP, ca_name=CLUSTER.name)
        server = f"https://{NODE_IP}:{API_PORT}"
        for user in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"):
            write_kubeconfig(state_dir() / f"{user}.kubeconfig", pki_dir(), user, server)
        # pods resolve only cluster names (CoreDNS does not forward); nothing else is asked
        (state_dir() / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1\n")

    def _start(self, component: str, argv: list[str], ready: Callable[[], bool], timeout: float = 60) -> None:
        if pid_of(_proc(component)) is None and not _probe(ready):
            start_process(_proc(component), argv, env={"PATH": _path()})
        self._wait(ready, component, f"{component} ready", timeout)

    def _etcd(self) -> None:
        data = state_dir() / "etcd"
        client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        argv = [
            "etcd", f"--name={NODE_NAME}", f"--data-dir={data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={NODE_NAME}={peer}", "--listen-metrics-urls=",
            "--auto-compaction-retention=1h", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ]  # fmt: skip

        def ready() -> bool:
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:
                return json.loads(resp.read()).get("health") == "true"

        self._start("etcd", argv, ready)

    def _containerd(self) -> None:
        for path in (RUNTIME_ROOT, RUNTIME_STATE / "containerd", state_dir() / "cni"):
            path.mkdir(parents=True, exist_ok=True)
        _render("cni.conflist", state_dir() / "cni" / "10-eventpipe.conflist")
        config = _render("containerd.toml", state_dir() / "containerd.toml")

        def ready() -> bool:
            return Path(CONTAINERD_SOCKET).is_socket() and bool(
                system_images.ctr(CONTAINERD_SOCKET, "version", timeout=5)
            )

        self._start("containerd", ["containerd", f"--config={config}"], ready)

    @staticmethod
    def _images() -> None:
        """pause and CoreDNS images from the local binaries, imported once per version."""
        present = system_images.image_refs(CONTAINERD_SOCKET)
        for ref, binary, entrypoint in (
            (PAUSE_IMAGE, "pause", ["/pause"]),
            (COREDNS_IMAGE, "coredns", ["/coredns"]),
        ):
            if ref in present:
                continue
            archive = subdir("kubernetes", "images") / f"{binary}.tar"
            system_images.single_binary_archive(binaries.bin_dir() / binary, ref, entrypoint, archive)
            system_images.import_archive(CONTAINERD_SOCKET, archive)

    def _apiserver(self) -> None:
        p = pki_dir()
        argv = [
            str(binaries.bin_dir() / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}", f"--secure-port={API_PORT}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--anonymous-auth=false", "--profiling=false", "--allow-privileged=false",
            "--event-ttl=1h",
        ]  # fmt: skip
        self._start("apiserver", argv, self._api_ready, timeout=120)

    def _controllers(self) -> None:
        p, s = pki_dir(), state_dir()
        common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
        cm = s / "controller-manager.kubeconfig"
        self._start_unwaited(
            "controller-manager",
            [
                str(binaries.bin_dir() / "kube-controller-manager"),
                f"--kubeconfig={cm}", f"--authentication-kubeconfig={cm}", f"--authorization-kubeconfig={cm}",
                *common,
                f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--controllers=*,-nodeipam",
                "--terminated-pod-gc-threshold=50",
            ],
        )  # fmt: skip
        sched = s / "scheduler.kubeconfig"
        self._start_unwaited(
            "scheduler",
            [
                str(binaries.bin_dir() / "kube-scheduler"),
                f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}", *common,
            ],
        )  # fmt: skip

    @staticmethod
    def _start_unwaited(component: str, argv: list[str]) -> None:
        if pid_of(_proc(component)) is None:
            start_process(_proc(component), argv, env={"PATH": _path()})

    def _node(self) -> None:
        kubelet_root = RUNTIME_ROOT / "kubelet"
        kubelet_root.mkdir(parents=True, exist_ok=True)
        config = _render("kubelet.yaml", state_dir() / "kubelet.yaml")
        proxy = _render("kube-proxy.yaml", state_dir() / "kube-proxy.yaml")
        self._start_unwaited(
            "kubelet",
            [
                str(binaries.bin_dir() / "kubelet"),
                f"--config={config}", f"--kubeconfig={state_dir() / 'kubelet.kubeconfig'}",
                f"--root-dir={kubelet_root}", f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}",
            ],
        )  # fmt: skip
        self._start_unwaited("kube-proxy", [str(binaries.bin_dir() / "kube-proxy"), f"--config={proxy}"])

    def _coredns(self) -> None:
        manifest = _render("coredns.yaml", state_dir() / "coredns.yaml")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest))
        self._wait(self._dns_ready, "kubelet", "CoreDNS ready", 120)

    # -- stop --------------------------------------------------------------------------------------------
    def stop(self) -> bool:
        """Stop without orphans: no new pods, delete the pods, then node, API server, containerd, etcd."""
        if not any(pid_of(_proc(c)) for c in COMPONENTS):
            return False
        for component in ("scheduler", "controller-manager"):
            stop_process(_proc(component))
        if pid_of(_proc("kubelet")) and self._api_up():
            # pod processes (shims) outlive containerd, so they go first, through the kubelet
            kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=5", "--wait=false", check=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self._tasks():
                time.sleep(1)
        csi.stop()  # its processes serve the kubelet: they go after the pods, before it
        for component in ("kube-proxy", "kubelet"):
            stop_process(_proc(component))
        for task in self._tasks():  # whatever the kubelet did not remove
            with contextlib.suppress(DevstackError):
                system_images.ctr(CONTAINERD_SOCKET, "tasks", "kill", "--signal", "SIGKILL", task, timeout=10)
        self._stop_apiserver()
        stop_process(_proc("containerd"))
        stop_process(_proc("etcd"))
        return True

    def _api_up(self) -> bool:
        try:
            return self._api_ready()
        except (OSError, ValueError):
            return False

    @staticmethod
    def _tasks() -> list[str]:
        if pid_of(_proc("containerd")) is None:
            return []
        try:
            out = system_images.ctr(CONTAINERD_SOCKET, "tasks", "list", "--quiet", timeout=10)
        except (DevstackError, subprocess.TimeoutExpired):
            return []
        return out.split()

    @staticmethod
    def _stop_apiserver() -> None:
        """The API server sometimes ignores the first SIGTERM: a second one after 20 s, then SIGKILL."""
        pid = pid_of(_proc("apiserver"))
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGTERM, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                if pid_of(_proc("apiserver")) is None:
                    return
                time.sleep(0.2)
        stop_process(_proc("apiserver"), timeout=0)

    def status(self) -> dict[str, object]:
        return {
            "service": self.name,
            "port": self.port,
            "pid": pid_of(_proc("apiserver")),
            "healthy": self.healthy(),
            "version": self.version(),
        }
