"""Dead letters: every record that cannot be indexed is kept with the reason, twice.

The compacted Kafka topic is for reprocessing (keyed by source coordinates, so reruns
collapse); the Elasticsearch index is for people (search by reason, topic, interval).
Both writes are acknowledged before the drain commits its offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from elasticsearch import Elasticsearch
from kafka import KafkaProducer

from eventpipe.ingest.elastic import DLQ_INDEX, IndexAction, bulk_index
from eventpipe.ingest.topics import DLQ_TOPIC


@dataclass(frozen=True)
class DeadLetter:
    source_topic: str
    partition: int
    offset: int
    kafka_timestamp: int
    raw: bytes
    error_kind: str
    reason: str

    @property
    def key(self) -> str:
        return f"{self.source_topic}:{self.partition}:{self.offset}"

    def document(self, interval_start: datetime) -> dict[str, object]:
        return {
            "reason": self.reason,
            "error_kind": self.error_kind,
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "kafka_timestamp": self.kafka_timestamp,
            "raw": self.raw.decode("utf-8", errors="replace"),
            "interval_start": interval_start.isoformat(),
            "dead_lettered_at": datetime.now(timezone.utc).isoformat(),
        }


def write_dead_letters(
    letters: list[DeadLetter], *, es: Elasticsearch, producer: KafkaProducer, interval_start: datetime
) -> int:
    if not letters:
        return 0
    futures = [
        producer.send(DLQ_TOPIC, key=letter.key.encode(), value=json.dumps(letter.document(interval_start)).encode())
        for letter in letters
    ]
    producer.flush()
    for future in futures:
        future.get(timeout=30)  # raises if the broker did not acknowledge
    outcome = bulk_index(
        es, [IndexAction(DLQ_INDEX, letter.key, letter.document(interval_start)) for letter in letters]
    )
    if outcome.rejected:
        raise RuntimeError(f"dead-letter index rejected {len(outcome.rejected)} records: {outcome.rejected[0][1]}")
    return len(letters)
