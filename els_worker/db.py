"""PostgreSQL sessions and every SQL statement the worker sends, named in one place.

All calls use named parameters with explicit casts. A ``Session`` is one reconnecting
connection: after a lost connection or a read-only transaction (a demoted primary) it
is dropped, and the next use connects again; with a multi-host URL and
``target_session_attrs=read-write`` libpq then finds the new primary.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from els_worker.config import Config
from els_worker.errors import classify
from els_worker.observability import log

# -- the ingest path --------------------------------------------------------------


# The fast path: a whole micro-batch in one call of the set-based core, in arrival
# order; kinds[i] is the function of event i's topic, events[i] its message value.
# One result per event: {"ok": true, "result"} or the rejection it would raise.
APPLY_EVENTS = (
    "SELECT els.apply_events(kinds => %(kinds)s::text[], events => %(events)s::text[])"
)
# The same micro-batch as one JSON array of {"kind", "event"} (a JSON document built
# from the checked message values, sent as one parameter: sending a text[] of 500
# values costs the client ~65 µs per value). When PostgreSQL refuses the document
# (one value it cannot take as jsonb), the text[] form above reports that value alone.
APPLY_EVENTS_JSON = "SELECT els.apply_events(events => %(events)s::jsonb)"


def events_document(kinds: list[str], values: list[str]) -> str:
    """The JSON array for APPLY_EVENTS_JSON: ``values`` are JSON texts that Python's
    parser accepted, ``kinds`` function names (contract.INPUTS)."""
    items = (f'{{"kind":"{k}","event":{v}}}' for k, v in zip(kinds, values, strict=True))
    return "[" + ",".join(items) + "]"

# -- the outbox relay ---------------------------------------------------------------
CLAIM_OUTBOX = (
    "SELECT id, event_id::text, event_type, topic, message_key, envelope::text "
    "FROM els.claim_outbox(p_limit => %(limit)s::integer)"
)
# Published rows with where the broker stored them (parallel arrays, delivery_arrays).
MARK_PUBLISHED = (
    "SELECT els.mark_outbox_published(p_ids => %(ids)s::bigint[], p_topics => "
    "%(topics)s::text[], p_partitions => %(partitions)s::integer[], p_offsets => "
    "%(offsets)s::bigint[])"
)
SET_ASIDE = (
    "SELECT els.set_aside_outbox(p_id => %(id)s::bigint, p_reason => %(reason)s::text)"
)
OUTBOX_BACKLOG = (
    "SELECT unpublished, oldest_age_seconds, set_aside FROM els.outbox_backlog()"
)

# -- the audit (worker.py audit): published rows read back at their coordinates --------
AUDIT_PUBLISHED_SINCE = (
    "SELECT id, event_id::text, event_type, kafka_topic, kafka_partition, kafka_offset "
    "FROM els.outbox_published_since(p_since => %(since)s::interval)"
)
AUDIT_ENVELOPES = (
    "SELECT id, event_id::text, event_type, topic, message_key, envelope::text "
    "FROM els.outbox_envelopes(p_ids => %(ids)s::bigint[])"
)
RECORD_REDELIVERY = (
    "SELECT els.record_outbox_redelivery(p_ids => %(ids)s::bigint[], p_topics => "
    "%(topics)s::text[], p_partitions => %(partitions)s::integer[], p_offsets => "
    "%(offsets)s::bigint[])"
)
TRY_AUDIT_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('els.audit', 0))"


def delivery_arrays(rows: list[tuple[int, tuple[str, int, int]]]) -> dict[str, str]:
    """The parameters of MARK_PUBLISHED and RECORD_REDELIVERY: outbox ids with the
    (topic, partition, offset) their delivery reports gave, as array literals (the
    statements cast them): psycopg's list adaptation costs more per element than the
    rest of a relay round's Python work."""
    quoted: dict[str, str] = {}
    for _, (topic, _p, _o) in rows:
        if topic not in quoted:
            quoted[topic] = '"' + topic.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return {"ids": "{" + ",".join([str(i) for i, _ in rows]) + "}",
            "topics": "{" + ",".join([quoted[w[0]] for _, w in rows]) + "}",
            "partitions": "{" + ",".join([str(w[1]) for _, w in rows]) + "}",
            "offsets": "{" + ",".join([str(w[2]) for _, w in rows]) + "}"}


# -- maintenance and health -----------------------------------------------------------
PING = "SELECT 1"
STUCK_BATCHES = (
    "SELECT els.stuck_batch_list(p_min_age => make_interval(secs => %(seconds)s::double "
    "precision), p_limit => %(limit)s::integer)"
)
BATCH_HEALTH = (
    "SELECT els.batch_health(stuck_after => make_interval(secs => %(seconds)s::double "
    "precision))"
)
CLOSE_OVERDUE = (
    "SELECT els.close_overdue_batches(older_than => make_interval(secs => "
    "%(seconds)s::double precision), max_batches => %(limit)s::integer)"
)
PURGE_HISTORY = (
    "SELECT els.purge_history(older_than => make_interval(secs => %(seconds)s::double "
    "precision))"
)
# Behind the proxy: every partition's claims pending that long, resolved (sql/046).
REAP_CLAIMS = (
    "SELECT els.reap_claims(older_than => make_interval(secs => %(seconds)s::double "
    "precision))"
)
# One key for "the maintenance runner": a session lock, released when its holder's
# session ends (a crashed worker hands the job to the next one).
TRY_MAINTENANCE_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('els.maintenance', 0))"

# -- DBA commands -----------------------------------------------------------------------
BATCH_REPORT = "SELECT els.batch_report(p_batch_id => %(batch_id)s::text)"


def connect(cfg: Config, application_name: str, autocommit: bool = True,
            connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
            ) -> psycopg.Connection[Any]:
    conn = connection_class.connect(
        cfg.database_url,
        autocommit=autocommit,
        connect_timeout=5,
        application_name=application_name,
    )
    if cfg.statement_timeout_ms:
        conn.execute(
            "SELECT set_config('statement_timeout', %(ms)s::text, false)",
            {"ms": f"{cfg.statement_timeout_ms}ms"},
        )
        if not autocommit:
            conn.commit()
    return conn


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # closing a broken connection may fail; nothing to do
            pass


class Session:
    """One reconnecting connection (autocommit; transactions via ``transaction()``)."""

    def __init__(self, cfg: Config, application_name: str,
                 connection_class: type[psycopg.Connection[Any]] = psycopg.Connection) -> None:
        self.cfg = cfg
        self.application_name = application_name
        self.connection_class = connection_class
        self.conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = connect(self.cfg, self.application_name,
                                connection_class=self.connection_class)
            log(logging.INFO, "database connected", session=self.application_name,
                host=self.conn.info.host, port=self.conn.info.port)
        return self.conn

    def after_fault(self, exc: BaseException) -> None:
        """Drops the connection when it cannot serve the next attempt: broken, closed,
        or a rule says reconnect (a demoted primary: a new connection finds the new one)."""
        if self.conn is not None and (self.conn.closed or classify(exc, self.conn).reconnect):
            self.close()

    def close(self) -> None:
        close_quietly(self.conn)
        self.conn = None
