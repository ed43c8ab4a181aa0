"""Kafka clients as the worker configures them, producing with delivery reports, and
creating the topics the worker uses.

Producers and topics are sized for the largest event the contract allows
(``contract.MAX_MESSAGE_BYTES``) and compress with zstd; every producer is idempotent
with ``acks=all``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from els_worker import contract
from els_worker.config import Config
from els_worker.observability import log

Headers = list[tuple[str, str | bytes | None]]
DeliveryCallback = Callable[[KafkaError | None, Message], None]

# Errors about one message that no retry of the same bytes can cure.
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, 18})  # 18: RECORD_LIST_TOO_LARGE
MESSAGE_FAULTS = TOO_LARGE | frozenset({
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.POLICY_VIOLATION,
})


def producer(cfg: Config, client_id: str, **settings: Any) -> Producer:
    """An idempotent producer (acks=all), sized for the contract's largest event, with
    one request in flight per broker."""
    return Producer(cfg.kafka(**{
        "enable.idempotence": True,
        "acks": "all",
        # With several requests in flight, a first request that fails with "Not leader for
        # partition" while a later one succeeds makes librdkafka report the first
        # message delivered, without an offset, although it was never stored
        # (confluent-kafka-go #921). One in flight closed that window in the
        # reproduction (0 of 30 trials against 7 of 30) at no cost to the relay, which
        # waits for every report of a round anyway (docs/BENCHMARKS.md). The offset
        # rule (stored_at) stays: it does not depend on this setting.
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": 5,
        "compression.type": "zstd",
        "message.max.bytes": contract.MAX_MESSAGE_BYTES,
        # bounded: after a broker restart an unbounded (300 s) delivery would hold the
        # caller; callers retry what times out
        "message.timeout.ms": 30000,
        "client.id": client_id,
        **settings,
    }))


def admin(cfg: Config, client_id: str) -> AdminClient:
    return AdminClient(cfg.kafka(**{"client.id": client_id}))


class EndOffsets:
    """The broker's offsets of a partition (``latest``: its end; else its log start),
    asked by an AdminClient of its own and waited for at most ``timeout`` seconds.

    The consumer's own query (``get_watermark_offsets(cached=False)``) can block past
    its timeout, for good, while the partition's leader is down (librdkafka #2588,
    #4878): a ha-short chaos run saw a worker's consume loop sit in it for four minutes
    after a broker kill, with lag stuck (the stall watchdog asked it). A request left
    unanswered here only leaves a future pending; the caller goes on."""

    def __init__(self, admin: AdminClient, timeout: float) -> None:
        self.admin = admin
        self.timeout = timeout

    def __call__(self, tp: TopicPartition, latest: bool = True) -> int:
        spec = OffsetSpec.latest() if latest else OffsetSpec.earliest()
        # read_committed, as the consumer reads: the end is the last stable offset
        futures = self.admin.list_offsets({TopicPartition(tp.topic, tp.partition): spec},
                                          isolation_level=IsolationLevel.READ_COMMITTED,
                                          request_timeout=self.timeout)
        try:
            info = next(iter(futures.values())).result(timeout=self.timeout + 1)
        except concurrent.futures.TimeoutError as exc:
            raise KafkaException(f"offsets of {tp.topic}[{tp.partition}]: no answer") from exc
        return int(info.offset)


def consumer(cfg: Config, group_id: str, **settings: Any) -> Consumer:
    """A consumer that stores and commits offsets only when told to."""
    return Consumer(cfg.kafka_consumer(**{
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": cfg.auto_offset_reset,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",  # never an aborted dlq-replay transaction
        # A fetch may carry the largest message the contract allows; per partition the
        # default (1 MB) stays: the broker returns a partition's first batch whole even
        # when it is larger (KIP-74), and fetching 64 MiB of one partition at a time
        # made a worker read every content ahead of the registrations, which were then
        # reconciled batch by batch (75% of the contents pending on arrival,
        # docs/BENCHMARKS.md).
        "fetch.max.bytes": contract.MAX_MESSAGE_BYTES,
        **settings,
    }))


def produce(
    p: Producer, topic: str, key: str | bytes | None, value: str | bytes | None, headers: Headers,
    on_delivery: DeliveryCallback,
) -> KafkaError | None:
    """Queues one message, waiting while the local queue is full. Returns the error when
    librdkafka refuses the message before sending it (e.g. too large), else None."""
    while True:
        try:
            p.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            return None
        except BufferError:
            p.poll(0.1)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None:
                raise
            return err


def headers_list(msg: Message) -> Headers:
    """A consumed message's headers, ready to produce again unchanged."""
    headers = msg.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def header_texts(msg: Message) -> dict[str, str]:
    """A consumed message's headers as text (the last value of a repeated name)."""
    out = {}
    for name, value in headers_list(msg):
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
    return out


