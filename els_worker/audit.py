"""``worker.py audit``: proof of delivery after the fact (SPEC 5).

A delivery report is librdkafka's claim; the message read back at its offset is the
proof. The audit takes every outbox row published in a window with the topic,
partition and offset its report gave (``els.outbox_published_since``), reads those
offsets back from Kafka (one consumer, each partition read over the ranges its rows
span, never one fetch per row), and checks that the message there carries the row's
``event_id``. A row that is not there is produced again, as the relay would, and the
row records where the broker stored the new copy (``els.record_outbox_redelivery``).

What it cannot check it counts apart, and never re-produces:
- expired: the offset is below the partition's log start offset, so topic retention
  removed it (the consumers had the retention period to read it);
- unproven: published before offsets were kept (migration 0005), no coordinates.

Exit status: 0 when every row was found or produced again, 1 when a missing row could
not be produced again, 2 when PostgreSQL or Kafka could not be reached in time.
The worker runs it periodically when ``ELS_AUDIT_INTERVAL_SECONDS`` > 0 (``Auditor``),
in one worker at a time (an advisory lock, as for maintenance). Behind the proxy each
partition's outbox is audited on its own (``Config.database_partitions``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from els_worker import contract, db, kafka
from els_worker.config import Config
from els_worker.errors import pg_diagnostics
from els_worker.observability import Metrics, log
from els_worker.relay import Row, produce_rows

# Offsets this far apart in one partition are read as two ranges (a seek between them)
# rather than one: reading what lies between would cost more than the seek.
RANGE_GAP = 5000
REPRODUCE_ROUNDS = 3
# A row published (its transaction started) this long before the previous run started
# may have committed after that run read the outbox: the next window reaches back so far.
WINDOW_MARGIN_SECONDS = 300
# One partition's log start or end offset, asked at most this long (then the audit is
# AuditUnreachable: exit 2, or a failed periodic run, never a wait for good).
WATERMARK_TIMEOUT_S = 15.0

Partition = tuple[str, int]
Position = tuple[str, int, int]  # topic, partition, offset


class AuditUnreachable(Exception):
    """PostgreSQL or Kafka did not answer in time."""


@dataclass
class Published:
    """A published outbox row as the audit sees it."""

    id: int
    event_id: str
    event_type: str
    topic: str | None
    partition: int | None
    offset: int | None


@dataclass
class AuditReport:
    since: str
    checked: int = 0  # rows with coordinates, read back
    found: int = 0
    expired: int = 0
    unproven: int = 0
    missing: list[Published] = field(default_factory=list)
    republished: list[Published] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unrepaired(self) -> list[Published]:
        done = {r.id for r in self.republished}
        return [r for r in self.missing if r.id not in done]

    def summary(self) -> str:
        lines = [
            f"audit of outbox rows published in the last {self.since}: {self.checked} checked "
            f"in {self.seconds:.1f} s: {self.found} found at their offset, {len(self.missing)} "
            f"missing ({len(self.republished)} produced again), {self.expired} expired "
            f"(removed by topic retention), {self.unproven} unproven (published before "
            "offsets were kept)"]
        for r in self.missing[:20]:
            state = "produced again" if r not in self.unrepaired else "NOT produced again"
            lines.append(f"  missing: outbox id {r.id} event_id {r.event_id} {r.event_type} "
                         f"was at {r.topic}[{r.partition}]@{r.offset}: {state}")
        if len(self.missing) > 20:
            lines.append(f"  ... and {len(self.missing) - 20} more")
        return "\n".join(lines)


def event_id_of(msg: Message) -> str | None:
    """The event id a relayed message carries (its ``event_id`` header)."""
    for name, value in kafka.headers_list(msg):
        if name == contract.H_EVENT_ID:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def read_offsets(consumer: Consumer, wanted: Mapping[Partition, Iterable[int]],
                 deadline: float, admin: AdminClient
                 ) -> tuple[dict[Position, str | None], set[Position]]:
    """Reads the messages at the ``wanted`` offsets of each partition. Returns the event
    id each message found carries (its ``event_id`` header; None without one), by
    (topic, partition, offset), and the offsets below the log start offset (expired).
    An offset at or past the end, or skipped by the log (compaction, a transaction
    marker), is in neither. Raises AuditUnreachable at ``deadline``. Each partition's
    log start and end come from ``admin`` (kafka.EndOffsets: the consumer's own
    query can block past its timeout while a leader is down)."""
    marks = kafka.EndOffsets(admin, timeout=WATERMARK_TIMEOUT_S)
    found: dict[Position, str | None] = {}
    expired: set[Position] = set()
    ranges: dict[Partition, list[tuple[int, int]]] = {}
    targets: dict[Partition, set[int]] = {}
    for (topic, partition), offsets in wanted.items():
        offsets = list(offsets)
        low, high = _watermarks(marks, topic, partition, deadline)
        todo = sorted(o for o in set(offsets) if low <= o < high)
        expired.update((topic, partition, o) for o in offsets if o < low)
        if todo:
            ranges[(topic, partition)] = _ranges(todo)
            targets[(topic, partition)] = set(todo)
    if not ranges:
        return found, expired
    consumer.assign([TopicPartition(t, p, r[0][0]) for (t, p), r in ranges.items()])
    try:
        while ranges:
            if time.monotonic() > deadline:
                raise AuditUnreachable(f"Kafka: reading back {len(ranges)} partition(s) "
                                       "did not finish in time")
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            last: dict[Partition, int] = {}
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                key = (msg.topic() or "", msg.partition() or 0)
                offset = msg.offset() or 0
                if offset in targets.get(key, ()):
                    found[(key[0], key[1], offset)] = event_id_of(msg)
                if offset > last.get(key, -1):
                    last[key] = offset
            _advance(consumer, ranges, last, idle=not batch)
    finally:
        consumer.unassign()
    return found, expired


def _ranges(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted offsets as [first, last] ranges, split where the gap exceeds RANGE_GAP."""
    out = [(offsets[0], offsets[0])]
    for o in offsets[1:]:
        if o - out[-1][1] > RANGE_GAP:
            out.append((o, o))
        else:
            out[-1] = (out[-1][0], o)
    return out


