"""The partition stall watchdog: notices a partition librdkafka has stopped fetching
and restarts its fetch.

Rarely, after a broker restart or a leader change, librdkafka stops fetching one
partition for good (its fetch state stuck in ``validate-epoch-wait`` or
``offset-query``; librdkafka issues #4492, #4425, #843): the group is stable, the
partition is ours, messages wait beyond our position, and ``poll()`` returns none of
them, with no error. The watchdog declares such a partition stalled and seeks it to its
next unprocessed offset, which is safe because every apply is idempotent and an offset
is committed only after its transaction (docs/worker.md, "Stall watchdog").

``assess`` is the decision, a pure function. ``Watchdog`` feeds it from what the loop
delivered, librdkafka's statistics and the broker's end offset, and acts on the
verdict. It runs on the consumer loop's thread between micro-batches only: never inside
a rebalance callback, never while a micro-batch is held or in flight. So it never asks
the broker anything that can block: the end offsets come from an AdminClient of its
own, waited for a bounded time (``kafka.EndOffsets``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from els_worker.health import Health
from els_worker.observability import Metrics, log

Key = tuple[str, int]  # (topic, partition)

# Broker look-ups (end offset, committed offset) of one check wait at most this long: a
# broker that does not answer makes the verdict unknown, never "stalled".
QUERY_TIMEOUT_S = 2.0
# A gap this long between two checks means the loop was busy elsewhere (a long
# micro-batch, a database outage retried in place): that time does not count as quiet.
AWAY_S = 5.0


class Verdict(enum.Enum):
    WAIT = "wait"  # not quiet for the stall timeout yet
    UNKNOWN = "unknown"  # our next offset or the broker's end offset is not known
    CAUGHT_UP = "caught_up"  # nothing beyond our position: quiet because idle
    QUEUED = "queued"  # fetched, waiting in the consumer queue: the loop is behind
    STALLED = "stalled"


@dataclass(frozen=True)
class PartitionStats:
    """One partition of librdkafka's statistics (STATISTICS.md), as the watchdog reads
    it. ``hi_offset``/``ls_offset`` come from Fetch responses only, so a fetcher that
    does not fetch reports stale ones: the watchdog asks the broker instead."""

    fetch_state: str
    leader: int
    # the fetcher's position: the offset after the last message it fetched (ahead of
    # ours while fetched messages wait in the consumer queue)
    next_offset: int
    hi_offset: int
    ls_offset: int
    # the length of the queue the partition's fetch queue forwards to: for the
    # high-level consumer the consumer queue all partitions share
    fetchq_cnt: int


def parse_stats(stats: Mapping[str, Any]) -> dict[Key, PartitionStats]:
    out: dict[Key, PartitionStats] = {}
    for tname, tstats in stats.get("topics", {}).items():
        for pname, p in tstats.get("partitions", {}).items():
            if pname == "-1":  # librdkafka's internal unassigned-partition entry
                continue
            try:
                out[(tname, int(pname))] = PartitionStats(
                    str(p["fetch_state"]), int(p["leader"]), int(p["next_offset"]),
                    int(p["hi_offset"]), int(p["ls_offset"]), int(p["fetchq_cnt"]))
            except (KeyError, TypeError, ValueError):
                continue
    return out


def assess(*, quiet_for: float, timeout: float, next_offset: int | None,
           position: int | None, end: int | None, stats: PartitionStats | None) -> Verdict:
    """Is this assigned partition stalled?

    ``quiet_for``: seconds the loop polled without receiving a message of it;
    ``next_offset``: the next offset the loop will process (last delivered + 1, or the
    committed offset when nothing was delivered since the assignment);
    ``position``: librdkafka's position for it (the offset after the last message or
    transaction marker it passed to the application; None: not known, e.g. after a seek);
    ``end``: the broker's end offset now (its last stable offset under read_committed);
    ``stats``: the partition's latest statistics (None: none received; librdkafka
    queues them ahead of messages, so they are at most one interval old).

    Stalled: quiet for the timeout, the broker holds messages beyond both our next
    offset and librdkafka's position (a transaction marker at the end advances the
    position, never delivers a message), and they do not wait in the consumer queue:
    the fetcher has not fetched beyond them, or the queue is empty (fetched ahead with
    messages queued, they wait behind other partitions': the loop is behind, not the
    fetcher).
    """
    if quiet_for < timeout:
        return Verdict.WAIT
    if next_offset is None or end is None:
        return Verdict.UNKNOWN
    reached = max(next_offset, position if position is not None and position >= 0 else -1)
    if end <= reached:
        return Verdict.CAUGHT_UP
    if stats is not None and stats.next_offset > reached and stats.fetchq_cnt > 0:
        return Verdict.QUEUED
    return Verdict.STALLED


@dataclass
class _Partition:
    quiet_since: float  # monotonic: the last delivery, assignment, check or away-gap
    next_offset: int | None = None  # the last delivered offset + 1
    stalls: int = 0  # stall verdicts since its last delivery


class Watchdog:
    """Per assigned partition: when it last delivered, what it delivered; a periodic
    check (``check``, from the consume loop between micro-batches) that recovers
    stalled partitions by seeking them. ``timeout`` 0 turns it off."""

    def __init__(self, consumer: Consumer, timeout: float, metrics: Metrics, health: Health,
                 start_at_earliest: bool,
                 end_offsets: Callable[[TopicPartition, bool], int]) -> None:
        """``end_offsets(tp, latest)``: the broker's end (latest) or log start offset of
        a partition, never blocking for long (``kafka.EndOffsets``)."""
        self.consumer = consumer
        self.end_offsets = end_offsets
        self.timeout = timeout
        self.metrics = metrics
        self.health = health
        # where librdkafka starts a partition without a committed offset
        self.start_at_earliest = start_at_earliest
        self._parts: dict[Key, _Partition] = {}
        self._stats: dict[Key, PartitionStats] = {}
        self._stalled: dict[Key, str] = {}  # reason per stalled partition, for /healthz
        self._last_check = time.monotonic()

    # -- what the loop tells it ----------------------------------------------------
    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        now = time.monotonic()
        for tp in partitions:
            self._parts[(tp.topic, tp.partition)] = _Partition(quiet_since=now)
            # the series exists at 0 from the assignment on, so increase() sees the first
            # stall and the alert's metric is there for a healthy worker too
            self.metrics.partition_stall_counter(tp.topic, str(tp.partition))

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Revoked or lost: forget them (a later assignment starts afresh)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._parts.pop(key, None)
            self._stats.pop(key, None)
            self._clear(key)

    def delivered(self, nexts: Mapping[Key, int]) -> None:
        """A micro-batch was processed: per partition, its last offset + 1."""
        now = time.monotonic()
        for key, nxt in nexts.items():
            part = self._parts.get(key)
            if part is None:  # delivered before the assignment reached us: ours anyway
                part = self._parts[key] = _Partition(quiet_since=now)
            part.quiet_since = now
            part.next_offset = nxt  # the latest, even below an earlier one (a truncated log)
            if part.stalls:
                log(logging.INFO, "stalled partition delivers again", topic=key[0],
                    partition=key[1], next_offset=part.next_offset, stalls=part.stalls)
                part.stalls = 0
                self._clear(key)

    def stats(self, stats: Mapping[str, Any]) -> None:
        self._stats = parse_stats(stats)

    # -- the check -------------------------------------------------------------------
    def check(self) -> None:
        if self.timeout <= 0 or not self._parts:
            return
        now = time.monotonic()
        away, self._last_check = now - self._last_check, now
        if away > AWAY_S:
            for part in self._parts.values():
                part.quiet_since = min(now, part.quiet_since + away)
        due = [key for key, part in self._parts.items() if now - part.quiet_since >= self.timeout]
        if not due:
            return
        try:
            ours = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        except KafkaException:
            return
        for n, key in enumerate(due):
            part = self._parts[key]
            quiet_for = now - part.quiet_since
            part.quiet_since = now  # looked at: the next look is a full timeout away
            if key not in ours:  # never seek a partition that is not ours
                self._parts.pop(key, None)
                self._clear(key)
                continue
            try:
                next_offset, position, end = self._offsets(key, part)
            except KafkaException as exc:
                # the broker does not answer (restarting?): no verdict now; the other
                # due partitions wait a period too rather than each block the loop
                log(logging.INFO, "stall check skipped: broker did not answer",
                    error=str(exc), partitions=len(due) - n)
                for rest in due[n + 1:]:
                    if rest in self._parts:
                        self._parts[rest].quiet_since = now
                return
            verdict = assess(quiet_for=quiet_for, timeout=self.timeout, next_offset=next_offset,
                             position=position, end=end, stats=self._stats.get(key))
            if verdict is Verdict.STALLED:
                assert next_offset is not None and end is not None
                self._recover(key, part, next_offset, end, position, quiet_for)
            elif verdict is Verdict.CAUGHT_UP and part.stalls:
                part.stalls = 0
                self._clear(key)

    def _offsets(self, key: Key, part: _Partition) -> tuple[int | None, int | None, int]:
        """(our next offset, librdkafka's position, the broker's end offset)."""
        tp = TopicPartition(key[0], key[1])
        end = self.end_offsets(tp, True)
        if part.next_offset is None:
            committed = self.consumer.committed([tp], timeout=QUERY_TIMEOUT_S)[0].offset
            if committed >= 0:
                part.next_offset = committed
            elif self.start_at_earliest:
                part.next_offset = self.end_offsets(tp, False)
        position = self.consumer.position([tp])[0].offset
        return part.next_offset, (position if position >= 0 else None), end

    def _recover(self, key: Key, part: _Partition, next_offset: int, end: int,
                 position: int | None, quiet_for: float) -> None:
        topic, partition = key
        part.stalls += 1
        st = self._stats.get(key)
        fetch_state = st.fetch_state if st else None
        leader = st.leader if st else None
        self.metrics.partition_stall_counter(topic, str(partition)).inc()
        log(logging.WARNING, "partition stalled: messages wait beyond our position but none "
            "arrive; seeking it to the next unprocessed offset", topic=topic,
            partition=partition, position=next_offset, high_offset=end,
            fetch_state=fetch_state, leader=leader, librdkafka_position=position,
            fetch_offset=st.next_offset if st else None,
            queued=st.fetchq_cnt if st else None, quiet_seconds=round(quiet_for, 1),
            attempt=part.stalls)
        self._stalled[key] = (f"position {next_offset}, broker end {end}, nothing delivered "
                              f"for {quiet_for:.0f} s (fetch_state {fetch_state}, leader "
                              f"{leader}, attempt {part.stalls})")
        self.health.partition_stalls({f"{t}[{p}]": r for (t, p), r in self._stalled.items()})
        try:
            # No leader epoch: librdkafka skips offset validation for an epoch-less seek and
            # makes the fetch state active; the seek also bumps the partition's op version
            # (stale offset/validation responses are ignored) and stops a pending offset
            # query (rd_kafka_toppar_seek, rd_kafka_offset_validate).
            self.consumer.seek(TopicPartition(topic, partition, next_offset))
        except KafkaException as exc:
            log(logging.WARNING, "seek of a stalled partition failed; tried again after the "
                "next stall timeout", topic=topic, partition=partition, error=str(exc))

    def _clear(self, key: Key) -> None:
        if self._stalled.pop(key, None) is not None:
            self.health.partition_stalls(
                {f"{t}[{p}]": r for (t, p), r in self._stalled.items()})
