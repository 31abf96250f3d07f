"""The kubernetes devstack service's pure parts, without a cluster: images, CRDs, configs, listeners."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from devstack.cluster import deploy, image, kubernetes, podnet
from devstack.cluster.binaries import _ldflags
from devstack.cluster.system_images import single_binary_archive
from devstack.kafka import Kafka
from devstack.runtime import DevstackError
from eventpipe.k8s.schemas import CRD_SCHEMAS


def test_single_binary_archive_is_a_loadable_docker_archive(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    archive = single_binary_archive(binary, "docker.io/eventpipe/tool:1", ["/tool"], tmp_path / "a.tar")
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        [entry] = manifest
        config = json.loads(tar.extractfile(entry["Config"]).read())  # type: ignore[union-attr]
        layer = tar.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    assert entry["RepoTags"] == ["docker.io/eventpipe/tool:1"]
    assert config["config"]["Entrypoint"] == ["/tool"] and config["config"]["User"] == "65532"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    again = single_binary_archive(binary, "docker.io/eventpipe/tool:1", ["/tool"], tmp_path / "b.tar")
    assert archive.read_bytes() == again.read_bytes()  # reproducible: same binary, same image digest


def test_sidecar_archive_carries_the_applet_links_the_xcom_sidecar_runs(tmp_path: Path) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(b"\x7fELF not really")
    links = {f"/bin/{applet}": "busybox" for applet in deploy.BUSYBOX_APPLETS}
    files = {"/bin/pgrep": deploy.PGREP.read_bytes()}
    archive = single_binary_archive(
        binary,
        "docker.io/eventpipe/xcom-sidecar:t",
        ["/bin/busybox"],
        tmp_path / "s.tar",
        links=links,
        files=files,
        path_env="/bin",
    )
    with tarfile.open(archive) as tar:
        [entry] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(entry["Config"]).read())  # type: ignore[union-attr]
        with tarfile.open(fileobj=tar.extractfile(entry["Layers"][0])) as layer:  # type: ignore[arg-type]
            members = {m.name: m for m in layer.getmembers()}
    assert members["bin/busybox"].isfile()
    # the provider's commands: sh -c "trap ...; sleep 1", cat return.json, kill -2 (by pgrep, else a /proc walk)
    for applet in ("sh", "cat", "sleep", "kill", "id", "stat", "tr"):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    assert members["bin/pgrep"].isfile() and members["bin/pgrep"].mode == 0o755
    assert config["config"]["Env"] == ["PATH=/bin"]


def test_sidecar_pgrep_finds_and_stops_the_sidecar_loop_like_the_provider_does(tmp_path: Path) -> None:
    """The provider's kill command, `kill -2 $(pgrep -u $(id -u) -f PATTERN)`, against a real sidecar loop."""
    pgrep = tmp_path / "pgrep"
    pgrep.write_bytes(deploy.PGREP.read_bytes())
    pgrep.chmod(0o755)
    marker = f"sidecar-{os.getpid()}-{time.monotonic_ns()}"
    # SIGINT at its default, as for a container's first process: a test run started in the background of a
    # non-interactive shell inherits SIGINT ignored, and a shell cannot trap a signal ignored at its entry
    loop = subprocess.Popen(
        ["sh", "-c", f'trap "exit 0" INT; while true; do sleep 0.2; done; # {marker}'],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(0.5)
        found = subprocess.run([str(pgrep), "-u", str(os.getuid()), "-f", marker], capture_output=True, text=True)
        assert found.returncode == 0 and found.stderr == ""
        pids = {int(pid) for pid in found.stdout.split()}
        assert loop.pid in pids  # and not the script itself: anything else is a fork of the loop caught
        for pid in pids - {loop.pid}:  # before it exec'd `sleep` (it still has the loop's command line)
            status = Path(f"/proc/{pid}/status")
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                assert f"PPid:\t{loop.pid}\n" in status.read_text()
        other_user = subprocess.run([str(pgrep), "-u", "4242", "-f", marker], capture_output=True, text=True)
        assert (other_user.returncode, other_user.stdout, other_user.stderr) == (1, "", "")
        kill = f'kill -2 $({pgrep} -u $(id -u) -f "$MARKER")'  # the marker is not in this shell's command line
        killed = subprocess.run(["sh", "-c", kill], env={**os.environ, "MARKER": marker}, capture_output=True)
        # the same race: a listed fork may be gone by the kill ("No such process"); the loop itself gets SIGINT
        assert killed.returncode == 0 or b"No such process" in killed.stderr, killed.stderr
        assert loop.wait(timeout=10) == 0  # the trap ran: the sidecar exits 0, so the pod can succeed
    finally:
        loop.kill()


@pytest.mark.parametrize("key", list(deploy.CRDS))
def test_crds_carry_the_stored_schemas(key: tuple[str, str, str, str, bool, bool]) -> None:
    group, version, kind, plural, namespaced, _status = key
    crd = deploy.crd(*key, deploy.CRDS[key])
    assert crd["metadata"]["name"] == f"{plural}.{group}"
    assert crd["spec"]["scope"] == ("Namespaced" if namespaced else "Cluster")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "$schema" not in schema and schema["type"] == "object" and "metadata" in schema["properties"]
    assert (f"{group}/{version}", kind) in CRD_SCHEMAS  # the same resources the offline validator knows


def test_deploy_needs_only_the_crds_the_devstack_installs() -> None:
    kinds = {(c[0], c[2]) for c in deploy.CRDS}
    for path in (Path(kubernetes.REPO_ROOT) / "deploy").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if (
                doc
                and "." in doc["apiVersion"].split("/")[0]
                and not doc["apiVersion"].startswith(
                    ("rbac.authorization.k8s.io", "networking.k8s.io", "storage.k8s.io", "kustomize.config.k8s.io")
                )
            ):
                assert (doc["apiVersion"].split("/")[0], doc["kind"]) in kinds, (path.name, doc["kind"])


def test_templates_render_completely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_DEVSTACK_HOME", str(tmp_path))
    monkeypatch.setattr(kubernetes, "_cni_dir", lambda: Path("/usr/lib/cni"))
    for template in ("containerd.toml", "cni.conflist", "kubelet.yaml", "kube-proxy.yaml", "coredns.yaml"):
        text = kubernetes._render(template, tmp_path / template).read_text()
        assert "${" not in text, template
    kubelet = yaml.safe_load((tmp_path / "kubelet.yaml").read_text())
    assert kubelet["address"] == podnet.NODE_IP and kubelet["authentication"]["anonymous"]["enabled"] is False
    assert "restrict_oom_score_adj = true" in (tmp_path / "containerd.toml").read_text()
    assert json.loads((tmp_path / "cni.conflist").read_text())["plugins"][0]["ipMasq"] is False


def test_version_ldflags_stamp_both_version_packages() -> None:
    flags = _ldflags()
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.34.4" in flags and f"-X {pkg}.gitMinor=34" in flags


@pytest.mark.parametrize("bridge", [True, False])
def test_kafka_adds_a_pod_listener_only_with_the_bridge(monkeypatch: pytest.MonkeyPatch, bridge: bool) -> None:
    monkeypatch.setattr(podnet, "present", lambda: bridge)
    listeners, advertised, protocols = Kafka()._listeners()
    assert "PLAINTEXT://127.0.0.1:9092" in listeners and "PLAINTEXT://127.0.0.1:9092" in advertised
    assert (f"PODS://{podnet.NODE_IP}:{podnet.KAFKA_POD_PORT}" in advertised) is bridge
    assert ("PODS:PLAINTEXT" in protocols) is bridge


def test_pod_env_points_pods_at_the_node_ip_and_carries_no_credentials() -> None:
    env = deploy.task_env()
    assert env["EVENTPIPE_KAFKA_BOOTSTRAP"] == f"{podnet.NODE_IP}:{podnet.KAFKA_POD_PORT}"
    assert env["EVENTPIPE_EXECUTION"] == "kubernetes"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)


