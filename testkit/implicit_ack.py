"""One trial of librdkafka's implicit-ack loss through the relay, for
tests/stack/test_implicit_ack_loss.py and bench/implicit_ack.py.

The window is widened as the reproduction found it widest on this machine: the output
topic (40 partitions) is created in the same CreateTopics call as 8 topics of 10
partitions, while a relay whose producer sends each message in a request of its own
(``batch.num.messages`` 1, ``linger.ms`` 0, ``in_flight`` requests in flight: a test
configuration) publishes 1,200 outbox rows on 40 keys in rounds of 300. The trial
asserts what the relay promises: every row is in its topic at the partition and offset
it recorded, carrying its event id.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from els_worker import contract, kafka
from els_worker.config import Config
from els_worker.observability import Metrics
from els_worker.relay import Relay
from testkit.kafka import OffsetlessReports, headers_of, never, read_topic

ROWS = 1200
KEYS = 40
TARGET_PARTITIONS = 40
COMPANIONS = 8


def trial(db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str,
          admin: AdminClient, in_flight: int = 5) -> tuple[int, int]:
    """One trial: returns (reports without an offset, rows the previous relay would
    have lost). Asserts that every row is at its recorded coordinates."""
    prefix = f"ia{uuid.uuid4().hex[:10]}"
    target = f"{prefix}.{contract.SLOT_ASSIGNED.topic}"
    companions = [f"{prefix}.c{i}" for i in range(COMPANIONS)]
    db.execute("DELETE FROM els.event_outbox")
    db.execute(
        "INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)"
        " SELECT gen_random_uuid(), 'EssaySlotAssigned', %(t)s::text, 'k-' || (g %% %(k)s),"
        " jsonb_build_object('n', g) FROM generate_series(1, %(n)s::integer) AS g",
        {"t": target, "k": KEYS, "n": ROWS})
    cfg = Config.from_env({"ELS_DATABASE_URL": db_url, "ELS_KAFKA_BOOTSTRAP": kafka_bootstrap,
                           contract.SLOT_ASSIGNED.env_var: target, "ELS_RELAY_BATCH_SIZE": "300",
                           "ELS_RETRY_BASE_MS": "10", "ELS_RETRY_MAX_MS": "50"})
    watchers: list[OffsetlessReports] = []

    def widened(c: Config) -> Any:
        watchers.append(OffsetlessReports(kafka.producer(c, "els-outbox-relay", **{
            "batch.num.messages": 1, "linger.ms": 0,
            "max.in.flight.requests.per.connection": in_flight}), never))
        return watchers[-1]

    metrics = Metrics()
    relay = Relay(cfg, metrics, threading.Event(), make_producer=widened)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=10, replication_factor=1) for t in companions]
        + [NewTopic(target, num_partitions=TARGET_PARTITIONS, replication_factor=1)],
        operation_timeout=30)
    try:
        deadline = time.monotonic() + 60
        while db.execute("SELECT count(*) FROM els.event_outbox WHERE published_at IS NULL"
                         ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the relay did not publish the outbox"
            try:
                relay.run_once()
            except Exception:  # a round with nothing proven is retried, as the thread does
                time.sleep(0.01)
    finally:
        relay.close()
        for fut in futures.values():
            try:
                fut.result(timeout=30)
            except KafkaException as exc:
                # the relay's producer may have had the broker create it first (producers
                # auto-create a topic they ask metadata for): a race this run provokes
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    copies: Counter[str] = Counter()
    at: dict[tuple[int, int], str] = {}
    for msg in read_topic(kafka_bootstrap, target, timeout=60):
        event_id = headers_of(msg)[contract.H_EVENT_ID]
        copies[event_id] += 1
        at[(msg.partition() or 0, msg.offset() or 0)] = event_id
    rows = db.execute("SELECT event_id::text, kafka_topic, kafka_partition, kafka_offset"
                      " FROM els.event_outbox").fetchall()
    assert len(rows) == ROWS
    for event_id, topic, partition, offset in rows:
        assert topic == target and at.get((partition, offset)) == event_id, (
            f"{event_id} is not at {topic}[{partition}]@{offset}")
    offsetless = [h[contract.H_EVENT_ID] for w in watchers for h in w.real_offsetless]
    unconfirmed = metrics.registry.get_sample_value(
        "els_kafka_unconfirmed_deliveries_total", {"producer": "relay"})
    assert unconfirmed == len(offsetless)
    for fut in admin.delete_topics([target, *companions], operation_timeout=30).values():
        try:
            fut.result(timeout=30)
        except Exception:  # cleanup only
            pass
    # a copy the broker never stored: the event is in the topic once, the copy sent again
    return len(offsetless), sum(1 for e in set(offsetless) if copies[e] == 1)