def _advance(consumer: Consumer, ranges: dict[Partition, list[tuple[int, int]]],
             last: dict[Partition, int], idle: bool) -> None:
    """Moves each partition past the ranges it has read (``last``: the highest offset
    just read, by partition): seeks to its next range, or pauses it when none is left.
    When a poll returned nothing, the consumer's position tells (it passes transaction
    markers, which are never delivered)."""
    if idle:
        for tp in consumer.position([TopicPartition(t, p) for t, p in ranges]):
            if tp.offset >= 0:
                key = (tp.topic, tp.partition)
                last[key] = max(tp.offset - 1, last.get(key, -1))
    for key, reached in last.items():
        todo = ranges.get(key)
        if not todo or reached < todo[0][1]:
            continue
        while todo and reached >= todo[0][1]:
            todo.pop(0)
        if todo:
            consumer.seek(TopicPartition(key[0], key[1], todo[0][0]))
        else:
            consumer.pause([TopicPartition(key[0], key[1])])
            del ranges[key]


def _watermarks(offsets: kafka.EndOffsets, topic: str, partition: int,
                deadline: float) -> tuple[int, int]:
    tp = TopicPartition(topic, partition)
    if time.monotonic() > deadline:
        raise AuditUnreachable(f"Kafka: watermarks of {topic}[{partition}]: out of time")
    try:
        low, high = offsets(tp, False), offsets(tp, True)
    except KafkaException as exc:
        if _gone(offsets.admin, tp):
            return 0, 0  # gone: every row there is missing
        raise AuditUnreachable(f"Kafka: watermarks of {topic}[{partition}]: {exc}") from exc
    return int(low), int(high)


def _gone(admin: AdminClient, tp: TopicPartition) -> bool:
    """The broker answers and has no such partition (an offset query only says it
    found no leader, which a leader being elected says too)."""
    try:
        topics = admin.list_topics(tp.topic, timeout=5).topics
    except KafkaException:
        return False
    meta = topics.get(tp.topic)
    if meta is None:
        return True
    if meta.error is not None:
        return bool(meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART)
    return tp.partition not in meta.partitions


