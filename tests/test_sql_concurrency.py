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

from tests import events
from tests.invariants import check_invariants

SESSIONS = 8


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
                    outcomes.append(events.apply(conn, kind, event))
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
