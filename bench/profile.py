"""Where PostgreSQL spends its time on the end-to-end stream, statement by statement.

    .venv/bin/python -m bench.profile [--batches N] [--mode set|per_event|floor] [--base REV]

One session applies the e2e stream (registrations of 10-essay batches, each followed
by its 10 contents) in micro-batches of the worker's size, the way the worker does
(``set``: one ``els.apply_events`` call per transaction; ``per_event``: one pipelined
call per event; ``floor``: the same rows by plain set-based INSERT/UPDATE, no rules),
on a database cloned from the seeded template. The first quarter of the stream warms
the session up (generic plans after five executions, as a worker's long session has
them); then pg_stat_statements, tracking nested statements, records the rest, and
track_functions each function's own time. Printed: each statement's share, its time
per event of the stream and its calls; each function's self and total time per event;
so that a change can be aimed at what costs.

``--base REV`` runs that revision's functions (its sql/, loaded into the database as
bench/worker_ab.py does) instead of the working tree's: the before of a before/after.
It needs pg_stat_statements preloaded (scripts/stack.sh does) and a superuser URL.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import common, e2e
from els_worker import db
from testkit.db import load_functions

STATEMENTS = """
SELECT s.calls, s.total_exec_time, s.rows, s.toplevel,
       regexp_replace(left(s.query, 400), '\\s+', ' ', 'g') AS query
  FROM pg_stat_statements AS s
  JOIN pg_database AS d ON d.oid = s.dbid
 WHERE d.datname = current_database() AND s.query !~* 'pg_stat_statements'
 ORDER BY s.total_exec_time DESC
"""

FUNCTIONS = """
SELECT f.schemaname || '.' || f.funcname, f.calls, f.self_time, f.total_time
  FROM pg_stat_user_functions AS f
 ORDER BY f.self_time DESC
"""


def _apply(conn: psycopg.Connection, chunk: list[tuple[str, str]], mode: str,
           slots: dict[str, list[str]]) -> None:
    with conn.transaction():
        if mode == "floor":
            params = e2e._floor_params(chunk, slots)
            for statement in e2e.FLOOR_SQL:
                conn.execute(statement, params)
            return
        if mode == "set":
            document = db.events_document([e2e.KIND_BY_TOPIC[t] for t, _ in chunk],
                                          [v for _, v in chunk])
            conn.execute(db.APPLY_EVENTS_JSON, {"events": document}).fetchone()
            return
        cursors = []
        with conn.pipeline():
            for topic, value in chunk:
                cur = conn.cursor()
                cur.execute(e2e.SQL_BY_TOPIC[topic], {"event": value})
                cursors.append(cur)
        for cur in cursors:
            cur.fetchone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=1200)
    ap.add_argument("--order", choices=("registration_first", "content_first"),
                    default="registration_first",
                    help="each batch's registration before its contents, as produced, or "
                         "contents first, as a worker mostly meets them (e2e.content_first)")
    ap.add_argument("--mode", choices=("set", "per_event", "floor"), default="set")
    ap.add_argument("--base", help="profile this git revision's sql/ instead")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--reuse-template", action="store_true",
                    help="keep the seeded template of an earlier run (same migrations only)")
    args = ap.parse_args()

    stack = common.stack_from_env()
    if not (args.reuse_template and common.template_exists(stack)):
        common.build_template(stack, print)
    stream = e2e.build_stream(args.batches)
    messages = [(t, v) for t, _, v in stream.messages]
    if args.order == "content_first":
        messages = e2e.content_first(messages)
    chunks = [messages[s:s + e2e.GROUP] for s in range(0, len(messages), e2e.GROUP)]
    warm = max(1, len(chunks) // 4)
    measured = sum(len(c) for c in chunks[warm:])
    with common.fresh_database(stack, "profile") as url, \
            tempfile.TemporaryDirectory(prefix="els-profile-") as tmp:
        if args.base:
            archive = subprocess.run(["git", "archive", args.base, "sql"], cwd=common.ROOT,
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            load_functions(url, Path(tmp) / "sql")
        rows, functions, wall = _profile(url, chunks, warm, args.mode)
    top = [r for r in rows if r[3]]
    top_ms = sum(r[1] for r in top)
    label = f"{args.base}'s sql/" if args.base else "working tree"
    print(f"{label}, mode {args.mode}: {measured} events measured after {warm} warm-up "
          f"micro-batches; wall {wall * 1e6 / measured:.0f} µs/event, top-level statements "
          f"{top_ms * 1e3 / measured:.0f} µs/event")
    print(f"{'share':>6} {'µs/event':>9} {'calls':>8}  statement (nested unless marked TOP)")
    for calls, total_ms, _rows, toplevel, query in rows[:args.top]:
        print(f"{100 * total_ms / top_ms:5.1f}% {total_ms * 1e3 / measured:9.1f} {calls:8d}  "
              f"{'TOP ' if toplevel else ''}{query[:150]}")
    print(f"\n{'self µs/event':>13} {'total':>8} {'calls':>8}  function (track_functions)")
    for name, calls, self_ms, total_ms in functions[:args.top]:
        print(f"{self_ms * 1e3 / measured:13.1f} {total_ms * 1e3 / measured:8.1f} "
              f"{calls:8d}  {name}")


def _profile(url: str, chunks: list[list[tuple[str, str]]], warm: int,
             mode: str) -> tuple[list[Any], list[Any], float]:
    """Statement figures and function self times of the measured part: one session
    (its plans are the warm-up's); the functions' counters are flushed when it ends."""
    slots: dict[str, list[str]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SET pg_stat_statements.track = 'all'")
        conn.execute("SET track_functions = 'all'")
        for chunk in chunks[:warm]:
            _apply(conn, chunk, mode, slots)
        time.sleep(1.1)  # a backend flushes its counters at most once a second, when idle
        conn.execute("SELECT 1")
        conn.execute("SELECT pg_stat_reset()")
        conn.execute("SELECT pg_stat_statements_reset()")
        started = time.perf_counter()
        for chunk in chunks[warm:]:
            _apply(conn, chunk, mode, slots)
        wall = time.perf_counter() - started
        statements = conn.execute(STATEMENTS).fetchall()
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(50):  # the ended session's last flush
            functions = conn.execute(FUNCTIONS).fetchall()
            if functions:
                break
            time.sleep(0.1)
            conn.execute("SELECT pg_stat_clear_snapshot()")
    return statements, functions, wall


if __name__ == "__main__":
    main()
