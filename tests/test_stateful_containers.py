"""deploy/stateful's Kafka and Elasticsearch settings, run as 3-node clusters of plain containers (no cluster).

Opt-in with the other k8s tests (root, Docker, the registry-free images of ``devstack.images``). Each service
runs exactly as its StatefulSet configures it: Kafka through the ConfigMap's start script on a read-only root,
Elasticsearch from the StatefulSet's environment; a Docker network alias stands in for each pod's DNS name.
The rules' readers run in the task image against them: what a controlled broker stop and a node restart do to
the restart rules, and how long each takes to come back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .polling import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STATEFUL = ROOT / "deploy" / "stateful"


def _docker(*args: str, check: bool = True, timeout: float = 180, stdin: str | None = None) -> str:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=stdin, check=False)
    if check and run.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {run.stderr[-2000:]}")
    return run.stdout


def _manifest(name: str, kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((STATEFUL / f"{name}.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == kind)


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    if shutil.which("docker") is None:
        pytest.fail("docker is needed (make k8s-host installs it)")
    from devstack.cluster.image import IMAGE

    try:
        from devstack.images.services import build_service_image
    except ModuleNotFoundError:  # a checkout without the image recipes: the images must be there already
        build_service_image = None
    for ref in ("eventpipe/kafka:4.4.0", "eventpipe/elasticsearch:9.5.3", IMAGE):
        if build_service_image is not None and ref != IMAGE:
            build_service_image(ref.split("/")[1].split(":")[0])
        assert _docker("image", "inspect", ref, "--format", "{{.Id}}", check=False).strip(), f"image {ref} missing"
    net = f"stateful-{uuid.uuid4().hex[:6]}"
    _docker("network", "create", net)
    yield net
    for cid in _docker("ps", "-aq", "--filter", f"network={net}").split():
        _docker("rm", "-f", "-v", cid, check=False)
    _docker("network", "rm", net, check=False)


def _in_task_image(net: str, code: str) -> dict[str, Any]:
    """Run ``code`` (printing one JSON line last) in the task image, with this checkout's package."""
    from devstack.cluster.image import IMAGE

    out = _docker(
        "run", "--rm", "--network", net, "-v", f"{ROOT / 'include'}:/src:ro", "-e", "PYTHONPATH=/src",
        "--entrypoint", "python", IMAGE, "-c", code, timeout=120,
    )  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


KAFKA_CHECK = """
import json, sys
from eventpipe.stateful import kafka_state as k
from eventpipe.stateful.rules import broker_in_sync, may_restart_broker
a = k.admin_client("kafka-0.kafka-headless.kafka.svc:9092")
{setup}
s = k.partition_states(a, ["{topic}"])
print(json.dumps({{"allowed": [may_restart_broker(s, b).allowed for b in (0, 1, 2)],
  "blocking": [list(may_restart_broker(s, b).blocking) for b in (0, 1, 2)],
  "in_sync": [broker_in_sync(s, b).allowed for b in (0, 1, 2)], "min_isr": sorted({{p.min_isr for p in s}}),
  "controller": k.active_controller(a)}}))
"""


