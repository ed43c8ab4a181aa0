"""Dead letters: the rejected message, same key and value, to ``<source topic>.dlq``
with the headers of SPEC 7, confirmed by the broker before the offset moves.

Confirmed means a delivery report with the partition and offset the dead letter was
stored at (SPEC 5, proof of delivery): a report of success without an offset proves
nothing, so that letter is produced again (``els_kafka_unconfirmed_deliveries``), and
the input offset waits until it has one.

A dead letter too large for the dead-letter topic goes out as a stand-in: same key and
headers, no value, ``els.error.detail`` extended with ``dlq_value_omitted`` and the
original size (the source coordinates are in the headers). Any other failure is
retried until the broker confirms.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import Producer

from els_worker import contract, kafka
from els_worker.config import Config
from els_worker.messages import Item
from els_worker.observability import Metrics, log
from els_worker.retry import Retry


def headers_of(it: Item, detail: str) -> kafka.Headers:
    return [
        (contract.H_SQLSTATE, (it.sqlstate or "").encode()),
        (contract.H_MESSAGE, it.error_message.encode()),
        (contract.H_DETAIL, detail.encode()),
        (contract.H_SOURCE_TOPIC, it.topic.encode()),
        (contract.H_SOURCE_PARTITION, str(it.partition).encode()),
        (contract.H_SOURCE_OFFSET, str(it.offset).encode()),
        (contract.H_FAILED_AT, datetime.now(UTC).isoformat().encode()),
        (contract.H_ATTEMPTS, str(max(it.attempts, 1)).encode()),
    ]


def stand_in_detail(detail: str, value_bytes: int) -> str:
    try:
        parsed = json.loads(detail) if detail else {}
    except ValueError:
        parsed = {"original_detail": detail}
    if not isinstance(parsed, dict):
        parsed = {"original_detail": parsed}
    parsed.update(dlq_value_omitted=True, original_value_bytes=value_bytes)
    return json.dumps(parsed)


class DeadLetterWriter:
    def __init__(self, cfg: Config, metrics: Metrics, stop: threading.Event,
                 producer: Producer | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.stop = stop
        self.producer = producer or kafka.producer(cfg, "els-worker-dlq", **{"linger.ms": 2})

    def write(self, dead: Sequence[Item]) -> None:
        """Produces the dead letters and returns once the broker stored every one (each
        has a partition and offset)."""
        retry = Retry(self.cfg.retry_base_ms, self.cfg.retry_max_ms, self.metrics, self.stop)
        omitted: set[int] = set()  # id() of items sent as stand-ins
        pending = list(dead)
        while pending:
            deliveries = kafka.Deliveries()
            for it in pending:
                self._produce(it, id(it) in omitted, deliveries)
            remaining = self.producer.flush(60)
            if remaining:  # still queued: wait for their reports too
                remaining = self.producer.flush(60)
            pending = [it for it in pending if id(it) not in deliveries.stored]
            if not pending:
                return
            failed = list(deliveries.failed.values())
            unconfirmed = len(deliveries.unconfirmed)
            if unconfirmed:
                self.metrics.unconfirmed_deliveries.labels(producer="dead_letters").inc(
                    unconfirmed)
            too_large = [it for it, err in failed
                         if err.code() in kafka.TOO_LARGE and id(it) not in omitted]
            for it in too_large:
                omitted.add(id(it))
                log(logging.WARNING, "dead letter too large: sending a stand-in without the value",
                    topic=it.topic, partition=it.partition, offset=it.offset,
                    bytes=len(it.msg.value() or b""))
            if too_large and len(too_large) == len(failed) and not remaining and not unconfirmed:
                continue  # stand-ins go out at once, no backoff needed
            retry.wait("dlq_produce", "dead-letter produce not confirmed: retrying",
                       failed=len(failed), undelivered=remaining, unconfirmed=unconfirmed,
                       errors=sorted({str(err) for _it, err in failed})[:3])

    def _produce(self, it: Item, omit_value: bool, deliveries: kafka.Deliveries) -> None:
        value = it.msg.value()
        detail = it.error_detail
        if omit_value:
            detail = stand_in_detail(detail, len(value or b""))
            value = None
        err = kafka.produce(self.producer, contract.dlq_topic(it.topic), it.msg.key(), value,
                            headers_of(it, detail), deliveries.callback(it))
        if err is not None:
            deliveries.refuse(it, err)

    def close(self) -> None:
        self.producer.flush(30)
