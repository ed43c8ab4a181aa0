"""Per-event calls as the tables grow: a git revision's functions against the working
tree's, side by side, each in one long session on a database that starts empty.

    .venv/bin/python -m bench.per_event_growth [--base REV] [--steps N] [--batches N]

Each step registers ``--batches`` batches of 20 essays and provisions every essay
(``register_batch`` then 20 ``provision_content`` calls per batch, autocommit), on both
databases in turn, so the machine's drift falls on both alike. A flat column is the
point: a statement whose plan reads a whole table shows as a cost that grows step by
step (the defect of issue 15's first set-based core: a hashed SubPlan over every slot).
The session is never restarted, as a worker's is not: plans cached while the tables were
empty are the ones it keeps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path

import psycopg
from psycopg import sql

from bench import common
from bench.common import content, dumps, registration
from testkit import databases
from testkit.db import load_functions

ESSAYS = 20


def _empty_database(stack: common.Stack, sql_dir: Path | None) -> str:
    """A migrated, empty database; with ``sql_dir``, its functions are those files'."""
    import els_migrate

    name = f"{common.DB_PREFIX}growth_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = stack.url_for(name)
    els_migrate.apply_migrations(url)
    if sql_dir is not None:
        load_functions(url, sql_dir)
    return name


def _step(conn: psycopg.Connection, prefix: str, batches: int) -> float:
    """Milliseconds per call over one step."""
    calls = 0
    started = time.perf_counter()
    for b in range(batches):
        bid = f"{prefix}-{b}"
        conn.execute("SELECT els.register_batch(%(event)s::jsonb)",
                     {"event": dumps(registration(bid, ESSAYS))})
        calls += 1
        for i in range(ESSAYS):
            conn.execute("SELECT els.provision_content(%(event)s::jsonb)",
                         {"event": dumps(content(bid, i))})
            calls += 1
    return (time.perf_counter() - started) * 1000 / calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", default="main", help="git revision whose sql/ is the baseline")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batches", type=int, default=150, help="batches per step")
    args = ap.parse_args(argv)
    stack = common.stack_from_env()
    with tempfile.TemporaryDirectory(prefix="els-growth-") as tmp:
        archive = subprocess.run(["git", "archive", "--format=tar", args.base, "sql"],
                                 cwd=common.ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        variants = {f"base {args.base}": Path(tmp) / "sql", "working tree": None}
        names = {label: _empty_database(stack, d) for label, d in variants.items()}
        try:
            conns = {label: psycopg.connect(stack.url_for(n), autocommit=True)
                     for label, n in names.items()}
            rows = []
            for step in range(args.steps):
                order = list(conns) if step % 2 == 0 else list(conns)[::-1]
                ms = {label: _step(conns[label], f"g{step}", args.batches) for label in order}
                base, tree = ms[f"base {args.base}"], ms["working tree"]
                rows.append([f"{(step + 1) * args.batches:,}", f"{base:.2f}", f"{tree:.2f}",
                             f"{tree / base:.2f}x"])
                print(f"[growth] step {step + 1}: base {base:.2f} ms/call, "
                      f"working tree {tree:.2f} ms/call", file=sys.stderr, flush=True)
            for conn in conns.values():
                conn.close()
        finally:
            with psycopg.connect(stack.admin_url, autocommit=True) as conn:
                for n in names.values():
                    databases.drop_database(conn, n)
    print(f"register_batch + {ESSAYS} provision_content per batch, one session each, "
          "autocommit\n")
    print(common.table(["batches so far", f"base {args.base} ms/call", "working tree ms/call",
                        "ratio"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
