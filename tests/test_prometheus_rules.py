"""The deployed alert rules, checked and unit-tested by promtool; the devstack monitoring config, validated.

deploy/prometheusrule.yaml is rendered unchanged (production intervals and ``for:``) and every alert
in it must have a firing and a quiet case in tests/promrules/, so a new alert cannot ship untested.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devstack import monitoring
from devstack.monitoring import RULES_FILE, ensure_debian_packages, render_rules

pytestmark = pytest.mark.packages  # promtool and amtool come from Debian's prometheus packages (apt-get)

TESTS = Path(__file__).parent / "promrules"


@pytest.fixture(scope="module")
def promtool() -> str:
    ensure_debian_packages({"promtool": "prometheus", "amtool": "prometheus-alertmanager"})
    return shutil.which("promtool") or "promtool"


@pytest.fixture()
def deployed_rules(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as a plain rule file, no overrides, beside copies of the unit tests."""
    for test in TESTS.glob("*.yaml"):
        shutil.copy(test, tmp_path)
    path = tmp_path / RULES_FILE
    path.write_text(yaml.safe_dump(render_rules(overrides={}), sort_keys=False))
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def _alerts() -> list[str]:
    groups = yaml.safe_load(monitoring.RULES_SOURCE.read_text())["spec"]["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_and_unit_tests_the_deployed_rules(promtool: str, deployed_rules: Path) -> None:
    check = _run(promtool, "check", "rules", str(deployed_rules))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in check.stdout
    tests = sorted(p.name for p in deployed_rules.parent.glob("*.yaml") if p.name != RULES_FILE)
    result = subprocess.run(
        [promtool, "test", "rules", *tests],
        cwd=deployed_rules.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests), result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS.glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == [RULES_FILE], f"{path.name} must test the rendered deploy rules"
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts, "no alerts found in deploy/prometheusrule.yaml"
    assert not alerts - firing, f"alerts with no unit test that makes them fire: {sorted(alerts - firing)}"
    assert not alerts - quiet, f"alerts with no unit test where they stay quiet: {sorted(alerts - quiet)}"
    stray = (firing | quiet) - alerts
    assert not stray, f"unit tests for alerts that do not exist: {sorted(stray)}"


def test_devstack_overrides_change_only_timing() -> None:
    deployed = render_rules(overrides={})["groups"]
    devstack = render_rules()["groups"]
    assert [g["name"] for g in devstack] == [g["name"] for g in deployed]
    for fast, slow in zip(devstack, deployed, strict=True):
        assert fast["interval"] == "1s"
        for fast_rule, slow_rule in zip(fast["rules"], slow["rules"], strict=True):
            assert {k: v for k, v in fast_rule.items() if k != "for"} == {
                k: v for k, v in slow_rule.items() if k != "for"
            }
            assert ("for" in fast_rule) == ("for" in slow_rule)


def test_devstack_monitoring_config_is_valid_and_wired_to_the_service_ports(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    shutil.copy(monitoring.CONFIG_DIR / "prometheus.yml", config)
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(render_rules(), sort_keys=False))
    check = _run(promtool, "check", "config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    amtool = _run(shutil.which("amtool") or "amtool", "check-config", str(monitoring.CONFIG_DIR / "alertmanager.yml"))
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr

    spec = yaml.safe_load(config.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in spec["scrape_configs"]}
    assert targets["pushgateway"] == [f"127.0.0.1:{monitoring.PUSHGATEWAY_PORT}"]
    assert targets["airflow"] == [f"127.0.0.1:{monitoring.STATSD_EXPORTER_PORT}"]
    assert targets["prometheus"] == [f"127.0.0.1:{monitoring.PROMETHEUS_PORT}"]
    assert next(j for j in spec["scrape_configs"] if j["job_name"] == "pushgateway")["honor_labels"] is True
    alertmanagers = spec["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == [f"127.0.0.1:{monitoring.ALERTMANAGER_PORT}"]


def test_monitoring_is_an_opt_in_group_on_free_ports() -> None:
    from devstack.stack import DATA_SERVICES, OPTIONAL_SERVICES, SERVICES, expand, service

    members = expand(["kafka", "monitoring"])
    assert members == ["kafka", "statsd-exporter", "pushgateway", "alertmanager", "prometheus"]
    assert not set(OPTIONAL_SERVICES) & {*SERVICES, *DATA_SERVICES}  # a bare `devstack up` / the demo skip them
    ports = [service(name).port for name in SERVICES] + [9093, 8793, monitoring.STATSD_PORT]
    for name in OPTIONAL_SERVICES:
        assert service(name).port not in ports, f"{name} would clash on {service(name).port}"
        ports.append(service(name).port)


def test_kubelet_scrape_is_added_only_with_a_cluster_pki_and_passes_promtool(
    promtool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cluster ever set up: no kubelet job (nothing to trust). With the PKI: an https job whose client
    certificate (made on demand, CN eventpipe:prometheus) and CA promtool finds, keeping only volume stats."""
    from devstack.cluster import kubelet_metrics
    from devstack.cluster.node import NODE_NAME, SERVICE_IP
    from devstack.cluster.pki import ensure_pki
    from devstack.cluster.podnet import NODE_IP

    monkeypatch.setenv("EVENTPIPE_DEVSTACK_HOME", str(tmp_path))
    prometheus = monitoring.Prometheus()
    jobs = [job["job_name"] for job in yaml.safe_load(prometheus.render_config().read_text())["scrape_configs"]]
    assert "kubelet" not in jobs and not (tmp_path / "kubernetes").exists()

    pki = tmp_path / "kubernetes" / "pki"
    ensure_pki(pki, NODE_NAME, NODE_IP, SERVICE_IP)
    (pki / "prometheus.crt").unlink()  # a PKI made before the identity existed gets it at the next render
    (pki / "prometheus.key").unlink()
    spec = yaml.safe_load(prometheus.render_config().read_text())  # runs promtool check config
    [job] = [job for job in spec["scrape_configs"] if job["job_name"] == "kubelet"]
    assert job["scheme"] == "https" and job["static_configs"][0]["targets"] == [f"{NODE_IP}:10250"]
    assert job["tls_config"]["cert_file"] == str(pki / "prometheus.crt")
    subject = _run("openssl", "x509", "-noout", "-subject", "-in", str(pki / "prometheus.crt")).stdout
    assert "CN = eventpipe:prometheus" in subject or "CN=eventpipe:prometheus" in subject
    assert job["metric_relabel_configs"] == [
        {"source_labels": ["__name__"], "regex": "kubelet_volume_stats_.+", "action": "keep"}
    ]
    assert [r["resources"] for r in kubelet_metrics.rbac_objects()[0]["rules"]] == [["nodes/metrics"]]
