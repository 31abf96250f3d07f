"""EventpipeVolumeFilling on the real local cluster: a claim filled from a pod fires it in the devstack Prometheus.

The path is the production one: the CSI driver reports the volume's usage (NodeGetVolumeStats), the kubelet
exports ``kubelet_volume_stats_*``, the devstack Prometheus scrapes the kubelet (job ``kubelet``, its own client
certificate) and evaluates deploy/prometheusrule.yaml with the devstack's short ``for:`` (2 s), and the alert
reaches Alertmanager. The claim is the test's own (unique name, in ``eventpipe``: the rule watches deploy/'s
namespaces), on the encrypted class the StatefulSets use here; it is deleted afterwards and the alert must clear.
``make test-k8s`` (opt-in); the kubelet recomputes volume stats about once a minute, so this takes minutes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.cluster import csi, kubelet_metrics
from devstack.cluster.deploy import NAMESPACE
from devstack.cluster.kubernetes import KubernetesCluster, kubectl
from devstack.monitoring import ALERTMANAGER_PORT, PROMETHEUS_PORT, Prometheus, render_rules
from devstack.stack import GROUPS, up

from . import k8s_support as k8s
from .k8s_support import apply_objects, claim_pod, get_object, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

PROMETHEUS = f"http://127.0.0.1:{PROMETHEUS_PORT}"
ALERTMANAGER = f"http://127.0.0.1:{ALERTMANAGER_PORT}"
ALERT = "EventpipeVolumeFilling"
FILL = 0.90  # of the filesystem: past the 85 % threshold, short of EventpipeVolumeFull's 95 %


def _query(promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": promql}, timeout=10.0)
    response.raise_for_status()
    return response.json()["data"]["result"]


def _rule_expr(alert: str) -> str:
    """The alert's expression exactly as deployed (the devstack changes only its timing)."""
    rules = [r for g in render_rules()["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert len(rules) == 1, alert
    return str(rules[0]["expr"])


@pytest.fixture(scope="module")
def prometheus() -> None:
    """The cluster as ``devstack k8s`` left it, and the devstack monitoring scraping its kubelet."""
    if os.geteuid() != 0:
        pytest.fail("the k8s tests need root (bridge, iptables, containers, mounts): run them as root")
    if not KubernetesCluster().healthy() or not csi.healthy():
        pytest.fail("the local cluster with its CSI driver is not running: `make k8s` (eventpipe devstack k8s) first")
    up(GROUPS["monitoring"])
    kubelet_metrics.grant()
    Prometheus().reload()  # renders this checkout's config and rules: the kubelet job, the storage group

    def kubelet_up() -> bool:
        targets = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=10.0).json()["data"]["activeTargets"]
        return any(t["labels"]["job"] == "kubelet" and t["health"] == "up" for t in targets)

    wait_for(kubelet_up, "Prometheus scraping the kubelet (target up)", timeout=60, every=1)


@pytest.fixture()
def claim(prometheus: None) -> Iterator[str]:
    """A 64 MiB claim on the encrypted class, mounted by an idle non-root pod; both deleted afterwards."""
    name = f"volume-alert-{uuid.uuid4().hex[:8]}"
    csi.volume_key_secret(NAMESPACE)
    labels = {"eventpipe.io/test": "volume-alert"}
    pvc = k8s.claim(name, NAMESPACE, "64Mi", csi.STORAGE_CLASS_ENCRYPTED, labels=labels)
    pod = claim_pod(name, NAMESPACE, name, "sleep 3600", labels=labels)
    apply_objects(pvc, pod)
    try:
        wait_for(
            lambda: get_object("pod", name, NAMESPACE)["status"].get("phase") == "Running",
            f"pod {name} running on its claim",
            timeout=180,
        )
        yield name
    finally:
        kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=true", "--timeout=120s", check=False, timeout=150)
        kubectl("-n", NAMESPACE, "delete", "pvc", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


def _filled(claim: str) -> float | None:
    """1 - available/capacity of ``claim`` as Prometheus has it from the kubelet, or None before its first scrape."""
    selector = f'job="kubelet",namespace="{NAMESPACE}",persistentvolumeclaim="{claim}"'
    result = _query(
        f"1 - kubelet_volume_stats_available_bytes{{{selector}}} / kubelet_volume_stats_capacity_bytes{{{selector}}}"
    )
    return float(result[0]["value"][1]) if result else None


def _alert_states(claim: str) -> set[str]:
    result = _query(f'ALERTS{{alertname="{ALERT}",persistentvolumeclaim="{claim}"}}')
    return {r["metric"]["alertstate"] for r in result}


def test_a_filling_claim_fires_eventpipe_volume_filling_and_clears_when_it_goes(claim: str) -> None:
    selector = f'job="kubelet",namespace="{NAMESPACE}",persistentvolumeclaim="{claim}"'
    used = wait_for(
        lambda: _query(f"kubelet_volume_stats_used_bytes{{{selector}}}"),
        "the claim's kubelet_volume_stats_used_bytes in Prometheus",
        timeout=180,
        every=2,
    )
    before = _filled(claim)
    assert before is not None and before < 0.5, before  # a fresh ext4: only its metadata
    assert _alert_states(claim) == set()

    # fill to FILL of the filesystem (df's size: what statfs and so the kubelet report as capacity)
    script = (
        "size=$(df -k --output=size /data | tail -1); "
        "have=$(df -k --output=used /data | tail -1); "
        f"count=$(( (size * {int(FILL * 100)} / 100 - have) / 1024 )); "
        "dd if=/dev/zero of=/data/fill bs=1M count=$count conv=fsync status=none && df -k /data | tail -1"
    )
    df = kubectl("-n", NAMESPACE, "exec", claim, "--", "sh", "-c", script, timeout=120).split()
    filled_at = time.monotonic()
    assert int(df[2]) / int(df[1]) > 0.85, df  # used / size as the pod sees it

    def past_threshold() -> float | None:
        value = _filled(claim)
        return value if value is not None and value > 0.85 else None

    fill = wait_for(
        past_threshold,
        "the kubelet's volume stats showing the claim more than 85% full",
        timeout=240,
        every=2,
    )
    seen = time.monotonic() - filled_at
    assert fill < 0.95, fill  # the warning's band, not the critical one
    # the deployed expression itself is true for this claim
    expr = [r["metric"] for r in _query(_rule_expr(ALERT))]
    assert {"namespace": NAMESPACE, "persistentvolumeclaim": claim} in expr, expr
    assert claim not in {r["metric"]["persistentvolumeclaim"] for r in _query(_rule_expr("EventpipeVolumeFull"))}

    wait_for(lambda: _alert_states(claim) & {"pending", "firing"}, f"{ALERT} pending", timeout=30, every=0.5)
    pending = time.monotonic() - filled_at
    wait_for(lambda: "firing" in _alert_states(claim), f"{ALERT} firing", timeout=30, every=0.5)
    firing = time.monotonic() - filled_at

    def in_alertmanager() -> list[dict[str, Any]]:
        response = httpx.get(
            f"{ALERTMANAGER}/api/v2/alerts",
            params={"filter": [f'alertname="{ALERT}"', f'persistentvolumeclaim="{claim}"'], "active": "true"},
            timeout=10.0,
        )
        response.raise_for_status()
        return response.json()

    [alert] = wait_for(in_alertmanager, f"{ALERT} in Alertmanager", timeout=30, every=0.5)
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["namespace"] == NAMESPACE
    assert alert["annotations"]["summary"].startswith(f"Volume {NAMESPACE}/{claim} is ")
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#eventpipevolumefilling"
    print(
        "\n"
        + json.dumps(
            {
                "claim": claim,
                "used_bytes_before": float(used[0]["value"][1]),
                "full_before": round(before, 4),
                "full_after": round(fill, 4),
                "seconds_fill_to_stats": round(seen, 1),
                "seconds_fill_to_pending": round(pending, 1),
                "seconds_fill_to_firing": round(firing, 1),
                "alertmanager_summary": alert["annotations"]["summary"],
            }
        )
    )

    # the claim goes: its series go stale with the kubelet's next scrape, and the alert clears
    kubectl("-n", NAMESPACE, "delete", "pod", claim, "--wait=true", "--timeout=120s", timeout=150)
    wait_for(lambda: not _alert_states(claim), f"{ALERT} cleared after the pod went", timeout=180, every=2)
