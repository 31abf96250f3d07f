"""Opt-in monitoring for the devstack: Prometheus, Pushgateway, Alertmanager and the StatsD exporter.

Prometheus, Pushgateway and Alertmanager come from Debian packages (installed with apt-get when their
binaries are missing). The StatsD exporter is not packaged in Debian 12, so it is built from the Go
module proxy with the local Go toolchain, like the S3 server. Configuration lives in
``devstack/monitoring/``; the alert rules are extracted from ``deploy/prometheusrule.yaml`` at every
start (one source of truth), with the devstack's shorter evaluation interval and ``for:`` applied
from ``devstack/monitoring/rule-overrides.yaml`` so an alert fires in seconds, not hours. When the devstack
cluster's PKI exists, Prometheus also scrapes its kubelet (volume stats for the storage alerts; see
``devstack.cluster.kubelet_metrics``); a cluster that is down is just a down target.

Everything binds to 127.0.0.1. Ports avoid Kafka (9092/9093), Elasticsearch (9200), S3 (9000) and
Airflow (8080/8793).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from devstack.runtime import (
    REPO_ROOT,
    DevstackError,
    Service,
    pid_of,
    progress,
    run_step,
    start_process,
    subdir,
)

CONFIG_DIR = REPO_ROOT / "devstack" / "monitoring"
RULES_SOURCE = REPO_ROOT / "deploy" / "prometheusrule.yaml"
RULES_FILE = "eventpipe-rules.yaml"  # next to the rendered prometheus.yml, which names it relatively

PROMETHEUS_PORT = 9090
PUSHGATEWAY_PORT = 9091
ALERTMANAGER_PORT = 9095  # 9093 (its default) is Kafka's controller
STATSD_EXPORTER_PORT = 9102  # Prometheus scrapes this; Airflow sends StatsD to STATSD_PORT
STATSD_PORT = 9125

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per health poll otherwise

STATSD_EXPORTER_MODULE = "github.com/prometheus/statsd_exporter"
STATSD_EXPORTER_VERSION = "v0.31.0"


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    """Keep the packages' own system services from starting on the ports the devstack uses.

    Debian's policy-rc.d hook (exit 101 = "not allowed") is honoured by invoke-rc.d and deb-systemd-invoke;
    an existing one (containers usually ship it) is left as it is.
    """
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# written by eventpipe devstack during apt-get install\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def ensure_debian_packages(binaries: dict[str, str]) -> None:
    """Install the Debian packages (binary -> package) whose binaries are missing; no-op when all exist."""
    missing = sorted({package for binary, package in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise DevstackError(f"missing {sorted(binaries)}; install them as root: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    with _no_service_starts():
        # a package install is better finished than cut: it does not end with a killed devstack
        result = run_step(cmd, f"apt-get install {' '.join(missing)}", env=env, end_with_parent=False)
        if result.returncode != 0:  # stale package lists: refresh once and retry
            run_step(["apt-get", "update", "-q"], "apt-get update", env=env, end_with_parent=False)
            result = run_step(
                cmd, f"apt-get install {' '.join(missing)} (after update)", env=env, end_with_parent=False
            )
    if result.returncode != 0:
        raise DevstackError(f"apt-get install {' '.join(missing)} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def render_rules(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rule groups of deploy/prometheusrule.yaml as a Prometheus rule file, devstack overrides applied.

    Only ``interval`` and ``for`` are overridden; expressions, labels and annotations are the deployed ones.
    """
    source = yaml.safe_load(RULES_SOURCE.read_text())
    groups = source["spec"]["groups"]
    if overrides is None:
        overrides = yaml.safe_load((CONFIG_DIR / "rule-overrides.yaml").read_text()) or {}
    for group in groups:
        if "interval" in overrides:
            group["interval"] = overrides["interval"]
        for rule in group["rules"]:
            if "for" in rule and "for" in overrides:
                rule["for"] = overrides["for"]
    return {"groups": groups}


