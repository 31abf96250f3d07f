"""Verify a committed day: re-read every archived file and match it against the manifest and Elasticsearch.

Checks: each file's sha256 and row count equal the manifest's; the archive's event ids equal
the manifest's digest; Elasticsearch (day index + late index) holds exactly those ids. A pass
writes ``_VERIFIED.json`` bound to the manifest's own sha256, which retention requires.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pyarrow.parquet as pq
from elasticsearch import Elasticsearch

from eventpipe.archive.config import ArchiveConfig
from eventpipe.archive.indices import day_index, id_digest, index_ids, late_index
from eventpipe.archive.layout import manifest_key, partition_prefix
from eventpipe.settings import Settings
from eventpipe.storage.s3 import s3_client

VERIFIED_NAME = "_VERIFIED.json"


class VerificationFailed(RuntimeError):
    pass


@dataclass
class VerifyResult:
    day: str
    revision: int
    rows: int
    files: int
    bytes: int
    es_documents: int
    encrypted_files: int
    seconds: float
    problems: list[str] = field(default_factory=list)


def verified_key(day: date) -> str:
    return partition_prefix(day) + VERIFIED_NAME


def read_archived_ids(s3, bucket: str, manifest: dict, problems: list[str]) -> tuple[list[str], int, int]:
    ids: list[str] = []
    total_bytes = encrypted = 0
    for entry in manifest["files"]:
        obj = s3.get_object(Bucket=bucket, Key=entry["key"])
        content = obj["Body"].read()
        total_bytes += len(content)
        encrypted += bool(obj.get("ServerSideEncryption"))
        if hashlib.sha256(content).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['key']}: sha256 differs from the manifest")
        table = pq.read_table(io.BytesIO(content), columns=["event_id"])
        if table.num_rows != entry["rows"]:
            problems.append(f"{entry['key']}: {table.num_rows} rows, manifest says {entry['rows']}")
        ids += table.column("event_id").to_pylist()
    return ids, total_bytes, encrypted


def verify_day(settings: Settings, es: Elasticsearch, cfg: ArchiveConfig, day: date) -> VerifyResult:
    started = time.perf_counter()
    s3, bucket = s3_client(settings), settings.archive_bucket
    raw = s3.get_object(Bucket=bucket, Key=manifest_key(day))["Body"].read()
    manifest = json.loads(raw)
    problems: list[str] = []
    ids, total_bytes, encrypted = read_archived_ids(s3, bucket, manifest, problems)
    if len(ids) != manifest["rows"] or len(set(ids)) != len(ids):
        problems.append(f"archive holds {len(ids)} rows ({len(set(ids))} distinct), manifest says {manifest['rows']}")
    if id_digest(ids) != manifest["id_digest"]:
        problems.append("archived event ids differ from the manifest's digest")
    es_ids: list[str] = []
    for index in (day_index(day), late_index(day)):
        es.indices.refresh(index=index, ignore_unavailable=True)
        found = index_ids(es, index)
        expected = manifest["sources"].get(index, {"rows": 0, "id_digest": id_digest([])})
        if len(found) != expected["rows"] or id_digest(found) != expected["id_digest"]:
            problems.append(f"{index}: Elasticsearch holds {len(found)} documents, archive has {expected['rows']}")
        es_ids += found
    if cfg.sse and encrypted != len(manifest["files"]):
        problems.append(f"only {encrypted}/{len(manifest['files'])} files report server-side encryption")
    result = VerifyResult(
        day.isoformat(), int(manifest["revision"]), len(ids), len(manifest["files"]), total_bytes, len(es_ids),
        encrypted, round(time.perf_counter() - started, 3), problems,
    )  # fmt: skip
    if problems:
        raise VerificationFailed(f"archive of {day} failed verification: " + "; ".join(problems))
    marker = {
        "day": day.isoformat(),
        "revision": manifest["revision"],
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "rows": len(ids),
        "verified_at": datetime.now(timezone.utc).isoformat(),
    }
    extra = {"ServerSideEncryption": cfg.sse} if cfg.sse else {}
    s3.put_object(Bucket=bucket, Key=verified_key(day), Body=json.dumps(marker).encode(), **extra)
    return result


def is_verified(s3, bucket: str, day: date) -> bool:
    """True when the day's current manifest carries a verification marker bound to it."""
    try:
        raw = s3.get_object(Bucket=bucket, Key=manifest_key(day))["Body"].read()
        marker = json.loads(s3.get_object(Bucket=bucket, Key=verified_key(day))["Body"].read())
    except s3.exceptions.NoSuchKey:
        return False
    return marker.get("manifest_sha256") == hashlib.sha256(raw).hexdigest()
