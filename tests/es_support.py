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


def delete_matching(es: Elasticsearch, index: str, query: dict) -> None:
    """Delete the documents ``query`` matches, refreshed (the devstack node lacks the reindex module, which
    serves ``_delete_by_query``)."""
    hits = helpers.scan(es, index=index, query={"query": query}, _source=False, ignore_unavailable=True)
    helpers.bulk(es, ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits), refresh=True)


def forget_topics(es: Elasticsearch, topics: list[str]) -> None:
    """Delete the events and dead letters of ``topics``, except in write-blocked (quiesced, archived) day
    indices: those are the archive's record of a day, and the archive tests forget their days before use."""
    for index, field in ((EVENTS_ALIAS, "kafka.topic"), (DLQ_INDEX, "source_topic")):
        hits = helpers.scan(
            es, index=index, query={"query": {"terms": {field: topics}}}, _source=False, ignore_unavailable=True
        )
        actions = ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits)
        _, errors = helpers.bulk(es, actions, refresh=True, raise_on_error=False)
        unexpected = [e for e in errors if e["delete"].get("error", {}).get("type") != "cluster_block_exception"]
        assert not unexpected, unexpected[:3]
