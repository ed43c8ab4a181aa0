"""What a processed micro-batch tells the operator: one structured log line per event
(SPEC 7) and the counters of events, dead letters and registrations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from els_worker import contract
from els_worker.messages import Item
from els_worker.observability import Fields, Metrics, json_text, log_lines


def report(items: Sequence[Item], seconds: float, metrics: Metrics, registered_topic: str,
           log_events: bool) -> None:
    """Counters are added once per micro-batch and label; every event of a micro-batch
    has the same processing time (start of the micro-batch to its commit), observed once
    with the batch's weight."""
    duration_ms = round(seconds * 1000, 3)
    counts: dict[tuple[str, str], int] = {}
    entries: list[tuple[int, str, Fields]] = []
    for it in items:
        res = it.result or {}
        outcome = "dead_lettered" if it.dead else str(res.get("outcome", "unknown"))
        if it.dead:
            metrics.dead_letter_counter(it.sqlstate or "").inc()
        if it.topic == registered_topic:
            if it.dead:
                metrics.registration_failures.labels(sqlstate=it.sqlstate or "").inc()
            else:
                metrics.registration_counter(outcome).inc()
        counts[(it.topic, outcome)] = counts.get((it.topic, outcome), 0) + 1
        if log_events:
            entries.append(_line(it, outcome, res, duration_ms))
    for (topic, outcome), n in counts.items():
        metrics.event_counter(topic, outcome).inc(n)
    metrics.observe_processing(seconds, len(items))
    if entries:
        log_lines(entries)


def _line(it: Item, outcome: str, res: dict[str, Any],
          duration_ms: float) -> tuple[int, str, Fields]:
    if not it.dead:  # the line of almost every event: its JSON written directly
        text = json_text
        return logging.INFO, "event applied", (
            f'"topic": {text(it.topic)}, "partition": {it.partition}, "offset": {it.offset}, '
            f'"batch_id": {text(it.batch_id)}, "correlation_id": {text(it.correlation_id)}, '
            f'"duration_ms": {duration_ms!r}, "outcome": {text(outcome)}, '
            f'"essay_id": {text(res.get("essay_id"))}, "complete": {text(res.get("complete"))}, '
            f'"events": {len(res.get("events") or ())}')
    fields: dict[str, Any] = {
        "topic": it.topic,
        "partition": it.partition,
        "offset": it.offset,
        "batch_id": it.batch_id,
        "correlation_id": it.correlation_id,
        "duration_ms": duration_ms,
        "outcome": outcome,
    }
    fields.update(sqlstate=it.sqlstate, error=it.error_message, detail=it.error_detail,
                  attempts=it.attempts, dlq_topic=contract.dlq_topic(it.topic))
    if it.diagnostics:
        fields["pg"] = it.diagnostics
    return logging.WARNING, "event dead-lettered", fields
