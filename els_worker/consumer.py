"""The consume loop: micro-batches in partition order, dead letters, offsets,
rebalances, and the systemic hold.

An offset is committed only after the micro-batch's transaction committed and every
dead letter of it was confirmed by the broker. While a fault is systemic (an unexpected
error strikes every event) the loop holds the micro-batch: it backs off, tops it up
with messages that arrived meanwhile (if one of them applies, the failing events are
poison and go to the DLQ after their bounded retries; if the fault is fixed, all apply)
and tries again. Nothing is dead-lettered and nothing is committed meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from els_worker import contract, kafka
from els_worker.apply import BatchProcessor, SystemicFault
from els_worker.config import Config
from els_worker.dead_letters import DeadLetterWriter
from els_worker.errors import pg_diagnostics
from els_worker.health import Health
from els_worker.messages import Item, decode_item
from els_worker.observability import Metrics, log
from els_worker.report import report
from els_worker.retry import Retry, Stopping
from els_worker.watchdog import QUERY_TIMEOUT_S, Watchdog


class ConsumerLoop:
    def __init__(self, cfg: Config, processor: BatchProcessor, dead_letters: DeadLetterWriter,
                 metrics: Metrics, health: Health, stop: threading.Event,
                 consumer: Consumer | None = None,
                 end_offsets: Callable[[TopicPartition, bool], int] | None = None) -> None:
        self.cfg = cfg
        self.consumer = consumer or kafka.consumer(
            cfg, cfg.group_id, **{"client.id": "els-worker", "statistics.interval.ms": 10000,
                                  "stats_cb": self.on_stats, "error_cb": _on_kafka_error,
                                  "on_commit": self.on_commit})
        self.processor = processor
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.health = health
        self.stop = stop
        self._inflight: list[Message] = []
        self._held: list[Item] | None = None  # the micro-batch held by a systemic fault
        # offsets committed asynchronously, not yet confirmed: (topic, partition) -> next
        # offset; committed again synchronously before partitions go and at shutdown
        self._unconfirmed: dict[tuple[str, int], int] = {}
        self._ping_every = min(5.0, cfg.health_max_age_seconds / 3)
        self.watchdog = Watchdog(self.consumer, cfg.partition_stall_seconds, metrics, health,
                                 start_at_earliest=cfg.auto_offset_reset == "earliest",
                                 end_offsets=end_offsets
                                 or kafka.EndOffsets(kafka.admin(cfg, "els-watchdog"),
                                                     QUERY_TIMEOUT_S))

    def subscribe(self) -> None:
        self.consumer.subscribe(self.cfg.input_topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def run(self) -> None:
        last_ping = time.monotonic()
        try:
            while not self.stop.is_set():
                self.health.beat()
                # between micro-batches: nothing in flight or held, no rebalance callback
                # running, every delivered message processed (so the watchdog's "next
                # offset" is the next unprocessed one)
                self.watchdog.check()
                first = self.consumer.poll(0.5)
                if first is None:
                    if time.monotonic() - last_ping > self._ping_every:
                        self.processor.ping()
                        last_ping = time.monotonic()
                    continue
                # in flight from here: a rebalance inside consume() applies and commits
                # these before their partitions go (see _on_revoke)
                self._inflight = self._usable([first])
                more = self._consume(self.cfg.batch_max_messages - 1,
                                     self.cfg.batch_max_wait_ms / 1000.0)
                batch, self._inflight = self._inflight + more, []
                if batch:
                    self.process(batch)
                    last_ping = time.monotonic()
        except Stopping:
            log(logging.INFO, "shutdown during retries: micro-batch not committed, redelivered")

    def _consume(self, n: int, timeout: float) -> list[Message]:
        return self._usable(self.consumer.consume(n, timeout=timeout)) if n > 0 else []

    def _usable(self, msgs: Iterable[Message]) -> list[Message]:
        good: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise KafkaException(err)
            else:
                log(logging.WARNING, "consumer error", error=str(err), topic=m.topic())
        return good

    def process(self, msgs: Sequence[Message]) -> None:
        """One micro-batch: apply (holding it while the fault is systemic), dead-letter,
        then commit offsets."""
        started = time.monotonic()
        items = [decode_item(m) for m in msgs]
        self.metrics.batch_size.observe(len(items))
        self._apply_holding(items)
        committed = time.monotonic()
        dead = [it for it in items if it.dead]
        if dead:
            self.dead_letters.write(dead)
        self.watchdog.delivered(self._commit_offsets(items))
        report(items, committed - started, self.metrics, self.cfg.topic(contract.REGISTERED),
               self.cfg.log_events)

    def _apply_holding(self, items: list[Item]) -> None:
        retry = Retry(self.cfg.retry_base_ms, self.cfg.retry_max_ms, self.metrics, self.stop)
        while True:
            try:
                self.processor.apply(items)
                break
            except SystemicFault as fault:
                self._held = items
                diag = pg_diagnostics(fault.cause)
                self.health.systemic_fault(f"{diag.get('sqlstate')}: {diag.get('message')}")
                self.health.beat()
                try:
                    retry.wait("systemic", "unexpected error strikes every event of its topic: "
                               "holding the micro-batch, nothing dead-lettered", logging.ERROR,
                               messages=len(items), struck=fault.struck,
                               applied_elsewhere=fault.applied, **diag)
                    room = self.cfg.batch_max_messages - len(items)
                    items.extend(decode_item(m) for m in self._consume(room, 0))
                finally:
                    self._held = None
                if not items:  # every partition of the held micro-batch was revoked
                    break
        self.health.systemic_fault(None)

    # -- rebalances ------------------------------------------------------------------
    def _on_assign(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        log(logging.INFO, "partitions assigned", partitions=_names(partitions))
        self.watchdog.assigned(partitions)

    def _on_revoke(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        # Micro-batches are applied and committed between polls; what can be in flight is
        # what poll() returned just before the consume() that triggered this: finish and
        # commit it now, while the partitions are still ours. A held micro-batch is not
        # applied: its messages of these partitions go to their next owner.
        gone = {(p.topic, p.partition) for p in partitions}
        if self._held is not None:
            self._held[:] = [it for it in self._held if (it.topic, it.partition) not in gone]
        inflight, self._inflight = self._inflight, []
        log(logging.INFO, "partitions revoked", partitions=_names(partitions),
            in_flight=len(inflight))
        if inflight and self._held is None:
            self.process(inflight)
        self.commit_unconfirmed(gone)
        self.watchdog.revoked(partitions)

    def _on_lost(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): another member may already own them; what we had in flight
        # is redelivered to it, so it is not applied here.
        gone = {(p.topic, p.partition) for p in partitions}
        self._inflight = []
        if self._held is not None:
            self._held[:] = [it for it in self._held if (it.topic, it.partition) not in gone]
        for key in gone:
            self._unconfirmed.pop(key, None)
        self.watchdog.revoked(partitions)
        log(logging.WARNING, "partitions lost", partitions=_names(partitions))

    # -- offsets ---------------------------------------------------------------------
    def _commit_offsets(self, items: Sequence[Item]) -> dict[tuple[str, int], int]:
        """Commits ``last offset + 1`` per partition, asynchronously: the transaction has
        committed and the dead letters are confirmed, so whatever happens to this commit
        nothing is lost (at worst the messages come again and are ``duplicate``).
        Returns those offsets."""
        nexts: dict[tuple[str, int], int] = {}
        for it in items:
            key = (it.topic, it.partition)
            nexts[key] = max(nexts.get(key, -1), it.offset + 1)
        if not nexts:
            return nexts
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nexts.items()],
                                 asynchronous=True)
        except KafkaException as exc:
            self._commit_failed(str(exc))
            return nexts
        self._unconfirmed.update(nexts)
        return nexts

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if err is not None or failed:
            # e.g. a rebalance took the partition: its next owner re-applies (duplicate)
            self._commit_failed(str(err or failed[0].error))
            return
        for p in partitions:
            key = (p.topic, p.partition)
            if self._unconfirmed.get(key, -1) <= p.offset:
                self._unconfirmed.pop(key, None)

    def commit_unconfirmed(self, only: set[tuple[str, int]] | None = None) -> None:
        keys = [k for k in self._unconfirmed if only is None or k in only]
        if not keys:
            return
        offsets = [TopicPartition(t, p, self._unconfirmed.pop((t, p))) for t, p in keys]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(str(exc))

    def _commit_failed(self, error: str) -> None:
        self.metrics.retry_counter("offset_commit").inc()
        log(logging.WARNING, "offset commit failed; messages may be redelivered (idempotent)",
            error=error)

    def on_stats(self, stats_json: str) -> None:
        try:
            stats: dict[str, Any] = json.loads(stats_json)
            self.watchdog.stats(stats)
            for tname, tstats in stats.get("topics", {}).items():
                for pname, pstats in tstats.get("partitions", {}).items():
                    if pname == "-1" or pstats.get("consumer_lag", -1) < 0:
                        continue
                    self.metrics.consumer_lag.labels(topic=tname, partition=pname).set(
                        pstats["consumer_lag"])
        except (ValueError, KeyError, TypeError):
            pass


def _on_kafka_error(err: KafkaError) -> None:
    log(logging.ERROR if err.fatal() else logging.WARNING, "kafka error", error=str(err),
        code=err.code())


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
