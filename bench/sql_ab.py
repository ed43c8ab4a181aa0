"""The direct-SQL A/B: a git revision's functions against the working tree's, side by
side, on the e2e stream, with no Kafka and no worker in between.

    .venv/bin/python -m bench.sql_ab [--base REV] [--reps N] [--batches N] [--modes set,...]

Each repetition applies the same stream (registrations of 10-essay batches, each
followed by its 10 contents) once per variant, in micro-batches of the worker's size,
each variant in its own session on its own fresh clone of the seeded template. The
variants run side by side, interleaved micro-batch by micro-batch (the order rotating
with every micro-batch), so that whatever the machine does meanwhile (the other
tenant, the page cache, a checkpoint) falls on all of them alike within a second,
where one run after the other let it fall on whichever ran then. A variant is a
revision (``base``: its sql/ loaded into the database; ``aa``: the same again, an A/A
arm whose distance from ``base`` is the run's resolution; ``tree``: the working
tree's) and a mode (``set``: one ``els.apply_events`` call per micro-batch, as the
worker calls it; ``per_event``: one pipelined call per event, as the worker before the
set-based core did; ``floor``: the same rows by plain INSERT/UPDATE, no rules). The
first quarter of the stream warms the sessions up (generic plans); then the rest is
timed: wall time of each call and each server process's CPU time (from /proc: the
stack runs on this machine), per event, medians over the repetitions, and each
variant's ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg

from bench import common, e2e
from bench.profile import _apply
from testkit.db import load_functions

Chunks = list[list[tuple[str, str]]]


def _run(stack: common.Stack, variants: list[str], dirs: dict[str, Path | None],
         chunks: Chunks, warm: int, rep: int) -> dict[str, tuple[float, float]]:
    """Seconds of wall time and of server CPU per variant for the measured part of the
    stream, the variants interleaved micro-batch by micro-batch."""
    with ExitStack() as stack_of:
        conns: dict[str, psycopg.Connection] = {}
        pids: dict[str, int] = {}
        slots: dict[str, dict[str, list[str]]] = {}
        for variant in variants:
            revision, _ = variant.split(":")
            url = stack_of.enter_context(common.fresh_database(stack, "sqlab"))
            sql_dir = dirs[revision]
            if sql_dir is not None:
                load_functions(url, sql_dir)
            conns[variant] = stack_of.enter_context(psycopg.connect(url, autocommit=True))
            row = conns[variant].execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pids[variant], slots[variant] = row[0], {}
        wall = dict.fromkeys(variants, 0.0)
        cpu0: dict[str, float] = {}
        for i, chunk in enumerate(chunks):
            if i == warm:
                cpu0 = {v: common.cpu_seconds(pids[v]) for v in variants}
            for variant in common.rotate(variants, i + rep):
                t0 = time.perf_counter()
                _apply(conns[variant], chunk, variant.split(":")[1], slots[variant])
                if i >= warm:
                    wall[variant] += time.perf_counter() - t0
        return {v: (wall[v], common.cpu_seconds(pids[v]) - cpu0[v]) for v in variants}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main", help="git revision to compare against")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", type=int, default=1200)
    ap.add_argument("--order", choices=("registration_first", "content_first"),
                    default="registration_first",
                    help="each batch's registration before its contents, as produced, or "
                         "contents first, as a worker mostly meets them (e2e.content_first)")
    ap.add_argument("--modes", default="base:set,aa:set,tree:set,tree:floor",
                    help="variants, each REVISION:MODE with REVISION base, aa or tree")
    args = ap.parse_args()

    stack = common.stack_from_env()
    common.build_template(stack, print)
    stream = e2e.build_stream(args.batches)
    messages = [(t, v) for t, _, v in stream.messages]
    if args.order == "content_first":
        messages = e2e.content_first(messages)
    chunks = [messages[s:s + e2e.GROUP] for s in range(0, len(messages), e2e.GROUP)]
    warm = max(1, len(chunks) // 4)
    measured = sum(len(c) for c in chunks[warm:])
    variants = args.modes.split(",")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="els-sqlab-") as tmp:
        archive = subprocess.run(["git", "archive", args.base, "sql"], cwd=common.ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        dirs = {"base": Path(tmp) / "sql", "aa": Path(tmp) / "sql", "tree": None}
        for rep in range(args.reps):
            for variant, result in _run(stack, variants, dirs, chunks, warm, rep).items():
                results[variant].append(result)
                wall, cpu = result
                print(f"rep {rep + 1} {variant}: {wall * 1e6 / measured:.0f} µs/event wall, "
                      f"{cpu * 1e6 / measured:.0f} µs/event server CPU", flush=True)
    print(f"\n{measured} events measured per run ({args.batches} batches, {args.order}, "
          f"micro-batches of {e2e.GROUP}, {warm} warm-up), medians of {args.reps}; "
          f"base = {args.base}")
    print(f"{'variant':<16} {'wall µs/event':>14} {'server CPU µs/event':>20} {'ratio (CPU)':>12}")
    first = None
    for variant in variants:
        wall = statistics.median(w for w, _ in results[variant]) * 1e6 / measured
        cpu = statistics.median(c for _, c in results[variant]) * 1e6 / measured
        first = first or cpu
        print(f"{variant:<16} {wall:14.0f} {cpu:20.0f} {cpu / first:11.2f}x")


if __name__ == "__main__":
    main()
