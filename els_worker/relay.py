"""The outbox relay: claim, produce, wait for every delivery report, mark, commit.

Rows are marked published only after Kafka confirmed them, in the transaction that
claimed them: anything that goes wrong before the COMMIT rolls the claim back and the
rows are produced again later with the same event_id (consumers deduplicate on it).
Confirmed means a delivery report with the partition and offset the broker stored the
row at, which the row keeps (SPEC 5, proof of delivery; ``worker.py audit`` reads them
back). A report of success without an offset proves nothing: the row stays unpublished
and goes out again in a later round, and ``els_kafka_unconfirmed_deliveries`` counts it.
No row blocks the rows behind it: a row Kafka refuses for a reason of its own (too
large, refused by the topic), or that fails while others of the round got through, is
set aside with its reason (``els.set_aside_outbox``; ``els.outbox_set_aside``,
``els_outbox_unpublishable``, /healthz) and retried later; only when every row of a
round fails for a reason that is Kafka's (a broker down) is the round retried whole.
A fatal producer error (e.g. an idempotence sequence broken) replaces the producer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Producer

from els_worker import contract, db, kafka
from els_worker.config import Config
from els_worker.errors import pg_diagnostics
from els_worker.health import Health
from els_worker.observability import Metrics, log
from els_worker.retry import Retry, Stopping

Row = tuple[int, str, str, str, str, str]  # id, event_id, event_type, topic, key, envelope
Delivered = tuple[Row, kafka.Coordinates]


class RelayDeliveryError(Exception):
    pass


def relay_producer(cfg: Config) -> Producer:
    return kafka.producer(cfg, "els-outbox-relay")


def produce_rows(producer: Producer, rows: list[Row], topics: list[str]) -> kafka.Deliveries:
    """Queues each outbox row to its topic (``topics[i]`` for ``rows[i]``) as the relay
    publishes it: key the batch id, value the envelope, headers the event id and type.
    The caller flushes and reads the reports."""
    deliveries = kafka.Deliveries()
    for row, topic in zip(rows, topics, strict=True):
        _id, event_id, event_type, _row_topic, key, envelope = row
        # text as it is: the client encodes str to UTF-8 itself, cheaper than .encode() here
        headers: kafka.Headers = [(contract.H_EVENT_ID, event_id),
                                  (contract.H_EVENT_TYPE, event_type)]
        err = kafka.produce(producer, topic, key, envelope, headers, deliveries.callback(row))
        if err is not None:
            deliveries.refuse(row, err)
    return deliveries


class Relay:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        stop: threading.Event,
        health: Health | None = None,
        make_producer: Callable[[Config], Producer] = relay_producer,
        db_partition: str = "",
    ) -> None:
        """``cfg`` reaches the database whose outbox this relay publishes (one of
        ``Config.database_partitions``, labelled ``db_partition``)."""
        self.cfg = cfg
        self.db_partition = db_partition
        self.metrics = metrics
        self.stop = stop
        self.health = health
        self.make_producer = make_producer
        self.producer = make_producer(cfg)
        self.session = db.Session(cfg, "els-outbox-relay")
        self.thread: threading.Thread | None = None
        self._last_backlog = 0.0
        self.published = 0

    def start(self) -> None:
        name = f"outbox-relay-{self.db_partition}" if self.db_partition else "outbox-relay"
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        log(logging.INFO, "outbox relay started", batch_size=self.cfg.relay_batch_size,
            db_partition=self.db_partition)
        retry = Retry(self.cfg.retry_base_ms, self.cfg.retry_max_ms, self.metrics, self.stop)
        try:
            while not self.stop.is_set():
                try:
                    n = self.run_once()
                    retry.succeeded()
                    self._partition_reached(True)
                    if n < self.cfg.relay_batch_size:
                        self.stop.wait(self.cfg.relay_idle_ms / 1000.0)
                except Exception as exc:  # the relay must survive anything
                    if isinstance(exc, psycopg.OperationalError):
                        self._partition_reached(False)
                    self.session.after_fault(exc)
                    retry.wait("relay", "outbox relay round failed: rolled back, will republish",
                               error=f"{type(exc).__name__}: {exc}",
                               db_partition=self.db_partition,
                               **(pg_diagnostics(exc) if isinstance(exc, psycopg.Error) else {}))
        except Stopping:
            pass
        self.close()
        log(logging.INFO, "outbox relay stopped", published=self.published,
            db_partition=self.db_partition)

    def _partition_reached(self, reached: bool) -> None:
        if self.db_partition:
            self.metrics.partition_db_up.labels(db_partition=self.db_partition).set(
                1 if reached else 0)

    def close(self) -> None:
        self.producer.flush(10)
        self.session.close()

    def run_once(self) -> int:
        """One relay round. Returns the number of rows claimed."""
        conn = self.session.get()
        self._maybe_update_backlog(conn)
        with conn.transaction():
            rows: list[Row] = conn.execute(
                db.CLAIM_OUTBOX, {"limit": self.cfg.relay_batch_size}).fetchall()
            if not rows:
                return 0
            delivered, refused = self._publish(rows)
            for row, err in refused:
                log(logging.WARNING, "outbox row set aside: Kafka refused it", outbox_id=row[0],
                    event_id=row[1], event_type=row[2], bytes=len(row[5]), error=str(err))
                conn.execute(db.SET_ASIDE, {"id": row[0], "reason": f"{err.name()}: {err.str()}"})
            if delivered:
                conn.execute(db.MARK_PUBLISHED, db.delivery_arrays(
                    [(row[0], where) for row, where in delivered]))
        for event_type, n in Counter(row[2] for row, _where in delivered).items():
            self.metrics.outbox_published.labels(event_type=event_type).inc(n)
        self.published += len(delivered)
        return len(rows)

    def _produce_all(self, rows: list[Row]) -> tuple[int, kafka.Deliveries]:
        destinations: dict[tuple[str, str], str] = {}
        for r in rows:
            if (r[2], r[3]) not in destinations:
                destinations[(r[2], r[3])] = self.cfg.output_topic(r[2], r[3])
        deliveries = produce_rows(self.producer, rows, [destinations[(r[2], r[3])] for r in rows])
        return self.producer.flush(45), deliveries

    def _publish(self, rows: list[Row]) -> tuple[list[Delivered], list[tuple[Row, KafkaError]]]:
        """Produces every row; returns the delivered ones with where the broker stored
        them, and the ones to set aside. Rows reported delivered without an offset are
        in neither list: they stay unpublished and go out again. Raises when the round
        must be retried whole (nothing got through for a reason that is Kafka's, or the
        producer must be replaced)."""
        remaining, deliveries = self._produce_all(rows)
        # The broker judges a record batch as a whole: an innocent row batched with a
        # too-large one is refused with it. Each refused row gets a try on its own.
        too_large = [r for r, e in deliveries.failed.values() if e.code() in kafka.TOO_LARGE]
        if not remaining and len(too_large) > 1:
            for row in too_large:
                alone_remaining, alone = self._produce_all([row])
                remaining += alone_remaining
                deliveries.failed.pop(id(row))
                deliveries.failed.update(alone.failed)
                deliveries.stored.update(alone.stored)
                deliveries.unconfirmed.update(alone.unconfirmed)
        failed = list(deliveries.failed.values())
        if any(err.fatal() for _row, err in failed):
            self._replace_producer(failed)
        if remaining:
            raise RelayDeliveryError(f"{remaining} delivery reports missing")
        unconfirmed = [r for r in rows if id(r) in deliveries.unconfirmed]
        if unconfirmed:
            self.metrics.unconfirmed_deliveries.labels(producer="relay").inc(len(unconfirmed))
            log(logging.WARNING, "delivery reported without an offset: no proof the broker "
                "stored it; the row stays unpublished and is produced again",
                rows=len(unconfirmed), event_ids=[r[1] for r in unconfirmed[:5]])
        delivered = [(r, deliveries.stored[id(r)]) for r in rows if id(r) in deliveries.stored]
        own = [(r, e) for r, e in failed if e.code() in kafka.MESSAGE_FAULTS]
        if len(own) < len(failed) and not delivered:
            reasons = sorted({str(e) for _r, e in failed})[:3]
            raise RelayDeliveryError(f"{len(failed)} failed: {reasons}")
        if unconfirmed and not delivered and not failed:
            raise RelayDeliveryError(f"{len(unconfirmed)} reported delivered without an offset")
        return delivered, failed

    def _replace_producer(self, failed: list[tuple[Row, KafkaError]]) -> None:
        log(logging.ERROR, "fatal producer error: replacing the producer, republishing",
            error=str(next(err for _row, err in failed if err.fatal())))
        old, self.producer = self.producer, self.make_producer(self.cfg)
        old.flush(0)
        raise RelayDeliveryError("fatal producer error")

    def _maybe_update_backlog(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._last_backlog < 2.0:
            return
        self._last_backlog = now
        row = conn.execute(db.OUTBOX_BACKLOG).fetchone()
        if row:
            label = self.db_partition
            self.metrics.outbox_backlog.labels(db_partition=label).set(row[0])
            self.metrics.outbox_oldest.labels(db_partition=label).set(row[1])
            self.metrics.outbox_unpublishable.labels(db_partition=label).set(row[2])
            if self.health is not None:
                self.health.set_aside(label, int(row[2]))
