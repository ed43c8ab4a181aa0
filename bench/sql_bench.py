"""SQL-level scenarios: register_batch against its floor and the old way, duplicate
against first registration, provision_content with 1 and 4 sessions, and the
auto_explain check of the nested plans.

Every function call is made as production makes it: one session making many calls
(so PL/pgSQL's cached plans have gone generic after the fifth execution), the event
passed as text and cast to jsonb, each call its own transaction unless said otherwise.
Inputs are serialized before the clock starts, for every variant.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench.common import (
    SEED_BATCHES,
    Stack,
    content,
    dumps,
    essay_ids,
    failure,
    fresh_database,
    median,
    registration,
    rotate,
)

REGISTER_SQL = "SELECT els.register_batch(%s::jsonb)"
CONTENT_SQL = "SELECT els.provision_content(%s::jsonb)"
FAILURE_SQL = "SELECT els.record_validation_failure(%s::jsonb)"

TRACKER_COLUMNS = ("batch_id, expected_count, essay_ids, course_code, user_id, org_id, "
                   "class_id, student_prompt_ref, metadata, correlation_id, registration_event_id")
INSERT_TRACKER_SQL = ("INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, "
                      "course_code, user_id, org_id, class_id, student_prompt_ref, metadata, "
                      "correlation_id, registration_event_id)"
                      " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)")


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def warm_up(conn: psycopg.Connection, tag: str, calls: int = 8) -> None:
    """Past the five custom plans of every statement inside the functions."""
    for i in range(calls):
        bid = f"warm-{tag}-{i}-{uuid.uuid4().hex[:6]}"
        conn.execute(REGISTER_SQL, (dumps(registration(bid, 3)),))
        conn.execute(REGISTER_SQL, (dumps(registration(bid, 3)),))
        for j in range(4):
            conn.execute(CONTENT_SQL, (dumps(content(bid, j)),))
        conn.execute(CONTENT_SQL, (dumps(content(bid, 0)),))
        conn.execute(FAILURE_SQL, (dumps(failure(f"{bid}-p", 0)),))
        conn.execute(CONTENT_SQL, (dumps(content(f"{bid}-p", 0)),))


# ---------------------------------------------------------------- register_batch


@dataclass
class RegisterInput:
    batch_id: str
    n: int
    event_text: str
    tracker_copy: bytes
    slots_copy: bytes
    tracker_params: tuple[Any, ...]
    slot_params: list[tuple[str, str, int]]


def register_input(batch_id: str, n: int) -> RegisterInput:
    event = registration(batch_id, n)
    ids = essay_ids(batch_id, n)
    corr = event["correlation_id"]
    tracker_params = (batch_id, n, ids, "ENG5", "user-bench", None, None, None, "{}", corr,
                      event["event_id"])
    tracker_copy = "\t".join([batch_id, str(n), "{" + ",".join(ids) + "}", "ENG5", "user-bench",
                              r"\N", r"\N", r"\N", "{}", corr, event["event_id"]]) + "\n"
    slots_copy = "".join(f"{e}\t{batch_id}\t{i + 1}\n" for i, e in enumerate(ids))
    return RegisterInput(batch_id, n, dumps(event), tracker_copy.encode(), slots_copy.encode(),
                         tracker_params, [(e, batch_id, i + 1) for i, e in enumerate(ids)])


def run_register(conn: psycopg.Connection, inputs: list[RegisterInput]) -> float:
    t0 = time.perf_counter()
    for item in inputs:
        conn.execute(REGISTER_SQL, (item.event_text,))
    return time.perf_counter() - t0


def run_copy(conn: psycopg.Connection, inputs: list[RegisterInput]) -> float:
    t0 = time.perf_counter()
    for item in inputs:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(f"COPY els.batch_tracker ({TRACKER_COLUMNS}) FROM STDIN") as cp:
                cp.write(item.tracker_copy)
            with cur.copy("COPY els.essay_slot (essay_id, batch_id, slot_no) FROM STDIN") as cp:
                cp.write(item.slots_copy)
    return time.perf_counter() - t0


def run_row_inserts(conn: psycopg.Connection, inputs: list[RegisterInput]) -> float:
    t0 = time.perf_counter()
    for item in inputs:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                INSERT_TRACKER_SQL,
                item.tracker_params)
            for params in item.slot_params:
                cur.execute("INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)"
                            " VALUES (%s, %s, %s)", params)
    return time.perf_counter() - t0


REGISTER_VARIANTS: dict[str, Callable[[psycopg.Connection, list[RegisterInput]], float]] = {
    "register_batch": run_register,
    "COPY floor": run_copy,
    "INSERT per essay": run_row_inserts,
}


@dataclass
class RegisterResult:
    n: int
    batches_per_rep: int
    per_batch: dict[str, list[float]] = field(default_factory=dict)


def bench_register(stack: Stack, sizes: list[int], reps: int,
                   log: Callable[[str], None]) -> list[RegisterResult]:
    results = []
    for n in sizes:
        k = {10: 100, 100: 40, 1000: 15, 10000: 2}.get(n, max(1, 10000 // n))
        res = RegisterResult(n, k, {v: [] for v in REGISTER_VARIANTS})
        with fresh_database(stack, f"reg{n}") as url, connect(url) as conn:
            warm_up(conn, f"r{n}")
            for name, fn in REGISTER_VARIANTS.items():  # untimed: prepares and caches
                fn(conn, [register_input(f"w{n}-{name[:4]}-{i}", min(n, 100)) for i in range(6)])
            for rep in range(reps):
                for name in rotate(list(REGISTER_VARIANTS), rep):
                    tag = name.split()[0][:4]
                    inputs = [register_input(f"r{n}-{tag}-{rep}-{i}", n) for i in range(k)]
                    elapsed = REGISTER_VARIANTS[name](conn, inputs)
                    res.per_batch[name].append(elapsed / k)
            log(f"register n={n}: " + ", ".join(
                f"{v}={median(t) * 1e3:.2f}ms" for v, t in res.per_batch.items()))
        results.append(res)
    return results


# ---------------------------------------------------------------- duplicate


def bench_duplicate(stack: Stack, sizes: list[int], reps: int,
                    log: Callable[[str], None]) -> dict[int, dict[str, list[float]]]:
    """First registration vs the same event again (redelivery), per call."""
    out: dict[int, dict[str, list[float]]] = {}
    with fresh_database(stack, "dup") as url, connect(url) as conn:
        warm_up(conn, "dup")
        for n in sizes:
            k = {10: 100, 100: 40, 1000: 10}.get(n, max(2, 10000 // n))
            times: dict[str, list[float]] = {"first": [], "duplicate": []}
            previous = [dumps(registration(f"d{n}-pre-{i}", n)) for i in range(k)]
            for text in previous:
                conn.execute(REGISTER_SQL, (text,))
            for rep in range(reps):
                fresh = [dumps(registration(f"d{n}-{rep}-{i}", n)) for i in range(k)]
                for variant in rotate(["first", "duplicate"], rep):
                    texts = fresh if variant == "first" else previous
                    t0 = time.perf_counter()
                    for text in texts:
                        conn.execute(REGISTER_SQL, (text,))
                    times[variant].append((time.perf_counter() - t0) / k)
                previous = fresh
            out[n] = times
            log(f"duplicate n={n}: first={median(times['first']) * 1e3:.3f}ms "
                f"dup={median(times['duplicate']) * 1e3:.3f}ms")
    return out


# ---------------------------------------------------------------- provision_content


def _provision_session(url: str, texts: list[str], group: int, barrier: threading.Barrier,
                       out: list[float], index: int) -> None:
    with connect(url) as conn:
        warm_up(conn, f"p{index}-{uuid.uuid4().hex[:4]}")
        barrier.wait()
        t0 = time.perf_counter()
        if group <= 1:
            for text in texts:
                conn.execute(CONTENT_SQL, (text,))
        else:
            for start in range(0, len(texts), group):
                with conn.transaction():
                    for text in texts[start:start + group]:
                        with conn.transaction():  # savepoint per message, as the worker
                            conn.execute(CONTENT_SQL, (text,))
        out[index] = time.perf_counter() - t0


def bench_provision(stack: Stack, reps: int, events_per_session: int, group: int,
                    log: Callable[[str], None]) -> dict[str, list[float]]:
    """provision_content events/s: 1 session vs 4 sessions on distinct batches.
    group=1: one transaction per call; group>1: that many calls per transaction,
    a savepoint around each (the worker's micro-batch)."""
    essays = 20
    batches_per_session = events_per_session // essays
    rates: dict[str, list[float]] = {"1 session": [], "4 sessions": []}
    with fresh_database(stack, f"prov{group}") as url:
        with connect(url) as conn:
            total_batches = batches_per_session * 5 * reps
            with conn.transaction():
                for b in range(total_batches):
                    conn.execute(REGISTER_SQL, (dumps(registration(f"p-{b}", essays)),))
            conn.execute("VACUUM (ANALYZE)")
        next_batch = 0

        def session_texts() -> list[str]:
            nonlocal next_batch
            bids = [f"p-{b}" for b in range(next_batch, next_batch + batches_per_session)]
            next_batch += batches_per_session
            # content of the batches interleaved, as it arrives from many uploads
            return [dumps(content(bid, i)) for i in range(essays) for bid in bids]

        for rep in range(reps):
            for variant in rotate(list(rates), rep):
                sessions = 1 if variant == "1 session" else 4
                work = [session_texts() for _ in range(sessions)]
                barrier = threading.Barrier(sessions + 1)
                elapsed = [0.0] * sessions
                threads = [threading.Thread(target=_provision_session,
                                            args=(url, work[i], group, barrier, elapsed, i))
                           for i in range(sessions)]
                for t in threads:
                    t.start()
                barrier.wait()
                t0 = time.perf_counter()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                rates[variant].append(sum(len(w) for w in work) / wall)
    log(f"provision group={group}: " + ", ".join(
        f"{v}={median(r):.0f}/s" for v, r in rates.items()))
    return rates


# ---------------------------------------------------------------- auto_explain


@dataclass
class PlanCheck:
    statements: int = 0
    seq_scans: list[str] = field(default_factory=list)
    scans: dict[str, set[str]] = field(default_factory=dict)
    profile: list[tuple[float, str]] = field(default_factory=list)


_SCAN = re.compile(r"((?:Parallel )?(?:Seq|Index|Index Only|Bitmap Heap|Bitmap Index) Scan)"
                   r"(?: using (\S+))? on (\S+)")
_DURATION = re.compile(r"duration: ([0-9.]+) ms")


def _first_query_line(message: str) -> str:
    m = re.search(r"Query Text: (.*)", message)
    text = m.group(1) if m else message.splitlines()[0]
    return " ".join(text.split())[:90]


def check_plans(stack: Stack, log: Callable[[str], None]) -> PlanCheck:
    """auto_explain with nested statements on the seeded tables (SEED_BATCHES batches):
    every statement of every ingest path, after the plans went generic, must probe an
    index; and a profile of register_batch(1000) by statement (log_analyze)."""
    check = PlanCheck()
    notices: list[str] = []
    with fresh_database(stack, "explain") as url, connect(url) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        warm_up(conn, "explain")
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_nested_statements = on")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET client_min_messages = log")

        def every_path(tag: str) -> None:
            bid = f"x-{tag}"
            conn.execute(FAILURE_SQL, (dumps(failure(bid, 0)),))         # pending failure
            conn.execute(CONTENT_SQL, (dumps(content(bid, 0)),))         # pending content
            conn.execute(REGISTER_SQL, (dumps(registration(bid, 4)),))   # registered + reconcile
            conn.execute(REGISTER_SQL, (dumps(registration(bid, 4)),))   # duplicate
            for i in range(1, 4):
                conn.execute(CONTENT_SQL, (dumps(content(bid, i)),))     # assigned, completes
            conn.execute(CONTENT_SQL, (dumps(content(bid, 9)),))         # excess
            conn.execute(CONTENT_SQL, (dumps(content(bid, 9)),))         # duplicate
            conn.execute(FAILURE_SQL, (dumps(failure(bid, 0)),))         # duplicate failure
            conn.execute(FAILURE_SQL, (dumps(failure(bid, 5)),))         # excess failure
            rows = conn.execute("SELECT * FROM els.claim_outbox(100)").fetchall()
            ids = [r[0] for r in rows]
            conn.execute("SELECT els.mark_outbox_published(%s, %s, %s, %s)",
                         (ids, ["t"] * len(ids), [0] * len(ids), list(range(len(ids)))))

        for i in range(6):  # the plans of the outbox functions go generic too
            every_path(f"warm{i}")
        notices.clear()
        every_path("checked")
        for message in notices:
            if "Query Text" not in message:
                continue
            check.statements += 1
            query = _first_query_line(message)
            for kind, index, rel in _SCAN.findall(message):
                if not rel.startswith("els."):
                    rel = "els." + rel
                check.scans.setdefault(rel, set()).add(kind + (f" ({index})" if index else ""))
                if kind.endswith("Seq Scan"):
                    check.seq_scans.append(f"{rel}: {query}")

        # profile: register_batch with 1000 essays, every nested statement timed
        conn.execute("SET auto_explain.log_analyze = on")
        conn.execute("SET auto_explain.log_timing = off")
        for i in range(3):
            notices.clear()
            conn.execute(REGISTER_SQL, (dumps(registration(f"prof-{i}", 1000)),))
        for message in notices:
            m = _DURATION.search(message)
            if m and "Query Text" in message:
                check.profile.append((float(m.group(1)), _first_query_line(message)))
    log(f"auto_explain: {check.statements} nested statements, "
        f"{len(check.seq_scans)} seq scans on els tables (background {SEED_BATCHES} batches)")
    return check
