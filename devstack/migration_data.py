"""The migration drill's data: how much the source's volumes hold, and the drill's own leftovers removed after.

A pass ships every non-zero 4 MiB chunk of a claim's image, including blocks a deleted topic or a merged
segment freed but never trimmed: the data size a drill moves is what the images hold, not what Kafka and
Elasticsearch list. So the drill sizes its data in two steps an operator also has:

- **trim** (``fstrim`` of each claim's mounted filesystem on the node): freed blocks become holes in the image
  (the loop device punches them), so the passes ship only live data;
- **fill**: incompressible records on a drill-owned RF-3 topic, to grow the data to the size measured.

After the drill, the fill topic is deleted on the source and the drill's cloud snapshots are deleted through
their contents (deletionPolicy Delete: the driver removes the manifests and every chunk no other snapshot
uses), so the next drill's first pass starts from a store that does not already hold its chunks.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from devstack.cluster.node import identity
from devstack.cluster.stateful import HOST_ENDPOINTS, WORKLOADS
from devstack.runtime import DevstackError

SELECTOR = "eventpipe.io/snapshot=true"
CHUNK = 4 * 1024 * 1024  # the driver's cloud chunk
RECORD = 100 * 1024  # fill record size: 5 per 512 KiB batch, under the brokers' 1 MiB message.max.bytes


def allocated(path: Path) -> int:
    """Bytes the (sparse) image really holds on the node."""
    return os.stat(path).st_blocks * 512


def data_chunks(path: Path, chunk: int = CHUNK) -> int:
    """Bytes of the image's ``chunk``-sized pieces that hold any allocated block: what a full pass ships at
    most (the driver also skips allocated pieces that read all zero)."""
    pieces: set[int] = set()
    with path.open("rb") as f:
        fd, size, at = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after ``at``
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            pieces.update(range(start // chunk, (end - 1) // chunk + 1))
            at = end
    return sum(min(chunk, size - n * chunk) for n in pieces)


def fill_for(size: int, held: int, brokers: int = 3) -> int:
    """Bytes to write on an RF-``brokers`` topic so the claims hold about ``size``: each replica lands on
    its own broker's volume, so every byte written adds ``brokers`` bytes of data."""
    return max(0, (size - held) // brokers)


def loop_device(losetup_j: str) -> str | None:
    """The device of ``losetup -j IMAGE`` output (``/dev/loop1: [65024]:829368 (/…/pvc-….img)``)."""
    match = re.match(r"^(/dev/loop\d+):", losetup_j.strip())
    return match[1] if match else None


def mount_point(proc_mounts: str, device: str) -> str | None:
    """The first mount of ``device`` (the driver's staging mount; a pod's bind mount is the same filesystem)."""
    for line in proc_mounts.splitlines():
        source, target, *_ = line.split()
        if source == device:
            return target.replace("\\040", " ")
    return None


def trimmed_bytes(fstrim_v: str) -> int:
    """``fstrim -v`` output: ``/mnt: 1.2 GiB (1288490188 bytes) trimmed``."""
    match = re.search(r"\((\d+) bytes\) trimmed", fstrim_v)
    return int(match[1]) if match else 0


def claim_images(kube: Any) -> dict[str, Path]:
    """``namespace/pvc`` -> the image file of the source's claim (the driver names images by volume handle)."""
    root = identity("source").runtime_root / "csi" / "volumes"
    images = {}
    for namespace, *_ in WORKLOADS:
        for claim in kube.claims(namespace, SELECTOR):
            pvc = kube.core.read_namespaced_persistent_volume_claim(claim.name, namespace)
            pv = kube.core.read_persistent_volume(pvc.spec.volume_name)
            images[f"{namespace}/{claim.name}"] = root / f"{pv.spec.csi.volume_handle}.img"
    return images


def trim(images: dict[str, Path]) -> dict[str, dict[str, int]]:
    """fstrim each claim's mounted filesystem; per claim the image's allocated bytes before and after."""
    mounts = Path("/proc/mounts").read_text()
    found: dict[str, dict[str, int]] = {}
    for claim, image in images.items():
        losetup = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
        device = loop_device(losetup)
        where = mount_point(mounts, device) if device else None
        if where is None:
            raise DevstackError(f"{claim}: image {image} is not mounted on this node ({losetup.strip()!r})")
        before = allocated(image)
        out = subprocess.run(["fstrim", "-v", where], capture_output=True, text=True, check=True).stdout
        found[claim] = {"allocated_before": before, "allocated_after": allocated(image), "trimmed": trimmed_bytes(out)}
    return found


def fill(topic: str, size: int, bootstrap: str | None = None) -> dict[str, Any]:
    """``size`` bytes of incompressible records on a new RF-3 topic, acks=all: each broker's volume grows by
    about ``size`` (kafka-python, against the brokers' host listener)."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    servers = bootstrap or HOST_ENDPOINTS["EVENTPIPE_KAFKA_BOOTSTRAP"]
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics([NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": "2", "retention.ms": "-1"})])
    finally:
        admin.close()
    began = time.monotonic()
    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=50, batch_size=512 * 1024,
                             retries=2**31 - 1)  # fmt: skip
    records = -(-size // RECORD)
    for n in range(records):
        producer.send(topic, value=os.urandom(RECORD), key=str(n).encode())
    producer.flush()
    producer.close()
    took = round(time.monotonic() - began, 3)
    return {"topic": topic, "records": records, "bytes": records * RECORD, "seconds": took}


def delete_topic(topic: str, bootstrap: str | None = None) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap or HOST_ENDPOINTS["EVENTPIPE_KAFKA_BOOTSTRAP"])
    try:
        admin.delete_topics([topic])
    except UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()


def delete_snapshots(kube: Any, labels: list[str], timeout_s: float = 300) -> dict[str, Any]:
    """Delete the VolumeSnapshots labelled with one of ``labels`` (a drill's passes) and their cloud copies:
    each content is switched to deletionPolicy Delete first, so the driver removes it from the store."""
    from eventpipe.migrate.volumes import GROUP, SNAPSHOT_LABEL, VERSION

    selector = f"{SNAPSHOT_LABEL} in ({','.join(labels)})"
    contents = []
    for namespace, *_ in WORKLOADS:
        found = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "volumesnapshots",
                                                          label_selector=selector)["items"]  # fmt: skip
        for snap in found:
            if content := (snap.get("status") or {}).get("boundVolumeSnapshotContentName"):
                kube.custom.patch_cluster_custom_object(GROUP, VERSION, "volumesnapshotcontents", content,
                                                        {"spec": {"deletionPolicy": "Delete"}})  # fmt: skip
                contents.append(content)
            kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "volumesnapshots",
                                                        snap["metadata"]["name"])  # fmt: skip
    deadline = time.monotonic() + timeout_s
    left = set(contents)
    while left and time.monotonic() < deadline:
        listed = kube.custom.list_cluster_custom_object(GROUP, VERSION, "volumesnapshotcontents")["items"]
        left &= {c["metadata"]["name"] for c in listed}
        time.sleep(2 if left else 0)
    return {"snapshots": len(contents), "contents_left": sorted(left)}
