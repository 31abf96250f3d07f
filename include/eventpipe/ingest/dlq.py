"""Dead letters: every record that cannot be indexed is kept with the reason, twice, bytes exact.

The compacted Kafka topic is for reprocessing (keyed by source coordinates, so reruns
collapse); the Elasticsearch index is for people (search by reason, topic, interval).
Both writes are acknowledged before the drain commits its offsets.

Raw bytes travel as base64 (``raw_b64``), never through a text decode, so any payload,
binary or not, comes back exactly. A dead letter whose encoded size would not fit the DLQ
topic (limits read from the broker and the producer at start-up, see ``read_limits``) is a
claim check: the payload goes to S3 under its SHA-256 and the letter keeps the reference,
size, digest and a short preview. A record that cannot be dead-lettered at all raises
``DeadLetterError`` naming its topic, partition and offset, so the task fails instead of
skipping it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from elasticsearch import Elasticsearch
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from eventpipe.events.topics import DLQ_TOPIC
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX, IndexAction, bulk_index
from eventpipe.storage.s3 import ensure_bucket, s3_client

log = logging.getLogger(__name__)

PAYLOAD_PREFIX = "dead-letters/sha256"  # content-addressed claim-check objects in the archive bucket
PREVIEW_BYTES = 256
INLINE_KEY_BYTES = 4096  # larger source keys are claim-checked like payloads
# Room left under the smaller of the topic's and the producer's limit for what the JSON size
# does not count: record-batch framing (~70 bytes), the record key (< 300 bytes), headers.
ENVELOPE_HEADROOM = 16 * 1024
ES_CHUNK_BYTES = 16 * 1024 * 1024  # dead-letter bulk requests stay far below http.max_content_length


class DeadLetterError(RuntimeError):
    """A record could not be dead-lettered; the drain must fail rather than skip it."""


@dataclass(frozen=True)
class DlqLimits:
    topic_max_message_bytes: int
    producer_max_request_size: int

    @property
    def max_letter_bytes(self) -> int:
        """Largest serialized dead letter sent inline; anything bigger is claim-checked."""
        return min(self.topic_max_message_bytes, self.producer_max_request_size) - ENVELOPE_HEADROOM


def read_limits(settings: Settings, producer: KafkaProducer) -> DlqLimits:
    """The DLQ topic's ``max.message.bytes`` (as the broker resolves it) and the producer's limit.

    The topic exists: ``eventpipe setup`` (first task of the DAG) or the producer created it.
    """
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, client_id="eventpipe-dlq-limits")
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, DLQ_TOPIC, {"max.message.bytes": None})
        described = admin.describe_configs([resource], config_filter="all")
    finally:
        admin.close()
    value = described["topic"][DLQ_TOPIC]["max.message.bytes"]["value"]
    limits = DlqLimits(int(value), int(producer.config["max_request_size"]))
    log.info(
        "DLQ limits: topic max.message.bytes=%d, producer max.request.size=%d, dead letters over %d bytes "
        "are claim-checked to S3",
        limits.topic_max_message_bytes,
        limits.producer_max_request_size,
        limits.max_letter_bytes,
    )
    return limits


@dataclass(frozen=True)
class DeadLetter:
    source_topic: str
    partition: int
    offset: int
    kafka_timestamp: int
    raw: bytes
    error_kind: str
    reason: str
    raw_key: bytes | None = None

    @property
    def key(self) -> str:
        return f"{self.source_topic}:{self.partition}:{self.offset}"

    @property
    def coordinates(self) -> str:
        return f"topic {self.source_topic} partition {self.partition} offset {self.offset}"

    def document(self, interval_start: datetime, *, payload_ref: str | None = None) -> dict[str, object]:
        """The letter; with ``payload_ref`` the raw bytes are in S3 and only their digest is inline."""
        doc: dict[str, object] = {
            "reason": self.reason[:2000],
            "error_kind": self.error_kind,
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "kafka_timestamp": self.kafka_timestamp,
            "size": len(self.raw),
            "sha256": hashlib.sha256(self.raw).hexdigest(),
            "preview": self.raw[:PREVIEW_BYTES].decode("utf-8", errors="backslashreplace"),
            "interval_start": interval_start.isoformat(),
            "dead_lettered_at": datetime.now(timezone.utc).isoformat(),
        }
        if payload_ref is None:
            doc["raw_b64"] = base64.b64encode(self.raw).decode("ascii")
        else:
            doc["payload_ref"] = payload_ref
        if self.raw_key is not None:
            if len(self.raw_key) <= INLINE_KEY_BYTES:
                doc["key_b64"] = base64.b64encode(self.raw_key).decode("ascii")
            else:
                doc["key_sha256"] = hashlib.sha256(self.raw_key).hexdigest()
        return doc


def letter_raw(doc: dict[str, object], settings: Settings | None = None) -> bytes:
    """The exact source bytes of a dead-letter document, fetched from S3 when it is a claim check."""
    if "raw_b64" in doc:
        return base64.b64decode(str(doc["raw_b64"]))
    if settings is None:
        raise ValueError("a claim-checked dead letter needs settings to read S3")
    bucket, key = str(doc["payload_ref"]).removeprefix("s3://").split("/", 1)
    body = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    if hashlib.sha256(body).hexdigest() != doc["sha256"]:
        raise ValueError(f"claim-check object {doc['payload_ref']} does not match its sha256")
    return body


class ClaimCheck:
    """Content-addressed payload store: the same bytes always map to the same key (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3.bucket
        self._s3 = None

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        key = f"{PAYLOAD_PREFIX}/{digest[:2]}/{digest}"
        if self._s3 is None:
            ensure_bucket(self.settings, self.bucket)
            self._s3 = s3_client(self.settings)
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream")
        return f"s3://{self.bucket}/{key}"


def encode_letters(
    letters: list[DeadLetter], limits: DlqLimits, claims: ClaimCheck, interval_start: datetime
) -> list[tuple[DeadLetter, dict[str, object], bytes]]:
    """Each letter with its document and serialized value, claim-checked when it would not fit."""
    encoded = []
    for letter in letters:
        try:
            doc = letter.document(interval_start)
            value = json.dumps(doc).encode()
            if len(value) > limits.max_letter_bytes or (
                letter.raw_key is not None and len(letter.raw_key) > INLINE_KEY_BYTES
            ):
                doc = letter.document(interval_start, payload_ref=claims.put(letter.raw))
                if letter.raw_key is not None and len(letter.raw_key) > INLINE_KEY_BYTES:
                    doc["key_ref"] = claims.put(letter.raw_key)
                value = json.dumps(doc).encode()
        except Exception as exc:  # S3 down, credentials, ...: fail loudly, with coordinates
            raise DeadLetterError(f"cannot dead-letter {letter.coordinates}: {exc}") from exc
        if len(value) > limits.max_letter_bytes:
            raise DeadLetterError(
                f"cannot dead-letter {letter.coordinates}: the letter is {len(value)} bytes even as a claim "
                f"check, over the DLQ limit of {limits.max_letter_bytes}"
            )
        encoded.append((letter, doc, value))
    return encoded


def _chunks(items: list[IndexAction], sizes: list[int]) -> Iterator[list[IndexAction]]:
    chunk: list[IndexAction] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if chunk and total + size > ES_CHUNK_BYTES:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk


def write_dead_letters(
    letters: list[DeadLetter],
    *,
    es: Elasticsearch,
    producer: KafkaProducer,
    interval_start: datetime,
    limits: DlqLimits,
    claims: ClaimCheck,
) -> int:
    """Write ``letters`` to the DLQ topic and index; returns how many, raises if any is not acknowledged."""
    if not letters:
        return 0
    encoded = encode_letters(letters, limits, claims, interval_start)
    futures = []
    for letter, _, value in encoded:
        try:  # send itself raises when no broker answers for metadata within max_block_ms
            futures.append((letter, producer.send(DLQ_TOPIC, key=letter.key.encode(), value=value)))
        except Exception as exc:
            raise DeadLetterError(f"cannot dead-letter {letter.coordinates} to {DLQ_TOPIC}: {exc!r}") from exc
    producer.flush()
    for letter, future in futures:
        try:
            future.get(timeout=30)  # raises if the broker did not acknowledge
        except Exception as exc:
            raise DeadLetterError(f"cannot dead-letter {letter.coordinates} to {DLQ_TOPIC}: {exc!r}") from exc
    actions = [IndexAction(DLQ_INDEX, letter.key, doc, ref=letter) for letter, doc, _ in encoded]
    for chunk in _chunks(actions, [len(value) for _, _, value in encoded]):
        outcome = bulk_index(es, chunk)
        if outcome.rejected:
            action, reason = outcome.rejected[0]
            raise DeadLetterError(
                f"dead-letter index rejected {len(outcome.rejected)} records, first {action.ref.coordinates}: {reason}"  # type: ignore[attr-defined]
            )
    return len(letters)
