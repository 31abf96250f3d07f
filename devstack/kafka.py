"""Kafka 4 broker in KRaft mode (combined broker + controller), from Maven Central jars."""

from __future__ import annotations

import re
import subprocess

from kafka import KafkaAdminClient

from devstack.cluster import podnet
from devstack.runtime import (
    REPO_ROOT,
    DevstackError,
    Service,
    java,
    maven_classpath,
    port_open,
    start_process,
    subdir,
)
from eventpipe.lifetime import child_preexec

POM = REPO_ROOT / "devstack" / "maven" / "kafka" / "pom.xml"
CLUSTER_ID = "ZXZlbnRwaXBlLWRldnN0YQ"  # fixed: the devstack's storage is formatted once for this id


class Kafka(Service):
    name = "kafka"
    port = 9092
    controller_port = 9093
    pod_port: int | None = podnet.KAFKA_POD_PORT  # the listener pods use (None: loopback only)

    def _jars(self) -> list[str]:
        return [str(p) for p in maven_classpath(POM, subdir("kafka", "jars"))]

    def version(self) -> str:
        match = re.search(r"<kafka.version>([^<]+)<", POM.read_text())
        return match.group(1) if match else "?"

    def install(self) -> None:
        self._jars()

    def _listeners(self) -> tuple[str, str, str]:
        """listeners, advertised.listeners and the protocol map; a PODS listener when the pod bridge exists."""
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        if self.pod_port and podnet.present():
            listeners.append(f"PODS://{podnet.NODE_IP}:{self.pod_port}")
            advertised.append(f"PODS://{podnet.NODE_IP}:{self.pod_port}")
            protocols.append("PODS:PLAINTEXT")
        return ",".join(listeners), ",".join(advertised), ",".join(protocols)

    def serves_pods(self) -> bool:
        return bool(self.pod_port) and port_open(self.pod_port, podnet.NODE_IP)

    def _config(self) -> str:
        data = subdir("kafka", "data")
        config = subdir("kafka") / "server.properties"
        listeners, advertised, protocols = self._listeners()
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners={listeners}",
                    f"advertised.listeners={advertised}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map={protocols}",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=3",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=-1",
                    "log.segment.bytes=268435456",
                    "",
                ]
            )
        )
        (subdir("kafka") / "log4j2.properties").write_text(
            "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\nappender.stdout.type=Console\n"
            "appender.stdout.name=STDOUT\nappender.stdout.layout.type=PatternLayout\n"
            "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
        )
        return str(config)

    def _jvm(self, main: str, *args: str) -> list[str]:
        log_config = subdir("kafka") / "log4j2.properties"
        return [
            java(17),
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={log_config}",
            "-cp",
            ":".join(self._jars()),
            main,
            *args,
        ]

    def launch(self) -> None:
        config = self._config()
        if not (subdir("kafka", "data") / "meta.properties").exists():
            result = subprocess.run(
                self._jvm("kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c", config),
                capture_output=True,
                text=True,
                check=False,
                preexec_fn=child_preexec(),  # a JVM: ends with a killed devstack
            )
            if result.returncode != 0 and "already formatted" not in result.stdout + result.stderr:
                raise DevstackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
        start_process(self.name, self._jvm("kafka.Kafka", config))

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{self.port}", request_timeout_ms=5000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def start_timeout(self) -> float:
        return 120.0
