"""Single-node Elasticsearch 9 from the jars Elastic publishes to Maven Central.

The distribution's launcher and bundled modules are not on Maven Central, so the node is
started by a tiny launcher (``devstack/java/EventpipeNode.java``, compiled at install) that
builds ``org.elasticsearch.node.Node`` with the published netty4 module for HTTP. Snapshots
use the built-in ``fs`` repository under ``path.repo`` (repository-s3 is not published).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from elasticsearch import Elasticsearch as EsClient

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

POM = REPO_ROOT / "devstack" / "maven" / "elasticsearch" / "pom.xml"
LAUNCHER = REPO_ROOT / "devstack" / "java" / "EventpipeNode.java"
ROOT_MODULE = REPO_ROOT / "devstack" / "java" / "root" / "EventpipeRootPlugin.java"
ROOT_DESCRIPTOR = """\
description=GET / banner (the distribution's rest-root module is not on Maven Central)
version={version}
name=eventpipe-root
classname=EventpipeRootPlugin
java.version=21
elasticsearch.version={version}
extended.plugins=
has.native.controller=false
"""
MODULE_JARS = re.compile(r"^(netty-|transport-netty4-)")
NETTY_DESCRIPTOR = """\
description=Netty 4 based transport implementation
version={version}
name=transport-netty4
classname=org.elasticsearch.transport.netty4.Netty4Plugin
java.version=21
elasticsearch.version={version}
extended.plugins=
has.native.controller=false
"""
LOG_CONFIG = """\
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %marker %m%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
logger.node.name = org.elasticsearch.node
logger.node.level = info
"""


def snapshot_root() -> Path:
    """``path.repo`` of the devstack node: fs snapshot repositories live below it."""
    return subdir("elasticsearch", "snapshots")


class ElasticsearchNode(Service):
    name = "elasticsearch"
    port = 9200
    transport_port = 9300

    def version(self) -> str:
        match = re.search(r"<elasticsearch.version>([^<]+)<", POM.read_text())
        return match.group(1) if match else "?"

    @property
    def home_dir(self) -> Path:
        return subdir("elasticsearch", "home")

    def _jars(self) -> list[Path]:
        return maven_classpath(POM, subdir("elasticsearch", "jars"))

    def install(self) -> None:
        jars = self._jars()
        module = self.home_dir / "modules" / "transport-netty4"
        module.mkdir(parents=True, exist_ok=True)
        for jar in jars:
            if MODULE_JARS.match(jar.name) and not (module / jar.name).exists():
                shutil.copy2(jar, module / jar.name)
        (module / "plugin-descriptor.properties").write_text(NETTY_DESCRIPTOR.format(version=self.version()))
        classes = subdir("elasticsearch", "classes")
        self._compile(LAUNCHER, classes, jars)
        root_classes = subdir("elasticsearch", "root-classes")
        if self._compile(ROOT_MODULE, root_classes, jars) or not (self._root_module / "eventpipe-root.jar").exists():
            self._root_module.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(self._root_module / "eventpipe-root.jar", "w") as jar:
                for compiled in sorted(root_classes.glob("*.class")):
                    jar.write(compiled, compiled.name)
        (self._root_module / "plugin-descriptor.properties").write_text(ROOT_DESCRIPTOR.format(version=self.version()))

    @property
    def _root_module(self) -> Path:
        return self.home_dir / "modules" / "eventpipe-root"

    def _compile(self, source: Path, classes: Path, jars: list[Path]) -> bool:
        """javac ``source`` into ``classes`` unless its class is newer; True when it compiled."""
        compiled = classes / source.with_suffix(".class").name
        if compiled.exists() and compiled.stat().st_mtime >= source.stat().st_mtime:
            return False
        javac = Path(java(21)).with_name("javac")
        if not javac.exists():
            raise DevstackError(f"a JDK 21+ with javac is required for Elasticsearch (found only {javac.parent})")
        result = subprocess.run(
            [str(javac), "-d", str(classes), "-cp", self._server_classpath(jars), str(source)],
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=child_preexec(),  # a JVM: ends with a killed devstack
        )
        if result.returncode != 0:
            raise DevstackError(f"compiling {source.name} for Elasticsearch failed:\n{result.stderr[-3000:]}")
        return True

    def _server_classpath(self, jars: list[Path]) -> str:
        return ":".join(str(jar) for jar in jars if not MODULE_JARS.match(jar.name))

    def _configure(self) -> None:
        config = self.home_dir / "config"
        config.mkdir(exist_ok=True)
        (config / "elasticsearch.yml").write_text(
            "\n".join(
                [
                    "cluster.name: eventpipe-dev",
                    "node.name: eventpipe-dev",
                    f"path.data: {subdir('elasticsearch', 'data')}",
                    f"path.logs: {subdir('elasticsearch', 'logs')}",
                    f"path.repo: [{snapshot_root()}]",
                    "network.host: 127.0.0.1",
                    # HTTP also on the pod bridge when it exists (transport stays on loopback)
                    f"http.host: [127.0.0.1{', ' + podnet.NODE_IP if podnet.present() else ''}]",
                    f"http.port: {self.port}",
                    f"transport.port: {self.transport_port}",
                    "discovery.type: single-node",
                    "action.destructive_requires_name: false",
                    # a laptop disk is often >90% full; the devstack should still accept writes
                    "cluster.routing.allocation.disk.threshold_enabled: false",
                    "",
                ]
            )
        )
        (config / "log4j2.properties").write_text(LOG_CONFIG)

    def launch(self) -> None:
        self._configure()
        (self.home_dir / "started").unlink(missing_ok=True)
        classpath = f"{subdir('elasticsearch', 'classes')}:{self._server_classpath(self._jars())}"
        start_process(
            self.name,
            [
                java(21),
                "-Xms512m",
                "-Xmx1g",
                "-XX:+UseG1GC",
                "-Dfile.encoding=UTF-8",
                "-Djava.awt.headless=true",
                "-Dlog4j2.formatMsgNoLookups=true",
                "--add-modules=jdk.incubator.vector",
                "--enable-native-access=ALL-UNNAMED",
                "-cp",
                classpath,
                "EventpipeNode",
                str(self.home_dir),
            ],
        )

    def healthy(self) -> bool:
        if not port_open(self.port):
            return False
        es = EsClient(f"http://127.0.0.1:{self.port}", request_timeout=5)
        try:
            return es.cluster.health(wait_for_status="yellow", timeout="2s")["status"] in {"green", "yellow"}
        finally:
            es.close()

    def start_timeout(self) -> float:
        return 240.0

    def serves_pods(self) -> bool:
        return port_open(self.port, podnet.NODE_IP)