LOST_SNAPSHOT = (
    "import eventpipe:0.1.0 into the cluster's containerd failed (exit 1):\nctr: failed to prepare extraction snapshot "
    '"extract-1 sha256:0064": parent snapshot sha256:b1de does not exist: not found'
)


@pytest.mark.parametrize(
    ("failures", "calls", "imported"),
    [([LOST_SNAPSHOT], 2, True), (["ctr: permission denied"], 1, False), ([LOST_SNAPSHOT, LOST_SNAPSHOT], 2, False)],
)
def test_image_import_retries_once_when_containerd_loses_a_layer_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: list[str], calls: int, imported: bool
) -> None:
    """Error handling only (no cluster): the containerd GC race is retried once, any other failure is not."""
    monkeypatch.setenv("EVENTPIPE_DEVSTACK_HOME", str(tmp_path))
    monkeypatch.setattr(image, "_size", lambda ref: {"id": "sha256:new"})
    monkeypatch.setattr(
        image.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout="", stderr="")
    )
    attempts: list[str] = []

    def save_into(socket: str, ref: str) -> None:
        attempts.append(ref)
        if len(attempts) <= len(failures):
            raise DevstackError(failures[len(attempts) - 1])

    monkeypatch.setattr(image, "_save_into", save_into)
    marker = tmp_path / "image" / "imports" / "docker.io_library_eventpipe_0.1.0"
    if imported:
        assert image.import_image("/run/containerd.sock", "eventpipe:0.1.0") is True
        assert marker.read_text() == "docker.io/library/eventpipe:0.1.0 sha256:new"
    else:
        with pytest.raises(DevstackError):
            image.import_image("/run/containerd.sock", "eventpipe:0.1.0")
        assert not marker.exists()
    assert len(attempts) == calls


def test_image_import_keeps_one_record_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing kafka, then elasticsearch, then both again copies each once: neither record replaces the other."""
    monkeypatch.setenv("EVENTPIPE_DEVSTACK_HOME", str(tmp_path))
    ids = {"eventpipe/kafka:4.4.0": "sha256:k", "eventpipe/elasticsearch:9.5.3": "sha256:e"}
    monkeypatch.setattr(image, "_size", lambda ref: {"id": ids[ref]})
    copied: list[str] = []
    monkeypatch.setattr(image, "_save_into", lambda socket, ref: copied.append(ref))

    def ctr_list(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        """containerd lists what was copied into it (``ctr images list name==<name>``)."""
        name = argv[-1].removeprefix("name==")
        return subprocess.CompletedProcess(argv, 0, stdout=f"{name}\n" if name in copied else "", stderr="")

    monkeypatch.setattr(image.subprocess, "run", ctr_list)
    first = [image.import_image("/run/containerd.sock", ref) for ref in ids]
    again = [image.import_image("/run/containerd.sock", ref) for ref in ids]
    assert (first, again, copied) == ([True, True], [False, False], list(ids))
    ids["eventpipe/kafka:4.4.0"] = "sha256:k2"  # a rebuilt kafka image is copied again, elasticsearch is not
    assert [image.import_image("/run/containerd.sock", ref) for ref in ids] == [True, False]
