"""Essay Lifecycle Service worker: Kafka in, PL/pgSQL functions, dead letters, outbox out.

A thin process (SPEC section 7). It consumes the three input topics in one
consumer group, hands every message value, as it came, to the SQL function of its
topic, dead-letters what the database rejects, and relays the transactional outbox
to Kafka. All business rules live in the database; this file only moves bytes,
decides what to do with errors (``CLASSIFICATION``, the one table for that), and
keeps offsets honest:

* micro-batches: up to ``ELS_BATCH_MAX_MESSAGES`` messages per database
  transaction, in partition order. The fast path pipelines the whole batch in one
  round trip; when anything in it fails, the batch is rolled back and re-run with
  one SAVEPOINT per message, so a rejected event is dead-lettered alone and its
  neighbours still apply.
* an offset is committed only after the transaction committed and every dead
  letter of the batch was confirmed by the broker.
* operational faults (database down, serialization failure, deadlock, timeouts,
  shutdown) retry the whole micro-batch forever with capped exponential backoff and
  jitter, reconnecting; unexpected errors retry a bounded number of times.

Subcommands: ``run`` (default), ``migrate``, ``inspect BATCH_ID``, ``dlq-replay``.
Configuration comes only from environment variables: ``python worker.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LOG = logging.getLogger("els.worker")

# ---------------------------------------------------------------------------
# Configuration: environment variables only. One table, read by Config and
# printed by --help (and mirrored in README.md).
# ---------------------------------------------------------------------------

DEFAULT_TOPIC_BATCH_REGISTERED = "huleedu.batch.essays.registered.v1"
DEFAULT_TOPIC_CONTENT_PROVISIONED = "huleedu.file.essay.content.provisioned.v1"
DEFAULT_TOPIC_VALIDATION_FAILED = "huleedu.file.essay.validation.failed.v1"

ENV_VARS: tuple[tuple[str, str, str], ...] = (
    (
        "ELS_DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/els",
        "PostgreSQL connection URL (libpq syntax).",
    ),
    ("ELS_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)."),
    ("ELS_GROUP_ID", "essay-lifecycle-service", "Consumer group id of the worker."),
    (
        "ELS_TOPIC_BATCH_REGISTERED",
        DEFAULT_TOPIC_BATCH_REGISTERED,
        "Input topic: BatchEssaysRegistered -> els.register_batch.",
    ),
    (
        "ELS_TOPIC_CONTENT_PROVISIONED",
        DEFAULT_TOPIC_CONTENT_PROVISIONED,
        "Input topic: EssayContentProvisioned -> els.provision_content.",
    ),
    (
        "ELS_TOPIC_VALIDATION_FAILED",
        DEFAULT_TOPIC_VALIDATION_FAILED,
        "Input topic: EssayValidationFailed -> els.record_validation_failure.",
    ),
    ("ELS_METRICS_PORT", "9095", "HTTP port for /metrics, /healthz, /health/batches (0: any)."),
    ("ELS_METRICS_HOST", "0.0.0.0", "Address the HTTP server binds to."),
    (
        "ELS_TOPIC_OUT_COMPLETED",
        "",
        "Output topic for BatchContentProvisioningCompleted (empty: the outbox row's topic, "
        "huleedu.batch.content.provisioning.completed.v1).",
    ),
    (
        "ELS_TOPIC_OUT_SLOT_ASSIGNED",
        "",
        "Output topic for EssaySlotAssigned (empty: huleedu.els.essay.slot.assigned.v1).",
    ),
    (
        "ELS_TOPIC_OUT_EXCESS",
        "",
        "Output topic for ExcessContentProvisioned "
        "(empty: huleedu.els.excess.content.provisioned.v1).",
    ),
    ("ELS_RELAY_ENABLED", "true", "Run the outbox relay thread in this process (true/false)."),
    ("ELS_RELAY_BATCH_SIZE", "500", "Outbox rows claimed per relay transaction."),
    ("ELS_RELAY_IDLE_MS", "150", "Relay poll interval when the outbox is empty."),
    ("ELS_BATCH_MAX_MESSAGES", "500", "Most messages applied in one database transaction."),
    (
        "ELS_BATCH_MAX_WAIT_MS",
        "5",
        "After the first message, how long to wait for more to fill a micro-batch.",
    ),
    ("ELS_RETRY_BASE_MS", "100", "First backoff delay of a retry (doubles per attempt)."),
    ("ELS_RETRY_MAX_MS", "5000", "Backoff cap (jitter: each delay is 50-100% of its step)."),
    (
        "ELS_UNEXPECTED_MAX_ATTEMPTS",
        "5",
        "Attempts for an unexpected (non-operational, non-data) error before dead-lettering.",
    ),
    ("ELS_STATEMENT_TIMEOUT_MS", "30000", "statement_timeout of the worker's sessions (0: none)."),
    (
        "ELS_STUCK_AFTER_SECONDS",
        "900",
        "/health/batches lists batches registered but not complete for at least this long.",
    ),
    (
        "ELS_HEALTH_MAX_AGE_SECONDS",
        "30",
        "/healthz fails when the consumer loop or the last good database contact is older.",
    ),
    (
        "ELS_CREATE_TOPICS",
        "true",
        "Create missing input, dead-letter and output topics at start (true/false).",
    ),
    ("ELS_TOPIC_PARTITIONS", "3", "Partitions of topics the worker creates."),
    ("ELS_AUTO_OFFSET_RESET", "earliest", "Where a new consumer group starts (earliest/latest)."),
    (
        "ELS_KAFKA_CONFIG",
        "",
        "Extra librdkafka settings for every client, as a JSON object (e.g. security).",
    ),
    ("ELS_LOG_LEVEL", "INFO", "Log level (DEBUG, INFO, WARNING, ERROR)."),
    ("ELS_LOG_EVENTS", "true", "One JSON log line per event (true/false)."),
)

ENV_DEFAULTS = {name: default for name, default, _ in ENV_VARS}


def env(name: str) -> str:
    return os.environ.get(name, ENV_DEFAULTS[name])


def env_bool(name: str) -> bool:
    value = env(name).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean")


def env_int(name: str) -> int:
    try:
        return int(env(name))
    except ValueError as exc:
        raise ValueError(f"{name}={env(name)!r} is not an integer") from exc


@dataclass
class Config:
    database_url: str
    kafka_bootstrap: str
    group_id: str
    topic_batch_registered: str
    topic_content_provisioned: str
    topic_validation_failed: str
    metrics_port: int = 9095
    metrics_host: str = "0.0.0.0"
    topic_out: dict[str, str] = field(default_factory=dict)
    relay_enabled: bool = True
    relay_batch_size: int = 500
    relay_idle_ms: int = 150
    batch_max_messages: int = 500
    batch_max_wait_ms: int = 5
    retry_base_ms: int = 100
    retry_max_ms: int = 5000
    unexpected_max_attempts: int = 5
    statement_timeout_ms: int = 30000
    stuck_after_seconds: int = 900
    health_max_age_seconds: int = 30
    create_topics: bool = True
    topic_partitions: int = 3
    auto_offset_reset: str = "earliest"
    kafka_extra: dict[str, Any] = field(default_factory=dict)
    log_events: bool = True

    @classmethod
    def from_env(cls) -> Config:
        extra_text = env("ELS_KAFKA_CONFIG").strip()
        extra = json.loads(extra_text) if extra_text else {}
        if not isinstance(extra, dict):
            raise ValueError("ELS_KAFKA_CONFIG must be a JSON object")
        topic_out = {
            event_type: env(var)
            for event_type, var in (
                ("BatchContentProvisioningCompleted", "ELS_TOPIC_OUT_COMPLETED"),
                ("EssaySlotAssigned", "ELS_TOPIC_OUT_SLOT_ASSIGNED"),
                ("ExcessContentProvisioned", "ELS_TOPIC_OUT_EXCESS"),
            )
            if env(var)
        }
        return cls(
            database_url=env("ELS_DATABASE_URL"),
            kafka_bootstrap=env("ELS_KAFKA_BOOTSTRAP"),
            group_id=env("ELS_GROUP_ID"),
            topic_batch_registered=env("ELS_TOPIC_BATCH_REGISTERED"),
            topic_content_provisioned=env("ELS_TOPIC_CONTENT_PROVISIONED"),
            topic_validation_failed=env("ELS_TOPIC_VALIDATION_FAILED"),
            metrics_port=env_int("ELS_METRICS_PORT"),
            metrics_host=env("ELS_METRICS_HOST"),
            topic_out=topic_out,
            relay_enabled=env_bool("ELS_RELAY_ENABLED"),
            relay_batch_size=env_int("ELS_RELAY_BATCH_SIZE"),
            relay_idle_ms=env_int("ELS_RELAY_IDLE_MS"),
            batch_max_messages=max(1, env_int("ELS_BATCH_MAX_MESSAGES")),
            batch_max_wait_ms=max(0, env_int("ELS_BATCH_MAX_WAIT_MS")),
            retry_base_ms=max(1, env_int("ELS_RETRY_BASE_MS")),
            retry_max_ms=max(1, env_int("ELS_RETRY_MAX_MS")),
            unexpected_max_attempts=max(1, env_int("ELS_UNEXPECTED_MAX_ATTEMPTS")),
            statement_timeout_ms=max(0, env_int("ELS_STATEMENT_TIMEOUT_MS")),
            stuck_after_seconds=max(0, env_int("ELS_STUCK_AFTER_SECONDS")),
            health_max_age_seconds=max(1, env_int("ELS_HEALTH_MAX_AGE_SECONDS")),
            create_topics=env_bool("ELS_CREATE_TOPICS"),
            topic_partitions=max(1, env_int("ELS_TOPIC_PARTITIONS")),
            auto_offset_reset=env("ELS_AUTO_OFFSET_RESET"),
            kafka_extra=extra,
            log_events=env_bool("ELS_LOG_EVENTS"),
        )

    @property
    def routes(self) -> dict[str, str]:
        """Input topic -> SQL statement applying one message value."""
        return {
            self.topic_batch_registered: "SELECT els.register_batch(%(event)s::jsonb)",
            self.topic_content_provisioned: "SELECT els.provision_content(%(event)s::jsonb)",
            self.topic_validation_failed: "SELECT els.record_validation_failure(%(event)s::jsonb)",
        }

    def kafka(self, **settings: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        conf.update(self.kafka_extra)
        conf.update(settings)
        return conf


def fast_statement(routes: dict[str, str]) -> tuple[str, dict[str, int]] | None:
    """One statement for every route, the function chosen by ``%(route)s``: ``SELECT
    CASE %(route)s::integer WHEN 1 THEN <route 1's expression> WHEN 2 ... END``, and
    the route number of each topic. The fast path sends a whole micro-batch of it with
    one ``executemany`` (one prepared statement, pipelined), which costs the client
    about half the CPU per message of one cursor and ``execute`` per message; only the
    chosen branch runs, so the database does exactly what the route's own statement
    does. ``None`` when a route is not of the form ``SELECT <one expression>``."""
    codes: dict[str, int] = {}
    branches: list[str] = []
    for n, (topic, statement) in enumerate(routes.items(), start=1):
        expr = statement.removeprefix("SELECT ")
        if expr == statement or any(c in expr for c in (";", " FROM ", "%(route)s")):
            return None
        codes[topic] = n
        branches.append(f"WHEN {n} THEN {expr}")
    return f"SELECT CASE %(route)s::integer {' '.join(branches)} END", codes


def help_epilog() -> str:
    lines = ["environment variables (defaults in brackets):"]
    for name, default, text in ENV_VARS:
        lines.append(f"  {name} [{default}]")
        lines.append(f"      {text}")
    lines.append("")
    lines.append("error handling (SQLSTATE prefix -> action):")
    for rule in CLASSIFICATION:
        lines.append(f"  {rule.prefix or '(other)':<8} {rule.action.value:<14} {rule.reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Error classification: THE one place that maps an error to what the worker does.
# ---------------------------------------------------------------------------


class Action(enum.Enum):
    DEAD_LETTER = "dead_letter"  # a verdict on the event: to <topic>.dlq at once
    RETRY_FOREVER = "retry_forever"  # operational: back off, reconnect, retry in order
    RETRY_BOUNDED = "retry_bounded"  # unexpected (a bug?): a few retries, then dead letter


@dataclass(frozen=True)
class Rule:
    prefix: str  # SQLSTATE prefix: a class ("08") or a full code ("40001"); "" = any
    action: Action
    reason: str
    # SQLSTATE reported in the dead letter instead of the original, when the error is
    # about the message value itself (PostgreSQL refused it as jsonb); the original
    # SQLSTATE and message go into the detail.
    report_as: str | None = None


CLASSIFICATION: tuple[Rule, ...] = (
    Rule("ELV", Action.DEAD_LETTER, "event rejected by validation (SPEC section 4)"),
    Rule("ELC", Action.DEAD_LETTER, "event conflicts with registered state (SPEC section 4)"),
    Rule(
        "22",
        Action.DEAD_LETTER,
        "data exception: the value is not JSON PostgreSQL accepts (e.g. \\u0000)",
        "ELV01",
    ),
    Rule("08", Action.RETRY_FOREVER, "connection exception"),
    Rule("40001", Action.RETRY_FOREVER, "serialization failure"),
    Rule("40P01", Action.RETRY_FOREVER, "deadlock detected"),
    Rule("55P03", Action.RETRY_FOREVER, "lock not available (lock_timeout)"),
    Rule("57014", Action.RETRY_FOREVER, "query canceled (statement_timeout)"),
    Rule("57P01", Action.RETRY_FOREVER, "admin shutdown"),
    Rule("57P02", Action.RETRY_FOREVER, "crash shutdown"),
    Rule("57P03", Action.RETRY_FOREVER, "cannot connect now (starting up / shutting down)"),
    Rule("53", Action.RETRY_FOREVER, "insufficient resources (disk, memory, connections)"),
    Rule("", Action.RETRY_BOUNDED, "anything else: unexpected, retried then dead-lettered"),
)

# Errors raised by the worker itself (no database involved) use these codes.
SQLSTATE_MALFORMED = "ELV01"
SQLSTATE_CONNECTION_LOST = None  # psycopg OperationalError without SQLSTATE


def classify_sqlstate(sqlstate: str | None) -> Rule:
    """The rule for a SQLSTATE; ``None`` means the connection was lost (no server reply)."""
    if sqlstate is None:
        return Rule("", Action.RETRY_FOREVER, "connection lost (no SQLSTATE)")
    best = CLASSIFICATION[-1]
    for rule in CLASSIFICATION:
        if rule.prefix and sqlstate.startswith(rule.prefix) and len(rule.prefix) > len(best.prefix):
            best = rule
    return best


def classify_exception(exc: BaseException) -> Rule:
    """The rule for an exception raised while talking to PostgreSQL."""
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        if sqlstate is None:
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                return classify_sqlstate(None)
            # client-side data errors (e.g. a NUL character psycopg refuses to send)
            return Rule("", Action.DEAD_LETTER, "value psycopg cannot send", SQLSTATE_MALFORMED)
        return classify_sqlstate(sqlstate)
    if isinstance(exc, OSError | TimeoutError):
        return classify_sqlstate(None)
    return CLASSIFICATION[-1]


def pg_diagnostics(exc: BaseException) -> dict[str, Any]:
    """Everything PostgreSQL said about an error, for logs and dead-letter headers."""
    if not isinstance(exc, psycopg.Error):
        return {"sqlstate": None, "message": f"{type(exc).__name__}: {exc}"}
    diag = exc.diag
    out: dict[str, Any] = {
        "sqlstate": exc.sqlstate,
        "message": diag.message_primary or str(exc).strip(),
        "detail": diag.message_detail,
        "hint": diag.message_hint,
        "context": diag.context,
        "schema": diag.schema_name,
        "table": diag.table_name,
        "column": diag.column_name,
        "constraint": diag.constraint_name,
        "severity": diag.severity_nonlocalized or diag.severity,
        "exception": type(exc).__name__,
    }
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------
# Logging: JSON lines on stderr.
# ---------------------------------------------------------------------------


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


def setup_logging(level: str) -> None:
    global _JSON_HANDLER
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _JSON_HANDLER = handler


def log_lines(entries: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
    """Many log lines at once, e.g. the per-event lines of a micro-batch: the same JSON
    objects as ``log`` writes (``ts``, ``level``, ``logger``, ``msg``, then the fields;
    one ``ts`` for all of them), formatted without a ``LogRecord`` each and written with
    one ``write``. Falls back to ``log`` when logging is not set up by ``setup_logging``
    (e.g. inside pytest)."""
    handler = _JSON_HANDLER
    if handler is None or logging.getLogger().handlers != [handler] or not LOG.propagate:
        for level, msg, fields in entries:
            log(level, msg, **fields)
        return
    ts = datetime.now(UTC).isoformat(timespec="milliseconds")
    lines = []
    for level, msg, fields in entries:
        if LOG.isEnabledFor(level):
            out = {"ts": ts, "level": logging.getLevelName(level).lower(), "logger": LOG.name}
            out["msg"] = msg
            out.update(fields)
            lines.append(_ENCODE(out))
    if not lines:
        return
    lines.append("")
    text = "\n".join(lines)
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write(text)
            handler.flush()
        except (OSError, ValueError):  # stderr gone: as logging does, do not crash
            pass


def log(level: int, msg: str, **fields: Any) -> None:
    if LOG.isEnabledFor(level):
        LOG.log(level, msg, extra={"fields": fields})


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "els_events",
            "Events handled, by input topic and outcome",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "els_dead_letters", "Events dead-lettered, by SQLSTATE", ["sqlstate"], registry=r
        )
        self.retries = Counter("els_retries", "Retries, by kind", ["kind"], registry=r)
        self.processing = Histogram(
            "els_event_processing_seconds",
            "Time from the start of an event's micro-batch to its database commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            "els_microbatch_size",
            "Messages per micro-batch",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.outbox_backlog = Gauge("els_outbox_backlog", "Unpublished outbox rows", registry=r)
        self.outbox_oldest = Gauge(
            "els_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row", registry=r
        )
        self.outbox_published = Counter(
            "els_outbox_published", "Outbox rows published", ["event_type"], registry=r
        )
        self.consumer_lag = Gauge(
            "els_consumer_lag",
            "Consumer lag (messages) by partition",
            ["topic", "partition"],
            registry=r,
        )
        self.db_up = Gauge(
            "els_database_up", "1 when the last database contact succeeded", registry=r
        )
        # labelled children, looked up once (labels() per event costs a lock and a dict)
        self._events: dict[tuple[str, str], Any] = {}
        self._dead_letters: dict[str, Any] = {}

    def event_counter(self, topic: str, outcome: str) -> Any:
        child = self._events.get((topic, outcome))
        if child is None:
            child = self._events[(topic, outcome)] = self.events.labels(
                topic=topic, outcome=outcome
            )
        return child

    def dead_letter_counter(self, sqlstate: str) -> Any:
        child = self._dead_letters.get(sqlstate)
        if child is None:
            child = self._dead_letters[sqlstate] = self.dead_letters.labels(sqlstate=sqlstate)
        return child

    def observe_processing(self, seconds: float, events: int) -> None:
        """``events`` observations of ``seconds`` in ``els_event_processing_seconds``,
        in one step: the bucket and the sum are incremented by the weight (same
        result as ``events`` calls of ``observe``)."""
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


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


class Stopping(Exception):
    """Raised inside retry loops when shutdown was requested."""


class Backoff:
    """Capped exponential backoff with jitter (each delay 50-100% of its step)."""

    def __init__(self, base_ms: int, max_ms: int) -> None:
        self.base = base_ms / 1000.0
        self.cap = max_ms / 1000.0
        self.attempt = 0

    def next_delay(self) -> float:
        step = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return step * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def connect(cfg: Config, application_name: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(
        cfg.database_url, autocommit=True, connect_timeout=5, application_name=application_name
    )
    if cfg.statement_timeout_ms:
        conn.execute(
            "SELECT set_config('statement_timeout', %(ms)s::text, false)",
            {"ms": f"{cfg.statement_timeout_ms}ms"},
        )
    return conn


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # closing a broken connection may fail; nothing to do
            pass


def header_map(msg: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    hdrs = msg.headers() or []
    raw_headers: list[tuple[str, Any]] = list(hdrs.items() if isinstance(hdrs, dict) else hdrs)
    for key, value in raw_headers:
        if value is None:
            out[key] = ""
        else:
            out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def ensure_topics(cfg: Config, topics: Iterable[str]) -> None:
    admin = AdminClient(cfg.kafka())
    wanted = sorted(set(topics))
    existing = set(admin.list_topics(timeout=15).topics)
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=cfg.topic_partitions, replication_factor=-1) for t in missing],
        operation_timeout=15,
    )
    for topic, fut in futures.items():
        try:
            fut.result(timeout=30)
            log(logging.INFO, "topic created", topic=topic, partitions=cfg.topic_partitions)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise


def dlq_topic(source_topic: str) -> str:
    return f"{source_topic}.dlq"


class _DeliveryTracker:
    """Delivery callback that records the items whose produce failed, with the error."""

    def __init__(self, failed: list[Any], item: Any) -> None:
        self.failed = failed
        self.item = item

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed.append((self.item, err))


# Produce errors that no retry can cure: the dead letter is too big for the producer or
# the dead-letter topic. The worker then sends a stand-in without the value.
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, 18})  # 18: RECORD_LIST_TOO_LARGE
# Dead-letter producer's own size limit (librdkafka default: 1 MB); the topic's
# max.message.bytes still applies, broker side.
DLQ_PRODUCER_MAX_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------------
# The consumer side: micro-batches of messages applied in one transaction.
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One consumed message and what became of it."""

    msg: Message
    topic: str
    partition: int
    offset: int
    text: str | None = None
    envelope: Any = None
    result: dict[str, Any] | None = None
    attempts: int = 0
    # dead-letter verdict
    dead: bool = False
    sqlstate: str | None = None
    error_message: str = ""
    error_detail: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def correlation_id(self) -> str | None:
        env_ = self.envelope
        if isinstance(env_, dict):
            cid = env_.get("correlation_id")
            data = env_.get("data")
            if cid is None and isinstance(data, dict):
                cid = data.get("correlation_id")
            return str(cid) if cid is not None else None
        return None

    @property
    def batch_id(self) -> str | None:
        if self.result and self.result.get("batch_id") is not None:
            return str(self.result["batch_id"])
        env_ = self.envelope
        if isinstance(env_, dict):
            inner = env_.get("data")
            data: dict[str, Any] = inner if isinstance(inner, dict) else env_
            bid = data.get("entity_id")
            return str(bid) if isinstance(bid, str | int) else None
        return None

    def kill(
        self, sqlstate: str, message: str, detail: str, diagnostics: dict[str, Any] | None = None
    ) -> None:
        self.dead = True
        self.sqlstate = sqlstate
        self.error_message = " ".join(message.split())  # one line
        self.error_detail = detail
        self.diagnostics = diagnostics or {}

    def kill_from_exception(self, exc: BaseException, rule: Rule) -> None:
        diag = pg_diagnostics(exc)
        original = diag.get("sqlstate")
        if rule.report_as and rule.report_as != original and _is_input_error(diag):
            detail = json.dumps(
                {
                    "field": None,
                    "reason": "invalid_json",
                    "original_sqlstate": original,
                    "error": diag.get("message"),
                    "pg_detail": diag.get("detail"),
                    "context": diag.get("context"),
                }
            )
            message = f"message value is not JSON PostgreSQL accepts: {diag.get('message')}"
            self.kill(rule.report_as, message, detail, diag)
        else:
            self.kill(
                original or "XX000",
                str(diag.get("message", "")),
                str(diag.get("detail") or "{}"),
                diag,
            )


