"""Concurrency (SPEC rule 5): many sessions at once, one consistent outcome.

Real PostgreSQL sessions in threads, released together by a barrier. No caller
may ever see an error: no deadlock, no serialization failure, no unique
violation leaking out of a race.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from typing import Any

import psycopg

from testkit import events
from testkit.invariants import check_invariants

SESSIONS = 8


def apply(conn: psycopg.Connection[Any], kind: str, event: dict[str, Any]) -> dict[str, Any]:
    """One ingest call, or ("close", {"batch_id": ...}): els.close_batch (SPEC section 10)."""
    if kind == "overdue":
        row = conn.execute("SELECT els.close_overdue_batches(older_than => %(s)s::interval,"
                           " max_batches => %(n)s::integer)",
                           {"s": "0 seconds", "n": event["max_batches"]}).fetchone()
        assert row is not None
        return dict(row[0])
    if kind == "purge":
        row = conn.execute("SELECT els.purge_history(older_than => %(s)s::interval)",
                           {"s": "0 seconds"}).fetchone()
        assert row is not None
        return dict(row[0])
    if kind != "close":
        return events.apply(conn, kind, event)
    row = conn.execute("SELECT els.close_batch(batch_id => %(batch_id)s::text)",
                       {"batch_id": event["batch_id"]}).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def run_sessions(db_url: str, work: list[list[tuple[str, dict[str, Any]]]]) -> list[Any]:
    """Runs each list of (kind, event) in its own session, all starting together."""
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)

    def session(index: int) -> None:
        outcomes: list[Any] = []
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                barrier.wait(timeout=30)
                for kind, event in work[index]:
                    outcomes.append(apply(conn, kind, event))
            results[index] = outcomes
        except Exception as exc:  # reported below, with the session it happened in
            results[index] = exc

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a session hung"
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    return results


def test_eight_sessions_register_the_same_batch_at_once(db_url: str) -> None:
    batch_id = f"race-{uuid.uuid4()}"
    essay_ids = [f"{batch_id}-e{i}" for i in range(25)]
    work = [[("register", events.registration(batch_id, essay_ids))] for _ in range(SESSIONS)]

    results = run_sessions(db_url, work)

    outcomes = Counter(r[0]["outcome"] for r in results)
    assert outcomes == {"registered": 1, "duplicate": SESSIONS - 1}
    with psycopg.connect(db_url, autocommit=True) as conn:
        summary = check_invariants(conn, batch_id)
    assert summary["slots"] == 25 and summary["empty"] == 25


def test_shuffled_duplicated_streams_of_twenty_batches(db_url: str) -> None:
    """8 sessions apply shuffled, duplicated streams of the same 20 batches."""
    rng = random.Random(20261128)
    run = uuid.uuid4().hex[:8]
    stream: list[tuple[str, dict[str, Any]]] = []
    expected: dict[str, dict[str, int]] = {}
    for b in range(20):
        batch_id = f"conc-{run}-{b}"
        size = rng.randint(1, 30)
        failures = rng.randint(0, min(3, size))
        contents = size - failures - rng.randint(0, 1)  # some batches stay incomplete
        stream.append(("register", events.registration(
            batch_id, [f"{batch_id}-e{i}" for i in range(size)],
            class_id=None if b % 2 else f"class-{b}")))
        stream += [("content", events.content(batch_id, f"t{i}")) for i in range(max(contents, 0))]
        stream += [("failure", events.failure(batch_id, f"u{i}")) for i in range(failures)]
        expected[batch_id] = {"size": size, "filled": max(contents, 0), "failed": failures}

    work = []
    for _ in range(SESSIONS):
        mine = stream + rng.sample(stream, len(stream) // 2)  # every event, plus redeliveries
        rng.shuffle(mine)
        work.append(mine)

    results = run_sessions(db_url, work)

    outcomes = Counter(r["outcome"] for session in results for r in session)
    assert outcomes["registered"] == 20
    with psycopg.connect(db_url, autocommit=True) as conn:
        for batch_id, counts in expected.items():
            summary = check_invariants(conn, batch_id)
            # The events fit in the slots, so the counts cannot depend on the order.
            assert (summary["filled"], summary["failed"]) == (counts["filled"], counts["failed"])
            assert summary["excess_content"] == summary["excess_failures"] == 0
        completions = conn.execute(
            "SELECT count(*) FROM els.event_outbox"
            " WHERE event_type = 'BatchContentProvisioningCompleted'"
            " AND message_key LIKE %(prefix)s", {"prefix": f"conc-{run}-%"}).fetchone()
    assert completions is not None
    # Exactly one completion per batch whose slots all got something, none for the rest.
    assert completions[0] == sum(
        1 for c in expected.values() if c["filled"] + c["failed"] == c["size"])


def _race_with_close(db_url: str, slots: int, contents: int, failures: int,
                     seed: int) -> dict[str, Any]:
    """Registers a batch, then 8 sessions apply its contents and failures (each session
    all of them, shuffled: every item is redelivered 7 times) while closers among them
    call els.close_batch at random points. Returns the outcomes and the final summary."""
    rng = random.Random(seed)
    batch_id = f"close-race-{uuid.uuid4()}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        events.apply(conn, "register", events.registration(
            batch_id, [f"{batch_id}-e{i}" for i in range(slots)]))
    items: list[tuple[str, dict[str, Any]]] = (
        [("content", events.content(batch_id, f"t{i}")) for i in range(contents)]
        + [("failure", events.failure(batch_id, f"u{i}")) for i in range(failures)])
    work = []
    for session in range(SESSIONS):
        mine = list(items)
        rng.shuffle(mine)
        if session % 2 == 0:  # four sessions close the batch somewhere in their stream
            mine.insert(rng.randint(0, len(mine)), ("close", {"batch_id": batch_id}))
        work.append(mine)

    results = run_sessions(db_url, work)

    flat = [(kind, result) for session, mine in zip(results, work, strict=True)
            for (kind, _), result in zip(mine, session, strict=True)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        summary = check_invariants(conn, batch_id)
        timed_out_slots = conn.execute(
            "SELECT count(*) FROM els.essay_slot WHERE batch_id = %(batch_id)s"
            " AND failure_code = 'CONTENT_TIMEOUT'", {"batch_id": batch_id}).fetchone()
    assert timed_out_slots is not None
    return {"batch_id": batch_id, "flat": flat, "summary": summary,
            "timed_out_slots": timed_out_slots[0]}


def test_eight_sessions_race_ingest_and_close_batch_on_one_batch(db_url: str) -> None:
    """Content and failures that cannot fill the batch (40 slots, 30 texts, 5 failures),
    raced by 8 sessions with four close_batch calls: no error surfaces, exactly one close
    wins, exactly one completion (by deadline), filled + failed + timed out = 40, and every
    item that came after the close is excess."""
    race = _race_with_close(db_url, slots=40, contents=30, failures=5, seed=20261203)
    flat, summary = race["flat"], race["summary"]

    closes = [r for kind, r in flat if kind == "close"]
    assert Counter(r["outcome"] for r in closes) == {"closed": 1, "already_complete": 3}
    winner = next(r for r in closes if r["outcome"] == "closed")
    assert winner["slots_timed_out"] == race["timed_out_slots"] == summary["timed_out"]
    assert len(winner["events"]) == 1
    assert sum(r["slots_timed_out"] for r in closes) == summary["timed_out"]

    assert summary["complete"] and summary["completion_events"] == 1
    assert summary["completion_reason"] == "deadline"
    filled, failed_by_event = summary["filled"], summary["failed"] - summary["timed_out"]
    assert filled + failed_by_event + summary["timed_out"] == 40
    # every distinct item got exactly one first outcome: a slot, or excess (after the close)
    content_outcomes = Counter(r["outcome"] for kind, r in flat if kind == "content")
    failure_outcomes = Counter(r["outcome"] for kind, r in flat if kind == "failure")
    assert content_outcomes["assigned"] == filled
    assert content_outcomes["assigned"] + content_outcomes["excess"] == 30
    assert failure_outcomes["recorded"] == failed_by_event
    assert failure_outcomes["recorded"] + failure_outcomes["excess"] == 5
    assert content_outcomes["pending"] == failure_outcomes["pending"] == 0
    assert summary["excess_content"] == content_outcomes["excess"]
    assert summary["excess_failures"] == failure_outcomes["excess"]
    # the close happened before some items: those are excess, none fills a timed-out slot
    assert summary["timed_out"] == 40 - filled - failed_by_event > 0


def test_eight_sessions_race_the_last_items_and_close_batch(db_url: str) -> None:
    """Exactly as many items as slots, raced with close_batch: whichever wins, one
    completion, and its completion_reason agrees with the slots (deadline exactly when
    some slot timed out; check_invariants)."""
    for seed in range(3):
        race = _race_with_close(db_url, slots=12, contents=10, failures=2, seed=seed)
        summary = race["summary"]
        assert summary["complete"] and summary["completion_events"] == 1
        assert summary["filled"] + summary["failed"] == 12
        closes = Counter(r["outcome"] for kind, r in race["flat"] if kind == "close")
        assert closes["closed"] <= 1 and closes["closed"] + closes["already_complete"] == 4
        assert (closes["closed"] == 1) == (summary["completion_reason"] == "deadline")


def test_maintenance_races_ingest_of_twenty_batches(db_url: str) -> None:
    """4 sessions ingest shuffled, duplicated streams of 20 batches while 2 sessions call
    els.close_overdue_batches (older_than 0, small chunks) and 2 els.purge_history
    (older_than 0) over and over: no error (no deadlock, no unique violation), the SPEC
    invariants hold for every batch, open, closed or purged, and once all is applied and
    closed, every batch has exactly one completion (nothing is published, so the outbox
    keeps them all)."""
    rng = random.Random(20261204)
    run = uuid.uuid4().hex[:8]
    stream: list[tuple[str, dict[str, Any]]] = []
    batch_ids = []
    for b in range(20):
        batch_id = f"maint-{run}-{b}"
        batch_ids.append(batch_id)
        size = rng.randint(1, 12)
        stream.append(("register", events.registration(
            batch_id, [f"{batch_id}-e{i}" for i in range(size)])))
        stream += [("content", events.content(batch_id, f"t{i}"))
                   for i in range(rng.randint(0, size + 1))]
        stream += [("failure", events.failure(batch_id, f"u{i}")) for i in range(rng.randint(0, 2))]
    work: list[list[tuple[str, dict[str, Any]]]] = []
    for _ in range(4):
        mine = stream + rng.sample(stream, len(stream) // 2)
        rng.shuffle(mine)
        work.append(mine)
    work += [[("overdue", {"max_batches": 3})] * 40 for _ in range(2)]
    work += [[("purge", {})] * 40 for _ in range(2)]

    results = run_sessions(db_url, work)

    registered = sum(1 for session in results[:4] for r in session if r["outcome"] == "registered")
    assert registered == 20
    with psycopg.connect(db_url, autocommit=True) as conn:
        apply(conn, "overdue", {"max_batches": 1000})  # whatever the race left open
        for batch_id in batch_ids:
            summary = check_invariants(conn, batch_id)
            assert summary["complete"], summary
            completions = conn.execute(
                "SELECT count(*) FROM els.event_outbox WHERE message_key = %(batch_id)s"
                " AND event_type = 'BatchContentProvisioningCompleted'",
                {"batch_id": batch_id}).fetchone()
            assert completions == (1,), (batch_id, summary)
        # purge whatever the race left, then replay the whole stream: still one each
        apply(conn, "purge", {})
        tombstones = conn.execute(
            "SELECT count(*) FROM els.batch_tombstone WHERE batch_id LIKE %(prefix)s",
            {"prefix": f"maint-{run}-%"}).fetchone()
        assert tombstones == (20,)
        replayed = Counter((kind, apply(conn, kind, event)["outcome"]) for kind, event in stream)
        assert replayed[("register", "duplicate")] == 20
        assert {outcome for _, outcome in replayed} <= {"duplicate", "excess"}
        for batch_id in batch_ids:
            summary = check_invariants(conn, batch_id)
            assert summary["purged"] and summary["completion_events"] == 1, summary
