"""Verify a committed day: re-read every archived file and match it against the manifest and Elasticsearch.

Checks: each file's sha256 and row count equal the manifest's; the archive's event ids equal
the manifest's digest; Elasticsearch (day index + late index) holds exactly those ids. A pass
writes ``_VERIFIED.json`` bound to the manifest's own sha256, which retention requires.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
from elasticsearch import Elasticsearch

from eventpipe.archive.indices import day_index, id_digest, index_ids, late_index
from eventpipe.archive.manifest import (
    VERIFIED_NAME,
    ArchiveManifest,
    SourceDigest,
    is_verified,
    load,
    mark_verified,
    verified_key,
)
from eventpipe.errors import ChecksumMismatch, ManifestMismatch
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.s3 import s3_client

__all__ = ["VERIFIED_NAME", "VerificationFailed", "is_verified", "read_archived_ids", "verified_key", "verify_day"]
CHECKSUM_PROBLEM = "sha256 differs from the manifest"

# The name callers know; a checksum failure is the narrower ChecksumMismatch (a subclass). Both are permanent.
VerificationFailed = ManifestMismatch


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


def read_archived_ids(s3, bucket: str, manifest: ArchiveManifest, problems: list[str]) -> tuple[list[str], int, int]:
    """Event ids of every listed file; a file whose sha256 or row count differs adds a problem."""
    ids: list[str] = []
    total_bytes = encrypted = 0
    for entry in manifest.files:
        obj = s3.get_object(Bucket=bucket, Key=entry.key)
        content = obj["Body"].read()
        total_bytes += len(content)
        encrypted += bool(obj.get("ServerSideEncryption"))
        if hashlib.sha256(content).hexdigest() != entry.sha256:
            problems.append(f"{entry.key}: {CHECKSUM_PROBLEM}")
        try:
            table = pq.read_table(io.BytesIO(content), columns=["event_id"])
        except pa.ArrowInvalid as exc:  # a corrupt object: report it with the others, do not crash on it
            problems.append(f"{entry.key}: not readable as Parquet ({exc})")
            continue
        if table.num_rows != entry.rows:
            problems.append(f"{entry.key}: {table.num_rows} rows, manifest says {entry.rows}")
        ids += table.column("event_id").to_pylist()
    return ids, total_bytes, encrypted


def failure(message: str, problems: list[str]) -> ManifestMismatch:
    """ChecksumMismatch when a stored file is corrupt, else VerificationFailed; both fail without retries."""
    kind = ChecksumMismatch if any(CHECKSUM_PROBLEM in p for p in problems) else VerificationFailed
    return kind(message + "; ".join(problems))


def verify_day(settings: Settings, es: Elasticsearch, cfg: ArchiveSettings, day: date) -> VerifyResult:
    started = time.perf_counter()
    s3, bucket = s3_client(settings), settings.s3.bucket
    manifest = load(s3, bucket, day)
    problems: list[str] = []
    ids, total_bytes, encrypted = read_archived_ids(s3, bucket, manifest, problems)
    if len(ids) != manifest.rows or len(set(ids)) != len(ids):
        problems.append(f"archive holds {len(ids)} rows ({len(set(ids))} distinct), manifest says {manifest.rows}")
    if id_digest(ids) != manifest.id_digest:
        problems.append("archived event ids differ from the manifest's digest")
    es_ids: list[str] = []
    for index in (day_index(day), late_index(day)):
        es.indices.refresh(index=index, ignore_unavailable=True)
        found = index_ids(es, index)
        expected = manifest.source(index) or SourceDigest(rows=0, id_digest=id_digest([]))
        if len(found) != expected.rows or id_digest(found) != expected.id_digest:
            problems.append(f"{index}: Elasticsearch holds {len(found)} documents, archive has {expected.rows}")
        es_ids += found
    if cfg.sse and encrypted != len(manifest.files):
        problems.append(f"only {encrypted}/{len(manifest.files)} files report server-side encryption")
    result = VerifyResult(
        day.isoformat(), manifest.revision, len(ids), len(manifest.files), total_bytes, len(es_ids),
        encrypted, round(time.perf_counter() - started, 3), problems,
    )  # fmt: skip
    if problems:
        raise failure(f"archive of {day} failed verification: ", problems)
    extra = {"ServerSideEncryption": cfg.sse} if cfg.sse else {}
    mark_verified(s3, bucket, manifest, len(ids), datetime.now(timezone.utc), **extra)
    return result
