"""The end offsets the stall watchdog and the audit read (els_worker.kafka.EndOffsets):
read_committed end offsets from the real broker, and a bounded wait when no broker
answers. The consumer's own query could block the consume loop for good while a
partition's leader was down (a ha-short chaos run: a worker silent for four minutes
after a broker kill)."""

from __future__ import annotations

import threading
import uuid

import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from els_worker.kafka import EndOffsets
from testkit.kafka import create_topics, produce
from testkit.worker import free_port, wait_until

pytestmark = pytest.mark.kafka


def test_end_offsets_are_the_brokers(kafka_bootstrap: str) -> None:
    topic = f"wd{uuid.uuid4().hex[:10]}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    produce(kafka_bootstrap, [(topic, b"k", f"m{i}".encode()) for i in range(7)])
    offsets = EndOffsets(AdminClient({"bootstrap.servers": kafka_bootstrap}), 2.0)

    def both() -> tuple[int, int] | None:
        try:  # a new topic's leader may still be unknown to a new client: ask again
            return offsets(TopicPartition(topic, 0), True), offsets(TopicPartition(topic, 0), False)
        except KafkaException:
            return None

    assert wait_until(both, 30, "end offsets of a new topic") == (7, 0)


def test_no_broker_answering_is_an_error_soon_not_a_hang() -> None:
    offsets = EndOffsets(AdminClient({"bootstrap.servers": f"127.0.0.1:{free_port()}",
                                      "log_level": 0}), 2.0)
    outcome: list[BaseException | int] = []

    def ask() -> None:
        try:
            outcome.append(offsets(TopicPartition("any", 0), True))
        except BaseException as exc:  # what the watchdog's check catches
            outcome.append(exc)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(30)
    assert not asking.is_alive(), "the end-offset query blocked"
    assert len(outcome) == 1 and isinstance(outcome[0], KafkaException), outcome
