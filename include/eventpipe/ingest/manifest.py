"""Drain manifests: which offsets each interval drained, stored in Elasticsearch.

A manifest is the contract between stages: reruns replay its exact ranges, neighbours
anchor their boundaries to it, rollups read its touched hours, and the nightly archive
copies its offset ranges into the archive manifest for audits.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Literal

from elasticsearch import Elasticsearch, NotFoundError
from pydantic import BaseModel, Field

from eventpipe.ingest.offsets import PartitionRange
from eventpipe.storage.elastic import MANIFEST_INDEX


class DrainManifest(BaseModel):
    topic: str
    interval_start: datetime
    interval_end: datetime
    status: Literal["planned", "complete"] = "planned"
    # "ledger": offsets no interval drain covered, drained by the offset ledger (eventpipe.ingest.ledger);
    # its interval is when the hole was found, so it is never an interval neighbour nor part of a day
    kind: Literal["interval", "ledger"] = "interval"
    partitions: list[dict[str, int | str]] = Field(default_factory=list)
    consumed: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    touched_hours: list[datetime] = Field(default_factory=list)
    attempts: int = 0
    finished_at: datetime | None = None

    @property
    def doc_id(self) -> str:
        if self.kind == "ledger":
            [only] = self.ranges()
            return ledger_manifest_id(only)
        return manifest_id(self.topic, self.interval_start, self.interval_end)

    def ranges(self) -> list[PartitionRange]:
        return [
            PartitionRange(str(p["topic"]), int(p["partition"]), int(p["start"]), int(p["end"]))
            for p in self.partitions
        ]


def manifest_id(topic: str, start: datetime, end: datetime) -> str:
    return f"{topic}|{_iso(start)}|{_iso(end)}"


def ledger_manifest_id(hole: PartitionRange) -> str:
    return f"{hole.topic}|ledger|{hole.partition}|{hole.start}|{hole.end}"


INTERVALS_ONLY = {"bool": {"must_not": [{"term": {"kind": "ledger"}}]}}


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ManifestStore:
    def __init__(self, es: Elasticsearch) -> None:
        self.es = es

    def get(self, topic: str, start: datetime, end: datetime) -> DrainManifest | None:
        return self.get_id(manifest_id(topic, start, end))

    def get_id(self, doc_id: str) -> DrainManifest | None:
        try:
            doc = self.es.get(index=MANIFEST_INDEX, id=doc_id)
        except NotFoundError:
            return None
        return DrainManifest.model_validate(doc["_source"])

    def neighbour(
        self, topic: str, *, ending_at: datetime | None = None, starting_at: datetime | None = None
    ) -> DrainManifest | None:
        """The manifest that ends where this interval starts, or starts where it ends."""
        field, value = ("interval_end", ending_at) if ending_at is not None else ("interval_start", starting_at)
        self.es.indices.refresh(index=MANIFEST_INDEX)
        hits = self.es.search(
            index=MANIFEST_INDEX,
            query={"bool": {"filter": [{"term": {"topic": topic}}, {"term": {field: _iso(value)}}, INTERVALS_ONLY]}},
            size=1,
        )["hits"]["hits"]
        return DrainManifest.model_validate(hits[0]["_source"]) if hits else None

    def save(self, manifest: DrainManifest) -> None:
        self.es.index(
            index=MANIFEST_INDEX, id=manifest.doc_id, document=manifest.model_dump(mode="json"), refresh="wait_for"
        )

    def between(self, start: datetime, end: datetime, topic: str | None = None) -> list[DrainManifest]:
        """All manifests whose intervals lie within [start, end) — used by the archive."""
        filters: list[dict[str, object]] = [
            {"range": {"interval_start": {"gte": _iso(start)}}},
            {"range": {"interval_end": {"lte": _iso(end)}}},
            INTERVALS_ONLY,
        ]
        if topic:
            filters.append({"term": {"topic": topic}})
        self.es.indices.refresh(index=MANIFEST_INDEX)
        hits = self.es.search(
            index=MANIFEST_INDEX, query={"bool": {"filter": filters}}, size=10_000, sort=[{"interval_start": "asc"}]
        )["hits"]["hits"]
        return [DrainManifest.model_validate(hit["_source"]) for hit in hits]

    def for_topic(self, topic: str, page: int = 5000) -> Iterator[DrainManifest]:
        """Every manifest of ``topic`` (intervals and ledger), paged through a point in time."""
        self.es.indices.refresh(index=MANIFEST_INDEX)
        pit = self.es.open_point_in_time(index=MANIFEST_INDEX, keep_alive="2m")["id"]
        after: list[object] | None = None
        try:
            while True:
                response = self.es.search(
                    pit={"id": pit, "keep_alive": "2m"},
                    query={"term": {"topic": topic}},
                    size=page,
                    sort=[{"_shard_doc": "asc"}],
                    search_after=after,
                )
                hits = response["hits"]["hits"]
                pit = response.get("pit_id", pit)
                for hit in hits:
                    yield DrainManifest.model_validate(hit["_source"])
                if len(hits) < page:
                    return
                after = hits[-1]["sort"]
        finally:
            self.es.close_point_in_time(id=pit)
