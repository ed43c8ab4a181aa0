"""Configuration: environment variables only, declared once.

Each ``Config`` field names its variable, its default and its help text in the field
itself, so ``--help``, the README table and ``Config.from_env`` cannot disagree.
Tests build a ``Config`` directly with the fields they need.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from els_worker import contract


def _setting(var: str, default: Any, text: str, minimum: int | None = None) -> Any:
    meta = {"env": var, "help": text, "min": minimum}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def topic_field(event: contract.Event) -> str:
    """The ``Config`` field of an event's topic: its variable without ``ELS_``, in lower
    case (``ELS_TOPIC_OUT_EXCESS`` -> ``topic_out_excess``)."""
    return event.env_var.removeprefix("ELS_").lower()


def _input_topic(event: contract.InputEvent) -> Any:
    return _setting(event.env_var, event.topic,
                    f"Input topic: {event.name} -> els.{event.function}.")


def _output_topic(event: contract.OutputEvent) -> Any:
    return _setting(event.env_var, "", f"Output topic for {event.name} (empty: {event.topic}).")


@dataclass
class Config:
    database_url: str = _setting(
        "ELS_DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/els",
        "PostgreSQL URL (libpq syntax). Several hosts with target_session_attrs=read-write "
        "follow a failover: postgresql://h1,h2/els?target_session_attrs=read-write",
    )
    partition_urls: str = _setting(
        "ELS_PARTITION_URLS",
        "",
        "Partitions behind the PL/Proxy proxy (SPEC 9): their PostgreSQL URLs, comma-separated, "
        "in partition order; ELS_DATABASE_URL is then the proxy. Empty: one database.",
    )
    kafka_bootstrap: str = _setting(
        "ELS_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)."
    )
    group_id: str = _setting(
        "ELS_GROUP_ID", "essay-lifecycle-service", "Consumer group id of the worker."
    )
    # one field per event of the contract, named by topic_field (a test checks it)
    topic_batch_registered: str = _input_topic(contract.REGISTERED)
    topic_content_provisioned: str = _input_topic(contract.CONTENT_PROVISIONED)
    topic_validation_failed: str = _input_topic(contract.VALIDATION_FAILED)
    topic_out_completed: str = _output_topic(contract.COMPLETED)
    topic_out_slot_assigned: str = _output_topic(contract.SLOT_ASSIGNED)
    topic_out_excess: str = _output_topic(contract.EXCESS)
    metrics_port: int = _setting(
        "ELS_METRICS_PORT", 9095, "HTTP port for /metrics, /healthz, /health/batches (0: any)."
    )
    metrics_host: str = _setting("ELS_METRICS_HOST", "0.0.0.0", "Address the HTTP server binds to.")
    relay_enabled: bool = _setting(
        "ELS_RELAY_ENABLED", True, "Run the outbox relay thread in this process (true/false)."
    )
    relay_batch_size: int = _setting(
        "ELS_RELAY_BATCH_SIZE", 500, "Outbox rows claimed per relay transaction.", 1
    )
    relay_idle_ms: int = _setting(
        "ELS_RELAY_IDLE_MS", 150, "Relay poll interval when the outbox is empty.", 1
    )
    batch_max_messages: int = _setting(
        "ELS_BATCH_MAX_MESSAGES", 500, "Most messages applied in one database transaction.", 1
    )
    batch_max_wait_ms: int = _setting(
        "ELS_BATCH_MAX_WAIT_MS",
        5,
        "After the first message, how long to wait for more to fill a micro-batch.",
        0,
    )
    retry_base_ms: int = _setting(
        "ELS_RETRY_BASE_MS", 100, "First backoff delay of a retry (doubles per attempt).", 1
    )
    retry_max_ms: int = _setting(
        "ELS_RETRY_MAX_MS", 5000, "Backoff cap (jitter: each delay is 50-100% of its step).", 1
    )
    unexpected_max_attempts: int = _setting(
        "ELS_UNEXPECTED_MAX_ATTEMPTS",
        5,
        "Attempts for an unexpected error before its event is dead-lettered (only while "
        "other events are applied: otherwise the fault is systemic and retried).",
        1,
    )
    statement_timeout_ms: int = _setting(
        "ELS_STATEMENT_TIMEOUT_MS", 30000,
        "statement_timeout of the worker's sessions (0: none).", 0
    )
    stuck_after_seconds: int = _setting(
        "ELS_STUCK_AFTER_SECONDS",
        900,
        "/health/batches and els_stuck_batches count batches incomplete this long.",
        0,
    )
    health_max_age_seconds: int = _setting(
        "ELS_HEALTH_MAX_AGE_SECONDS",
        30,
        "/healthz fails when the consumer loop or the last good database contact is older.",
        1,
    )
    partition_stall_seconds: int = _setting(
        "ELS_PARTITION_STALL_SECONDS",
        30,
        "A partition of ours with messages beyond our position but none delivered this long "
        "(while the loop polls) is stalled: logged, counted, /healthz 503, and a seek to "
        "its next unprocessed offset restarts its fetch; 0: off.",
        0,
    )
    batch_deadline_seconds: int = _setting(
        "ELS_BATCH_DEADLINE_SECONDS",
        0,
        "Close batches incomplete this long after registration (els.close_overdue_batches); "
        "0: off. Production: a few times the longest normal upload, e.g. 86400.",
        0,
    )
    retention_seconds: int = _setting(
        "ELS_RETENTION_SECONDS",
        0,
        "Purge completed batches, stale pending items and published outbox rows this old "
        "(els.purge_history); 0: off. Production: e.g. 604800 (7 days).",
        0,
    )
    claim_reap_seconds: int = _setting(
        "ELS_CLAIM_REAP_SECONDS",
        60,
        "Behind the proxy: release essay-id claims a crashed registration left pending this "
        "long (els.reap_claims, in maintenance); 0: off. No effect on one database.",
        0,
    )
    maintenance_interval_seconds: int = _setting(
        "ELS_MAINTENANCE_INTERVAL_SECONDS",
        60,
        "How often the maintenance loop runs (deadlines, retention, batch gauges).",
        1,
    )
    audit_interval_seconds: int = _setting(
        "ELS_AUDIT_INTERVAL_SECONDS",
        0,
        "How often the worker audits the outbox (worker.py audit: published rows read back "
        "from Kafka at their offsets, missing ones produced again), one worker at a time; "
        "0: off. Production: e.g. 900.",
        0,
    )
    audit_window_seconds: int = _setting(
        "ELS_AUDIT_WINDOW_SECONDS",
        86400,
        "The periodic audit checks rows published since its previous run started (plus "
        "5 minutes), at most this long ago; a worker's first run checks this whole window.",
        1,
    )
    create_topics: bool = _setting(
        "ELS_CREATE_TOPICS",
        True,
        "Create missing input, dead-letter and output topics at start (true/false).",
    )
    topic_partitions: int = _setting(
        "ELS_TOPIC_PARTITIONS", 3, "Partitions of topics the worker creates.", 1
    )
    topic_replication_factor: int = _setting(
        "ELS_TOPIC_REPLICATION_FACTOR",
        -1,
        "Replication factor of topics the worker creates (-1: the broker's default).",
    )
    topic_min_insync_replicas: int = _setting(
        "ELS_TOPIC_MIN_INSYNC_REPLICAS",
        0,
        "min.insync.replicas of topics the worker creates (0: the broker's default; "
        "2 on a three-broker cluster).",
        0,
    )
    auto_offset_reset: str = _setting(
        "ELS_AUTO_OFFSET_RESET", "earliest", "Where a new consumer group starts (earliest/latest)."
    )
    kafka_extra: dict[str, Any] = _setting(
        "ELS_KAFKA_CONFIG",
        {},
        "Extra librdkafka settings for every client, as a JSON object (e.g. security).",
    )
    kafka_consumer_extra: dict[str, Any] = _setting(
        "ELS_KAFKA_CONSUMER_CONFIG",
        {},
        "Extra librdkafka settings for the consumers only (the input consumer, dlq-replay's),"
        " as a JSON object (e.g. session.timeout.ms, group.instance.id); over ELS_KAFKA_CONFIG.",
    )
    log_level: str = _setting("ELS_LOG_LEVEL", "INFO", "Log level (DEBUG, INFO, WARNING, ERROR).")
    log_events: bool = _setting("ELS_LOG_EVENTS", True, "One JSON log line per event (true/false).")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        source = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f.metadata["env"]
            if var in source:
                values[f.name] = _parse(var, source[var], _default(f), f.metadata["min"])
        return cls(**values)

    def database_partitions(self) -> list[tuple[str, Config]]:
        """The databases that hold outboxes, each with its ``db_partition`` label and the
        configuration that reaches it: the one database (label ""), or every partition
        behind the proxy ("0", "1", ... from ELS_PARTITION_URLS). The relay and the
        audit run once per entry (an outbox is claimed and marked in one transaction of
        its own database); everything else goes through ELS_DATABASE_URL."""
        urls = split_urls(self.partition_urls)
        if not urls:
            return [("", self)]
        return [(str(i), replace(self, database_url=url, partition_urls=""))
                for i, url in enumerate(urls)]

    def topic(self, event: contract.Event) -> str:
        """The topic configured for an event (for an output event, "" means its row's)."""
        return str(getattr(self, topic_field(event)))

    @property
    def routes(self) -> dict[str, str]:
        """Input topic -> the statement that applies one of its message values."""
        return {self.topic(event): event.statement for event in contract.INPUTS}

    @property
    def route_functions(self) -> dict[str, str]:
        """Input topic -> the els function of its events (the kind els.apply_events takes)."""
        return {self.topic(event): event.function for event in contract.INPUTS}

    @property
    def input_topics(self) -> list[str]:
        return list(self.routes)

    def output_topic(self, event_type: str, row_topic: str) -> str:
        """Where an outbox row goes: the configured override, else the row's topic."""
        event = _OUTPUT_BY_NAME.get(event_type)
        return (self.topic(event) if event is not None else "") or row_topic

    @property
    def output_topics(self) -> list[str]:
        return [self.output_topic(o.name, o.topic) for o in contract.OUTPUTS]

    def kafka(self, **settings: Any) -> dict[str, Any]:
        """A client's librdkafka settings: bootstrap, ELS_KAFKA_CONFIG, then ``settings``."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        conf.update(self.kafka_extra)
        conf.update(settings)
        return conf

    def kafka_consumer(self, **settings: Any) -> dict[str, Any]:
        """A consumer's: as ``kafka``, with ELS_KAFKA_CONSUMER_CONFIG over
        ELS_KAFKA_CONFIG (consumer properties given to a producer only draw warnings).
        ``settings`` still win: the offset and commit semantics are not configurable."""
        return self.kafka(**{**self.kafka_consumer_extra, **settings})


def split_urls(value: str) -> list[str]:
    """``ELS_PARTITION_URLS``: comma-separated libpq URLs (a multi-host URL keeps its
    commas inside the authority, so the split is on ``,postgres``)."""
    urls: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if urls and not part.startswith(("postgresql://", "postgres://")):
            urls[-1] += "," + part
        else:
            urls.append(part)
    return urls


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _parse(var: str, text: str, default: Any, minimum: int | None) -> Any:
    if isinstance(default, bool):
        value = text.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{var}={text!r} is not a boolean")
    if isinstance(default, int):
        try:
            number = int(text)
        except ValueError as exc:
            raise ValueError(f"{var}={text!r} is not an integer") from exc
        return max(minimum, number) if minimum is not None else number
    if isinstance(default, dict):
        parsed = json.loads(text) if text.strip() else {}
        if not isinstance(parsed, dict):
            raise ValueError(f"{var} must be a JSON object")
        return parsed
    return text


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default as text, help) for every setting, in declaration order."""
    out = []
    for f in fields(Config):
        default = _default(f)
        text = str(default).lower() if isinstance(default, bool) else str(default)
        out.append((f.metadata["env"], "" if default == {} else text, f.metadata["help"]))
    return out


_OUTPUT_BY_NAME = {event.name: event for event in contract.OUTPUTS}
