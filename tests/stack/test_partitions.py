"""Partitions behind PL/Proxy (SPEC 9, issue 27): the proxy exposes the API of one
database, answers as one database answers, keeps one batch per essay id across
partitions and forever, and turns an unreachable partition into an operational fault."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from psycopg import sql

import els_migrate
from els_worker.errors import Action, classify_sqlstate
from testkit import databases, events, streams
from testkit.partitions import Sharded
from testkit.stack import ROOT, Stack

EXAMPLES = int(os.environ.get("ELS_PARTITION_EXAMPLES", "40"))

# SPEC 3, 8 and 10, and the worker's micro-batch entry: what the proxy must expose
API = {"register_batch", "provision_content", "record_validation_failure", "apply_events",
       "batch_report", "reconcile_batch", "close_batch", "close_overdue_batches",
       "purge_history", "batch_health", "stuck_batch_list"}

SIGNATURES = """
SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
       p.prosecdef, p.proconfig,
       ARRAY(SELECT a.grantee::regrole::text FROM aclexplode(p.proacl) AS a
              WHERE a.grantee <> p.proowner ORDER BY 1),
       p.proowner::regrole::text
  FROM pg_proc AS p
 WHERE p.pronamespace = 'els'::regnamespace AND p.proname = ANY(%(names)s::text[])
 ORDER BY 1, 2"""


def _rows(url: str, query: str, params: dict[str, Any] | None = None) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params or {}).fetchall()


def _call(url: str, query: str, params: dict[str, Any]) -> dict[str, Any]:
    """The call's result, or its error as one database's client sees it."""
    try:
        return {"ok": True, "result": _rows(url, query, params)[0][0]}
    except psycopg.Error as exc:
        return streams.error(exc)


def _batch_on(sharded: Sharded, partition: int, prefix: str) -> str:
    """A fresh batch id that maps to ``partition``."""
    for n in range(1000):
        batch_id = f"{prefix}-{uuid.uuid4().hex[:6]}-{n}"
        if sharded.partition_of(batch_id) == partition:
            return batch_id
    raise AssertionError("no batch id found for the partition")


def test_proxy_exposes_the_api_with_the_same_signatures_and_grants(sharded: Sharded) -> None:
    on_partition = _rows(sharded.partition_urls[0], SIGNATURES, {"names": sorted(API)})
    on_proxy = _rows(sharded.proxy_url, SIGNATURES, {"names": sorted(API)})
    assert {r[0] for r in on_proxy} == API
    assert on_proxy == on_partition
    # and nothing of the proxy is PUBLIC's, nor the partitions' own business
    assert _rows(sharded.proxy_url, """
        SELECT p.oid::regprocedure::text FROM pg_proc AS p
         WHERE p.pronamespace IN ('els'::regnamespace, 'els_remote'::regnamespace,
                                  'els_proxy'::regnamespace)
           AND has_function_privilege('public', p.oid, 'EXECUTE')""") == []
    assert _rows(sharded.proxy_url, "SELECT to_regproc('els.claim_outbox')") == [(None,)]
    views = "SELECT has_table_privilege('els_readonly', 'els.stuck_batches', 'SELECT')"
    assert _rows(sharded.proxy_url, views) == _rows(sharded.partition_urls[0], views)


def test_batches_are_spread_by_the_documented_mapping(sharded: Sharded) -> None:
    ids = [f"map-{n}" for n in range(40)]
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        for batch_id in ids:
            events.apply(proxy, "register", events.registration(batch_id, [f"{batch_id}-e"]))
    for number, url in enumerate(sharded.partition_urls):
        here = {r[0] for r in _rows(url, "SELECT batch_id FROM els.batch_tracker")}
        assert here == {b for b in ids if sharded.partition_of(b) == number}
        assert 0 < len(here) < len(ids)
    # md5's first 32 bits, low bit: stable across versions and machines (docs/SCALING.md)
    first32 = hashlib.md5(b"b-1").digest()[:4]
    assert _rows(sharded.proxy_url, "SELECT els.key_hash('b-1'), els.partition_of('b-1', 4)") == [
        (int.from_bytes(first32, "big", signed=True), int.from_bytes(first32, "big") & 3)]


def test_answers_and_errors_are_one_databases(sharded: Sharded, db_url: str) -> None:
    """The same calls through the proxy and to one database: equal results, SQLSTATEs,
    messages and DETAIL (no "REMOTE ERROR" label), for each kind of answer."""
    a, b = "same-a", "same-b"
    bad_count = events.registration("same-c", ["x", "y"])
    bad_count["data"]["expected_essay_count"] = 3
    register = "SELECT els.register_batch(%(e)s::jsonb)"
    content = "SELECT els.provision_content(%(e)s::jsonb)"
    failure = "SELECT els.record_validation_failure(%(e)s::jsonb)"
    calls: list[tuple[str, dict[str, Any]]] = [
        (register, {"e": json.dumps(events.registration(a, ["s1", "s2"]))}),
        (register, {"e": json.dumps(events.registration(a, ["s1", "s2"]))}),
        (register, {"e": json.dumps(events.registration(a, ["s1"]))}),
        (register, {"e": json.dumps(events.registration(b, ["s2", "s3"]))}),
        (register, {"e": json.dumps(bad_count)}),
        (register, {"e": "[1]"}),
        (content, {"e": json.dumps(events.content(a, "t1"))}),
        (content, {"e": json.dumps(events.content(a, "t1"))}),
        (failure, {"e": json.dumps(events.failure(b, "f1"))}),
        ("SELECT els.close_batch(batch_id => %(b)s::text)", {"b": "same-unknown"}),
        ("SELECT jsonb_agg(s - 'filled_at') FROM jsonb_array_elements("
         "els.batch_report(p_batch_id => %(b)s::text) -> 'slots') AS s", {"b": a}),
        ("SELECT els.close_batch(batch_id => %(b)s::text)", {"b": a}),
        ("SELECT els.stable_event_id(%(t)s::text, 'x', 'y')", {"t": "EssaySlotAssigned"}),
        ("SELECT els.purge_history(older_than => '0 s'::interval)", {}),
        (register, {"e": json.dumps(events.registration(b, ["s1", "s9"]))}),
    ]
    for query, params in calls:
        got, want = _call(sharded.proxy_url, query, params), _call(db_url, query, params)
        assert got == want, query
        assert "REMOTE" not in json.dumps(got, default=str)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(scenario=streams.scenarios(with_thief=False))
def test_a_stream_through_the_proxy_is_one_databases(sharded: Sharded, db_url: str,
                                                     scenario: dict[str, Any]) -> None:
    """A random stream in micro-batches through the proxy and to one database: equal
    results, and the partitions' merged state equal to the one database's. (Registrations
    of different partitions that share an essay id in one micro-batch race, as two
    workers would: scenarios(with_thief=False) leaves those to the tests below.)"""
    order, sizes, actions = scenario["order"], scenario["sizes"], scenario["actions"]
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy, \
            psycopg.connect(db_url, autocommit=True) as one:
        start = 0
        for n, size in enumerate(sizes):
            chunk = order[start:start + size]
            start += size
            assert streams.set_based(proxy, chunk) == streams.set_based(one, chunk), n
            if n in actions:
                assert streams.action(proxy, actions[n]) == streams.action(one, actions[n])
        want = streams.state(one, scenario["batch_ids"])
    merged: dict[str, list[Any]] = {table: [] for table in streams.STATE}
    for url in sharded.partition_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            for table, rows in streams.state(conn, scenario["batch_ids"]).items():
                merged[table] += rows
    for table in streams.STATE:
        # each partition's rows come in the query's order; a stable sort on the leading
        # key keeps a batch's outbox order
        keyed = sorted(merged[table], key=lambda r: tuple(str(c) for c in r[:2]))
        assert keyed == sorted(want[table], key=lambda r: tuple(str(c) for c in r[:2])), table


def test_an_essay_id_has_one_batch_across_partitions(sharded: Sharded, db_url: str) -> None:
    a, b = _batch_on(sharded, 0, "own-a"), _batch_on(sharded, 1, "own-b")
    essay = f"{a}-shared"
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        events.apply(proxy, "register", events.registration(a, [essay, f"{a}-2"]))
        with pytest.raises(psycopg.Error) as refused:
            events.apply(proxy, "register", events.registration(b, [f"{b}-1", essay]))
    assert refused.value.sqlstate == "ELC02"
    assert json.loads(refused.value.diag.message_detail or "") == {
        "field": "essay_ids", "reason": "essay_owned_by_other_batch",
        "essay_id": essay, "owner_batch_id": a}
    # the rejected registration changed nothing and left no claim anywhere
    assert _claims(sharded, b) == []
    assert _rows(sharded.partition_urls[1], "SELECT count(*) FROM els.batch_tracker"
                 " WHERE batch_id = %(b)s", {"b": b}) == [(0,)]
    assert sorted(c[0] for c in _claims(sharded, a)) == sorted([essay, f"{a}-2"])


def _claims(sharded: Sharded, batch_id: str) -> list[Any]:
    return [row for url in sharded.partition_urls
            for row in _rows(url, "SELECT essay_id, owner_xid IS NULL FROM els.essay_claim"
                             " WHERE batch_id = %(b)s", {"b": batch_id})]


def _register_retrying(url: str, batch_id: str, essays: list[str], barrier: threading.Barrier,
                       outcomes: dict[str, str]) -> None:
    """Registers through the proxy as the worker would: an operational fault is retried."""
    with psycopg.connect(url, autocommit=True) as conn:
        barrier.wait()
        while True:
            try:
                events.apply(conn, "register", events.registration(batch_id, essays))
                outcomes[batch_id] = "registered"
                return
            except psycopg.Error as exc:
                if classify_sqlstate(exc.sqlstate).action is not Action.RETRY_FOREVER:
                    outcomes[batch_id] = str(exc.sqlstate)
                    return


def test_racing_registrations_on_two_partitions_end_with_one_owner(sharded: Sharded) -> None:
    for round_no in range(12):
        a = _batch_on(sharded, 0, f"race{round_no}-a")
        b = _batch_on(sharded, 1, f"race{round_no}-b")
        shared = [f"race{round_no}-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
        outcomes: dict[str, str] = {}
        barrier = threading.Barrier(2)

        threads = [threading.Thread(target=_register_retrying,
                                    args=(sharded.proxy_url, a, [*shared, f"{a}-own"], barrier,
                                          outcomes)),
                   threading.Thread(target=_register_retrying,
                                    args=(sharded.proxy_url, b, list(reversed(shared)), barrier,
                                          outcomes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(outcomes.values()) == ["ELC02", "registered"], outcomes
        winner = next(k for k, v in outcomes.items() if v == "registered")
        loser = a if winner == b else b
        owners = {row[0] for url in sharded.partition_urls for row in _rows(
            url, "SELECT batch_id FROM els.essay_slot WHERE essay_id = ANY(%(e)s::text[])",
            {"e": shared})}
        assert owners == {winner}
        assert _claims(sharded, loser) == []


def test_a_crashed_registration_leaves_a_claim_that_heals(sharded: Sharded) -> None:
    """A registration whose transaction dies after claiming (a crash between the claim and
    the commit): its claims are pending and stale. The next claimant takes them over, and
    reap_claims releases the ones nobody asks for."""
    a, b = _batch_on(sharded, 0, "crash-a"), _batch_on(sharded, 1, "crash-b")
    essays = [f"crash-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    with psycopg.connect(sharded.partition_urls[0]) as conn:  # one transaction, then gone
        conn.execute("SELECT els.register_batch(%(e)s::jsonb)",
                     {"e": json.dumps(events.registration(a, essays))})
        conn.rollback()
    assert len(_claims(sharded, a)) == 4 and not any(held for _, held in _claims(sharded, a))
    # another batch takes two of them over at once
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        got = events.apply(proxy, "register", events.registration(b, essays[:2]))
    assert got["outcome"] == "registered"
    assert sorted(e for e, _ in _claims(sharded, b)) == sorted(essays[:2])
    # the reaper releases the other two (older than 0 s) and marks b's held
    reaped = [_rows(url, "SELECT els.reap_claims(older_than => '0 s'::interval)")[0][0]
              for url in sharded.partition_urls]
    assert sum(r["claims_released"] for r in reaped) == 2
    assert sum(r["claims_held"] for r in reaped) == 2
    assert _claims(sharded, a) == []
    assert sorted(_claims(sharded, b)) == sorted((e, True) for e in essays[:2])
    # and the crashed batch, redelivered, registers what is still free... or is refused
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        again = events.apply(proxy, "register", events.registration(a, essays[2:]))
    assert again["outcome"] == "registered"


def test_a_purged_batch_keeps_its_essay_ids_across_partitions(sharded: Sharded) -> None:
    a, b = _batch_on(sharded, 0, "purged-a"), _batch_on(sharded, 1, "purged-b")
    essay = f"purged-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        events.apply(proxy, "register", events.registration(a, [essay]))
        proxy.execute("SELECT els.close_batch(batch_id => %(b)s::text)", {"b": a})
        purged = proxy.execute("SELECT els.purge_history('0 s'::interval)").fetchone()
        assert purged is not None and purged[0]["batches_purged"] == 1
        with pytest.raises(psycopg.Error) as refused:
            events.apply(proxy, "register", events.registration(b, [essay]))
    assert refused.value.sqlstate == "ELC02"
    assert json.loads(refused.value.diag.message_detail or "") == {
        "field": "essay_ids", "reason": "essay_owned_by_other_batch",
        "essay_id": essay, "owner_batch_id": a, "purged": True}


def test_calls_over_all_partitions_merge_their_answers(sharded: Sharded) -> None:
    a, b = _batch_on(sharded, 0, "merge-a"), _batch_on(sharded, 1, "merge-b")
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        for batch_id in (a, b):
            events.apply(proxy, "register",
                         events.registration(batch_id, [f"{batch_id}-1", f"{batch_id}-2"]))
        health = proxy.execute("SELECT els.batch_health('0 s'::interval)").fetchone()
        stuck = proxy.execute("SELECT els.stuck_batch_list('0 s'::interval, 10)").fetchone()
        view = proxy.execute("SELECT batch_id FROM els.stuck_batches ORDER BY 1").fetchall()
        closed = proxy.execute("SELECT els.close_overdue_batches('0 s'::interval)").fetchone()
    assert health is not None and health[0]["incomplete_batches"] == 2
    assert health[0]["stuck_batches"] == 2
    assert stuck is not None and sorted(s["batch_id"] for s in stuck[0]) == sorted([a, b])
    assert view == sorted([(a,), (b,)])
    assert closed is not None
    assert (closed[0]["batches_closed"], closed[0]["slots_timed_out"]) == (2, 4)
    assert len(closed[0]["events"]) == 2


def test_an_unreachable_partition_is_an_operational_fault(sharded: Sharded, stack: Stack) -> None:
    down = sharded.partition_urls[1].rsplit("/", 1)[1]
    b = _batch_on(sharded, 1, "down")
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(down)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = %(d)s", {"d": down})
    try:
        with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
            with pytest.raises(psycopg.Error) as failed:
                events.apply(proxy, "register", events.registration(b, [f"{b}-1"]))
            assert failed.value.sqlstate == "08006"
            assert classify_sqlstate(failed.value.sqlstate).action is Action.RETRY_FOREVER
            with pytest.raises(psycopg.Error) as merged:
                proxy.execute("SELECT els.batch_health('0 s'::interval)")
            assert merged.value.sqlstate == "08006"
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(down)))
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        again = events.apply(proxy, "register", events.registration(b, [f"{b}-1"]))
    assert again["outcome"] == "registered"


@pytest.fixture
def empty_databases(stack: Stack) -> Iterator[list[str]]:
    """Three empty databases (two partitions and a proxy, to be), dropped after."""
    names = [f"empty_{uuid.uuid4().hex[:12]}" for _ in range(3)]
    with psycopg.connect(stack.admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(name)))
    try:
        yield [stack.url_for(name) for name in names]
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            for name in names:
                databases.drop_database(admin, name)


def _migrate(proxy: str, parts: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "worker.py"), "migrate"], capture_output=True, text=True,
        env={**os.environ, "ELS_DATABASE_URL": proxy, "ELS_PARTITION_URLS": ",".join(parts)},
        timeout=300)


def test_worker_migrate_builds_the_partitions_then_the_proxy(empty_databases: list[str]) -> None:
    *parts, proxy = empty_databases
    first = _migrate(proxy, parts)
    assert first.returncode == 0, first.stderr
    for number, url in enumerate(parts):
        assert _rows(url, "SELECT partition_no, partition_count FROM els.partition_self") == [
            (number, 2)]
        assert els_migrate.applied_migrations(url)[-1] == max(
            p.stem for p in els_migrate.MIGRATIONS_DIR.glob("0*.py"))
    with psycopg.connect(proxy, autocommit=True) as conn:
        done = events.apply(conn, "register", events.registration("mig-1", ["mig-e1"]))
    assert done["outcome"] == "registered"
    # again: nothing to migrate, the proxy rebuilt, the data where it was
    again = _migrate(proxy, parts)
    assert again.returncode == 0, again.stderr
    with psycopg.connect(proxy, autocommit=True) as conn:
        same = events.apply(conn, "register", events.registration("mig-1", ["mig-e1"]))
    assert same["outcome"] == "duplicate"
    # the partitions in another order would move every batch: refused
    swapped = _migrate(proxy, list(reversed(parts)))
    assert swapped.returncode != 0
    assert "the mapping never changes once data exists" in swapped.stderr
    # and changed nothing: each partition keeps its number, the proxy still routes
    for number, url in enumerate(parts):
        assert _rows(url, "SELECT partition_no FROM els.partition_self") == [(number,)]
    with psycopg.connect(proxy, autocommit=True) as conn:
        still = events.apply(conn, "register", events.registration("mig-1", ["mig-e1"]))
    assert still["outcome"] == "duplicate"


def _micro_batch(prefix: str, batches: int) -> list[tuple[str, str]]:
    chunk: list[tuple[str, str]] = []
    for n in range(batches):
        batch_id = f"{prefix}-{n}"
        chunk.append(("register", json.dumps(events.registration(
            batch_id, [f"{batch_id}-e{i}" for i in range(8)]))))
        chunk += [("content", json.dumps(events.content(batch_id, f"t{i}"))) for i in range(8)]
    return chunk


def test_a_partition_killed_mid_call_loses_and_doubles_nothing(
        sharded: Sharded, db_url: str, stack: Stack) -> None:
    """A partition's backend killed while it applies its share of a micro-batch: the call
    fails as an operational fault, its retry applies the rest, and the merged state is
    what one database has after applying the micro-batch once."""
    victim = sharded.partition_urls[1].rsplit("/", 1)[1]
    failure: dict[str, Any] = {}
    for attempt in range(5):
        chunk = _micro_batch(f"kill{attempt}-{uuid.uuid4().hex[:4]}", 60)

        def apply(chunk: list[tuple[str, str]] = chunk) -> None:
            with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
                try:
                    streams.set_based(proxy, chunk)
                except psycopg.Error as exc:
                    failure["sqlstate"] = exc.sqlstate

        caller = threading.Thread(target=apply)
        caller.start()
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            while caller.is_alive():
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %(d)s AND state = 'active'", {"d": victim}).fetchall()
                if killed:
                    break
        caller.join(60)
        if failure:
            break
    assert failure.get("sqlstate") is not None, "the kill never landed mid-call"
    assert classify_sqlstate(failure["sqlstate"]).action is Action.RETRY_FOREVER, failure
    with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
        retried = streams.set_based(proxy, chunk)  # what the worker does: the same again
    assert all(r["ok"] for r in retried)
    _assert_state_is_one_databases(sharded, db_url, chunk)


def test_a_partition_failing_over_loses_and_doubles_nothing(
        sharded: Sharded, db_url: str, stack: Stack) -> None:
    """What a partition's failover looks like to the proxy (docs/SCALING.md, HA per
    partition): the old primary read-only (demoted), then refusing connections (down),
    then a primary again. Each phase fails the micro-batch as an operational fault, never
    as a verdict on its events; the retry after it applies the rest, and the merged
    state is what one database has after applying the micro-batch once."""
    name = sharded.partition_urls[1].rsplit("/", 1)[1]
    chunk = _micro_batch(f"fo-{uuid.uuid4().hex[:4]}", 60)

    def phase(*statements: sql.Composed) -> None:
        with psycopg.connect(stack.admin_url, autocommit=True) as admin:
            for statement in statements:
                admin.execute(statement)
            # the proxy's cached connection to it goes, as a failover ends it
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %(d)s", {"d": name})

    def attempt() -> str | None:
        with psycopg.connect(sharded.proxy_url, autocommit=True) as proxy:
            try:
                results = streams.set_based(proxy, chunk)
            except psycopg.Error as exc:
                return exc.sqlstate
        assert all(r["ok"] for r in results)
        return None

    ident = sql.Identifier(name)
    try:
        phase(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(ident))
        demoted = attempt()
        phase(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
        down = attempt()
    finally:
        phase(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(ident),
              sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
    assert demoted == "25006" and down == "08006", (demoted, down)
    for sqlstate in (demoted, down):
        assert classify_sqlstate(sqlstate).action is Action.RETRY_FOREVER, sqlstate
    assert attempt() is None  # the new primary: the retry goes through
    _assert_state_is_one_databases(sharded, db_url, chunk)


def _assert_state_is_one_databases(sharded: Sharded, db_url: str,
                                   chunk: list[tuple[str, str]]) -> None:
    """The state of the chunk's batches, merged over the partitions, equals one
    database's after applying the chunk once."""
    with psycopg.connect(db_url, autocommit=True) as one:
        streams.set_based(one, chunk)
        want = streams.state(one, _batch_ids(chunk))
    merged: dict[str, list[Any]] = {table: [] for table in streams.STATE}
    for url in sharded.partition_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            for table, rows in streams.state(conn, _batch_ids(chunk)).items():
                merged[table] += rows
    for table in streams.STATE:
        assert sorted(merged[table], key=lambda r: tuple(str(c) for c in r[:2])) == sorted(
            want[table], key=lambda r: tuple(str(c) for c in r[:2])), table


def _batch_ids(chunk: list[tuple[str, str]]) -> list[str]:
    return sorted({json.loads(value)["data"]["entity_id"] for _, value in chunk})