def _is_input_error(diag: dict[str, Any]) -> bool:
    """True when PostgreSQL refused the value itself (the ``::jsonb`` cast), not a
    statement inside a function: the cast reports ``JSON data, line ...`` as context."""
    context = str(diag.get("context") or "")
    if context.startswith("JSON data"):
        return True
    return "PL/pgSQL function" not in context and "SQL function" not in context


def decode_item(msg: Message) -> Item:
    """Checks the bytes before the database sees them: UTF-8 and JSON syntax."""
    topic = msg.topic() or ""
    item = Item(msg=msg, topic=topic, partition=msg.partition() or 0, offset=msg.offset() or 0)
    raw = msg.value()
    if raw is None or len(raw) == 0:
        item.kill(
            SQLSTATE_MALFORMED,
            "message value is empty",
            json.dumps({"field": None, "reason": "empty_value"}),
        )
        return item
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError as exc:
        item.kill(
            SQLSTATE_MALFORMED,
            "message value is not valid UTF-8",
            json.dumps({"field": None, "reason": "invalid_utf8", "error": str(exc)}),
        )
        return item
    try:
        if text.startswith("\ufeff"):  # as json.loads does
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        item.envelope = _DECODE_JSON(text)
    except RecursionError:
        # Nested deeper than Python's parser goes, yet possibly valid JSON:
        # PostgreSQL judges it (its ::jsonb cast rejects what is not JSON, and
        # that data exception is dead-lettered as ELV01 by the error table).
        item.envelope = None
    except ValueError as exc:
        item.kill(
            SQLSTATE_MALFORMED,
            "message value is not valid JSON",
            json.dumps({"field": None, "reason": "invalid_json", "error": str(exc)}),
        )
        return item
    item.text = text
    return item


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# json.loads with keyword arguments builds a new decoder per call; this one is reused.
_DECODE_JSON = json.JSONDecoder(parse_constant=_reject_constant).decode


