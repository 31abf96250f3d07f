"""The settings a caller passes are the ones used: Elasticsearch timeout and bulk retries, topic durability.

Each is checked with the process environment saying otherwise, so a module that read its own ``Settings()``
(as the bulk writer once did) would fail here.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from eventpipe.events.topics import ensure_topics
from eventpipe.settings import Settings
from eventpipe.storage.elastic import IndexAction, bulk_index, client


class _Unavailable(BaseHTTPRequestHandler):
    """An Elasticsearch that answers every bulk request 503, counting them."""

    requests = 0

    def do_PUT(self) -> None:  # http.server's name; the client sends bulk requests as PUT
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": "unavailable", "status": 503}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture()
def unavailable() -> Iterator[str]:
    _Unavailable.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_takes_timeout_and_bulk_retries_from_the_settings_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_ES_RETRIES", "9")
    monkeypatch.setenv("EVENTPIPE_ES_TIMEOUT", "99")
    given = Settings.from_env({"EVENTPIPE_ES_RETRIES": "2", "EVENTPIPE_ES_TIMEOUT": "0.5"})
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        es = client(given.updated(elastic={"url": f"http://127.0.0.1:{silent.getsockname()[1]}"}))
        started = time.monotonic()
        with pytest.raises(ConnectionTimeout):
            es.info()
        assert time.monotonic() - started < 5  # the given 0.5 s, not the environment's 99 s
    assert es.bulk_attempts == 2
    assert es.options(request_timeout=5).bulk_attempts == 2
    # a drain's worker processes get the caller's settings pickled (spawn) and build their own client
    assert client(pickle.loads(pickle.dumps(given))).bulk_attempts == 2


def test_bulk_retries_exactly_as_often_as_the_settings_say(unavailable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_ES_RETRIES", "9")  # what the process says; the caller's settings win
    es = client(Settings.from_env({"EVENTPIPE_ES_URL": unavailable, "EVENTPIPE_ES_RETRIES": "2"}))
    with pytest.raises(ApiError) as raised:
        bulk_index(es, [IndexAction("scratch", "1", {"a": 1})])
    assert raised.value.meta.status == 503
    assert _Unavailable.requests == 2


@pytest.mark.services
def test_new_topics_take_partitions_replication_min_insync_and_retention_from_settings(services: Settings) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}.topic-settings"
    durability = {"topic_partitions": 2, "replication_factor": 1, "min_insync_replicas": 1, "retention_ms": 86_400_000}
    ensure_topics(services.updated(kafka=durability), [name])
    admin = KafkaAdminClient(bootstrap_servers=services.kafka.bootstrap, client_id="test-topic-settings")
    try:
        (described,) = admin.describe_topics([name])
        assert len(described["partitions"]) == 2
        assert {len(p["replica_nodes"]) for p in described["partitions"]} == {1}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])["topic"][name]
        set_on_topic = {k: v["value"] for k, v in configs.items() if v["config_source"] == "DYNAMIC_TOPIC_CONFIG"}
        assert set_on_topic == {
            "min.insync.replicas": "1",
            "message.timestamp.type": "CreateTime",
            "retention.ms": "86400000",
        }
    finally:
        admin.delete_topics([name])
        admin.close()
