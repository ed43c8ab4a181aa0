"""The partition stall watchdog (els_worker/watchdog.py) in the consume loop, against
the real broker and database, with a consumer whose fetcher sticks on one partition, as
librdkafka's did in the chaos runs after a broker restart, while the other partitions
flow: the watchdog notices, seeks, and every event of that partition is applied; the
partitions idle at transaction markers are never taken for stalled. The decision on
its own: tests/unit/test_watchdog_assess.py."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from els_worker import kafka
from els_worker.apply import BatchProcessor
from els_worker.config import Config
from els_worker.consumer import ConsumerLoop
from els_worker.dead_letters import DeadLetterWriter
from els_worker.health import Health
from els_worker.kafka import EndOffsets
from els_worker.observability import Metrics
from els_worker.watchdog import QUERY_TIMEOUT_S
from testkit import events as ev
from testkit.db import query
from testkit.kafka import Topics, event_bytes, read_topic
from testkit.worker import wait_until, worker_env

# --- the loop, with a fetcher that sticks on one partition ---------------------------


class StickingConsumer(Consumer):
    """A real consumer whose fetcher sticks on one partition, once: at the first message
    of ``victim`` at or past ``stick_at`` it stops librdkafka fetching that partition
    (pause), rewinds it there (seek) and withholds what was already fetched of it, so
    the loop sees an assigned partition with messages waiting and none arriving. The
    application's seek of that partition (the watchdog's recovery) unsticks it."""

    def __init__(self, config: dict[str, Any], victim: tuple[str, int], stick_at: int) -> None:
        super().__init__(config)
        self.victim = victim
        self.stick_at = stick_at
        self.stuck = False
        self.struck = False  # the fault happened
        self.withheld = 0
        self.recovery_seeks: list[int] = []
        self.health_at_seek: dict[str, Any] | None = None
        self.health: Health | None = None
        # per partition, the watchdog's looks at it (end-offset queries) since the recovery
        self.looks_since_recovery: dict[int, int] = defaultdict(int)

    def _withhold(self, msgs: list[Message]) -> list[Message]:
        kept = []
        for m in msgs:
            mine = m.error() is None and (m.topic(), m.partition()) == self.victim
            offset = m.offset() or 0
            if mine and not self.struck and offset >= self.stick_at:
                self.stuck = self.struck = True
                tp = TopicPartition(self.victim[0], self.victim[1], offset)
                super().pause([tp])
                super().seek(tp)
            if mine and self.stuck:
                self.withheld += 1
                continue
            kept.append(m)
        return kept

    def poll(self, timeout: float = -1) -> Message | None:
        msg = super().poll(timeout)
        if msg is None:
            return None
        kept = self._withhold([msg])
        return kept[0] if kept else None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        return self._withhold(super().consume(num_messages, timeout))

    def counting(self, end_offsets: EndOffsets) -> Callable[[TopicPartition, bool], int]:
        """The watchdog's end-offset reader, counting its looks since the recovery."""
        def look(tp: TopicPartition, latest: bool) -> int:
            if self.recovery_seeks and latest:
                self.looks_since_recovery[tp.partition] += 1
            return end_offsets(tp, latest)
        return look

    def seek(self, partition: TopicPartition) -> None:
        if (partition.topic, partition.partition) == self.victim and self.stuck:
            self.stuck = False
            self.recovery_seeks.append(partition.offset)
            if self.health is not None:
                self.health_at_seek = self.health.status()[1]
            super().resume([TopicPartition(partition.topic, partition.partition)])
        super().seek(partition)


