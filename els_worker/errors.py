"""What an error means for the event in hand: THE one table (SPEC section 4).

``classify`` maps any exception met while applying an event to a ``Rule``: dead-letter
now (a verdict on the event), retry without limit (the fault is the database's or the
deployment's), or retry a bounded number of times (unexpected: a bug). Whether an
unexpected error is the event's own or systemic is decided by ``apply``, which sees
whether other events are applied meanwhile.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import psycopg

MALFORMED = "ELV01"  # SQLSTATE of a message value that is not JSON PostgreSQL accepts


class Action(enum.Enum):
    DEAD_LETTER = "dead_letter"  # a verdict on the event: to <topic>.dlq at once
    RETRY_FOREVER = "retry_forever"  # operational or deployment: back off, reconnect, in order
    RETRY_BOUNDED = "retry_bounded"  # unexpected: a few retries, then dead letter if poison


class Scope(enum.Enum):
    ANY = "any"
    VALUE = "value"  # PostgreSQL refused the message value itself (the ::jsonb cast)
    BODY = "body"  # raised by a statement inside a function body


@dataclass(frozen=True)
class Rule:
    prefix: str  # SQLSTATE prefix: a class ("08") or a full code ("40001"); "" = any
    action: Action
    kind: str  # label of els_retries_total / els_dead_letters_total reasons
    reason: str
    scope: Scope = Scope.ANY
    # SQLSTATE reported in the dead letter instead of the original, when PostgreSQL
    # refused the value as jsonb; the original SQLSTATE and message go into the detail.
    report_as: str | None = None
    # the connection cannot serve the retry (its server is a demoted primary, or its
    # session state is out of step with the client's): open a new one first
    reconnect: bool = False


_DEAD, _FOREVER, _BOUNDED = Action.DEAD_LETTER, Action.RETRY_FOREVER, Action.RETRY_BOUNDED

CLASSIFICATION: tuple[Rule, ...] = (
    Rule("ELV", _DEAD, "rejected", "event rejected by validation (SPEC section 4)"),
    Rule("ELC", _DEAD, "rejected", "event conflicts with registered state (SPEC section 4)"),
    Rule("22", _DEAD, "rejected", "value is not JSON PostgreSQL accepts (e.g. \\u0000)",
         Scope.VALUE, MALFORMED),
    Rule("54", _DEAD, "rejected", "value too deeply nested for PostgreSQL's JSON parser",
         Scope.VALUE, MALFORMED),
    Rule("08", _FOREVER, "operational", "connection exception"),
    Rule("25006", _FOREVER, "operational", "read-only transaction (a demoted primary): reconnect",
         reconnect=True),
    Rule("25P02", _FOREVER, "operational", "transaction already aborted: reconnect",
         reconnect=True),
    Rule("26000", _FOREVER, "operational", "prepared statement missing: reconnect",
         reconnect=True),
    Rule("42P05", _FOREVER, "operational", "prepared statement exists: reconnect",
         reconnect=True),
    Rule("40001", _FOREVER, "operational", "serialization failure"),
    Rule("40P01", _FOREVER, "operational", "deadlock detected"),
    Rule("55P03", _FOREVER, "operational", "lock not available (lock_timeout)"),
    Rule("57014", _FOREVER, "operational", "query canceled (statement_timeout)"),
    Rule("57P01", _FOREVER, "operational", "admin shutdown"),
    Rule("57P02", _FOREVER, "operational", "crash shutdown"),
    Rule("57P03", _FOREVER, "operational", "cannot connect now (starting up / shutting down)"),
    Rule("53", _FOREVER, "operational", "insufficient resources (disk, memory, connections)"),
    Rule("3F000", _FOREVER, "deployment", "schema els missing: not migrated yet"),
    Rule("42883", _FOREVER, "deployment", "function missing: not migrated, or renamed"),
    Rule("42P01", _FOREVER, "deployment", "table missing"),
    Rule("42703", _FOREVER, "deployment", "column missing"),
    Rule("42501", _FOREVER, "deployment", "privilege missing (grant to els_worker)"),
    Rule("", _BOUNDED, "unexpected", "anything else: a bug; retried, dead-lettered if poison"),
)

CONNECTION_LOST = Rule("", _FOREVER, "operational", "connection lost (no SQLSTATE)",
                       reconnect=True)
CLIENT_REFUSED = Rule("", _DEAD, "rejected", "value psycopg cannot send", Scope.VALUE, MALFORMED)


def classify_sqlstate(sqlstate: str | None, scope: Scope = Scope.BODY) -> Rule:
    """The rule for a SQLSTATE raised in ``scope``; ``None`` is a lost connection."""
    if sqlstate is None:
        return CONNECTION_LOST
    best = CLASSIFICATION[-1]
    for rule in CLASSIFICATION:
        if rule.scope not in (Scope.ANY, scope):
            continue
        if rule.prefix and sqlstate.startswith(rule.prefix) and len(rule.prefix) > len(best.prefix):
            best = rule
    return best


def classify(exc: BaseException, conn: psycopg.Connection[Any] | None = None) -> Rule:
    """The rule for an exception raised while talking to PostgreSQL over ``conn``.

    A connection that broke meanwhile makes any error a lost connection: a server that
    went away right after rejecting an event (a restart) leaves the event's verdict
    unconfirmed, so the micro-batch is retried on a new connection, whatever the
    SQLSTATE said."""
    if conn is not None and conn.broken:
        return CONNECTION_LOST
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                return CONNECTION_LOST
            return CLIENT_REFUSED  # e.g. a NUL character psycopg refuses to send
        return classify_sqlstate(exc.sqlstate, scope_of(exc))
    if isinstance(exc, OSError | TimeoutError):
        return CONNECTION_LOST
    return CLASSIFICATION[-1]


def scope_of(exc: psycopg.Error) -> Scope:
    """VALUE when PostgreSQL refused the message value itself (the ``::jsonb`` cast
    reports ``JSON data, line ...`` as context, or no function at all), BODY when a
    statement inside a function raised it."""
    context = exc.diag.context or ""
    if context.startswith("JSON data"):
        return Scope.VALUE
    if "PL/pgSQL function" in context or "SQL function" in context:
        return Scope.BODY
    return Scope.VALUE


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


def describe_table() -> list[str]:
    """The table as text lines, for ``--help``."""
    return [
        f"  {rule.prefix or '(other)':<8} {rule.action.value:<14} {rule.kind:<12} {rule.reason}"
        for rule in CLASSIFICATION
    ]
