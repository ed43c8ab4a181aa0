"""Property-based test of SPEC rule 3: any interleaving, any duplicates; and of
SPEC section 10: a deadline close at any point of it.

Hypothesis draws a batch (1..50 essays, GUEST or REGULAR) and an event set:
content, validation failures, extra content beyond the slots, redeliveries of
any event including the registration, all in a random order, and in most
examples one or two els.close_batch calls at random points of that order (before
the registration: unknown batch, ELV03; after completion: already_complete). The
events go through the SQL functions one by one; an independent Python model
(testkit/batch_model.py) applies the same sequence. Every outcome, the final counts
(timed-out slots included), which item sits in which slot, exactly one
completion and its completion_reason, and the SPEC invariants must agree; items
after a close are excess.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit import events
from testkit.batch_model import BatchModel
from testkit.invariants import check_invariants

EXAMPLES = int(os.environ.get("ELS_PROPERTY_EXAMPLES", "200"))


@st.composite
def batch_streams(draw: st.DrawFn) -> dict[str, Any]:
    essay_count = draw(st.integers(min_value=1, max_value=50))
    guest = draw(st.booleans())
    contents = draw(st.integers(min_value=0, max_value=essay_count + 5))
    failures = draw(st.integers(min_value=0, max_value=min(essay_count, 8)))
    stream: list[tuple[str, Any]] = [("register", None)]
    stream += [("content", f"text-{i}") for i in range(contents)]
    stream += [("failure", f"upload-{i}") for i in range(failures)]
    redelivered = draw(st.lists(st.sampled_from(stream), max_size=max(1, len(stream) // 3)))
    order = list(draw(st.permutations(stream + redelivered)))
    if draw(st.booleans()):  # the usual case: the registration comes first
        order.remove(("register", None))
        order.insert(0, ("register", None))
    # closes at random points, and sometimes right after the first registration (so
    # that every item arrives after the close)
    for position in draw(st.lists(st.integers(min_value=0, max_value=len(order)), max_size=2)):
        order.insert(position, ("close", None))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        order.insert(order.index(("register", None)) + 1, ("close", None))
    return {"essay_count": essay_count, "guest": guest, "order": order}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=batch_streams())
def test_any_order_matches_the_model(db_url: str, stream: dict[str, Any]) -> None:
    batch_id = f"prop-{uuid.uuid4()}"
    essay_ids = [f"{batch_id}-essay-{i}" for i in range(stream["essay_count"])]
    class_id = None if stream["guest"] else "class-7B"
    model = BatchModel(batch_id)

    with psycopg.connect(db_url, autocommit=True) as conn:
        for kind, key in stream["order"]:
            if kind == "close":
                empty_before = model.summary()["empty"]
                expected = model.apply(kind, key)
                try:
                    row = conn.execute("SELECT els.close_batch(batch_id => %(batch_id)s::text)",
                                       {"batch_id": batch_id}).fetchone()
                except psycopg.Error as exc:
                    assert expected == "unknown", exc
                    assert exc.sqlstate == "ELV03" and exc.diag.message_detail is not None
                    assert json.loads(exc.diag.message_detail)["reason"] == "unknown_batch"
                    continue
                assert row is not None
                closed = row[0]
                assert closed["outcome"] == expected, (kind, closed)
                assert closed["slots_timed_out"] == (empty_before if expected == "closed" else 0)
                assert len(closed["events"]) == (1 if expected == "closed" else 0)
                continue
            if kind == "register":
                event = events.registration(batch_id, essay_ids, class_id=class_id)
                expected = model.apply(kind, essay_ids)
            elif kind == "content":
                event = events.content(batch_id, key)
                expected = model.apply(kind, key)
            else:
                event = events.failure(batch_id, key)
                expected = model.apply(kind, key)
            result = events.apply(conn, kind, event)
            assert result["outcome"] == expected, (kind, key, result)
            assert result["complete"] == model.complete, (kind, key, result)
            if kind == "register" and expected == "registered":
                assert result["class_type"] == ("GUEST" if stream["guest"] else "REGULAR")

        summary = check_invariants(conn, batch_id)
        assert summary == model.summary()

        slots = conn.execute(
            "SELECT status::text, text_storage_id, failed_file_upload_id, failure_code"
            " FROM els.essay_slot WHERE batch_id = %(batch_id)s ORDER BY slot_no",
            {"batch_id": batch_id}).fetchall()
        expected_slots = [
            ("uploaded", None, None, None) if s is None
            else ("ready_for_processing", s[1], None, None) if s[0] == "content"
            else ("content_ingestion_failed", None, None, "CONTENT_TIMEOUT") if s[0] == "timeout"
            else ("content_ingestion_failed", None, s[1], None)
            for s in model.slot_contents()
        ]
        assert slots == expected_slots
