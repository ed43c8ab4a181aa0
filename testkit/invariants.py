"""Reads one batch's state from the database and checks SPEC rule 3 on it.

Used by the property, concurrency and chaos tests: whatever happened before,
these must hold once the calls for a batch have returned.
"""

from __future__ import annotations

from typing import Any

import psycopg

STATE_SQL = """
SELECT
    EXISTS (SELECT FROM els.batch_tracker t WHERE t.batch_id = %(batch_id)s) AS registered,
    (SELECT t.expected_count FROM els.batch_tracker t WHERE t.batch_id = %(batch_id)s) AS expected,
    (SELECT t.completed_at IS NOT NULL FROM els.batch_tracker t
      WHERE t.batch_id = %(batch_id)s) AS completed,
    (SELECT count(*) FROM els.essay_slot s WHERE s.batch_id = %(batch_id)s) AS slots,
    (SELECT count(*) FROM els.essay_slot s
      WHERE s.batch_id = %(batch_id)s AND s.status = 'ready_for_processing') AS filled,
    (SELECT count(*) FROM els.essay_slot s
      WHERE s.batch_id = %(batch_id)s AND s.status = 'content_ingestion_failed') AS failed,
    (SELECT count(*) FROM els.essay_slot s
      WHERE s.batch_id = %(batch_id)s AND s.status = 'uploaded') AS empty,
    (SELECT count(*) FROM els.essay_slot s
      WHERE s.batch_id = %(batch_id)s AND s.failure_code = 'CONTENT_TIMEOUT') AS timed_out,
    (SELECT t.completion_reason FROM els.batch_tracker t
      WHERE t.batch_id = %(batch_id)s) AS completion_reason,
    (SELECT string_agg(o.envelope -> 'data' ->> 'completion_reason', ',') FROM els.event_outbox o
      WHERE o.message_key = %(batch_id)s
        AND o.event_type = 'BatchContentProvisioningCompleted') AS event_completion_reason,
    EXISTS (SELECT FROM els.batch_tombstone b WHERE b.batch_id = %(batch_id)s) AS purged,
    (SELECT count(*) FROM els.essay_content c
      WHERE c.batch_id = %(batch_id)s AND c.disposition = 'pending') AS pending_content,
    (SELECT count(*) FROM els.validation_failure f
      WHERE f.batch_id = %(batch_id)s AND f.disposition = 'pending') AS pending_failures,
    (SELECT count(*) FROM els.essay_content c
      WHERE c.batch_id = %(batch_id)s AND c.disposition = 'excess') AS excess_content,
    (SELECT count(*) FROM els.validation_failure f
      WHERE f.batch_id = %(batch_id)s AND f.disposition = 'excess') AS excess_failures,
    (SELECT count(*) FROM els.essay_content c
      WHERE c.batch_id = %(batch_id)s AND c.disposition = 'assigned') AS assigned_content,
    (SELECT count(*) FROM els.validation_failure f
      WHERE f.batch_id = %(batch_id)s AND f.disposition = 'assigned') AS assigned_failures,
    (SELECT count(*) FROM els.essay_slot s
       JOIN els.essay_content c ON c.batch_id = s.batch_id AND c.text_storage_id = s.text_storage_id
      WHERE s.batch_id = %(batch_id)s AND c.essay_id = s.essay_id) AS slots_agreeing_with_content,
    (SELECT count(*) FROM els.event_outbox o WHERE o.message_key = %(batch_id)s
        AND o.event_type = 'BatchContentProvisioningCompleted') AS completion_events,
    (SELECT count(*) FROM els.event_outbox o WHERE o.message_key = %(batch_id)s
        AND o.event_type = 'EssaySlotAssigned') AS slot_assigned_events,
    (SELECT count(*) FROM els.event_outbox o WHERE o.message_key = %(batch_id)s
        AND o.event_type = 'ExcessContentProvisioned') AS excess_events,
    (SELECT count(DISTINCT s.text_storage_id) FROM els.essay_slot s
      WHERE s.batch_id = %(batch_id)s AND s.text_storage_id IS NOT NULL) AS distinct_texts_in_slots
"""