class Audit:
    """One audit run's clients: a database connection, a consumer to read back, a
    producer to produce missing rows again."""

    def __init__(self, cfg: Config, metrics: Metrics, conn: psycopg.Connection[Any],
                 make_producer: Callable[[Config], Producer] | None = None,
                 db_partition: str = "") -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.conn = conn
        self.db_partition = db_partition
        self.make_producer = make_producer or (lambda c: kafka.producer(c, "els-outbox-audit"))

    def run(self, since: str, timeout: float) -> AuditReport:
        started = time.monotonic()
        deadline = started + timeout
        report = AuditReport(since=since)
        rows = [Published(*r) for r in self.conn.execute(db.AUDIT_PUBLISHED_SINCE,
                                                         {"since": since}).fetchall()]
        wanted: dict[Partition, list[int]] = defaultdict(list)
        for r in rows:
            if r.topic is None or r.partition is None or r.offset is None:
                report.unproven += 1
            else:
                wanted[(r.topic, r.partition)].append(r.offset)
        report.checked = len(rows) - report.unproven
        if wanted:
            consumer = kafka.consumer(self.cfg, f"{self.cfg.group_id}.audit", **{
                "auto.offset.reset": "earliest",
                # reading a known range as fast as the broker serves it: large fetches,
                # and no waiting for more data at a partition's end
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
                "fetch.wait.max.ms": 10,
                "queued.max.messages.kbytes": 256 * 1024})
            try:
                _reachable(consumer, deadline)
                found, expired = read_offsets(consumer, wanted, deadline,
                                              kafka.admin(self.cfg, "els-outbox-audit"))
            finally:
                consumer.close()
            for r in rows:
                if r.offset is None:
                    continue
                where = (r.topic or "", r.partition or 0, r.offset)
                if found.get(where) == r.event_id:
                    report.found += 1
                elif where in expired:
                    report.expired += 1
                else:
                    report.missing.append(r)
        if report.missing:
            report.republished = self._produce_again(report.missing, deadline)
        report.seconds = time.monotonic() - started
        self._count(report)
        return report

    def _produce_again(self, missing: list[Published], deadline: float) -> list[Published]:
        """Produces the missing rows to the topic they were published to, as the relay
        does; returns those the broker stored (with an offset), their new coordinates
        recorded."""
        by_id = {r.id: r for r in missing}
        envelopes: list[Row] = self.conn.execute(
            db.AUDIT_ENVELOPES, {"ids": list(by_id)}).fetchall()
        producer = self.make_producer(self.cfg)
        done: list[Published] = []
        todo = envelopes
        try:
            for _ in range(REPRODUCE_ROUNDS):
                if not todo or time.monotonic() > deadline:
                    break
                deliveries = produce_rows(producer, todo, [by_id[r[0]].topic or "" for r in todo])
                producer.flush(max(1.0, min(45.0, deadline - time.monotonic())))
                if deliveries.unconfirmed:
                    self.metrics.unconfirmed_deliveries.labels(producer="audit").inc(
                        len(deliveries.unconfirmed))
                stored = [(r[0], deliveries.stored[id(r)]) for r in todo
                          if id(r) in deliveries.stored]
                if stored:
                    self.conn.execute(db.RECORD_REDELIVERY, db.delivery_arrays(stored))
                    done += [by_id[i] for i, _ in stored]
                for row, err in deliveries.failed.values():
                    log(logging.WARNING, "audit: producing a missing row again failed",
                        outbox_id=row[0], event_id=row[1], error=str(err))
                todo = [r for r in todo if id(r) not in deliveries.stored]
        finally:
            producer.flush(5)
        return done

    def _count(self, report: AuditReport) -> None:
        rows = self.metrics.audit_rows
        rows.labels(result="found").inc(report.found)
        rows.labels(result="missing").inc(len(report.missing))
        rows.labels(result="republished").inc(len(report.republished))
        rows.labels(result="expired").inc(report.expired)
        rows.labels(result="unproven").inc(report.unproven)
        ok = not report.unrepaired
        self.metrics.audit_runs.labels(result="ok" if ok else "missing").inc()
        if ok:
            self.metrics.audit_last_success.labels(db_partition=self.db_partition).set(time.time())
        for r in report.missing:
            log(logging.ERROR if r in report.unrepaired else logging.WARNING,
                "audit: outbox row missing from Kafka at its recorded offset",
                outbox_id=r.id, event_id=r.event_id, event_type=r.event_type, topic=r.topic,
                partition=r.partition, offset=r.offset, db_partition=self.db_partition,
                produced_again=r not in report.unrepaired)


