"""Shared plumbing of the benchmark: the stack, fresh databases, event builders, timing.

Every scenario runs in a database of its own, cloned from one migrated and seeded
template (``els_bench_template``), so that table sizes are the same at the start of
every scenario: the template holds SEED_BATCHES registered batches of SEED_ESSAYS
essays, most of them filled, some complete, plus an outbox, and is ANALYZEd, so
plans are chosen against realistic sizes, not empty tables.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

# the envelope and topic names are the tests' (tests/events.py); the payloads differ
from testkit import databases
from testkit.events import TOPIC_CONTENT, TOPIC_FAILED, TOPIC_REGISTERED, envelope
from testkit.stack import Stack, discover

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEMPLATE = "els_bench_template"
DB_PREFIX = "els_bench_"
SEED_BATCHES = 1000
SEED_ESSAYS = 20

def stack_from_env() -> Stack:
    """The local stack of scripts/stack.sh (started if needed), or ELS_PG_ADMIN_URL +
    ELS_KAFKA_BOOTSTRAP from the environment when both are set."""
    admin, kafka = os.environ.get("ELS_PG_ADMIN_URL"), os.environ.get("ELS_KAFKA_BOOTSTRAP")
    if admin and kafka:
        return Stack(admin, admin.rsplit("/", 1)[0] + "/els", kafka)
    return discover()


# ---------------------------------------------------------------- events


def essay_ids(batch_id: str, n: int) -> list[str]:
    return [f"{batch_id}-e{i:05d}" for i in range(n)]


def registration(batch_id: str, n: int, class_id: str | None = None) -> dict[str, Any]:
    return envelope(TOPIC_REGISTERED, source_service="bench", data={
        "entity_id": batch_id,
        "expected_essay_count": n,
        "essay_ids": essay_ids(batch_id, n),
        "course_code": "ENG5",
        "user_id": "user-bench",
        "org_id": None,
        "class_id": class_id,
        "student_prompt_ref": None,
        "metadata": {},
    })


def content(batch_id: str, i: int) -> dict[str, Any]:
    tsid = f"{batch_id}-t{i:05d}"
    return envelope(TOPIC_CONTENT, source_service="bench", data={
        "entity_id": batch_id,
        "text_storage_id": tsid,
        "file_upload_id": f"{batch_id}-u{i:05d}",
        "original_file_name": f"essay-{i}.docx",
        "raw_file_storage_id": f"raw-{tsid}",
        "file_size_bytes": 20480,
        "content_md5_hash": "d41d8cd98f00b204e9800998ecf8427e",
    })


def failure(batch_id: str, i: int) -> dict[str, Any]:
    return envelope(TOPIC_FAILED, source_service="bench", data={
        "entity_id": batch_id,
        "file_upload_id": f"{batch_id}-f{i:05d}",
        "original_file_name": f"broken-{i}.pdf",
        "validation_error_code": "TEXT_EXTRACTION_FAILED",
        "validation_error_detail": {"page": 1},
    })


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


# ---------------------------------------------------------------- databases


def _admin(stack: Stack) -> psycopg.Connection:
    return psycopg.connect(stack.admin_url, autocommit=True)


def template_exists(stack: Stack) -> bool:
    return databases.exists(stack, TEMPLATE)


def build_template(stack: Stack, log: Callable[[str], None]) -> None:
    """(Re)creates the migrated, seeded template database."""
    with _admin(stack) as conn:
        # leftovers of an interrupted earlier run
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "s%",)
        ).fetchall():
            databases.drop_database(conn, name)
    databases.build_template(stack, TEMPLATE, lambda url: _seed(url, log))


def _seed(url: str, log: Callable[[str], None]) -> None:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        # Realistic background: SEED_BATCHES batches of SEED_ESSAYS essays; 80% of them
        # get all their uploads (complete), the rest three quarters (open), so the
        # partial "empty slot" index holds a realistic mix and the outbox has history;
        # one batch in ten had a validation failure; some uploads wait for batches not
        # registered yet (pending).
        with conn.transaction():
            for b in range(SEED_BATCHES):
                bid = f"seed-{b:05d}"
                conn.execute("SELECT els.register_batch(%s::jsonb)",
                             (dumps(registration(bid, SEED_ESSAYS)),))
                filled = SEED_ESSAYS if b % 5 else SEED_ESSAYS * 3 // 4
                for i in range(filled):
                    if b % 10 == 1 and i == 0:  # some uploads failed validation
                        conn.execute("SELECT els.record_validation_failure(%s::jsonb)",
                                     (dumps(failure(bid, i)),))
                    else:
                        conn.execute("SELECT els.provision_content(%s::jsonb)",
                                     (dumps(content(bid, i)),))
            for b in range(SEED_BATCHES // 10):  # uploads of batches not registered yet
                bid = f"seed-unregistered-{b:05d}"
                conn.execute("SELECT els.provision_content(%s::jsonb)", (dumps(content(bid, 0)),))
                conn.execute("SELECT els.record_validation_failure(%s::jsonb)",
                             (dumps(failure(bid, 1)),))
            # purged history: batches completed a day ago and purged, so that the
            # tombstones the ingest functions probe are a seeded table too
            for b in range(SEED_BATCHES // 4):
                bid = f"seed-purged-{b:05d}"
                conn.execute("SELECT els.register_batch(%s::jsonb)", (dumps(registration(bid, 1)),))
                conn.execute("SELECT els.provision_content(%s::jsonb)", (dumps(content(bid, 0)),))
            conn.execute("UPDATE els.batch_tracker SET completed_at = now() - interval '1 day'"
                         " WHERE batch_id LIKE 'seed-purged-%'")
        conn.execute("UPDATE els.event_outbox SET published_at = now()")
        conn.execute("SELECT els.purge_history(interval '12 hours')")
        conn.execute("VACUUM (ANALYZE)")
    log(f"template {TEMPLATE}: {SEED_BATCHES} batches x {SEED_ESSAYS} essays seeded "
        f"in {time.perf_counter() - t0:.1f}s")


@contextmanager
def fresh_database(stack: Stack, label: str) -> Iterator[str]:
    """A database cloned from the template for one scenario; dropped afterwards."""
    with databases.clone(stack, TEMPLATE, f"{DB_PREFIX}s_{label}_{uuid.uuid4().hex[:8]}") as url:
        yield url


def drop_template(stack: Stack) -> None:
    databases.drop_template(stack, TEMPLATE)


# ---------------------------------------------------------------- timing


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (a worker, a PostgreSQL backend, the broker) and of
    its reaped children, from /proc; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min..max of the repetitions relative to their median, e.g. '±4%'."""
    m = statistics.median(values)
    if m == 0 or len(values) < 2:
        return ""
    dev = max(abs(max(values) - m), abs(m - min(values))) / m
    return f"±{dev * 100:.0f}%"


def rotate(items: list[Any], k: int) -> list[Any]:
    """The variants in a different order each repetition, to cancel drift and noise."""
    k %= len(items)
    return items[k:] + items[:k]


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])