def test_kafka_statefulset_settings_form_a_quorum_and_gate_restarts(network: str, tmp_path: Path) -> None:
    config = _manifest("kafka", "ConfigMap")["data"]
    container = _manifest("kafka", "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for key, text in config.items():
        (tmp_path / key).write_text(text)
        (tmp_path / key).chmod(0o644)
    tmp_path.chmod(0o755)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    names = [f"{network}-kafka-{n}" for n in range(3)]
    for n, name in enumerate(names):
        _docker(
            "run", "-d", "--name", name, "--network", network, "--network-alias", f"kafka-{n}.kafka-headless.kafka.svc",
            "--read-only", "--tmpfs", "/tmp:uid=1000,gid=1000", "-v", f"{tmp_path}:/etc/kafka:ro",
            "-v", "/var/lib/kafka/data", "-e", f"POD_NAME=kafka-{n}", "-e", f"POD_INDEX={n}",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
            "--entrypoint", container["command"][0], "eventpipe/kafka:4.4.0", *container["command"][1:],
        )  # fmt: skip
    healthy = ["/opt/kafka/bin/healthcheck.sh"]
    wait_for(lambda: all(_ok(n, healthy) for n in names), "3 Kafka nodes answering ApiVersions", 240)
    topic = f"test-{uuid.uuid4().hex[:8]}.rf3"
    create = (
        f"from kafka.admin import NewTopic; import time; a.create_topics([NewTopic('{topic}', 3, 3)]); time.sleep(3)"
    )
    before = _in_task_image(network, KAFKA_CHECK.format(setup=create, topic=topic))
    assert before["min_isr"] == [2] and before["allowed"] == [True, True, True]
    began = time.monotonic()
    _docker("stop", "-t", "110", names[2])  # SIGTERM: the broker's controlled shutdown
    stop_s = time.monotonic() - began
    during = _in_task_image(network, KAFKA_CHECK.format(setup="", topic=topic))
    partitions = [f"{topic}-{p}" for p in range(3)]
    assert during["allowed"] == [False, False, True]
    assert during["blocking"][:2] == [partitions, partitions] and during["in_sync"] == [True, True, False]
    began = time.monotonic()
    _docker("start", names[2])
    back = KAFKA_CHECK.format(setup="", topic=topic)
    wait_for(lambda: _in_task_image(network, back)["in_sync"][2], "broker 2 in every ISR", 300, every=2)
    print(f"\nkafka: controlled stop {stop_s:.1f}s, back in every ISR {time.monotonic() - began:.1f}s after start")


def _ok(name: str, command: list[str]) -> bool:
    return subprocess.run(["docker", "exec", name, *command], capture_output=True, check=False).returncode == 0


ES_CHECK = """
import json
from elasticsearch import Elasticsearch
from eventpipe.stateful.rules import may_restart_es_node
h = Elasticsearch("http://{node}:9200").cluster.health()
print(json.dumps({{"status": h["status"], "nodes": h["number_of_nodes"], "delayed": h["delayed_unassigned_shards"],
  "allowed": may_restart_es_node(h["status"]).allowed}}))
"""


def test_elasticsearch_statefulset_settings_form_a_green_cluster_and_delay_allocation(network: str) -> None:
    sts = _manifest("elasticsearch", "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    pre_stop = _manifest("elasticsearch", "ConfigMap")["data"]["pre-stop.sh"]
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"] != "network.publish_host"}
    names = [f"{network}-es-{n}" for n in range(3)]
    for n, name in enumerate(names):
        env = {k: v.replace("$(POD_NAME)", f"elasticsearch-{n}") for k, v in plain.items()}
        env["ES_JAVA_OPTS"] = "-Xms384m -Xmx384m"  # three nodes next to the rest of the suite
        # their data lies on the host's root filesystem, not on a claim of its own: past its 90 % watermark (a
        # busy machine's disk) no replica would be allocated, whatever the manifest says. As the host devstack's.
        env["cluster.routing.allocation.disk.threshold_enabled"] = "false"
        _docker(
            "run", "-d", "--name", name, "--hostname", f"elasticsearch-{n}", "--network", network,
            "--network-alias", "elasticsearch-headless.elastic.svc", "--tmpfs", "/tmp:uid=1000,gid=1000",
            "-v", "/usr/share/elasticsearch/config", "-v", "/usr/share/elasticsearch/data",
            "-v", "/usr/share/elasticsearch/logs", "-e", f"POD_NAME=elasticsearch-{n}",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], "eventpipe/elasticsearch:9.5.3",
        )  # fmt: skip
    check = ES_CHECK.format(node=names[0])
    wait_for(lambda: _safe(lambda: _in_task_image(network, check)).get("status") == "green", "green", 300, every=3)
    assert _in_task_image(network, check)["nodes"] == 3
    body = '{"settings":{"number_of_shards":3,"number_of_replicas":1}}'
    curl = ["curl", "-sf", "-XPUT", "localhost:9200/stateful-test", "-H", "content-type: application/json", "-d", body]
    _docker("exec", names[0], *curl)
    wait_for(lambda: _in_task_image(network, check)["status"] == "green", "green with replicas", 120, every=2)
    _docker(
        "exec",
        "-i",
        "-e",
        "POD_NAME=elasticsearch-2",
        "-e",
        "PRE_STOP_WAIT_SECONDS=0",
        names[2],
        "sh",
        "-s",
        stdin=pre_stop,
    )
    _docker("stop", "-t", "60", names[2])
    during = _in_task_image(network, check)
    assert (during["status"], during["allowed"]) == ("yellow", False)
    assert during["delayed"] > 0  # the node's replicas wait for it instead of being copied again
    began = time.monotonic()
    _docker("start", names[2])
    wait_for(lambda: _in_task_image(network, check)["status"] == "green", "green again", 300, every=2)
    print(f"\nelasticsearch: green {time.monotonic() - began:.1f}s after the node started again")


def _safe(read: Any) -> dict[str, Any]:
    try:
        return read()
    except (AssertionError, json.JSONDecodeError, IndexError):
        return {}
