"""The outbox relay against the real broker and database: every outbox row is
published with its stable event id, and a crash between produce and mark leads to a
republish with the same event id, never a new one."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, Producer

from els_worker.config import Config
from els_worker.observability import Metrics
from els_worker.relay import Relay, relay_producer
from testkit import events as ev
from testkit.db import outbox_unpublished
from testkit.kafka import Topics, headers_of, read_topic
from testkit.worker import wait_until, worker_env

pytestmark = pytest.mark.kafka


def _config(db_url: str, kafka_bootstrap: str, topics: Topics, **kw: str) -> Config:
    return Config.from_env(worker_env(db_url, kafka_bootstrap, topics, ELS_RETRY_BASE_MS="10",
                                      ELS_RETRY_MAX_MS="100", ELS_RELAY_IDLE_MS="50", **kw))


class ForwardingProducer(Producer):
    """A Producer (the type the relay is given) whose calls go to the real relay producer;
    a test overrides the one call it injects a fault into."""

    def __init__(self, real: Producer, cfg: Config) -> None:
        super().__init__({"bootstrap.servers": cfg.kafka_bootstrap})
        self.real = real

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.real.produce(*args, **kwargs)

    def poll(self, timeout: float = 0) -> int:
        return self.real.poll(timeout)

    def flush(self, timeout: float = -1) -> int:
        return self.real.flush(timeout)


class DatabaseLostAfterDelivery:
    """Makes relay producers whose first flush delivers every message and then loses the
    relay's database connection (pg_terminate_backend): the crash between produce and
    mark, as a real fault instead of a hook in the relay."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.relay: Relay | None = None
        self.crashes = 0

    def __call__(self, cfg: Config) -> Producer:
        outer = self

        class Crashing(ForwardingProducer):
            def flush(self, timeout: float = -1) -> int:
                remaining = self.real.flush(timeout)
                if outer.crashes == 0 and outer.relay is not None:
                    outer.crashes += 1
                    conn = outer.relay.session.conn
                    assert conn is not None
                    with psycopg.connect(outer.db_url, autocommit=True) as admin:
                        admin.execute("SELECT pg_terminate_backend(%(p)s::integer)",
                                      {"p": conn.info.backend_pid})
                return remaining

        return Crashing(relay_producer(cfg), cfg)


class FatalOnFirstProducer:
    """Makes relay producers; the first one produces for real but reports every delivery
    as librdkafka's fatal idempotence error (out-of-order sequence), which happens when a
    leader change breaks the producer's sequence: the producer is unusable and some of its
    messages may be written. Later producers are the real relay producer."""

    def __init__(self) -> None:
        self.made: list[Producer] = []

    def __call__(self, cfg: Config) -> Producer:
        real = relay_producer(cfg)
        if self.made:
            self.made.append(real)
            return real

        class Fatal(ForwardingProducer):
            def produce(self, *args: Any, **kwargs: Any) -> None:
                callback = kwargs.pop("on_delivery")

                def fatal(_err: KafkaError | None, msg: Any) -> None:
                    callback(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                                        "injected: sequence broken", fatal=True), msg)

                kwargs["on_delivery"] = fatal
                self.real.produce(*args, **kwargs)

        producer = Fatal(real, cfg)
        self.made.append(producer)
        return producer


def _fill_outbox(db: psycopg.Connection[Any], batches: int = 3, essays: int = 3) -> set[str]:
    """Applies events with the SQL API directly; returns the outbox's event ids."""
    for b in range(batches):
        batch_id = f"relay-{b}-{uuid.uuid4().hex[:6]}"
        ev.apply(
            db, "register", ev.registration(batch_id, [f"{batch_id}-e{i}" for i in range(essays)])
        )
        for i in range(essays + 1):  # one more than fits: an excess event too
            ev.apply(db, "content", ev.content(batch_id, f"{batch_id}-t{i}"))
    rows = db.execute("SELECT event_id::text FROM els.event_outbox").fetchall()
    return {r[0] for r in rows}


