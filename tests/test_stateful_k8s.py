"""Kafka and Elasticsearch as StatefulSets on the local cluster, and `eventpipe storage expand` run as a task pod.

``make test-k8s`` (opt-in). The expand command runs exactly as a DAG task would (the pod factory, the image,
its own service account), against the in-cluster Services; on this host expansion is offline, so every pod
restarts once, gated by the Kafka and Elasticsearch rules.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes.client import models as k8s
from kubernetes.utils import parse_quantity

from devstack.cluster.node import kubectl
from devstack.cluster.stateful import IN_CLUSTER_ENDPOINTS
from eventpipe.errors import PERMANENT_EXIT_CODE

from .test_kubernetes import _pod, _run, cluster, stateful  # noqa: F401  (fixtures: the cluster, the StatefulSets)

pytestmark = [pytest.mark.k8s, pytest.mark.services, pytest.mark.slow]

IN_CLUSTER = IN_CLUSTER_ENDPOINTS


def _task(args: list[str], account: str = "eventpipe-storage-expand") -> Any:
    pod = _pod("storage_expand", args)
    pod.spec.service_account_name = account
    container = pod.spec.containers[0]
    container.env = [e for e in container.env or [] if e.name not in IN_CLUSTER]
    container.env += [k8s.V1EnvVar(name=k, value=v) for k, v in IN_CLUSTER.items()]
    return pod


def _capacity(namespace: str, claim: str) -> int:
    pvc = json.loads(kubectl("-n", namespace, "get", "pvc", claim, "-o", "json"))
    return int(parse_quantity(pvc["status"]["capacity"]["storage"]))


def test_kafka_rule_in_a_three_broker_cluster(stateful: Any) -> None:  # noqa: F811
    """RF 3, min ISR 2: any one broker may go; with one broker already out of a partition's ISR, the others may not."""
    topic = f"test-{uuid.uuid4().hex[:8]}.rf3"
    code = (
        "import json; from kafka.admin import NewTopic; from eventpipe.stateful import kafka_state as k; "
        "from eventpipe.stateful.rules import may_restart_broker, roll_order; "
        "a = k.admin_client('kafka.kafka.svc:9092'); "
        f"a.create_topics([NewTopic('{topic}', 3, 3)]); import time; time.sleep(3); "
        f"s = k.partition_states(a, ['{topic}']); c = k.active_controller(a); "
        "print(json.dumps({'min_isr': sorted({p.min_isr for p in s}), 'rf': sorted({len(p.replicas) for p in s}), "
        "'allowed': [may_restart_broker(s, b).allowed for b in (0, 1, 2)], 'order': roll_order([0, 1, 2], c), "
        "'controller': c})); "
        f"a.delete_topics(['{topic}'])"
    )
    pod = _task(["--help"])
    pod.spec.containers[0].command, pod.spec.containers[0].args = ["python", "-c", code], []
    run = _run(stateful, pod, timeout=300)
    assert run.exit_code == 0, run.logs
    result = json.loads(run.logs.strip().splitlines()[-1])
    assert result["min_isr"] == [2] and result["rf"] == [3]  # the broker defaults of deploy/stateful
    assert result["allowed"] == [True, True, True]
    assert result["order"][-1] == result["controller"]


@pytest.mark.parametrize(
    ("namespace", "statefulset", "template", "gate"),
    [("kafka", "kafka", "data", "kafka"), ("elastic", "elasticsearch", "elasticsearch-data", "elasticsearch")],
)
def test_storage_expand_grows_each_claim_one_pod_at_a_time(
    stateful: Any,  # noqa: F811
    namespace: str,
    statefulset: str,
    template: str,
    gate: str,
) -> None:
    claims = [f"{template}-{statefulset}-{n}" for n in range(3)]
    before = {c: _capacity(namespace, c) for c in claims}
    target = max(before.values()) + (1 << 30)
    args = ["storage", "expand", "--statefulset", statefulset, "--size", str(target), "--gate", gate]
    run = _run(stateful, _task([*args, "--timeout", "900"]), timeout=3600)
    assert run.exit_code == 0, run.logs
    report = run.xcom
    assert report is not None and report["grown"] == claims
    assert sorted(report["restarted"]) == [f"{statefulset}-{n}" for n in range(3)]  # offline: one restart each
    print(f"\n{statefulset} expansion timeline: {json.dumps(report['timeline'])}")
    assert {c: _capacity(namespace, c) for c in claims} == dict.fromkeys(claims, target)
    sts = json.loads(kubectl("-n", namespace, "get", "statefulset", statefulset, "-o", "json"))
    (tmpl,) = sts["spec"]["volumeClaimTemplates"]
    assert int(parse_quantity(tmpl["spec"]["resources"]["requests"]["storage"])) == target
    # a smaller size afterwards: refused before anything changes, a permanent failure
    shrink = _run(stateful, _task([*args[:4], "--size", str(target - (1 << 30)), "--gate", gate]), timeout=300)
    assert shrink.exit_code == PERMANENT_EXIT_CODE
    assert f"{claims[0]}: cannot shrink from {target} to {target - (1 << 30)} bytes" in shrink.logs