def kubelet_scrape_job() -> dict[str, Any] | None:
    """The devstack cluster kubelet's scrape job (volume stats), or None when no cluster was ever set up here.

    Its RBAC is granted here too when the API server answers; if it does not, ``devstack k8s`` grants it later.
    """
    from devstack.cluster import kubelet_metrics

    job = kubelet_metrics.scrape_job()
    if job is not None:
        try:
            kubelet_metrics.grant()
        except (DevstackError, subprocess.TimeoutExpired, OSError) as exc:
            progress(f"prometheus: kubelet metrics role not granted now ({str(exc).splitlines()[0][:200]})")
    return job


def grant_kubelet_access() -> str:
    """For ``devstack k8s``: grant Prometheus its kubelet role; reload a running devstack Prometheus to add the job."""
    from devstack.cluster import kubelet_metrics

    kubelet_metrics.grant()
    if pid_of(Prometheus.name) is None:
        return "granted"
    try:
        Prometheus().reload()
    except httpx.HTTPError as exc:
        raise DevstackError(f"reloading Prometheus with the kubelet job failed: {exc}") from exc
    return "granted, Prometheus reloaded"


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=3.0)


def _ready(url: str) -> bool:
    try:
        return _get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _binary_version(argv: Sequence[str]) -> str:
    result = subprocess.run([*argv, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\S+)", result.stdout + result.stderr)
    return match.group(1) if match else "?"


class _DebianService(Service):
    """A Prometheus-project daemon from a Debian package, with its data under the devstack home."""

    binary: str
    package: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return subdir("monitoring", self.name)

    def install(self) -> None:
        ensure_debian_packages({self.binary: self.package})

    def version(self) -> str:
        return _binary_version([self.binary]) if shutil.which(self.binary) else "not installed"

    def healthy(self) -> bool:
        return _ready(f"{self.url}/-/ready")

    def start_timeout(self) -> float:
        return 60.0


class Pushgateway(_DebianService):
    """Where short-lived tasks push their last-run gauges (EVENTPIPE_PUSHGATEWAY_URL)."""

    name = "pushgateway"
    port = PUSHGATEWAY_PORT
    binary = "prometheus-pushgateway"
    package = "prometheus-pushgateway"

    def launch(self) -> None:
        argv = [
            self.binary,
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--persistence.file={self.data / 'metrics.db'}",  # pushed groups survive a restart
            "--persistence.interval=30s",
            "--web.enable-admin-api",  # lets an operator wipe all groups (PUT /api/v1/admin/wipe)
        ]
        start_process(self.name, argv, cwd=self.data)


class Alertmanager(_DebianService):
    """Receives Prometheus' alerts; with no integrations configured they are read in its UI or API."""

    name = "alertmanager"
    port = ALERTMANAGER_PORT
    binary = "prometheus-alertmanager"
    package = "prometheus-alertmanager"

    def launch(self) -> None:
        argv = [
            self.binary,
            f"--config.file={CONFIG_DIR / 'alertmanager.yml'}",
            f"--storage.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # single instance: no gossip port
        ]
        start_process(self.name, argv, cwd=self.data)


class Prometheus(_DebianService):
    """Scrapes the Pushgateway and the StatsD exporter; evaluates the deployed alert rules."""

    name = "prometheus"
    port = PROMETHEUS_PORT
    binary = "prometheus"
    package = "prometheus"  # ships promtool too

    def install(self) -> None:
        ensure_debian_packages({self.binary: self.package, "promtool": self.package})

    def render_config(self) -> Path:
        """Copy prometheus.yml and write the rules file next to it; promtool checks both before launch."""
        config = self.data / "prometheus.yml"
        shutil.copyfile(CONFIG_DIR / "prometheus.yml", config)
        kubelet = kubelet_scrape_job()
        if kubelet is not None:
            spec = yaml.safe_load(config.read_text())
            spec["scrape_configs"].append(kubelet)
            config.write_text(
                "# devstack/monitoring/prometheus.yml plus the devstack cluster's kubelet; rendered, do not edit.\n"
                + yaml.safe_dump(spec, sort_keys=False)
            )
        (self.data / RULES_FILE).write_text(
            "# Generated from deploy/prometheusrule.yaml with devstack/monitoring/rule-overrides.yaml; do not edit.\n"
            + yaml.safe_dump(render_rules(), sort_keys=False)
        )
        check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise DevstackError(f"promtool check config failed:\n{check.stdout}{check.stderr}")
        return config

    def launch(self) -> None:
        argv = [
            self.binary,
            f"--config.file={self.render_config()}",
            f"--storage.tsdb.path={self.data / 'tsdb'}",
            "--storage.tsdb.retention.time=15d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",  # POST /-/reload after editing the config or rules
            # re-send firing alerts every 5 s (default 1 m): one lost at startup, before Alertmanager was
            # discovered, reaches it within seconds
            "--rules.alert.resend-delay=5s",
        ]
        start_process(self.name, argv, cwd=self.data)

    def reload(self) -> None:
        """Re-render the config and rules (e.g. after deploy/prometheusrule.yaml changed) and reload them."""
        self.render_config()
        httpx.post(f"{self.url}/-/reload", timeout=10.0).raise_for_status()


class StatsdExporter(Service):
    """Turns Airflow's StatsD metrics into Prometheus series (mapping in devstack/monitoring/statsd-mapping.yml)."""

    name = "statsd-exporter"
    port = STATSD_EXPORTER_PORT

    @property
    def binary(self) -> Path:
        return subdir("monitoring", "bin") / "statsd_exporter"

    def version(self) -> str:
        return STATSD_EXPORTER_VERSION

    def install(self) -> None:
        """``go install`` of the pinned release once (not packaged in Debian 12)."""
        marker = self.binary.with_name(".statsd_exporter.version")
        if self.binary.exists() and marker.exists() and marker.read_text().strip() == STATSD_EXPORTER_VERSION:
            return
        go = shutil.which("go")
        if go is None:
            raise DevstackError("the Go toolchain (go) is required to build the StatsD exporter; install Go 1.24+")
        version = STATSD_EXPORTER_VERSION.removeprefix("v")
        ldflags = f"-s -w -X github.com/prometheus/common/version.Version={version}"
        env = {**os.environ, "GOBIN": str(self.binary.parent)}
        module = f"{STATSD_EXPORTER_MODULE}@{STATSD_EXPORTER_VERSION}"
        result = run_step([go, "install", "-trimpath", "-ldflags", ldflags, module], f"building {module}", env=env)
        if result.returncode != 0:
            raise DevstackError(f"go install {module} failed:\n{(result.stdout + result.stderr)[-4000:]}")
        marker.write_text(STATSD_EXPORTER_VERSION)

    def launch(self) -> None:
        argv = [
            str(self.binary),
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--statsd.listen-udp=127.0.0.1:{STATSD_PORT}",
            f"--statsd.listen-tcp=127.0.0.1:{STATSD_PORT}",
            f"--statsd.mapping-config={CONFIG_DIR / 'statsd-mapping.yml'}",
        ]
        start_process(self.name, argv, cwd=subdir("monitoring"))

    def healthy(self) -> bool:
        return _ready(f"http://127.0.0.1:{self.port}/metrics")

    def start_timeout(self) -> float:
        return 60.0


def pushgateway_url() -> str:
    return f"http://127.0.0.1:{PUSHGATEWAY_PORT}"


def monitoring_env() -> dict[str, str]:
    """What Airflow and its tasks add when the devstack monitoring runs; empty otherwise.

    "Runs" means started by ``devstack up --services monitoring`` (a live pidfile), so a devstack
    without monitoring neither pushes to nor sends StatsD at ports nobody listens on.
    """
    env: dict[str, str] = {}
    if pid_of(Pushgateway.name) is not None:
        env["EVENTPIPE_PUSHGATEWAY_URL"] = pushgateway_url()
    if pid_of(StatsdExporter.name) is not None:
        env |= {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(STATSD_PORT),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        }
    return env
