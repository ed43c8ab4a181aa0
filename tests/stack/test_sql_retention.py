"""Retention (SPEC section 10): after els.purge_history, a redelivery of every kind of
event still gets the answer it would have got before the purge, as far as the SPEC
promises one: the registration is a duplicate (no event), a registration with another
identity is ELC01 (nothing changes), content and failures are excess. No batch ever
completes twice. The outbox rows are published through the relay API and the purge
runs with older_than 0, so no timestamp is faked.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import psycopg
import pytest

from testkit import events
from testkit.invariants import check_invariants

COMPLETED = "BatchContentProvisioningCompleted"


def publish_everything(conn: psycopg.Connection[Any]) -> int:
    """What the relay does after Kafka confirmed delivery: claim, then mark published."""
    with conn.transaction():
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM els.claim_outbox(p_limit => %(n)s::integer)", {"n": 100000})]
        conn.execute("SELECT els.mark_outbox_published(p_ids => %(ids)s::bigint[], p_topics =>"
                     " %(t)s::text[], p_partitions => %(p)s::integer[], p_offsets =>"
                     " %(o)s::bigint[])", {"ids": ids, "t": ["t"] * len(ids),
                                          "p": [0] * len(ids), "o": list(range(len(ids)))})
    return len(ids)


def purge(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute("SELECT els.purge_history(older_than => %(s)s::interval)",
                       {"s": "0 seconds"}).fetchone()
    assert row is not None
    result: dict[str, int] = row[0]
    return result


def outbox_rows(conn: psycopg.Connection[Any], batch_id: str) -> list[tuple[str, str, bool]]:
    return [(r[0], str(r[1]), r[2]) for r in conn.execute(
        "SELECT event_type, event_id, published_at IS NOT NULL FROM els.event_outbox"
        " WHERE message_key = %(b)s ORDER BY id", {"b": batch_id})]


def table_counts(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM els.batch_tracker), (SELECT count(*) FROM els.essay_slot),"
        " (SELECT count(*) FROM els.essay_content), (SELECT count(*) FROM els.validation_failure),"
        " (SELECT count(*) FROM els.event_outbox), (SELECT count(*) FROM els.batch_tombstone),"
        " (SELECT md5(string_agg(b::text, ',' ORDER BY b.batch_id)) FROM els.batch_tombstone b)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def stable_id(conn: psycopg.Connection[Any], event_type: str, *ids: str) -> str:
    row = conn.execute("SELECT els.stable_event_id(%(t)s::text, VARIADIC %(ids)s::text[])",
                       {"t": event_type, "ids": list(ids)}).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def purged_batch(db_url: str) -> dict[str, Any]:
    """A REGULAR batch of 3 with every kind of item (2 texts in slots, 1 failure in a slot,
    1 excess text, 1 excess failure), complete, published and purged."""
    batch_id = f"ret-{uuid.uuid4()}"
    essay_ids = [f"{batch_id}-e{i}" for i in range(3)]
    sent = {
        "register": events.registration(batch_id, essay_ids, class_id="class-4C",
                                        course_code="SV2", user_id="teacher-9"),
        "content_1": events.content(batch_id, "text-1"),
        "content_2": events.content(batch_id, "text-2"),
        "failure_1": events.failure(batch_id, "upload-1"),
        "content_excess": events.content(batch_id, "text-3"),
        "failure_excess": events.failure(batch_id, "upload-2"),
    }
    sent["register"]["data"]["org_id"] = "org-7"
    with psycopg.connect(db_url, autocommit=True) as conn:
        outcomes = {name: events.apply(conn, name.split("_")[0], event)["outcome"]
                    for name, event in sent.items()}
        assert outcomes == {"register": "registered", "content_1": "assigned",
                            "content_2": "assigned", "failure_1": "recorded",
                            "content_excess": "excess", "failure_excess": "excess"}
        before = check_invariants(conn, batch_id)
        assert before["complete"] and before["completion_events"] == 1
        assert publish_everything(conn) == 4  # 2 slot events, the completion, 1 excess
        assert purge(conn) == {"batches_purged": 1, "pending_purged": 0, "outbox_purged": 4}
        assert outbox_rows(conn, batch_id) == []
    return {"batch_id": batch_id, "essay_ids": essay_ids, "sent": sent}


def test_purge_then_every_kind_of_event_again(db_url: str, purged_batch: dict[str, Any]) -> None:
    batch_id, sent = purged_batch["batch_id"], purged_batch["sent"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        summary = check_invariants(conn, batch_id)
        assert summary["purged"] and summary["slots"] == 0 and summary["completion_events"] == 0

        # the registration, exactly as sent, and with only envelope/metadata/prompt changed
        counts = table_counts(conn)
        result = events.apply(conn, "register", sent["register"])
        assert result == {"batch_id": batch_id, "outcome": "duplicate", "class_type": "REGULAR",
                          "expected_count": 3, "slots_created": 0, "content_assigned": 0,
                          "failures_applied": 0, "excess": 0, "complete": True, "events": []}
        again = copy.deepcopy(sent["register"])
        again["event_id"] = str(uuid.uuid4())
        again["correlation_id"] = str(uuid.uuid4())
        again["data"]["metadata"] = {"replayed": True}
        again["data"]["student_prompt_ref"] = {"prompt": "other"}
        assert events.apply(conn, "register", again)["outcome"] == "duplicate"
        assert table_counts(conn) == counts, "a duplicate registration writes nothing"

        # every content is excess now, with its ExcessContentProvisioned (same stable id as
        # the one text-3 had before the purge); a second delivery is a duplicate
        for name, text in (("content_1", "text-1"), ("content_2", "text-2"),
                           ("content_excess", "text-3")):
            result = events.apply(conn, "content", sent[name])
            excess_id = stable_id(conn, "ExcessContentProvisioned", batch_id, text)
            assert result == {"batch_id": batch_id, "outcome": "excess", "essay_id": None,
                              "complete": True, "events": [excess_id]}
            assert events.apply(conn, "content", sent[name])["outcome"] == "duplicate"
        # failures: excess, no event; again: duplicate
        for name in ("failure_1", "failure_excess"):
            assert events.apply(conn, "failure", sent[name]) == {
                "batch_id": batch_id, "outcome": "excess", "essay_id": None, "complete": True,
                "events": []}
            assert events.apply(conn, "failure", sent[name])["outcome"] == "duplicate"

        assert [row[0] for row in outbox_rows(conn, batch_id)] == ["ExcessContentProvisioned"] * 3
        summary = check_invariants(conn, batch_id)
        assert summary["completion_events"] == 0, "no second completion, ever"
        assert (summary["excess_content"], summary["excess_failures"]) == (3, 2)

        report_row = conn.execute("SELECT els.batch_report(p_batch_id => %(b)s::text)",
                                  {"b": batch_id}).fetchone()
        assert report_row is not None
        report = report_row[0]
        assert (report["registered"], report["purged"], report["complete"]) == (True, True, True)
        assert report["tracker"]["completion_reason"] == "all_slots_closed"
        assert (report["tombstone"]["filled_count"], report["tombstone"]["failed_count"]) == (2, 1)


IDENTITY_CHANGES = {
    "essay_ids": lambda d: d.update(essay_ids=list(reversed(d["essay_ids"]))),
    "expected_essay_count": lambda d: d.update(essay_ids=d["essay_ids"] + ["one-more"],
                                               expected_essay_count=4),
    "course_code": lambda d: d.update(course_code="ENG5"),
    "user_id": lambda d: d.update(user_id="someone-else"),
    "org_id": lambda d: d.update(org_id=None),
    "class_id": lambda d: d.update(class_id=None),
}


@pytest.mark.parametrize("field", list(IDENTITY_CHANGES))
def test_purge_then_a_registration_with_another_identity_is_elc01(
        db_url: str, purged_batch: dict[str, Any], field: str) -> None:
    changed = copy.deepcopy(purged_batch["sent"]["register"])
    IDENTITY_CHANGES[field](changed["data"])
    with psycopg.connect(db_url, autocommit=True) as conn:
        counts = table_counts(conn)
        with pytest.raises(psycopg.Error) as caught:
            events.apply(conn, "register", changed)
        assert caught.value.sqlstate == "ELC01"
        detail = json.loads(caught.value.diag.message_detail or "{}")
        assert (detail["field"], detail["reason"]) == (
            "essay_ids" if field == "expected_essay_count" else field, "identity_conflict")
        assert table_counts(conn) == counts, "ELC01 changes nothing"


def test_purge_keeps_unpublished_rows_and_incomplete_batches_and_forgets_old_pending(
        db_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    done, open_, early = f"ret-done-{run}", f"ret-open-{run}", f"ret-early-{run}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        events.apply(conn, "register", events.registration(done, [f"{done}-e0"]))
        events.apply(conn, "content", events.content(done, "t0"))  # completes, not published
        events.apply(conn, "register", events.registration(open_, [f"{open_}-e0", f"{open_}-e1"]))
        events.apply(conn, "content", events.content(open_, "t0"))
        events.apply(conn, "content", events.content(early, "t0"))  # pending, never registered
        published = publish_everything(conn)
        events.apply(conn, "content", events.content(done, "t-late"))  # excess, unpublished
        result = purge(conn)
        assert result["batches_purged"] >= 1 and result["pending_purged"] >= 1
        assert result["outbox_purged"] == published
        # the purged batch's unpublished excess row is still there for the relay
        late_id = stable_id(conn, "ExcessContentProvisioned", done, "t-late")
        assert outbox_rows(conn, done) == [("ExcessContentProvisioned", late_id, False)]
        open_state = check_invariants(conn, open_, outbox_partial=True)
        assert (open_state["registered"], open_state["filled"], open_state["empty"]) == (True, 1, 1)
        assert check_invariants(conn, early, outbox_partial=True)["pending_content"] == 0
        # the early content is forgotten: its batch registers as new, with nothing in it
        registered = events.apply(conn, "register", events.registration(early, [f"{early}-e0"]))
        assert (registered["outcome"], registered["content_assigned"]) == ("registered", 0)
        # and the open batch can still complete normally
        assert events.apply(conn, "content", events.content(open_, "t1"))["complete"] is True
        assert check_invariants(conn, open_, outbox_partial=True)["completion_reason"] == (
            "all_slots_closed")