class BatchProcessor:
    """Applies micro-batches to the database; owns the worker's database connection."""

    def __init__(
        self, cfg: Config, metrics: Metrics, stop: threading.Event, health: Health
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.stop = stop
        self.health = health
        self.routes = cfg.routes
        self._fast: tuple[tuple[tuple[str, str], ...], tuple[str, dict[str, int]] | None] = (
            (),
            None,
        )
        self.conn: psycopg.Connection[Any] | None = None

    # -- connection --------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            close_quietly(self.conn)
            self.conn = None
            self.conn = connect(self.cfg, "els-worker")
            log(logging.INFO, "database connected")
        return self.conn

    def close(self) -> None:
        close_quietly(self.conn)
        self.conn = None

    def ping(self) -> None:
        try:
            self._connection().execute("SELECT 1")
            self.health.db_ok()
        except psycopg.Error as exc:
            self.health.db_failed()
            log(logging.WARNING, "database ping failed", **pg_diagnostics(exc))
            self.close()

    # -- applying ----------------------------------------------------------
    def apply(self, items: Sequence[Item]) -> None:
        """Applies every live item in one transaction, retrying as the table says.

        On return every item has a result or a dead-letter verdict and the
        transaction is committed. Raises Stopping if shutdown interrupts an
        operational retry (nothing is committed then: the batch will be redelivered).
        """
        backoff = Backoff(self.cfg.retry_base_ms, self.cfg.retry_max_ms)
        # fast: one pipelined transaction; careful: one transaction, a savepoint per
        # message; single: one transaction per message (only if the careful path's
        # COMMIT itself failed for a reason that is not operational)
        mode = "fast"
        while True:
            for it in items:
                it.result = None
            try:
                conn = self._connection()
                try:
                    if mode == "fast":
                        self._apply_pipelined(conn, items)
                    elif mode == "careful":
                        self._apply_with_savepoints(conn, items)
                    else:
                        for it in self._live(items):
                            self._apply_one(conn, it)  # not in a transaction: BEGIN/COMMIT
                except psycopg.Error as exc:
                    rule = classify_exception(exc)
                    if rule.action is Action.RETRY_FOREVER or mode == "single":
                        raise
                    # something in the batch failed: redo it more carefully
                    mode = "careful" if mode == "fast" else "single"
                    if mode == "single":
                        log(
                            logging.WARNING,
                            "micro-batch commit failed: one transaction per message",
                            **pg_diagnostics(exc),
                        )
                    continue
                self.health.db_ok()
                return
            except psycopg.Error as exc:
                rule = classify_exception(exc)
                if rule.action is not Action.RETRY_FOREVER:
                    raise
                self.health.db_failed()
                self.metrics.retries.labels(kind="operational").inc()
                delay = backoff.next_delay()
                first = items[0]
                log(
                    logging.WARNING,
                    "operational database error: retrying micro-batch",
                    retry_in_s=round(delay, 3),
                    attempt=backoff.attempt,
                    messages=len(items),
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    rule=rule.reason,
                    **pg_diagnostics(exc),
                )
                if self.conn is not None and (self.conn.broken or self.conn.closed):
                    self.close()
                if self.stop.wait(delay):
                    raise Stopping() from exc

    def _live(self, items: Sequence[Item]) -> list[Item]:
        return [it for it in items if not it.dead]

    def _apply_pipelined(self, conn: psycopg.Connection[Any], items: Sequence[Item]) -> None:
        live = self._live(items)
        if not live:
            return
        key = tuple(self.routes.items())
        if self._fast[0] != key:  # routes are a plain dict: tests add their own
            self._fast = (key, fast_statement(self.routes))
        fast = self._fast[1]
        with conn.transaction():
            if fast is None:
                cursors = []
                with conn.pipeline():
                    for it in live:
                        cur = conn.cursor()
                        cur.execute(self.routes[it.topic], {"event": it.text})
                        cursors.append(cur)
                for it, cur in zip(live, cursors, strict=True):
                    row = cur.fetchone()
                    it.result = row[0] if row else None
                return
            sql, codes = fast
            cur = conn.cursor()
            with conn.pipeline():
                params = [{"route": codes[it.topic], "event": it.text} for it in live]
                cur.executemany(sql, params, returning=True)
            for n, it in enumerate(live):
                if n and not cur.nextset():
                    raise RuntimeError("fewer results than statements in the pipeline")
                row = cur.fetchone()
                it.result = row[0] if row else None

    def _apply_with_savepoints(self, conn: psycopg.Connection[Any], items: Sequence[Item]) -> None:
        with conn.transaction():
            for it in self._live(items):
                self._apply_one(conn, it)

    def _apply_one(self, conn: psycopg.Connection[Any], it: Item) -> None:
        """One message in a SAVEPOINT of the caller's transaction, or in a transaction
        of its own when the caller has none."""
        backoff = Backoff(self.cfg.retry_base_ms, self.cfg.retry_max_ms)
        while True:
            it.attempts += 1
            try:
                with conn.transaction():  # SAVEPOINT, or BEGIN/COMMIT at top level
                    row = conn.execute(self.routes[it.topic], {"event": it.text}).fetchone()
                it.result = row[0] if row else None
                return
            except psycopg.Error as exc:
                rule = classify_exception(exc)
                if rule.action is Action.RETRY_FOREVER or conn.broken:
                    raise  # the whole micro-batch is retried
                diag = pg_diagnostics(exc)
                if rule.action is Action.DEAD_LETTER:
                    it.kill_from_exception(exc, rule)
                    return
                # RETRY_BOUNDED: unexpected error; the savepoint is rolled back
                if it.attempts >= self.cfg.unexpected_max_attempts:
                    log(
                        logging.ERROR,
                        "unexpected error: attempts exhausted, dead-lettering",
                        topic=it.topic,
                        partition=it.partition,
                        offset=it.offset,
                        attempts=it.attempts,
                        **diag,
                    )
                    it.kill_from_exception(exc, rule)
                    return
                self.metrics.retries.labels(kind="unexpected").inc()
                delay = backoff.next_delay()
                log(
                    logging.WARNING,
                    "unexpected error: retrying event",
                    topic=it.topic,
                    partition=it.partition,
                    offset=it.offset,
                    attempts=it.attempts,
                    retry_in_s=round(delay, 3),
                    **diag,
                )
                if self.stop.wait(delay):
                    raise Stopping() from exc


# ---------------------------------------------------------------------------
# Health state shared by the loops and the HTTP server.
# ---------------------------------------------------------------------------


class Health:
    def __init__(self, metrics: Metrics, max_age: float) -> None:
        self.metrics = metrics
        self.max_age = max_age
        now = time.monotonic()
        self.loop_beat = now
        self.last_db_ok = 0.0
        self.loop_running = False

    def beat(self) -> None:
        self.loop_beat = time.monotonic()

    def db_ok(self) -> None:
        self.last_db_ok = time.monotonic()
        self.metrics.db_up.set(1)

    def db_failed(self) -> None:
        self.metrics.db_up.set(0)

    def status(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        loop_age = now - self.loop_beat
        db_age = now - self.last_db_ok if self.last_db_ok else None
        loop_ok = self.loop_running and loop_age <= self.max_age
        db_ok = db_age is not None and db_age <= self.max_age
        return loop_ok and db_ok, {
            "consumer_loop": "ok" if loop_ok else "stale",
            "consumer_loop_age_seconds": round(loop_age, 3),
            "database": "ok" if db_ok else "unreachable",
            "database_last_ok_seconds_ago": round(db_age, 3) if db_age is not None else None,
        }


# ---------------------------------------------------------------------------
# Outbox relay
# ---------------------------------------------------------------------------


class RelayDeliveryError(Exception):
    pass


class SimulatedRelayCrash(Exception):
    """Test hook: raised after producing, before marking (see Relay.fail_after_produce)."""


class Relay:
    """Publishes outbox rows: claim, produce, wait for every delivery report, mark, commit.

    Anything that goes wrong between claim and commit rolls the claim back; the rows
    are produced again later with the same event_id (consumers deduplicate on it).
    ``fail_after_produce`` (test hook) makes the next N rounds raise after producing and
    before marking, as a crash would.
    """

    CLAIM_SQL = (
        "SELECT id, event_id::text, event_type, topic, message_key, envelope::text "
        "FROM els.claim_outbox(%(limit)s::integer)"
    )
    MARK_SQL = "SELECT els.mark_outbox_published(%(ids)s::bigint[])"
    BACKLOG_SQL = "SELECT unpublished, oldest_age_seconds FROM els.outbox_backlog()"

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        stop: threading.Event,
        health: Health | None = None,
        fail_after_produce: int = 0,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.stop = stop
        self.health = health
        self.fail_after_produce = fail_after_produce
        self.conn: psycopg.Connection[Any] | None = None
        self.producer = Producer(
            cfg.kafka(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "message.timeout.ms": 30000,
                    "client.id": "els-outbox-relay",
                }
            )
        )
        self.thread: threading.Thread | None = None
        self.backoff = Backoff(cfg.retry_base_ms, cfg.retry_max_ms)
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
        while not self.stop.is_set():
            try:
                n = self.run_once()
                self.backoff.reset()
                if n < self.cfg.relay_batch_size:
                    self.stop.wait(self.cfg.relay_idle_ms / 1000.0)
            except Exception as exc:  # the relay must survive anything
                self.metrics.retries.labels(kind="relay").inc()
                delay = self.backoff.next_delay()
                log(
                    logging.WARNING,
                    "outbox relay round failed: rolled back, will republish",
                    retry_in_s=round(delay, 3),
                    error=f"{type(exc).__name__}: {exc}",
                    **(pg_diagnostics(exc) if isinstance(exc, psycopg.Error) else {}),
                )
                if self.conn is not None and (self.conn.broken or self.conn.closed):
                    close_quietly(self.conn)
                    self.conn = None
                self.stop.wait(delay)
        self.close()
        log(logging.INFO, "outbox relay stopped", published=self.published)

    def close(self) -> None:
        self.producer.flush(10)
        close_quietly(self.conn)
        self.conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            close_quietly(self.conn)
            self.conn = None
            self.conn = connect(self.cfg, "els-outbox-relay")
        return self.conn

    def topic_for(self, event_type: str, row_topic: str) -> str:
        return self.cfg.topic_out.get(event_type) or row_topic

    def run_once(self) -> int:
        """One relay round. Returns the number of rows published."""
        conn = self._connection()
        self._maybe_update_backlog(conn)
        with conn.transaction():
            rows = conn.execute(self.CLAIM_SQL, {"limit": self.cfg.relay_batch_size}).fetchall()
            if self.health is not None:
                self.health.db_ok()
            if not rows:
                return 0
            failures: list[str] = []

            def on_delivery(err: KafkaError | None, _msg: Message) -> None:
                if err is not None:
                    failures.append(str(err))

            for _row_id, event_id, event_type, topic, key, envelope in rows:
                self._produce(
                    self.topic_for(event_type, topic),
                    key,
                    envelope,
                    [("event_id", event_id.encode()), ("event_type", event_type.encode())],
                    on_delivery,
                )
            remaining = self.producer.flush(45)
            if remaining or failures:
                raise RelayDeliveryError(
                    f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}"
                )
            if self.fail_after_produce > 0:
                self.fail_after_produce -= 1
                raise SimulatedRelayCrash("test hook: crash between produce and mark")
            conn.execute(self.MARK_SQL, {"ids": [r[0] for r in rows]})
        for row in rows:
            self.metrics.outbox_published.labels(event_type=row[2]).inc()
        self.published += len(rows)
        log(logging.DEBUG, "outbox rows published", rows=len(rows))
        return len(rows)

    def _produce(
        self,
        topic: str,
        key: str,
        value: str,
        headers: list[tuple[str, str | bytes | None]],
        cb: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, key=key.encode(), value=value.encode(), headers=headers, on_delivery=cb
                )
                return
            except BufferError:
                self.producer.poll(0.1)

    def _maybe_update_backlog(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._last_backlog < 2.0:
            return
        self._last_backlog = now
        row = conn.execute(self.BACKLOG_SQL).fetchone()
        if row:
            self.metrics.outbox_backlog.set(row[0])
            self.metrics.outbox_oldest.set(row[1])


# ---------------------------------------------------------------------------
# HTTP: /metrics, /healthz, /health/batches
# ---------------------------------------------------------------------------


def make_http_server(cfg: Config, metrics: Metrics, health: Health) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj, default=str).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, body = health.status()
                self._json(200 if ok else 503, {"status": "ok" if ok else "unhealthy", **body})
            elif path == "/health/batches":
                try:
                    with connect(cfg, "els-worker-health") as conn:
                        row = conn.execute(
                            "SELECT els.stuck_batch_list(make_interval(secs => %(s)s::double "
                            "precision), %(limit)s::integer)",
                            {"s": cfg.stuck_after_seconds, "limit": 1000},
                        ).fetchone()
                    stuck = row[0] if row else []
                    self._json(
                        200,
                        {
                            "threshold_seconds": cfg.stuck_after_seconds,
                            "count": len(stuck),
                            "stuck_batches": stuck,
                        },
                    )
                except psycopg.Error as exc:
                    self._json(503, {"error": pg_diagnostics(exc)})
            else:
                self._json(
                    404,
                    {"error": "not found", "paths": ["/metrics", "/healthz", "/health/batches"]},
                )

    server = ThreadingHTTPServer((cfg.metrics_host, cfg.metrics_port), Handler)
    server.daemon_threads = True
    return server


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------


