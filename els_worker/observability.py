"""JSON log lines on stderr and the worker's Prometheus metrics (docs/worker.md lists
them; monitoring/ alerts and the dashboard query them)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LOG = logging.getLogger("els.worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


_JSON_HANDLER: logging.StreamHandler[Any] | None = None  # the one setup_logging installed
# json.dumps with keyword arguments builds a new encoder per call; this one is reused.
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode


def json_text(value: Any) -> str:
    """``value`` as the log's encoder writes it, without the encoder for the scalars of
    a per-event line (it costs more than the line's own work there)."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    return _ENCODE(value)


def setup_logging(level: str) -> None:
    global _JSON_HANDLER
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _JSON_HANDLER = handler


def log(level: int, msg: str, /, **fields: Any) -> None:
    if LOG.isEnabledFor(level):
        LOG.log(level, msg, extra={"fields": fields})


Fields = dict[str, Any] | str


def log_lines(entries: Sequence[tuple[int, str, Fields]]) -> None:
    """Many log lines at once (the per-event lines of a micro-batch): the same JSON
    objects as ``log`` writes, one ``ts`` for all, formatted without a ``LogRecord``
    each and written with one ``write``. An entry's fields are a dict, or already JSON
    text (the members without braces, built with ``json_text``: the per-event line's
    hot path). Falls back to ``log`` when logging is not set up by ``setup_logging``
    (e.g. inside pytest)."""
    handler = _JSON_HANDLER
    if handler is None or logging.getLogger().handlers != [handler] or not LOG.propagate:
        for level, msg, fields in entries:
            log(level, msg, **(json.loads("{" + fields + "}") if isinstance(fields, str)
                               else fields))
        return
    ts = datetime.now(UTC).isoformat(timespec="milliseconds")
    heads: dict[tuple[int, str], str] = {}
    lines = []
    for level, msg, fields in entries:
        if not LOG.isEnabledFor(level):
            continue
        out = {"ts": ts, "level": logging.getLevelName(level).lower(), "logger": LOG.name}
        out["msg"] = msg
        if isinstance(fields, str):
            head = heads.get((level, msg))
            if head is None:
                head = heads[(level, msg)] = _ENCODE(out)[:-1]
            lines.append(f"{head}, {fields}}}" if fields else head + "}")
        else:
            out.update(fields)
            lines.append(_ENCODE(out))
    if not lines:
        return
    lines.append("")
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write("\n".join(lines))
            handler.flush()
        except (OSError, ValueError):  # stderr gone: as logging does, do not crash
            pass


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric of one worker process, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.events = Counter("els_events", "Events handled, by input topic and outcome",
                              ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("els_dead_letters", "Events dead-lettered, by SQLSTATE",
                                    ["sqlstate"], registry=r)
        self.retries = Counter("els_retries", "Retries, by kind", ["kind"], registry=r)
        self.registrations = Counter(
            "els_batch_registrations", "Batch registrations applied, by outcome", ["outcome"],
            registry=r)
        self.registration_failures = Counter(
            "els_batch_registration_failures", "Batch registrations dead-lettered, by SQLSTATE",
            ["sqlstate"], registry=r)
        self.processing = Histogram(
            "els_event_processing_seconds",
            "Time from the start of an event's micro-batch to its database commit",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("els_microbatch_size", "Messages per micro-batch",
                                    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000), registry=r)
        # db_partition: the partition behind the proxy whose outbox it is ("" for one
        # database, which Prometheus reads as no label)
        self.outbox_backlog = Gauge("els_outbox_backlog", "Unpublished outbox rows",
                                    ["db_partition"], registry=r)
        self.outbox_oldest = Gauge("els_outbox_oldest_age_seconds",
                                   "Age of the oldest unpublished outbox row", ["db_partition"],
                                   registry=r)
        self.outbox_unpublishable = Gauge(
            "els_outbox_unpublishable",
            "Outbox rows set aside because Kafka refused them (retried later)",
            ["db_partition"], registry=r)
        self.outbox_published = Counter("els_outbox_published", "Outbox rows published",
                                        ["event_type"], registry=r)
        self.unconfirmed_deliveries = Counter(
            "els_kafka_unconfirmed_deliveries",
            "Delivery reports of success without an offset (no proof the broker stored the "
            "message: produced again), by producer", ["producer"], registry=r)
        self.audit_rows = Counter(
            "els_outbox_audit_rows",
            "Published outbox rows worker.py audit looked at, by result: found (at their "
            "partition and offset), missing, republished (missing, produced again), "
            "expired (removed by topic retention), unproven (published before offsets were "
            "kept)", ["result"], registry=r)
        self.audit_runs = Counter("els_outbox_audit_runs",
                                  "Audit runs, by result (ok, missing: a row missing and not "
                                  "produced again, error)", ["result"], registry=r)
        self.audit_last_success = Gauge(
            "els_outbox_audit_last_success_timestamp_seconds",
            "When the last audit run ended with every row found or produced again",
            ["db_partition"], registry=r)
        self.consumer_lag = Gauge("els_consumer_lag", "Consumer lag (messages) by partition",
                                  ["topic", "partition"], registry=r)
        self.partition_stalls = Counter(
            "els_consumer_partition_stalls",
            "Assigned partitions found with messages waiting but none delivered for "
            "ELS_PARTITION_STALL_SECONDS (each then seeked to restart its fetch)",
            ["topic", "partition"], registry=r)
        self.db_up = Gauge("els_database_up", "1 when the last database contact succeeded",
                           registry=r)
        self.partition_db_up = Gauge(
            "els_partition_database_up",
            "Behind the proxy: 1 when the outbox relay's last contact with the partition "
            "succeeded (els_database_up is the proxy's)", ["db_partition"], registry=r)
        self.healthy = Gauge("els_worker_healthy", "1 when /healthz answers 200", registry=r)
        self.systemic = Gauge(
            "els_systemic_fault",
            "1 while an unexpected error strikes every event (nothing is dead-lettered)",
            registry=r)
        self.deadline_closed = Counter("els_batches_closed_by_deadline",
                                       "Batches closed by their deadline", registry=r)
        self.maintenance_runs = Counter("els_maintenance_runs", "Maintenance task runs",
                                        ["task", "result"], registry=r)
        self.maintenance_seconds = Histogram("els_maintenance_duration_seconds",
                                             "Duration of maintenance tasks", ["task"],
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.oldest_incomplete = Gauge("els_oldest_incomplete_batch_age_seconds",
                                       "Age of the oldest registered, incomplete batch",
                                       registry=r)
        self.stuck_batches = Gauge("els_stuck_batches",
                                   "Incomplete batches older than ELS_STUCK_AFTER_SECONDS",
                                   registry=r)
        # every series the alerts query exists from the start (at 0), audit enabled or not
        for producer in ("relay", "dead_letters", "audit"):
            self.unconfirmed_deliveries.labels(producer=producer)
        for result in ("found", "missing", "republished", "expired", "unproven"):
            self.audit_rows.labels(result=result)
        for result in ("ok", "missing", "error"):
            self.audit_runs.labels(result=result)
        # labelled children, looked up once (labels() per event costs a lock and a dict)
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def event_counter(self, topic: str, outcome: str) -> Any:
        return self._child(self.events, topic, outcome)

    def registration_counter(self, outcome: str) -> Any:
        return self._child(self.registrations, outcome)

    def dead_letter_counter(self, sqlstate: str) -> Any:
        return self._child(self.dead_letters, sqlstate)

    def retry_counter(self, kind: str) -> Any:
        return self._child(self.retries, kind)

    def partition_stall_counter(self, topic: str, partition: str) -> Any:
        return self._child(self.partition_stalls, topic, partition)

    def observe_processing(self, seconds: float, events: int) -> None:
        """``events`` observations of ``seconds`` in one step (bucket and sum incremented
        by the weight: the same result as ``events`` calls of ``observe``)."""
        if events <= 0:
            return
        hist = self.processing
        buckets = getattr(hist, "_buckets", None)
        bounds = getattr(hist, "_upper_bounds", None)
        total = getattr(hist, "_sum", None)
        if buckets is None or bounds is None or total is None:  # other client version
            for _ in range(events):
                hist.observe(seconds)
            return
        total.inc(seconds * events)
        for i, bound in enumerate(bounds):
            if seconds <= bound:
                buckets[i].inc(events)
                break
