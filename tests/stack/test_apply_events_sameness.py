"""Property test of issue 15: the set-based path (els.apply_events, a micro-batch in
one call) is the per-event path (one call per event), event for event.

Hypothesis draws several batches and their events: registrations (redelivered, with a
different identity: ELC01, another batch claiming an essay id: ELC02, malformed: ELV04),
content and failures (before and after the registration, redelivered, more than fit),
events rejected by validation, and values PostgreSQL refuses as jsonb; all of it in one
random interleaving, cut into random micro-batches (a batch's events straddle them),
with deadline closes and purges at some micro-batch boundaries. The same sequence runs
in two databases cloned from the migrated template: once through els.apply_events,
micro-batch by micro-batch, and once event by event through the per-event functions.
Each event's result (or error: SQLSTATE, message, JSON detail) must be identical, and
so must the final tables and the outbox rows (event ids, types, keys, data; per batch,
in the same order), up to timestamps and sequence values.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from testkit import databases, streams
from testkit.stack import Stack

EXAMPLES = int(os.environ.get("ELS_SAMENESS_EXAMPLES", "150"))

@pytest.fixture
def two_dbs(stack: Stack, template_db: str) -> Iterator[tuple[str, str]]:
    """Two brand-new databases cloned from the migrated template."""
    run = uuid.uuid4().hex
    with databases.clone(stack, template_db, f"test_{run}_a") as one, \
            databases.clone(stack, template_db, f"test_{run}_b") as other:
        yield one, other


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(scenario=streams.scenarios())
def test_micro_batches_match_event_by_event(two_dbs: tuple[str, str],
                                            scenario: dict[str, Any]) -> None:
    order, sizes, actions = scenario["order"], scenario["sizes"], scenario["actions"]
    with psycopg.connect(two_dbs[0], autocommit=True) as set_conn, \
            psycopg.connect(two_dbs[1], autocommit=True) as one_conn:
        start = 0
        for n, size in enumerate(sizes):
            chunk = order[start:start + size]
            start += size
            got = streams.set_based(set_conn, chunk)
            want = [streams.per_event(one_conn, kind, value) for kind, value in chunk]
            assert len(got) == len(chunk)
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                assert g == w, (n, i, chunk[i][0], chunk[i][1])
            if n in actions:
                assert streams.action(set_conn, actions[n]) == streams.action(one_conn, actions[n])
        assert start == len(order)
        got_state = streams.state(set_conn, scenario["batch_ids"])
        want_state = streams.state(one_conn, scenario["batch_ids"])
        for table in streams.STATE:
            assert got_state[table] == want_state[table], table
