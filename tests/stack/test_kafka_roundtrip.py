"""The local broker really works: a message goes out and comes back, through a
consumer group (as the worker uses it) and by direct partition assignment."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

pytestmark = pytest.mark.kafka

TIMEOUT_S = 30.0


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes, partition: int = -1) -> None:
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=key, value=value, partition=partition, on_delivery=on_delivery)
    remaining = producer.flush(TIMEOUT_S)
    assert remaining == 0, f"{remaining} message(s) not delivered within {TIMEOUT_S}s"
    assert not errors, f"delivery failed: {errors}"
    assert len(delivered) == 1


def _consume_one(consumer: Consumer) -> Message:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {err}")
        return msg
    raise AssertionError(f"no message consumed within {TIMEOUT_S}s")


def test_roundtrip_through_consumer_group(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("roundtrip", partitions=3)
    key = b"batch-" + uuid.uuid4().hex.encode()
    value = b'{"hello": "kafka"}'
    _produce(kafka_bootstrap, topic, key, value)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic}.group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        msg = _consume_one(consumer)
        assert msg.topic() == topic
        assert msg.key() == key
        assert msg.value() == value
        offset = msg.offset()
        assert offset is not None
        committed = consumer.commit(message=msg, asynchronous=False)
        assert committed is not None
        assert committed[0].offset == offset + 1
    finally:
        consumer.close()


def test_roundtrip_by_assignment(kafka_bootstrap: str, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("assigned", partitions=1)
    value = uuid.uuid4().bytes
    _produce(kafka_bootstrap, topic, b"k", value, partition=0)

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msg = _consume_one(consumer)
        assert (msg.partition(), msg.offset(), msg.value()) == (0, 0, value)
    finally:
        consumer.close()
