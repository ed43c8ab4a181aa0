"""A consumed message and what became of it; the checks made before the database
sees it (UTF-8, JSON syntax). Everything else about the value is PostgreSQL's call:
the worker never rejects what PostgreSQL accepts (huge integers, deep nesting)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from confluent_kafka import Message

from els_worker.errors import (
    MALFORMED,
    Action,
    Rule,
    Scope,
    classify_sqlstate,
    pg_diagnostics,
    scope_of,
)


@dataclass(slots=True)
class Item:
    """One consumed message: its coordinates, value, result or dead-letter verdict."""

    msg: Message
    topic: str
    partition: int
    offset: int
    text: str | None = None
    envelope: Any = None
    result: dict[str, Any] | None = None
    attempts: int = 0
    # an unexpected error that may be this event's own (decided by apply)
    suspect: BaseException | None = None
    dead: bool = False
    sqlstate: str | None = None
    error_message: str = ""
    error_detail: str = ""
    diagnostics: dict[str, Any] | None = None

    @property
    def correlation_id(self) -> str | None:
        env = self.envelope
        if isinstance(env, dict):
            cid = env.get("correlation_id")
            data = env.get("data")
            if cid is None and isinstance(data, dict):
                cid = data.get("correlation_id")
            return str(cid) if cid is not None else None
        return None

    @property
    def batch_id(self) -> str | None:
        if self.result and self.result.get("batch_id") is not None:
            return str(self.result["batch_id"])
        env = self.envelope
        if isinstance(env, dict):
            inner = env.get("data")
            data: dict[str, Any] = inner if isinstance(inner, dict) else env
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
        self.diagnostics = diagnostics

    def kill_from_exception(self, exc: BaseException, rule: Rule) -> None:
        diag = pg_diagnostics(exc)
        original = diag.get("sqlstate")
        refused_value = rule.report_as and (
            not isinstance(exc, psycopg.Error) or exc.sqlstate is None
            or scope_of(exc) is Scope.VALUE
        )
        if rule.report_as and refused_value:
            self.kill_refused(rule.report_as, diag)
        else:
            self.kill(original or "XX000", str(diag.get("message", "")),
                      str(diag.get("detail") or "{}"), diag)

    def kill_refused(self, report_as: str, diag: dict[str, Any]) -> None:
        """PostgreSQL (or psycopg) refused the message value itself: reported as
        ``report_as`` (ELV01) with the original error in the detail."""
        detail = json.dumps({
            "field": None,
            "reason": "invalid_json",
            "original_sqlstate": diag.get("sqlstate"),
            "error": diag.get("message"),
            "pg_detail": diag.get("detail"),
            "context": diag.get("context"),
        })
        message = f"message value is not JSON PostgreSQL accepts: {diag.get('message')}"
        self.kill(report_as, message, detail, diag)

    def revive(self) -> None:
        """Withdraws a verdict taken in a transaction that was rolled back."""
        self.dead = False
        self.sqlstate = None
        self.error_message = ""
        self.error_detail = ""
        self.diagnostics = None
        self.attempts = max(0, self.attempts - 1)

    def apply_result(self, res: dict[str, Any]) -> None:
        """Takes this event's result from els.apply_events (checked by ``check_result``):
        its outcome, or its rejection as a dead-letter verdict."""
        if res.get("ok"):
            self.result = res.get("result")
            return
        refused = bool(res.get("refused_value"))
        sqlstate = str(res.get("sqlstate") or "")
        rule = check_result(res)
        if refused and rule is not None and rule.report_as:
            diag = {"sqlstate": sqlstate, "message": res.get("message"),
                    "detail": res.get("pg_detail"), "context": res.get("context")}
            self.kill_refused(rule.report_as, {k: v for k, v in diag.items() if v is not None})
            return
        detail = str(res.get("detail_text") or "{}")  # the DETAIL as the function raises it
        diag = {"sqlstate": sqlstate, "message": res.get("message"), "detail": detail,
                "context": res.get("context"), "severity": "ERROR"}
        self.kill(sqlstate, str(res.get("message") or ""), detail,
                  {k: v for k, v in diag.items() if v is not None})


class UnexpectedResult(Exception):
    """els.apply_events returned a per-event error that is not a rejection (a bug)."""


def check_result(res: Any) -> Rule | None:
    """The rule of one per-event result of els.apply_events (None when it applied);
    raises ``UnexpectedResult`` unless it is a dead-letter verdict (els_worker.errors)."""
    if not isinstance(res, dict):
        raise UnexpectedResult("els.apply_events returned a result that is not an object")
    if res.get("ok"):
        return None
    sqlstate = str(res.get("sqlstate") or "")
    rule = classify_sqlstate(sqlstate, Scope.VALUE if res.get("refused_value") else Scope.BODY)
    if rule.action is not Action.DEAD_LETTER:
        raise UnexpectedResult(f"els.apply_events reported {sqlstate} for an event "
                               f"({rule.kind}): not a verdict on the event")
    return rule


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Integers stay text: Python refuses to convert more than 4,300 digits, PostgreSQL's
# numeric takes them, and the worker only reads ids and correlation ids anyway.
# (json.loads with keyword arguments builds a new decoder per call; this one is reused.)
_DECODE_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_int=str).decode


def decode_item(msg: Message) -> Item:
    """Checks the bytes before the database sees them: UTF-8 and JSON syntax."""
    topic = msg.topic() or ""
    item = Item(msg=msg, topic=topic, partition=msg.partition() or 0, offset=msg.offset() or 0)
    raw = msg.value()
    if raw is None or len(raw) == 0:
        item.kill(MALFORMED, "message value is empty",
                  json.dumps({"field": None, "reason": "empty_value"}))
        return item
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError as exc:
        item.kill(MALFORMED, "message value is not valid UTF-8",
                  json.dumps({"field": None, "reason": "invalid_utf8", "error": str(exc)}))
        return item
    try:
        if text.startswith("\ufeff"):  # as json.loads does
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        item.envelope = _DECODE_JSON(text)
    except RecursionError:
        # Deeper than Python's parser goes, yet possibly valid JSON: PostgreSQL judges
        # it (its ::jsonb cast refuses it at once, which the table maps to ELV01).
        item.envelope = None
    except ValueError as exc:
        item.kill(MALFORMED, "message value is not valid JSON",
                  json.dumps({"field": None, "reason": "invalid_json", "error": str(exc)}))
        return item
    item.text = text
    return item
