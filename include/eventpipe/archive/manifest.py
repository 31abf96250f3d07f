"""The archive's ``_MANIFEST.json`` and ``_VERIFIED.json`` as typed models, with load, save and verify helpers.

The manifest commits a day: readers trust only the files it lists. Its bytes are deterministic
(sorted keys, two-space indent, ISO timestamps as Python writes them), so the same data always
gives the same manifest, and the verification marker binds to the sha256 of the stored bytes.
Every reader goes through :func:`load` (the day must be committed) or :func:`load_if_committed`
(``None`` when it is not), never through ``json.loads`` of its own.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_serializer

from eventpipe.archive.layout import manifest_key, partition_prefix
from eventpipe.errors import ManifestInvalid, ManifestMissing

VERIFIED_NAME = "_VERIFIED.json"


class _Strict(BaseModel):
    # one image writes and reads manifests: an unknown field is a bug, not a newer writer
    model_config = ConfigDict(extra="forbid")


class ManifestFile(_Strict):
    """One committed Parquet file."""

    key: str
    rows: int
    bytes: int
    sha256: str


class SourceDigest(_Strict):
    """What one Elasticsearch index contributed: its row count and the digest of its event ids."""

    rows: int
    id_digest: str


class SnapshotRefs(_Strict):
    repository: str
    elasticsearch: str | None  # the snapshot's name when it succeeded
    volumes: list[str]  # CSI VolumeSnapshot names


class WriterVersions(_Strict):
    eventpipe: str
    pyarrow: str


def _iso(value: datetime | None) -> str | None:
    """``datetime.isoformat`` (``+00:00``, not pydantic's ``Z``), as manifests have always been written."""
    return value.isoformat() if value is not None else None


class ArchiveManifest(_Strict):
    """``events/date=YYYY-MM-DD/_MANIFEST.json``: the files of a day's revision and what they hold."""

    day: date
    schema_version: int
    revision: int
    archived_at: datetime
    rows: int
    event_time_min: datetime | None
    event_time_max: datetime | None
    id_digest: str
    sources: dict[str, SourceDigest]  # index name -> rows and id digest
    kafka_offsets: dict[str, dict[str, tuple[int, int]]]  # topic -> partition -> [first, end)
    snapshots: SnapshotRefs
    files: list[ManifestFile]
    encryption: str | None
    writer: WriterVersions

    _stored_sha256: str | None = PrivateAttr(default=None)

    @field_serializer("archived_at", "event_time_min", "event_time_max")
    def _times(self, value: datetime | None) -> str | None:
        return _iso(value)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, where: str = "manifest") -> ArchiveManifest:
        try:
            manifest = cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ManifestInvalid(f"{where} does not match the manifest schema: {exc}") from exc
        manifest._stored_sha256 = hashlib.sha256(raw).hexdigest()
        return manifest

    @property
    def sha256(self) -> str:
        """sha256 of the stored bytes (of :meth:`to_bytes` for a manifest not loaded from storage)."""
        return self._stored_sha256 or hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry in self.files]

    @property
    def bytes_total(self) -> int:
        return sum(entry.bytes for entry in self.files)

    def source(self, index: str) -> SourceDigest | None:
        return self.sources.get(index)


class VerifiedMarker(BaseModel):
    """``_VERIFIED.json``: a passed verification, bound to one manifest by its sha256."""

    day: date
    revision: int
    manifest_sha256: str
    rows: int
    verified_at: datetime

    @field_serializer("verified_at")
    def _time(self, value: datetime) -> str | None:
        return _iso(value)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json")).encode()


def verified_key(day: date) -> str:
    return partition_prefix(day) + VERIFIED_NAME


def _read(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def load_if_committed(s3, bucket: str, day: date) -> ArchiveManifest | None:
    """The day's manifest, or ``None`` when the day is not committed (yet): for writers and sweeps."""
    raw = _read(s3, bucket, manifest_key(day))
    return None if raw is None else ArchiveManifest.from_bytes(raw, where=f"s3://{bucket}/{manifest_key(day)}")


def load(s3, bucket: str, day: date) -> ArchiveManifest:
    """The day's manifest, which must exist: for readers (verify, restore, retention, training)."""
    manifest = load_if_committed(s3, bucket, day)
    if manifest is None:
        raise ManifestMissing(f"no committed archive for {day}: s3://{bucket}/{manifest_key(day)} does not exist")
    return manifest


def save(s3, bucket: str, manifest: ArchiveManifest, **extra: str) -> str:
    """Commit the day (written last, after every file it lists); returns the key. ``extra``: put_object args."""
    key = manifest_key(manifest.day)
    body = manifest.to_bytes()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)
    manifest._stored_sha256 = hashlib.sha256(body).hexdigest()
    return key


def committed_files(s3, bucket: str, day: date) -> list[str]:
    """Object keys of a committed day's Parquet files, as its manifest lists them."""
    return load(s3, bucket, day).keys


def mark_verified(s3, bucket: str, manifest: ArchiveManifest, rows: int, verified_at: datetime, **extra: str) -> None:
    """Record a passed verification of exactly this manifest (retention requires it)."""
    marker = VerifiedMarker(
        day=manifest.day,
        revision=manifest.revision,
        manifest_sha256=manifest.sha256,
        rows=rows,
        verified_at=verified_at,
    )
    s3.put_object(Bucket=bucket, Key=verified_key(manifest.day), Body=marker.to_bytes(), **extra)


def is_verified(s3, bucket: str, day: date) -> bool:
    """True when the day's current manifest carries a verification marker bound to it."""
    raw = _read(s3, bucket, manifest_key(day))
    marker = _read(s3, bucket, verified_key(day))
    if raw is None or marker is None:
        return False
    try:
        bound = VerifiedMarker.model_validate_json(marker).manifest_sha256
    except ValidationError:
        return False  # an unreadable marker proves nothing: the day counts as unverified
    return bound == hashlib.sha256(raw).hexdigest()
