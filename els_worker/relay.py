"""The outbox relay: claim, produce, wait for every delivery report, mark, commit.

Rows are marked published only after Kafka confirmed them, in the transaction that
claimed them: anything that goes wrong before the COMMIT rolls the claim back and the
rows are produced again later with the same event_id (consumers deduplicate on it).
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


class RelayDeliveryError(Exception):
    pass


def relay_producer(cfg: Config) -> Producer:
    return kafka.producer(cfg, "els-outbox-relay")


class Relay:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        stop: threading.Event,
        health: Health | None = None,
        make_producer: Callable[[Config], Producer] = relay_producer,
    ) -> None:
        self.cfg = cfg
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
        self.thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        log(logging.INFO, "outbox relay started", batch_size=self.cfg.relay_batch_size)
        retry = Retry(self.cfg.retry_base_ms, self.cfg.retry_max_ms, self.metrics, self.stop)
        try:
            while not self.stop.is_set():
                try:
                    n = self.run_once()
                    retry.succeeded()
                    if n < self.cfg.relay_batch_size:
                        self.stop.wait(self.cfg.relay_idle_ms / 1000.0)
                except Exception as exc:  # the relay must survive anything
                    self.session.after_fault(exc)
                    retry.wait("relay", "outbox relay round failed: rolled back, will republish",
                               error=f"{type(exc).__name__}: {exc}",
                               **(pg_diagnostics(exc) if isinstance(exc, psycopg.Error) else {}))
        except Stopping:
            pass
        self.close()
        log(logging.INFO, "outbox relay stopped", published=self.published)

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
                conn.execute(db.MARK_PUBLISHED, {"ids": [r[0] for r in delivered]})
        for row in delivered:
            self.metrics.outbox_published.labels(event_type=row[2]).inc()
        self.published += len(delivered)
        return len(rows)

    def _publish(self, rows: list[Row]) -> tuple[list[Row], list[tuple[Row, KafkaError]]]:
        """Produces every row; returns the delivered ones and the ones to set aside.
        Raises when the round must be retried whole (nothing got through for a reason
        that is Kafka's, or the producer must be replaced)."""
        deliveries = kafka.Deliveries()
        for row in rows:
            _id, event_id, event_type, topic, key, envelope = row
            headers: kafka.Headers = [(contract.H_EVENT_ID, event_id.encode()),
                                      (contract.H_EVENT_TYPE, event_type.encode())]
            err = kafka.produce(self.producer, self.cfg.output_topic(event_type, topic),
                                key.encode(), envelope.encode(), headers,
                                deliveries.callback(row))
            if err is not None:
                deliveries.refuse(row, err)
        remaining = self.producer.flush(45)
        failed = list(deliveries.failed.values())
        if any(err.fatal() for _row, err in failed):
            self._replace_producer(failed)
        if remaining:
            raise RelayDeliveryError(f"{remaining} delivery reports missing")
        delivered = [r for r in rows if id(r) not in deliveries.failed]
        own = [(r, e) for r, e in failed if e.code() in kafka.MESSAGE_FAULTS]
        if len(own) < len(failed) and not delivered:
            reasons = sorted({str(e) for _r, e in failed})[:3]
            raise RelayDeliveryError(f"{len(failed)} failed: {reasons}")
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
            self.metrics.outbox_backlog.set(row[0])
            self.metrics.outbox_oldest.set(row[1])
            self.metrics.outbox_unpublishable.set(row[2])
            if self.health is not None:
                self.health.outbox_set_aside = int(row[2])
