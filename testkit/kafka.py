"""Kafka helpers shared by the tests, the chaos run, the benchmark and the demo: the
private topic set a test or run uses, producing a sequence of messages with every
delivery confirmed, reading a topic to its end, headers as a dict."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from els_worker import contract
from els_worker.config import Config
from els_worker.kafka import ensure_topics, stored_at


def topics_field(event: contract.Event) -> str:
    """The ``Topics`` field of an event: its variable without ``ELS_TOPIC_`` (and
    ``OUT_``), in lower case (``ELS_TOPIC_OUT_SLOT_ASSIGNED`` -> ``slot_assigned``)."""
    return event.env_var.removeprefix("ELS_TOPIC_").removeprefix("OUT_").lower()


# the contract's names (els_worker.contract), keyed as Topics' fields
DEFAULT_TOPICS = {topics_field(event): event.topic for event in contract.EVENTS}


def create_topics(bootstrap: str, names: list[str], partitions: int = 3,
                  replication_factor: int = 1, min_insync_replicas: int = 0) -> None:
    """Creates the missing topics as the worker creates its own (``ensure_topics``: room
    for the contract's largest event, a leader for every partition before it returns):
    the one topic creator of tests, chaos runs and benchmarks."""
    ensure_topics(Config(kafka_bootstrap=bootstrap, topic_partitions=partitions,
                         topic_replication_factor=replication_factor,
                         topic_min_insync_replicas=min_insync_replicas), names)


@dataclass(frozen=True)
class Topics:
    """One test's private copy of every topic the service uses (SPEC sections 2 and 5),
    each ``t<hex>.<default name>``; the ``*_dlq`` ones are ``<input>.dlq``."""

    batch_registered: str
    content_provisioned: str
    validation_failed: str
    completed: str
    slot_assigned: str
    excess: str
    group_id: str
    all: tuple[str, ...] = field(default=())

    @property
    def batch_registered_dlq(self) -> str:
        return contract.dlq_topic(self.batch_registered)

    @property
    def content_provisioned_dlq(self) -> str:
        return contract.dlq_topic(self.content_provisioned)

    @property
    def validation_failed_dlq(self) -> str:
        return contract.dlq_topic(self.validation_failed)

    @classmethod
    def under(cls, prefix: str, group_id: str | None = None) -> Topics:
        """Every topic of the contract as ``<prefix>.<its name>``, consumer group
        ``<prefix>.els`` unless given; ``all`` lists them with the dead-letter topics."""
        names = {key: f"{prefix}.{name}" for key, name in DEFAULT_TOPICS.items()}
        dlqs = [contract.dlq_topic(names[topics_field(e)]) for e in contract.INPUTS]
        return cls(**names, group_id=group_id or f"{prefix}.els",
                   all=(*names.values(), *dlqs))

    def of(self, event: contract.Event) -> str:
        return str(getattr(self, topics_field(event)))

    def env(self) -> dict[str, str]:
        """Worker environment variables that point it at these topics and group."""
        return {**{event.env_var: self.of(event) for event in contract.EVENTS},
                "ELS_GROUP_ID": self.group_id}


def produce(
    bootstrap: str,
    messages: Iterable[tuple[str, bytes | None, bytes | None]],
    timeout: float = 30,
    pause_every: int = 0,
    pause: float = 0.0,
) -> None:
    """Produces (topic, key, value) in order and waits until the broker stored every
    one (a delivery report with an offset; one reported delivered without an offset is
    produced again, as the worker's producers do); with ``pause_every``, flushes and
    sleeps ``pause`` seconds after every that many."""
    errors: list[KafkaError] = []
    unconfirmed: list[tuple[str, bytes | None, bytes | None]] = []

    def on_delivery(message: tuple[str, bytes | None, bytes | None]) -> Any:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            elif stored_at(msg) is None:
                unconfirmed.append(message)
        return report

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 2,
         "compression.type": "zstd", "message.max.bytes": contract.MAX_MESSAGE_BYTES}
    )
    todo = list(messages)
    for _attempt in range(5):
        for n, message in enumerate(todo, 1):
            topic, key, value = message
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery(message))
            producer.poll(0)
            if pause_every and n % pause_every == 0:
                producer.flush(timeout)
                time.sleep(pause)
        remaining = producer.flush(timeout)
        assert remaining == 0, f"{remaining} message(s) not delivered within {timeout}s"
        assert not errors, f"delivery failed: {errors[:3]}"
        if not unconfirmed:
            return
        todo, unconfirmed[:] = list(unconfirmed), []
    raise AssertionError(f"{len(todo)} message(s) reported delivered without an offset 5 times")


class OffsetlessReports:
    """Forwards to a real producer, but the delivery reports of the messages ``strip``
    picks (by their 0-based number among this producer's reports) say "delivered" with
    no offset, as librdkafka's implicit acks do (confluent-kafka-go #921). Injected
    where a producer is (``make_producer``), to test the rule that such a report is
    no proof. The message itself was stored: producing it again makes a duplicate.
    ``real_offsetless`` keeps the headers of the messages the real producer itself
    reported delivered without an offset (``strip=never`` only watches for those)."""

    def __init__(self, real: Producer, strip: Any) -> None:
        self.real = real
        self.strip = strip
        self.reports = 0
        self.stripped = 0
        self.real_offsetless: list[dict[str, str]] = []

    def produce(self, topic: str, key: Any = None, value: Any = None, headers: Any = None,
                on_delivery: Any = None, **kwargs: Any) -> None:
        def report(err: KafkaError | None, msg: Message) -> None:
            n, self.reports = self.reports, self.reports + 1
            if err is None and stored_at(msg) is None:
                self.real_offsetless.append(
                    {k: v.decode() if isinstance(v, bytes) else v for k, v in headers or []})
            if err is None and self.strip(n):
                self.stripped += 1
                on_delivery(None, _WithoutOffset(msg))
            else:
                on_delivery(err, msg)
        self.real.produce(topic, key=key, value=value, headers=headers,
                          on_delivery=report if on_delivery else None, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def never(_n: int) -> bool:
    return False


class _WithoutOffset:
    def __init__(self, msg: Message) -> None:
        self._msg = msg

    def offset(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._msg, name)


def event_bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


# what a broker answers while a partition's leader is being elected (a new topic, a
# broker restarting): ask again
_LEADER_MOVING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT,
                  KafkaError._TIMED_OUT}


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                tp, timeout=max(1.0, deadline - time.monotonic()))
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() not in _LEADER_MOVING or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0,
               **client_config: Any) -> list[Message]:
    """Every message in ``topic``: all partitions, from the beginning until each reports
    its end (partition EOF); a missing topic reads as empty. Raises
    AssertionError when the end is not reached within ``timeout`` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **client_config,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        parts = list(meta.topics[topic].partitions) if topic in meta.topics else []
        tps = []
        deadline = time.monotonic() + timeout
        for p in parts:
            low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
            if high > low:
                tps.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not tps:
            return []
        consumer.assign(tps)
        pending = {tp.partition for tp in tps}
        out: list[Message] = []
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} timed out; partitions left {pending}")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                    continue
                if err.fatal():
                    raise AssertionError(f"consumer error on {topic}: {err}")
                continue  # transient (a broker restarting): librdkafka retries
            out.append(msg)
        return out
    finally:
        consumer.close()


def headers_of(msg: Message) -> dict[str, str]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            for k, v in items}