Coordinates = tuple[str, int, int]  # topic, partition, offset: where the broker stored it


def stored_at(msg: Message) -> Coordinates | None:
    """Where a successful delivery report says the broker stored the message, or None
    when it gives no partition or offset: no proof (librdkafka reports a message
    "implicitly acked by subsequent batch success" that was never stored with offset
    None; confluent-kafka-go #921). Such a message is produced again."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None or partition < 0 or offset < 0:
        return None
    return topic, partition, offset


class Deliveries:
    """Collects the delivery reports of a round of produce calls, by item: where the
    broker stored each (``stored``), which failed (``failed``), and which were reported
    delivered without an offset (``unconfirmed``: not delivered, produce them again)."""

    def __init__(self) -> None:
        self.stored: dict[int, Coordinates] = {}
        self.failed: dict[int, tuple[Any, KafkaError]] = {}
        self.unconfirmed: dict[int, Any] = {}

    def callback(self, item: Any) -> DeliveryCallback:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failed[id(item)] = (item, err)
                return
            where = stored_at(msg)
            if where is None:
                self.unconfirmed[id(item)] = item
            else:
                self.stored[id(item)] = where
        return report

    def refuse(self, item: Any, err: KafkaError) -> None:
        self.failed[id(item)] = (item, err)


def ensure_topics(cfg: Config, topics: Iterable[str]) -> None:
    """Creates the missing topics: ``ELS_TOPIC_PARTITIONS`` partitions, replication
    factor ``ELS_TOPIC_REPLICATION_FACTOR``, ``max.message.bytes`` for the largest
    event, ``min.insync.replicas`` when configured. Existing topics are left alone."""
    admin = AdminClient(cfg.kafka())
    existing = set(admin.list_topics(timeout=15).topics)
    missing = [t for t in sorted(set(topics)) if t not in existing]
    if not missing:
        return
    topic_config = {"max.message.bytes": str(contract.MAX_MESSAGE_BYTES)}
    if cfg.topic_min_insync_replicas:
        topic_config["min.insync.replicas"] = str(cfg.topic_min_insync_replicas)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=cfg.topic_partitions,
                  replication_factor=cfg.topic_replication_factor, config=topic_config)
         for t in missing],
        operation_timeout=15,
    )
    for topic, fut in futures.items():
        try:
            fut.result(timeout=30)
            log(logging.INFO, "topic created", topic=topic, partitions=cfg.topic_partitions,
                replication_factor=cfg.topic_replication_factor, **topic_config)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
    _wait_for_leaders(admin, missing)


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float = 30.0) -> None:
    """Until the metadata shows a leader for every partition of the new topics. A first
    produce to a partition whose leader is not ready yet fails with "Not leader for
    partition", the window in which librdkafka reports messages delivered that were
    never stored (confluent-kafka-go #921). Waiting narrows that window; only the
    offset rule (``stored_at``) closes it, so a timeout here is logged, not raised."""
    deadline = time.monotonic() + timeout
    waiting = set(topics)
    while waiting and time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10).topics
        waiting = {t for t in waiting
                   if t not in meta or meta[t].error is not None or not meta[t].partitions
                   or any(p.leader < 0 for p in meta[t].partitions.values())}
        if waiting:
            time.sleep(0.2)
    if waiting:
        log(logging.WARNING, "new topics have partitions without a leader yet",
            topics=sorted(waiting), waited_s=timeout)


def worker_topics(cfg: Config) -> list[str]:
    """Every topic the worker reads or writes."""
    inputs = cfg.input_topics
    return [*inputs, *(contract.dlq_topic(t) for t in inputs), *cfg.output_topics]
