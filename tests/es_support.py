"""Shared by the tests that count what a pipeline run left in Elasticsearch."""

from __future__ import annotations

from elasticsearch import Elasticsearch, helpers

from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS


def count(es: Elasticsearch, index: str, field: str, value: str) -> int:
    """Documents of ``index`` whose ``field`` is ``value``, after a refresh (so the last writes count)."""
    es.indices.refresh(index=index)
    return es.count(index=index, query={"term": {field: value}})["count"]


def events_of(es: Elasticsearch, topic: str) -> int:
    """Events of ``topic`` indexed in the events alias."""
    return count(es, EVENTS_ALIAS, "kafka.topic", topic)


def dead_letters_of(es: Elasticsearch, topic: str) -> int:
    """Records of ``topic`` in the dead-letter index."""
    return count(es, DLQ_INDEX, "source_topic", topic)


def delete_matching(es: Elasticsearch, index: str, query: dict, *, skip_blocked: bool = False) -> None:
    """Delete the documents ``query`` matches, refreshed (the devstack node lacks the reindex module, which
    serves ``_delete_by_query``). With ``skip_blocked``, documents in write-blocked (quiesced, archived) day
    indices stay: those are the archive's record of a day. Any other refusal fails the caller."""
    hits = helpers.scan(es, index=index, query={"query": query}, _source=False, ignore_unavailable=True)
    actions = ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits)
    _, errors = helpers.bulk(es, actions, refresh=True, raise_on_error=False)
    tolerated = {"cluster_block_exception"} if skip_blocked else set()
    unexpected = [e for e in errors if e["delete"].get("error", {}).get("type") not in tolerated]
    assert not unexpected, unexpected[:3]


def forget_topics(es: Elasticsearch, topics: list[str]) -> None:
    """Delete the events and dead letters of ``topics``, except in write-blocked day indices (the archive tests
    forget their days before use)."""
    delete_matching(es, EVENTS_ALIAS, {"terms": {"kafka.topic": topics}}, skip_blocked=True)
    delete_matching(es, DLQ_INDEX, {"terms": {"source_topic": topics}}, skip_blocked=True)