def _produce_in_one_transaction(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    """As dlq-replay writes the input topics: in a transaction, whose commit marker then
    ends every partition it wrote (an offset no message is delivered at)."""
    producer = Producer({"bootstrap.servers": bootstrap,
                         "transactional.id": f"test-stall-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for topic, key, value in messages:
        producer.produce(topic, key=key, value=value)
    producer.commit_transaction(30)


class Trickle(threading.Thread):
    """Registrations to the partitions other than the victim, one transaction each, every
    0.1 s until ``until()``: the other partitions flow while the victim is stuck."""

    def __init__(self, bootstrap: str, topic: str, partitions: list[int],
                 until: Any) -> None:
        super().__init__(name="trickle", daemon=True)
        self.bootstrap, self.topic, self.partitions, self.until = (
            bootstrap, topic, partitions, until)
        self.batch_ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer({"bootstrap.servers": self.bootstrap,
                                 "transactional.id": f"test-trickle-{uuid.uuid4().hex[:8]}"})
            producer.init_transactions(30)
            n = 0
            while not self.until() and n < 600:
                batch_id = f"trickle-{n}-{uuid.uuid4().hex[:6]}"
                producer.begin_transaction()
                producer.produce(self.topic, partition=self.partitions[n % len(self.partitions)],
                                 key=batch_id.encode(),
                                 value=event_bytes(ev.registration(batch_id, [f"{batch_id}-e0"])))
                producer.commit_transaction(30)
                self.batch_ids.append(batch_id)
                n += 1
                time.sleep(0.1)
        except BaseException as exc:  # reported by the test
            self.error = exc


def _registered(db_url: str, batch_ids: list[str]) -> int:
    rows = query(db_url, "SELECT count(*) FROM els.batch_tracker"
                 " WHERE batch_id = ANY(%(ids)s::text[])", {"ids": batch_ids})
    return int(rows[0][0])


@pytest.mark.kafka
def test_partition_whose_fetch_sticks_is_recovered_and_fully_applied(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    topics = unique_topics
    batch_ids = [f"stall-{n}-{uuid.uuid4().hex[:6]}" for n in range(24)]
    _produce_in_one_transaction(kafka_bootstrap, [
        (topics.batch_registered, b.encode(),
         event_bytes(ev.registration(b, [f"{b}-e{i}" for i in range(2)])))
        for b in batch_ids
    ])
    # commit_transaction returns once the coordinator has decided; the commit markers
    # reach the partitions after that, so a read_committed read waits for all of them.
    produced = wait_until(
        lambda: (ms if len(ms := read_topic(kafka_bootstrap, topics.batch_registered))
                 >= len(batch_ids) else None),
        30, f"the {len(batch_ids)} committed registrations to be readable")
    assert produced is not None
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for m in produced:
        by_partition[m.partition() or 0].append((m.offset() or 0, (m.key() or b"").decode()))
    victim_partition, victim_msgs = max(by_partition.items(), key=lambda kv: len(kv[1]))
    assert len(victim_msgs) >= 3, by_partition
    victim = (topics.batch_registered, victim_partition)
    stick_at = 1  # its first message arrives, the fetch sticks before the second
    victim_batches = [b for offset, b in victim_msgs if offset >= stick_at]

    cfg = Config.from_env(worker_env(db_url, kafka_bootstrap, topics,
                                     ELS_PARTITION_STALL_SECONDS="3"))
    metrics = Metrics()
    health = Health(metrics, cfg.health_max_age_seconds)
    stop = threading.Event()
    processor = BatchProcessor(cfg, metrics, stop, health)
    dead_letters = DeadLetterWriter(cfg, metrics, stop)
    loop: ConsumerLoop | None = None

    def on_stats(stats: str) -> None:
        if loop is not None:
            loop.on_stats(stats)

    def on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if loop is not None:
            loop.on_commit(err, partitions)

    # the worker's consumer settings (els_worker.kafka.consumer), statistics every second
    consumer = StickingConsumer(cfg.kafka_consumer(**{
        "group.id": cfg.group_id, "enable.auto.commit": False,
        "enable.auto.offset.store": False, "auto.offset.reset": cfg.auto_offset_reset,
        "isolation.level": "read_committed", "statistics.interval.ms": 1000,
        "stats_cb": on_stats, "on_commit": on_commit,
    }), victim, stick_at)
    consumer.health = health
    loop = ConsumerLoop(cfg, processor, dead_letters, metrics, health, stop, consumer=consumer,
                        end_offsets=consumer.counting(
                            EndOffsets(kafka.admin(cfg, "test"), QUERY_TIMEOUT_S)))
    caplog.set_level(logging.INFO, logger="els.worker")
    loop.subscribe()
    runner = threading.Thread(target=loop.run, name="consumer-loop", daemon=True)
    runner.start()
    trickle = Trickle(kafka_bootstrap, topics.batch_registered,
                      [p for p in range(3) if p != victim_partition],
                      until=lambda: bool(consumer.recovery_seeks))
    trickle.start()
    try:
        wait_until(lambda: not trickle.is_alive(), 90, "the victim's recovery, others flowing",
                   lambda: f"struck={consumer.struck} trickled={len(trickle.batch_ids)}")
        assert trickle.error is None, trickle.error
        everything = batch_ids + trickle.batch_ids
        wait_until(lambda: _registered(db_url, everything) == len(everything), 90,
                   "every registration applied, the stuck partition's too",
                   lambda: f"struck={consumer.struck} withheld={consumer.withheld} "
                           f"seeks={consumer.recovery_seeks} victim={victim}")
        # every partition looked at twice more after the recovery: the others, idle at
        # their commit markers, and the victim, flowing again, are not stalls
        wait_until(lambda: all(consumer.looks_since_recovery[p] >= 2 for p in by_partition),
                   60, "two more looks at every partition",
                   lambda: str(dict(consumer.looks_since_recovery)))
    finally:
        stop.set()
        runner.join(30)
        loop.commit_unconfirmed()
        consumer.close()
        processor.close()
        dead_letters.close()
    assert not runner.is_alive()

    # the fault struck: librdkafka held back messages of that partition, while the
    # others flowed (their deliveries do not hide its stall)
    assert consumer.struck and consumer.withheld >= 1
    assert len(trickle.batch_ids) >= 10
    assert _registered(db_url, victim_batches) == len(victim_batches)
    # the watchdog sought it to the next unprocessed offset: the one it stuck at
    assert consumer.recovery_seeks == [stick_at]
    for p in by_partition:
        assert metrics.registry.get_sample_value(
            "els_consumer_partition_stalls_total",
            {"topic": victim[0], "partition": str(p)}) == (1 if p == victim[1] else 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.getMessage().startswith("partition stalled")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    fields = warnings[0].fields  # type: ignore[attr-defined]
    assert (fields["topic"], fields["partition"]) == victim
    assert fields["position"] == stick_at
    assert fields["high_offset"] == len(victim_msgs) + 1  # its messages, the commit marker
    assert fields["fetch_state"] == "active"  # paused, as the fault here is made
    assert {"fetch_state", "leader"} <= fields.keys()
    # /healthz named the partition while it was stalled, and no longer does
    assert consumer.health_at_seek is not None
    assert list(consumer.health_at_seek["stalled_partitions"]) == [f"{victim[0]}[{victim[1]}]"]
    _ok, body = health.status()
    assert body["stalled_partitions"] == {}