def _published(kafka_bootstrap: str, topics: Topics) -> Counter[str]:
    seen: Counter[str] = Counter()
    for topic in (topics.completed, topics.slot_assigned, topics.excess):
        for msg in read_topic(kafka_bootstrap, topic):
            envelope = json.loads(msg.value() or b"")
            h = headers_of(msg)
            assert h["event_id"] == envelope["event_id"]
            assert h["event_type"] in (
                "BatchContentProvisioningCompleted",
                "EssaySlotAssigned",
                "ExcessContentProvisioned",
            )
            assert msg.key() == envelope["data"]["batch_id"].encode()
            seen[envelope["event_id"]] += 1
    return seen


def test_relay_publishes_each_row_once(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    expected = _fill_outbox(db)
    assert len(expected) == 3 * (3 + 1 + 1)  # slots, excess, completion per batch
    cfg = _config(db_url, kafka_bootstrap, unique_topics, ELS_RELAY_BATCH_SIZE="4")
    relay = Relay(cfg, Metrics(), threading.Event())
    try:
        total = 0
        while (n := relay.run_once()) > 0:
            assert n <= 4
            total += n
        assert total == len(expected)
        assert relay.run_once() == 0
    finally:
        relay.close()
    assert outbox_unpublished(db_url) == 0
    seen = _published(kafka_bootstrap, unique_topics)
    assert set(seen) == expected
    assert set(seen.values()) == {1}


def test_crash_between_produce_and_mark_republishes_same_event_ids(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    expected = _fill_outbox(db, batches=2)
    cfg = _config(db_url, kafka_bootstrap, unique_topics)
    crash = DatabaseLostAfterDelivery(db_url)
    relay = Relay(cfg, Metrics(), threading.Event(), make_producer=crash)
    crash.relay = relay
    try:
        with pytest.raises(psycopg.OperationalError):
            relay.run_once()
        # produced, but the claim rolled back: nothing is marked published
        assert outbox_unpublished(db_url) == len(expected)
        first = _published(kafka_bootstrap, unique_topics)
        assert set(first) == expected and set(first.values()) == {1}
        # the next round republishes the same rows, with the same event ids
        assert relay.run_once() == len(expected)
    finally:
        relay.close()
    assert outbox_unpublished(db_url) == 0
    seen = _published(kafka_bootstrap, unique_topics)
    assert set(seen) == expected, "a republish must not mint new event ids"
    assert set(seen.values()) == {2}


def test_relay_thread_survives_crash_and_drains(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    """The relay as it runs in the worker: a thread that recovers from the crash by
    itself (ROLLBACK, back off, claim again)."""
    expected = _fill_outbox(db, batches=1)
    cfg = _config(db_url, kafka_bootstrap, unique_topics)
    stop = threading.Event()
    metrics = Metrics()
    crash = DatabaseLostAfterDelivery(db_url)
    relay = Relay(cfg, metrics, stop, make_producer=crash)
    crash.relay = relay
    relay.start()
    try:
        wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "relay thread to drain")
        # rows written later are picked up by the idle poll, without a wake-up
        _fill_outbox(db, batches=1)
        wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "relay to pick up new rows")
    finally:
        stop.set()
        relay.join(30)
    assert relay.thread is not None and not relay.thread.is_alive()
    assert metrics.retries.labels(kind="relay")._value.get() == 1
    seen = _published(kafka_bootstrap, unique_topics)
    assert expected <= set(seen)
    assert all(seen[e] == 2 for e in expected)  # crashed once: each published twice


def test_fatal_producer_error_replaces_the_producer_and_republishes_same_event_ids(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    """SPEC 9 / issue 13: a fatal producer error marks nothing published, replaces the
    producer, and the next round republishes the same rows with the same event ids."""
    expected = _fill_outbox(db, batches=2)
    cfg = _config(db_url, kafka_bootstrap, unique_topics)
    factory = FatalOnFirstProducer()
    relay = Relay(cfg, Metrics(), threading.Event(), make_producer=factory)
    try:
        with pytest.raises(Exception, match="fatal producer error"):
            relay.run_once()
        assert outbox_unpublished(db_url) == len(expected), "nothing marked published"
        assert len(factory.made) == 2 and relay.producer is factory.made[1]
        assert relay.run_once() == len(expected)
        assert relay.run_once() == 0
    finally:
        relay.close()
    assert outbox_unpublished(db_url) == 0
    seen = _published(kafka_bootstrap, unique_topics)
    assert set(seen) == expected, "a republish must not mint new event ids"
    assert set(seen.values()) == {2}  # the broken producer's copies were written too
