"""Commands for DBAs and on-call: ``inspect`` (a readable report of one batch) and
``dry-run`` (apply one event in a transaction that is rolled back, and show the
batch's state before, the result or PostgreSQL's full diagnostics, and the state after).

Text printed to a terminal is escaped: ids and file names come from events, and a
control character or an ANSI escape in them must not reach the operator's terminal raw.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import psycopg

from els_worker import contract, db
from els_worker.config import Config
from els_worker.errors import pg_diagnostics


def printable(value: Any) -> Any:
    """The value with every string's non-printable characters escaped (\\x1b, \\n ...)."""
    if isinstance(value, str):
        if value.isprintable():
            return value
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def format_report(rep: dict[str, Any]) -> str:
    rep = printable(rep)
    bid = rep.get("batch_id")
    if not rep.get("registered"):
        lines = [f"batch {bid}: NOT REGISTERED"]
    else:
        t = rep.get("tracker") or {}
        lines = [
            f"batch {bid}: {'COMPLETE' if rep.get('complete') else 'in progress'}",
            f"  class_type={t.get('class_type')} course={t.get('course_code')} "
            f"user={t.get('user_id')} org={t.get('org_id')} class={t.get('class_id')}",
            f"  expected={t.get('expected_count')} registered_at={t.get('registered_at')} "
            f"completed_at={t.get('completed_at')}",
            f"  correlation_id={t.get('correlation_id')}",
        ]
        for key in ("completion_reason", "deadline_at", "tombstone"):
            if key in t or key in rep:
                lines.append(f"  {key}={t.get(key, rep.get(key))}")
    counts = rep.get("slot_counts") or {}
    if counts:
        lines.append("  slots: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    lines += _slot_lines(rep.get("slots") or [])
    for title, key in (("pending content", "pending_content"),
                       ("excess content", "excess_content")):
        rows = rep.get(key) or []
        lines.append(f"  {title}: {len(rows)}")
        lines += [f"    - {c.get('text_storage_id')} ({c.get('original_file_name')}, "
                  f"upload {c.get('file_upload_id')})" for c in rows]
    failures = rep.get("failures") or []
    lines.append(f"  validation failures: {len(failures)}")
    lines += [f"    - {f.get('file_upload_id')} {f.get('validation_error_code')} "
              f"({f.get('disposition')}, slot essay {f.get('essay_id')})" for f in failures]
    outbox = rep.get("outbox") or []
    published = sum(1 for o in outbox if o.get("published"))
    lines.append(f"  outbox: {len(outbox)} events, {published} published")
    lines += [f"    - {o.get('event_type'):<34} {o.get('event_id')} "
              f"{'published' if o.get('published') else 'PENDING'}" for o in outbox]
    return "\n".join(lines)


def _slot_lines(slots: list[dict[str, Any]]) -> list[str]:
    if not slots:
        return []
    w_id = max(8, *(len(str(s.get("essay_id"))) for s in slots))
    w_st = max(6, *(len(str(s.get("status"))) for s in slots))
    lines = [f"  {'#':>4}  {'essay_id':<{w_id}}  {'status':<{w_st}}  text / failure"]
    for s in slots:
        extra = s.get("text_storage_id") or (
            f"failed upload {s['failed_file_upload_id']}" if s.get("failed_file_upload_id") else "")
        lines.append(f"  {s.get('slot_no'):>4}  {s.get('essay_id')!s:<{w_id}}  "
                     f"{s.get('status')!s:<{w_st}}  {extra}")
    return lines


def cmd_inspect(cfg: Config, batch_id: str, as_json: bool) -> int:
    with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(db.BATCH_REPORT, {"batch_id": batch_id}).fetchone()
    rep = row[0] if row else {}
    print(json.dumps(rep, indent=2, default=str) if as_json else format_report(rep))
    return 0 if rep.get("registered") else 1


def resolve_topic(cfg: Config, name: str) -> str | None:
    """An input topic from its configured name, default name or short name."""
    for configured, event in zip(cfg.input_topics, contract.INPUTS, strict=True):
        if name in (configured, event.topic, event.short_name, event.name):
            return configured
    return None


def dry_apply(conn: psycopg.Connection[Any], cfg: Config, topic: str, text: str) -> dict[str, Any]:
    """What applying ``text`` to ``topic`` would do now; everything is rolled back.
    ``conn`` must not be inside a transaction."""
    out: dict[str, Any] = {"topic": topic}
    with conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                row = conn.execute(cfg.routes[topic], {"event": text}).fetchone()
            out["result"] = row[0] if row else None
        except psycopg.Error as exc:
            out["error"] = pg_diagnostics(exc)
            return out
        batch_id = (out["result"] or {}).get("batch_id")
        if batch_id is not None:
            out["batch_after"] = _report(conn, str(batch_id))
    return out


def _report(conn: psycopg.Connection[Any], batch_id: str) -> Any:
    try:
        with conn.transaction():
            row = conn.execute(db.BATCH_REPORT, {"batch_id": batch_id}).fetchone()
        return row[0] if row else None
    except psycopg.Error as exc:
        return {"unavailable": pg_diagnostics(exc)}


def cmd_dry_run(cfg: Config, topic_name: str, source: str) -> int:
    topic = resolve_topic(cfg, topic_name)
    if topic is None:
        print(f"unknown input topic {topic_name!r}; one of: {', '.join(cfg.input_topics)}",
              file=sys.stderr)
        return 2
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=5) as conn:
        batch_id = _batch_id_of(text)
        before = _report(conn, batch_id) if batch_id else None
        out = {"batch_before": before, **dry_apply(conn, cfg, topic, text), "rolled_back": True}
    print(json.dumps(printable(out), indent=2, default=str))
    return 1 if "error" in out else 0


def _batch_id_of(text: str) -> str | None:
    try:
        event = json.loads(text)
    except ValueError:
        return None
    data = event.get("data", event) if isinstance(event, dict) else None
    bid = data.get("entity_id") if isinstance(data, dict) else None
    return bid if isinstance(bid, str) else None
