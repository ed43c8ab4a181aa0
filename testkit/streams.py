"""Random streams of input events and the state they leave, for the property tests that
run one stream two ways and compare (tests/stack/test_apply_events_sameness.py: micro-batches
against event by event; tests/stack/test_partitions.py: through the PL/Proxy proxy against
one database).

``scenarios()`` draws several batches and their events: registrations (redelivered, with a
different identity: ELC01, another batch claiming an essay id: ELC02, malformed: ELV04),
content and failures (before and after the registration, redelivered, more than fit),
events rejected by validation, and values PostgreSQL refuses as jsonb; all of it in one
random interleaving, cut into random micro-batches, with deadline closes and purges at
some micro-batch boundaries. ``state()`` reads what a comparison compares.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from hypothesis import strategies as st

from testkit import events

KIND_FUNCTION = {"register": "register_batch", "content": "provision_content",
                 "failure": "record_validation_failure"}


@st.composite
def scenarios(draw: st.DrawFn, with_thief: bool = True) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    batches = draw(st.integers(min_value=1, max_value=3))
    pool: list[tuple[str, str]] = []  # (kind, message value)
    batch_ids = []
    for b in range(batches):
        batch_id = f"s{run}-b{b}"
        batch_ids.append(batch_id)
        essays = [f"{batch_id}-e{i}" for i in range(draw(st.integers(min_value=1, max_value=6)))]
        reg = json.dumps(events.registration(batch_id, essays,
                                             class_id=draw(st.sampled_from([None, "c-1"]))))
        mine = [("register", reg)]
        contents = draw(st.integers(min_value=0, max_value=len(essays) + 2))
        mine += [("content", json.dumps(events.content(batch_id, f"t{i}")))
                 for i in range(contents)]
        failures = draw(st.integers(min_value=0, max_value=2))
        mine += [("failure", json.dumps(events.failure(batch_id, f"u{i}")))
                 for i in range(failures)]
        # redeliveries (the same message value) of any of them
        mine += draw(st.lists(st.sampled_from(mine), max_size=4))
        if draw(st.booleans()):  # same batch id, another identity: ELC01 (or it wins)
            mine.append(("register", json.dumps(
                events.registration(batch_id, essays, user_id="someone-else"))))
        if draw(st.booleans()):  # rejected by validation
            bad = events.content(batch_id, "bad")
            del bad["data"]["text_storage_id"]
            mine.append(("content", json.dumps(bad)))
        if draw(st.booleans()):
            bad = events.failure(batch_id, "bad")
            bad["data"]["validation_error_code"] = "CONTENT_TIMEOUT"
            mine.append(("failure", json.dumps(bad)))
        if with_thief and b == 0 and draw(st.booleans()):  # another batch claims an essay id
            thief = f"s{run}-thief"
            batch_ids.append(thief)
            claim = events.registration(thief, [essays[0], f"{thief}-e"])
            mine.append(("register", json.dumps(claim)))
            mine.append(("content", json.dumps(events.content(thief, "t0"))))
        pool += mine
    if draw(st.booleans()):
        miscount = events.registration(f"s{run}-b0", ["x", "y"])
        miscount["data"]["expected_essay_count"] = 3  # ELV04
        pool.append(("register", json.dumps(miscount)))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        pool.append(("content", '{"entity_id": "s' + run + '-b0", "text_storage_id": "\\u0000"}'))
    order = list(draw(st.permutations(pool)))
    # micro-batch cuts: sizes 1..len, so that a batch's events straddle micro-batches
    sizes = []
    left = len(order)
    while left > 0:
        size = draw(st.integers(min_value=1, max_value=max(1, left)))
        sizes.append(size)
        left -= size
    # after some micro-batches: close a batch (deadline) or purge completed history
    actions = {
        draw(st.integers(min_value=0, max_value=len(sizes) - 1)):
            draw(st.sampled_from([("close", bid) for bid in batch_ids] + [("purge", "")]))
        for _ in range(draw(st.integers(min_value=0, max_value=2)))
    }
    return {"order": order, "sizes": sizes, "actions": actions, "batch_ids": batch_ids}


def error(exc: psycopg.Error) -> dict[str, Any]:
    detail = exc.diag.message_detail
    return {"ok": False, "sqlstate": exc.sqlstate, "message": exc.diag.message_primary,
            "detail": json.loads(detail) if detail else None, "detail_text": detail}


def per_event(conn: psycopg.Connection, kind: str, value: str) -> dict[str, Any]:
    try:
        row = conn.execute(events.INPUT_BY_KIND[kind].statement, {"event": value}).fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate and exc.sqlstate.startswith("22"):  # the cast refused the value
            return {"ok": False, "refused_value": True, "sqlstate": exc.sqlstate}
        return error(exc)
    assert row is not None
    return {"ok": True, "result": row[0]}


def set_based(conn: psycopg.Connection, chunk: list[tuple[str, str]]) -> list[dict[str, Any]]:
    row = conn.execute("SELECT els.apply_events(kinds => %(kinds)s::text[],"
                       " events => %(events)s::text[])",
                       {"kinds": [KIND_FUNCTION[k] for k, _ in chunk],
                        "events": [v for _, v in chunk]}).fetchone()
    assert row is not None
    out = []
    for r in row[0]:
        if r.get("refused_value"):
            out.append({"ok": False, "refused_value": True, "sqlstate": r["sqlstate"]})
        else:
            r.pop("context", None)  # where it was raised: not part of the error's identity
            out.append(r)
    return out


def action(conn: psycopg.Connection, action: tuple[str, str]) -> Any:
    kind, batch_id = action
    try:
        if kind == "close":
            row = conn.execute("SELECT els.close_batch(batch_id => %(b)s::text)",
                               {"b": batch_id}).fetchone()
        else:
            row = conn.execute(
                "SELECT els.purge_history(older_than => '0 seconds'::interval)").fetchone()
    except psycopg.Error as exc:
        return error(exc)
    assert row is not None
    return row[0]


STATE = {
    "tracker": """
        SELECT batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,
               class_type, student_prompt_ref, metadata, correlation_id,
               registration_event_id, completed_at IS NULL, completion_reason
          FROM els.batch_tracker WHERE batch_id = ANY(%(b)s) ORDER BY batch_id""",
    "tombstone": """
        SELECT batch_id, essay_ids, expected_count, course_code, user_id, org_id, class_id,
               last_late_item_at IS NULL
          FROM els.batch_tombstone WHERE batch_id = ANY(%(b)s) ORDER BY batch_id""",
    "slots": """
        SELECT essay_id, batch_id, slot_no, status::text, text_storage_id,
               failed_file_upload_id, failure_code, filled_at IS NULL
          FROM els.essay_slot WHERE batch_id = ANY(%(b)s) ORDER BY essay_id""",
    # arrival order within a batch's ledger (what reconciliation goes by), not the values
    "content": """
        SELECT batch_id, text_storage_id, disposition::text, essay_id, file_upload_id,
               original_file_name, raw_file_storage_id, file_size_bytes, content_md5_hash,
               correlation_id, source_event_id, event_timestamp, disposed_at IS NULL,
               rank() OVER (PARTITION BY batch_id ORDER BY arrival_seq)
          FROM els.essay_content WHERE batch_id = ANY(%(b)s)
         ORDER BY batch_id, text_storage_id""",
    "failures": """
        SELECT batch_id, file_upload_id, disposition::text, essay_id, original_file_name,
               validation_error_code, validation_error_detail, correlation_id,
               source_event_id, disposed_at IS NULL,
               rank() OVER (PARTITION BY batch_id ORDER BY arrival_seq)
          FROM els.validation_failure WHERE batch_id = ANY(%(b)s)
         ORDER BY batch_id, file_upload_id""",
    # per batch (= message key, = Kafka partition order) in outbox order
    "outbox": """
        SELECT message_key, event_id, event_type, topic,
               (envelope - 'event_timestamp')
               || jsonb_build_object('data', (envelope -> 'data') - 'timestamp')
          FROM els.event_outbox WHERE message_key = ANY(%(b)s) ORDER BY message_key, id""",
}


def state(conn: psycopg.Connection, batch_ids: list[str]) -> dict[str, list[Any]]:
    return {name: conn.execute(query, {"b": batch_ids}).fetchall()
            for name, query in STATE.items()}