class Worker:
    def __init__(self, cfg: Config, *, relay_fail_after_produce: int = 0) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.health = Health(self.metrics, cfg.health_max_age_seconds)
        self.processor = BatchProcessor(cfg, self.metrics, self.stop, self.health)
        self.relay: Relay | None = None
        if cfg.relay_enabled:
            self.relay = Relay(
                cfg,
                self.metrics,
                self.stop,
                self.health,
                fail_after_produce=relay_fail_after_produce,
            )
        self.consumer: Consumer | None = None
        self.dlq_producer: Producer | None = None
        self.http: ThreadingHTTPServer | None = None
        self.http_port: int | None = None
        self._signals = 0
        self._inflight: list[Message] = []
        # offsets committed asynchronously and not yet confirmed by the broker:
        # (topic, partition) -> next offset. Committed again synchronously before the
        # partitions go (revocation) and before the consumer closes (shutdown).
        self._unconfirmed: dict[tuple[str, int], int] = {}
        # idle database ping: often enough for /healthz's window
        self._ping_every = min(5.0, cfg.health_max_age_seconds / 3)

    # -- lifecycle ---------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                log(logging.WARNING, "second signal: exiting now", signal=signum)
                raise SystemExit(128 + signum)
            log(
                logging.INFO,
                "shutdown requested: finishing the micro-batch in hand",
                signal=signal.Signals(signum).name,
            )
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        self.stop.set()

    def start_http(self) -> None:
        self.http = make_http_server(self.cfg, self.metrics, self.health)
        self.http_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        log(
            logging.INFO,
            "http listening",
            host=self.cfg.metrics_host,
            port=self.http_port,
            paths=["/metrics", "/healthz", "/health/batches"],
        )

    def run(self) -> int:
        cfg = self.cfg
        topics = list(cfg.routes)
        if cfg.create_topics:
            outputs = [
                cfg.topic_out.get(t) or default
                for t, default in (
                    (
                        "BatchContentProvisioningCompleted",
                        "huleedu.batch.content.provisioning.completed.v1",
                    ),
                    ("EssaySlotAssigned", "huleedu.els.essay.slot.assigned.v1"),
                    ("ExcessContentProvisioned", "huleedu.els.excess.content.provisioned.v1"),
                )
            ]
            ensure_topics(cfg, [*topics, *(dlq_topic(t) for t in topics), *outputs])
        self.start_http()
        self.dlq_producer = Producer(
            cfg.kafka(
                **{
                    "message.max.bytes": DLQ_PRODUCER_MAX_BYTES,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 2,
                    # Bounded like the relay's: after a broker restart an unbounded
                    # (300 s) delivery would hold the consumer loop; _dead_letter
                    # retries what times out.
                    "message.timeout.ms": 30000,
                    "client.id": "els-worker-dlq",
                }
            )
        )
        self.consumer = Consumer(
            cfg.kafka(
                **{
                    "group.id": cfg.group_id,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": cfg.auto_offset_reset,
                    "enable.partition.eof": False,
                    "client.id": "els-worker",
                    "statistics.interval.ms": 10000,
                    "stats_cb": self._on_stats,
                    "error_cb": self._on_kafka_error,
                    "on_commit": self._on_commit,
                }
            )
        )
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        if self.relay is not None:
            self.relay.start()
        log(
            logging.INFO,
            "worker started",
            topics=topics,
            group_id=cfg.group_id,
            relay=self.relay is not None,
            batch_max_messages=cfg.batch_max_messages,
        )
        self.processor.ping()
        self.health.loop_running = True
        try:
            self._loop()
        finally:
            self.health.loop_running = False
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        log(logging.INFO, "shutting down")
        self.stop.set()
        if self.relay is not None:
            self.relay.join(60)
        if self.dlq_producer is not None:
            self.dlq_producer.flush(30)
        if self.consumer is not None:
            self._commit_unconfirmed()
            try:
                self.consumer.close()  # leaves the group
            except KafkaException as exc:
                log(logging.WARNING, "consumer close failed", error=str(exc))
        self.processor.close()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        log(logging.INFO, "worker stopped")

    # -- Kafka callbacks ---------------------------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log(
            logging.INFO,
            "partitions assigned",
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Micro-batches are applied and committed synchronously between polls; the
        # only work that can be in flight is what poll() returned just before a
        # consume() that triggered this rebalance: finish and commit it now, while
        # the partitions are still ours.
        inflight, self._inflight = self._inflight, []
        log(
            logging.INFO,
            "partitions revoked",
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
            in_flight=len(inflight),
        )
        if inflight:
            self.process(inflight)
        self._commit_unconfirmed({(p.topic, p.partition) for p in partitions})

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): another member may already own them; what we had in
        # flight will be redelivered to it, so do not apply it here.
        self._inflight = []
        for p in partitions:
            self._unconfirmed.pop((p.topic, p.partition), None)
        log(
            logging.WARNING,
            "partitions lost",
            partitions=[f"{p.topic}[{p.partition}]" for p in partitions],
        )

    def _on_kafka_error(self, err: KafkaError) -> None:
        log(
            logging.WARNING if not err.fatal() else logging.ERROR,
            "kafka error",
            error=str(err),
            code=err.code(),
        )

    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
            for tname, tstats in stats.get("topics", {}).items():
                for pname, pstats in tstats.get("partitions", {}).items():
                    if pname == "-1" or pstats.get("consumer_lag", -1) < 0:
                        continue
                    self.metrics.consumer_lag.labels(topic=tname, partition=pname).set(
                        pstats["consumer_lag"]
                    )
        except (ValueError, KeyError, TypeError):
            pass

    # -- the loop ----------------------------------------------------------
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

    def _loop(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        last_ping = time.monotonic()
        try:
            while not self.stop.is_set():
                self.health.beat()
                first = consumer.poll(0.5)
                if first is None:
                    if time.monotonic() - last_ping > self._ping_every:
                        self.processor.ping()
                        last_ping = time.monotonic()
                    continue
                # in flight from here: a rebalance inside consume() applies and commits
                # these before their partitions go (see _on_revoke)
                self._inflight = self._usable([first])
                more: list[Message] = []
                if self.cfg.batch_max_messages > 1:
                    more = consumer.consume(
                        self.cfg.batch_max_messages - 1, timeout=self.cfg.batch_max_wait_ms / 1000.0
                    )
                batch = self._inflight + self._usable(more)
                self._inflight = []
                if batch:
                    self.process(batch)
                    last_ping = time.monotonic()
        except Stopping:
            log(
                logging.INFO,
                "shutdown during retries: micro-batch not committed, it will be redelivered",
            )

    def process(self, msgs: Sequence[Message]) -> None:
        """One micro-batch: apply, dead-letter, then commit offsets."""
        started = time.monotonic()
        items = [decode_item(m) for m in msgs]
        self.metrics.batch_size.observe(len(items))
        self.processor.apply(items)
        committed = time.monotonic()
        dead = [it for it in items if it.dead]
        if dead:
            self._dead_letter(dead)
        self._commit_offsets(items)
        self._report(items, committed - started)

    def _report(self, items: Sequence[Item], seconds: float) -> None:
        """Metrics and one log line per event. Counters are added once per micro-batch
        and label (cached children); every event of a micro-batch has the same
        processing time (start of the micro-batch to its commit), observed once with
        the batch's weight."""
        metrics = self.metrics
        duration_ms = round(seconds * 1000, 3)
        counts: dict[tuple[str, str], int] = {}
        entries: list[tuple[int, str, dict[str, Any]]] = []
        log_events = self.cfg.log_events
        for it in items:
            if it.dead:
                outcome = "dead_lettered"
                metrics.dead_letter_counter(it.sqlstate or "").inc()
            else:
                res = it.result or {}
                outcome = str(res.get("outcome", "unknown"))
            key = (it.topic, outcome)
            counts[key] = counts.get(key, 0) + 1
            if not log_events:
                continue
            fields: dict[str, Any] = {
                "topic": it.topic,
                "partition": it.partition,
                "offset": it.offset,
                "batch_id": it.batch_id,
                "correlation_id": it.correlation_id,
                "duration_ms": duration_ms,
            }
            if it.dead:
                fields.update(
                    outcome=outcome,
                    sqlstate=it.sqlstate,
                    error=it.error_message,
                    detail=it.error_detail,
                    attempts=it.attempts,
                    dlq_topic=dlq_topic(it.topic),
                )
                if it.diagnostics:
                    fields["pg"] = it.diagnostics
                entries.append((logging.WARNING, "event dead-lettered", fields))
            else:
                fields["outcome"] = outcome
                fields["essay_id"] = res.get("essay_id")
                fields["complete"] = res.get("complete")
                fields["events"] = len(res.get("events") or ())
                entries.append((logging.INFO, "event applied", fields))
        for (topic, outcome), n in counts.items():
            metrics.event_counter(topic, outcome).inc(n)
        metrics.observe_processing(seconds, len(items))
        if entries:
            log_lines(entries)

    def _dead_letter(self, dead: Sequence[Item]) -> None:
        """Produces dead letters and waits until the broker confirmed every one.

        A dead letter too large for the producer or the dead-letter topic is sent as a
        stand-in: same key and headers, no value, and ``els.error.detail`` extended with
        ``dlq_value_omitted`` and the original size (the source coordinates are in the
        headers). Any other failure is retried with backoff until it succeeds."""
        assert self.dlq_producer is not None
        producer = self.dlq_producer
        backoff = Backoff(self.cfg.retry_base_ms, self.cfg.retry_max_ms)
        omitted: set[int] = set()  # id() of items sent as stand-ins
        pending = list(dead)
        while pending:
            failed: list[tuple[Item, KafkaError]] = []
            for it in pending:
                self._produce_dead_letter(producer, it, id(it) in omitted, failed)
            remaining = producer.flush(60)
            if remaining:
                # undelivered messages are still queued; wait for their reports too
                remaining = producer.flush(60)
            if not failed and not remaining:
                return
            too_large = [
                it for it, err in failed if err.code() in TOO_LARGE and id(it) not in omitted
            ]
            for it in too_large:
                omitted.add(id(it))
                log(
                    logging.WARNING,
                    "dead letter too large: sending a stand-in without the value",
                    topic=it.topic,
                    partition=it.partition,
                    offset=it.offset,
                    bytes=len(it.msg.value() or b""),
                )
            pending = [it for it, _err in failed] if not remaining else list(dead)
            if too_large and len(too_large) == len(failed) and not remaining:
                continue  # stand-ins go out at once, no backoff needed
            self.metrics.retries.labels(kind="dlq_produce").inc()
            delay = backoff.next_delay()
            log(
                logging.WARNING,
                "dead-letter produce not confirmed: retrying",
                failed=len(failed),
                errors=sorted({str(err) for _it, err in failed})[:3],
                undelivered=remaining,
                retry_in_s=round(delay, 3),
            )
            if self.stop.wait(delay):
                raise Stopping()

    def _produce_dead_letter(
        self,
        producer: Producer,
        it: Item,
        omit_value: bool,
        failed: list[tuple[Item, KafkaError]],
    ) -> None:
        value = it.msg.value()
        detail = it.error_detail
        if omit_value:
            try:
                parsed = json.loads(detail) if detail else {}
            except ValueError:
                parsed = {"original_detail": detail}
            if not isinstance(parsed, dict):
                parsed = {"original_detail": parsed}
            parsed.update(dlq_value_omitted=True, original_value_bytes=len(value or b""))
            detail = json.dumps(parsed)
            value = None
        headers: list[tuple[str, str | bytes | None]] = [
            ("els.error.sqlstate", (it.sqlstate or "").encode()),
            ("els.error.message", it.error_message.encode()),
            ("els.error.detail", detail.encode()),
            ("els.source.topic", it.topic.encode()),
            ("els.source.partition", str(it.partition).encode()),
            ("els.source.offset", str(it.offset).encode()),
            ("els.failed_at", datetime.now(UTC).isoformat().encode()),
            ("els.attempts", str(max(it.attempts, 1)).encode()),
        ]
        while True:
            try:
                producer.produce(
                    dlq_topic(it.topic),
                    key=it.msg.key(),
                    value=value,
                    headers=headers,
                    on_delivery=_DeliveryTracker(failed, it),
                )
                return
            except BufferError:
                producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None:
                    raise
                failed.append((it, err))  # e.g. MSG_SIZE_TOO_LARGE, raised before sending
                return

    def _commit_offsets(self, items: Sequence[Item]) -> None:
        """Commits ``last offset + 1`` per partition, asynchronously: the micro-batch's
        transaction has committed and its dead letters are confirmed, so whatever
        happens to this commit, nothing is lost (at worst the messages come again and
        the functions answer ``duplicate``). librdkafka sends the commits of one
        consumer in order; failures are reported to ``_on_commit``. What is not yet
        confirmed is committed again synchronously before partitions are revoked and
        before the consumer closes."""
        assert self.consumer is not None
        nexts: dict[tuple[str, int], int] = {}
        for it in items:
            key = (it.topic, it.partition)
            nexts[key] = max(nexts.get(key, -1), it.offset + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in nexts.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._commit_failed(str(exc))
            return
        self._unconfirmed.update(nexts)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if err is not None or failed:
            # e.g. a rebalance took the partition: the next owner re-applies these
            # messages, which the functions answer with `duplicate`.
            self._commit_failed(str(err or failed[0].error))
            return
        for p in partitions:
            key = (p.topic, p.partition)
            if self._unconfirmed.get(key, -1) <= p.offset:
                self._unconfirmed.pop(key, None)

    def _commit_unconfirmed(self, only: set[tuple[str, int]] | None = None) -> None:
        """Synchronous commit of the offsets whose asynchronous commit is not confirmed
        yet (all, or those of ``only``)."""
        if self.consumer is None:
            return
        keys = [k for k in self._unconfirmed if only is None or k in only]
        if not keys:
            return
        offsets = [TopicPartition(t, p, self._unconfirmed.pop((t, p))) for t, p in keys]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(str(exc))

    def _commit_failed(self, error: str) -> None:
        self.metrics.retries.labels(kind="offset_commit").inc()
        log(
            logging.WARNING,
            "offset commit failed; messages may be redelivered (idempotent)",
            error=error,
        )


# ---------------------------------------------------------------------------
# CLI: inspect
# ---------------------------------------------------------------------------


def format_report(rep: dict[str, Any]) -> str:
    lines: list[str] = []
    bid = rep.get("batch_id")
    if not rep.get("registered"):
        lines.append(f"batch {bid}: NOT REGISTERED")
    else:
        t = rep.get("tracker") or {}
        state = "COMPLETE" if rep.get("complete") else "in progress"
        lines.append(f"batch {bid}: {state}")
        lines.append(
            f"  class_type={t.get('class_type')} course={t.get('course_code')} "
            f"user={t.get('user_id')} org={t.get('org_id')} class={t.get('class_id')}"
        )
        lines.append(
            f"  expected={t.get('expected_count')} registered_at={t.get('registered_at')} "
            f"completed_at={t.get('completed_at')}"
        )
        lines.append(f"  correlation_id={t.get('correlation_id')}")
    counts = rep.get("slot_counts") or {}
    if counts:
        lines.append("  slots: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    slots = rep.get("slots") or []
    if slots:
        w_id = max(8, *(len(str(s.get("essay_id"))) for s in slots))
        w_st = max(6, *(len(str(s.get("status"))) for s in slots))
        lines.append(f"  {'#':>4}  {'essay_id':<{w_id}}  {'status':<{w_st}}  text / failure")
        for s in slots:
            extra = s.get("text_storage_id") or (
                f"failed upload {s['failed_file_upload_id']}"
                if s.get("failed_file_upload_id")
                else ""
            )
            lines.append(
                f"  {s.get('slot_no'):>4}  {s.get('essay_id')!s:<{w_id}}  "
                f"{s.get('status')!s:<{w_st}}  {extra}"
            )
    for title, key in (
        ("pending content", "pending_content"),
        ("excess content", "excess_content"),
    ):
        rows = rep.get(key) or []
        lines.append(f"  {title}: {len(rows)}")
        for c in rows:
            lines.append(
                f"    - {c.get('text_storage_id')} ({c.get('original_file_name')}, "
                f"upload {c.get('file_upload_id')})"
            )
    failures = rep.get("failures") or []
    lines.append(f"  validation failures: {len(failures)}")
    for f in failures:
        lines.append(
            f"    - {f.get('file_upload_id')} {f.get('validation_error_code')} "
            f"({f.get('disposition')}, slot essay {f.get('essay_id')})"
        )
    outbox = rep.get("outbox") or []
    published = sum(1 for o in outbox if o.get("published"))
    lines.append(f"  outbox: {len(outbox)} events, {published} published")
    for o in outbox:
        lines.append(
            f"    - {o.get('event_type'):<34} {o.get('event_id')} "
            f"{'published' if o.get('published') else 'PENDING'}"
        )
    return "\n".join(lines)


def cmd_inspect(cfg: Config, batch_id: str, as_json: bool) -> int:
    with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT els.batch_report(%(b)s::text)", {"b": batch_id}).fetchone()
    rep = row[0] if row else {}
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(format_report(rep))
    return 0 if rep.get("registered") else 1


# ---------------------------------------------------------------------------
# CLI: dlq-replay
# ---------------------------------------------------------------------------


def cmd_dlq_replay(
    cfg: Config, topics: list[str], sqlstates: list[str], dry_run: bool, timeout: float
) -> int:
    """Moves dead letters back to their source topic.

    The DLQ is read as a queue by the consumer group ``<ELS_GROUP_ID>.dlq-replay``,
    from its committed position up to the end seen at start. Matching messages (by
    SQLSTATE prefix, all when no filter) go back to the topic in their
    ``els.source.topic`` header with the same key and value; the others are appended
    to the DLQ again, unchanged, so that nothing is lost; then offsets are committed.
    With --dry-run nothing is produced or committed: it only lists.
    """
    dlqs = [dlq_topic(t) for t in (topics or list(cfg.routes))]
    consumer = Consumer(
        cfg.kafka(
            **{
                "group.id": f"{cfg.group_id}.dlq-replay",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
    )
    producer = Producer(cfg.kafka(**{"enable.idempotence": True, "acks": "all"}))
    metadata = consumer.list_topics(timeout=15)
    tps = [
        TopicPartition(t, p)
        for t in dlqs
        if t in metadata.topics
        for p in metadata.topics[t].partitions
    ]
    if not tps:
        print("no dead-letter topics found:", ", ".join(dlqs))
        consumer.close()
        return 0
    committed = consumer.committed(tps, timeout=15)
    ends: dict[tuple[str, int], int] = {}
    starts: list[TopicPartition] = []
    for tp in committed:
        low, high = consumer.get_watermark_offsets(tp, timeout=15)
        start = tp.offset if tp.offset not in (OFFSET_INVALID, None) and tp.offset >= 0 else low
        if start < high:
            ends[(tp.topic, tp.partition)] = high
            starts.append(
                TopicPartition(tp.topic, tp.partition, start if start >= 0 else OFFSET_BEGINNING)
            )
    replayed = kept = 0
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    positions: dict[tuple[str, int], int] = {}
    if starts:
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                print("consumer error:", msg.error(), file=sys.stderr)
                continue
            key = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            if key not in ends:
                continue
            h = header_map(msg)
            state = h.get("els.error.sqlstate", "")
            source = h.get("els.source.topic") or (msg.topic() or "").removesuffix(".dlq")
            match = not sqlstates or any(state.startswith(s) for s in sqlstates)
            if match and msg.value() is None:
                # a stand-in for a dead letter too large to keep: nothing to replay here
                print(
                    f"cannot replay {key[0]}[{key[1]}]@{offset}: value omitted (too large); "
                    f"the original is {source}[{h.get('els.source.partition')}]"
                    f"@{h.get('els.source.offset')}",
                    file=sys.stderr,
                )
                match = False
            verb = "replay" if match else "keep"
            print(
                f"{verb:6} {key[0]}[{key[1]}]@{offset} sqlstate={state} -> "
                f"{source if match else key[0]}: {h.get('els.error.message', '')}"
            )
            if not dry_run:
                if match:
                    producer.produce(
                        source,
                        key=msg.key(),
                        value=msg.value(),
                        headers=[("els.replayed_from", f"{key[0]}@{offset}".encode())],
                        on_delivery=on_delivery,
                    )
                else:
                    producer.produce(
                        key[0],
                        key=msg.key(),
                        value=msg.value(),
                        headers=msg.headers(),
                        on_delivery=on_delivery,
                    )
            replayed += int(match)
            kept += int(not match)
            positions[key] = offset + 1
            if offset + 1 >= ends[key]:
                del ends[key]
        if ends:
            print(f"timed out before reaching the end of {sorted(ends)}", file=sys.stderr)
    rc = 0
    if not dry_run and positions:
        remaining = producer.flush(60)
        if remaining or failures:
            print(
                f"produce failed ({remaining} undelivered, {failures[:3]}): offsets NOT "
                "committed, nothing lost; run again",
                file=sys.stderr,
            )
            rc = 1
        else:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                asynchronous=False,
            )
    consumer.close()
    mode = "dry run: would replay" if dry_run else "replayed"
    print(f"{mode} {replayed} message(s); {'would keep' if dry_run else 'kept'} {kept}")
    return rc


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker.py",
        description="Essay Lifecycle Service worker: consumes the input topics, applies each "
        "event with its PL/pgSQL function, dead-letters rejected events, relays the "
        "outbox to Kafka, serves /metrics, /healthz and /health/batches.",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the worker (default)")
    sub.add_parser("migrate", help="apply database migrations and reload sql/")
    p_inspect = sub.add_parser("inspect", help="readable report of one batch (els.batch_report)")
    p_inspect.add_argument("batch_id")
    p_inspect.add_argument("--json", action="store_true", help="print the raw JSON report")
    p_replay = sub.add_parser(
        "dlq-replay",
        help="move dead-lettered messages back to their source topic",
        description=cmd_dlq_replay.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_replay.add_argument("--dry-run", action="store_true", help="only list what would move")
    p_replay.add_argument(
        "--sqlstate",
        action="append",
        default=[],
        help="replay only dead letters whose SQLSTATE starts with this (repeatable)",
    )
    p_replay.add_argument(
        "--topic",
        action="append",
        default=[],
        help="source topic whose .dlq to replay (repeatable; default: all three input topics)",
    )
    p_replay.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to read before giving up (default 30)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(env("ELS_LOG_LEVEL"))
    cfg = Config.from_env()
    command = args.command or "run"
    if command == "migrate":
        from els_migrate import apply_migrations

        applied = apply_migrations(cfg.database_url)
        print("applied:", ", ".join(applied) or "nothing (functions reloaded)")
        return 0
    if command == "inspect":
        return cmd_inspect(cfg, args.batch_id, args.json)
    if command == "dlq-replay":
        return cmd_dlq_replay(cfg, args.topic, args.sqlstate, args.dry_run, args.timeout)
    worker = Worker(cfg)
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