def _reachable(consumer: Consumer, deadline: float) -> None:
    try:
        consumer.list_topics(timeout=max(1.0, min(15.0, deadline - time.monotonic())))
    except KafkaException as exc:
        raise AuditUnreachable(f"Kafka: {exc}") from exc


def cmd_audit(cfg: Config, since: str, timeout: float,
              make_producer: Callable[[Config], Producer] | None = None) -> int:
    """``worker.py audit``: prints the summary (one per partition behind the proxy);
    0 all proven, 1 a row missing and not produced again, 2 PostgreSQL or Kafka not
    reachable in time (the worst of the partitions)."""
    status = 0
    metrics = Metrics()
    for label, part_cfg in cfg.database_partitions():
        prefix = f"partition {label}: " if label else ""
        try:
            with db.connect(part_cfg, "els-outbox-audit") as conn:
                report = Audit(part_cfg, metrics, conn, make_producer, label).run(since, timeout)
        except (psycopg.OperationalError, AuditUnreachable) as exc:
            print(f"{prefix}audit failed: {exc}".strip(), file=sys.stderr)
            status = 2
            continue
        except psycopg.Error as exc:
            print(f"{prefix}audit failed: {pg_diagnostics(exc)}", file=sys.stderr)
            status = 2
            continue
        print(prefix + report.summary())
        if report.unrepaired:
            status = max(status, 1)
    return status


class Auditor:
    """The periodic audit in the worker (``ELS_AUDIT_INTERVAL_SECONDS``), in the one
    worker whose session holds the audit lock. Each run checks what was published since
    the previous run started (with a margin), at most ``ELS_AUDIT_WINDOW_SECONDS``; the
    first run of a process checks that whole window. A failure is logged and counted
    and never stops consumption."""

    def __init__(self, cfg: Config, metrics: Metrics, stop: threading.Event,
                 db_partition: str = "") -> None:
        """``cfg`` reaches the database whose outbox this audits (one of
        ``Config.database_partitions``, labelled ``db_partition``)."""
        self.cfg = cfg
        self.metrics = metrics
        self.stop = stop
        self.db_partition = db_partition
        self.session = db.Session(cfg, "els-outbox-audit")
        self.thread: threading.Thread | None = None
        self.holds_lock = False
        self.last_start: float | None = None

    def start(self) -> None:
        name = f"audit-{self.db_partition}" if self.db_partition else "audit"
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        log(logging.INFO, "audit loop started", interval_seconds=self.cfg.audit_interval_seconds,
            window_seconds=self.cfg.audit_window_seconds)
        while not self.stop.wait(self.cfg.audit_interval_seconds):
            self.run_once()
        self.session.close()

    def window_seconds(self, now: float) -> float:
        window = float(self.cfg.audit_window_seconds)
        if self.last_start is None:
            return window
        return min(window, now - self.last_start + WINDOW_MARGIN_SECONDS)

    def run_once(self) -> AuditReport | None:
        """One audit when this worker holds the lock; never raises."""
        started = time.time()
        try:
            conn = self.session.get()
            if not self.holds_lock:
                row = conn.execute(db.TRY_AUDIT_LOCK).fetchone()
                self.holds_lock = bool(row and row[0])
                if not self.holds_lock:
                    return None
            since = f"{self.window_seconds(started):.0f} seconds"
            report = Audit(self.cfg, self.metrics, conn, db_partition=self.db_partition).run(
                since, timeout=max(60.0, self.cfg.audit_interval_seconds))
        except (psycopg.Error, OSError, KafkaException, AuditUnreachable) as exc:
            self.metrics.audit_runs.labels(result="error").inc()
            self.session.after_fault(exc)
            if self.session.conn is None:
                self.holds_lock = False  # the lock went with the session
            log(logging.WARNING, "audit failed", error=f"{type(exc).__name__}: {exc}",
                db_partition=self.db_partition,
                **(pg_diagnostics(exc) if isinstance(exc, psycopg.Error) else {}))
            return None
        if not report.unrepaired:
            self.last_start = started
        log(logging.WARNING if report.missing else logging.INFO, "audit done",
            since=since, checked=report.checked, found=report.found,
            missing=len(report.missing), republished=len(report.republished),
            expired=report.expired, unproven=report.unproven, seconds=round(report.seconds, 2),
            db_partition=self.db_partition)
        return report