def batch_state(conn: psycopg.Connection[Any], batch_id: str) -> dict[str, Any]:
    cursor = conn.execute(STATE_SQL, {"batch_id": batch_id})
    row = cursor.fetchone()
    assert row is not None
    names = [c.name for c in cursor.description or []]
    return dict(zip(names, row, strict=True))


def check_invariants(conn: psycopg.Connection[Any], batch_id: str, *,
                     outbox_partial: bool = False) -> dict[str, Any]:
    """Asserts SPEC rule 3 for one batch; returns a summary comparable with the oracle's.

    Also SPEC section 10: a batch closed by its deadline has timed-out slots
    (content_ingestion_failed, CONTENT_TIMEOUT) and completion_reason 'deadline' in
    its tracker and its completion event; one completed by its items has none and
    'all_slots_closed'. A purged batch (tombstone) has no tracker, no slot, nothing
    pending, only excess items, and never more than its one completion event.
    outbox_partial: the outbox may not hold every event of the batch as this release
    writes it (published rows deleted by els.purge_history, or a completion written by
    the previous release, without completion_reason), so the batch's events are at
    most, not exactly, what its slots and ledgers say."""
    s = batch_state(conn, batch_id)
    if s["registered"]:
        assert not s["purged"], s
        assert s["slots"] == s["expected"], s
        assert s["filled"] + s["failed"] + s["empty"] == s["expected"], s
        assert s["pending_content"] == 0 and s["pending_failures"] == 0, s
        assert s["completed"] == (s["empty"] == 0), s
        if outbox_partial:
            assert s["completion_events"] <= (1 if s["completed"] else 0), s
        else:
            assert s["completion_events"] == (1 if s["completed"] else 0), s
        if s["completed"]:
            reason = "deadline" if s["timed_out"] else "all_slots_closed"
            assert s["completion_reason"] == reason, s
            allowed = (reason, None) if outbox_partial else (reason,)
            assert s["event_completion_reason"] in allowed, s
        else:
            assert s["completion_reason"] is None and s["timed_out"] == 0, s
    elif s["purged"]:
        assert s["slots"] == 0 and s["completion_events"] <= 1, s
        assert s["pending_content"] == s["pending_failures"] == 0, s
        assert s["assigned_content"] == s["assigned_failures"] == 0, s
    else:
        assert s["slots"] == 0 and s["completion_events"] == 0, s
        assert s["assigned_content"] == s["excess_content"] == 0, s
    # Each text in at most one slot, and ledger and slots agree both ways.
    assert s["distinct_texts_in_slots"] == s["filled"] == s["assigned_content"], s
    assert s["slots_agreeing_with_content"] == s["filled"], s
    assert s["failed"] == s["assigned_failures"] + s["timed_out"], s
    if outbox_partial or s["purged"]:
        assert s["slot_assigned_events"] <= s["filled"] or s["purged"], s
        assert s["excess_events"] <= s["excess_content"] or s["purged"], s
    else:
        assert s["slot_assigned_events"] == s["filled"], s
        assert s["excess_events"] == s["excess_content"], s
    return {
        "registered": s["registered"],
        "slots": s["slots"],
        "filled": s["filled"],
        "failed": s["failed"],
        "empty": s["empty"],
        "pending_content": s["pending_content"],
        "pending_failures": s["pending_failures"],
        "excess_content": s["excess_content"],
        "excess_failures": s["excess_failures"],
        "complete": bool(s["completed"]) or bool(s["purged"]),
        "completion_events": s["completion_events"],
        "timed_out": s["timed_out"],
        "completion_reason": s["completion_reason"],
        "purged": bool(s["purged"]),
    }
