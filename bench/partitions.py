"""Partitions behind PL/Proxy (SPEC 9, issue 27): the worker's micro-batch entry on one
database against the same stream through a proxy over 1, 2 and 4 partitions, side by
side, with no Kafka and no worker in between.

    .venv/bin/python -m bench.partitions [--batches N] [--reps N] [--partitions 1,2,4]
                                         [--reuse-template]

Each repetition applies the e2e stream (registrations of 10-essay batches, each
followed by its 10 contents) once per arm, in micro-batches of the worker's size, one
``els.apply_events(jsonb)`` call per micro-batch, each arm in its own session: arm
``direct`` on one fresh clone of the seeded template, arm ``proxy-N`` on a proxy
database built over N partitions, each a fresh clone of the same template
(testkit.partitions.sharded), so that every database starts with the same table sizes.
The proxy splits each micro-batch by batch id (PL/Proxy SPLIT, sql/proxy/020_ingest.sql)
and every partition applies its share with its own ``els.apply_events``.

The arms run interleaved micro-batch by micro-batch (the order rotating with every
micro-batch), as bench/sql_ab.py does, so that what the shared machine does meanwhile
falls on all of them alike. The first quarter of the stream warms the sessions up
(generic plans, and PL/Proxy's connections to the partitions opened); then the rest is
timed: the wall time of the calls (one client: throughput is events / wall), and the
CPU time (from /proc: the stack runs on this machine) of every backend of the arm's
databases, found in pg_stat_activity: the client's own (on the proxy, or on the one
database of ``direct``) and those PL/Proxy opens on the partitions (with the
partitions' calls to each other for the essay-id claims). Printed per arm: medians over
the repetitions, per event, proxy-side and partition-side CPU apart, and each arm's
ratio to the first; and a check that every arm registered and completed the stream's
batches, as many as ``direct``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench import common, e2e
from bench.profile import _apply
from testkit.partitions import sharded

Chunks = list[list[tuple[str, str]]]

BACKENDS = """
SELECT pid, datname FROM pg_stat_activity
 WHERE datname = ANY(%(names)s::text[]) AND backend_type = 'client backend'
"""

OUTCOME = """
SELECT count(*), count(*) FILTER (WHERE completed_at IS NOT NULL)
  FROM els.batch_tracker WHERE batch_id = ANY(%(batches)s::text[])
"""


@dataclass
class Arm:
    """One arm's databases: the one the client calls (the proxy, or the database of
    ``direct``), and those holding the data (the partitions, or that same database)."""

    name: str
    client_url: str
    data_urls: list[str]

    @property
    def proxied(self) -> bool:
        return self.client_url not in self.data_urls


@dataclass
class Measure:
    """Seconds of one arm's measured part of one repetition."""

    wall: float = 0.0
    proxy_cpu: float = 0.0
    partition_cpu: float = 0.0
    backends: dict[str, int] = field(default_factory=dict)  # side -> how many
    gone: int = 0  # backends that ended during the measured part (their CPU is lost)


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def open_arms(stack: common.Stack, counts: list[int], stack_of: ExitStack) -> list[Arm]:
    """Fresh databases for every arm, dropped when ``stack_of`` closes."""
    direct = stack_of.enter_context(common.fresh_database(stack, "partitions"))
    arms = [Arm("direct", direct, [direct])]
    for count in counts:
        topology = stack_of.enter_context(sharded(stack, common.TEMPLATE, count))
        arms.append(Arm(f"proxy-{count}", topology.proxy_url, topology.partition_urls))
    return arms


def backends(admin: psycopg.Connection, arm: Arm) -> dict[int, str]:
    """The arm's backends, pid -> side ("proxy" or "partition")."""
    proxy = dbname(arm.client_url) if arm.proxied else None
    names = [dbname(u) for u in arm.data_urls] + ([proxy] if proxy else [])
    rows = admin.execute(BACKENDS, {"names": names}).fetchall()
    return {pid: "proxy" if datname == proxy else "partition" for pid, datname in rows}


def cpu_by_side(pids: dict[int, str], since: dict[int, float]) -> tuple[dict[str, float], int]:
    """CPU seconds per side of the backends ``pids`` since ``since`` (0 for a backend
    that started after it), and how many of them have ended (not counted)."""
    spent, gone = {"proxy": 0.0, "partition": 0.0}, 0
    for pid, side in pids.items():
        if not Path(f"/proc/{pid}").exists():  # (a live one may have used 0 ticks)
            gone += 1
            continue
        spent[side] += common.cpu_seconds(pid) - since.get(pid, 0.0)
    return spent, gone


def run_rep(stack: common.Stack, counts: list[int], chunks: Chunks, warm: int, rep: int,
            batches: list[str]) -> dict[str, tuple[Measure, tuple[int, int]]]:
    """One repetition: every arm's measured seconds and its outcome (stream batches
    registered, completed), the arms interleaved micro-batch by micro-batch."""
    with ExitStack() as stack_of:
        arms = open_arms(stack, counts, stack_of)
        admin = stack_of.enter_context(psycopg.connect(stack.admin_url, autocommit=True))
        conns = {a.name: stack_of.enter_context(psycopg.connect(a.client_url, autocommit=True))
                 for a in arms}
        slots: dict[str, dict[str, list[str]]] = {a.name: {} for a in arms}
        measures = {a.name: Measure() for a in arms}
        pids: dict[str, dict[int, str]] = {}
        cpu0: dict[str, dict[int, float]] = {}
        for i, chunk in enumerate(chunks):
            if i == warm:
                pids = {a.name: backends(admin, a) for a in arms}
                cpu0 = {n: {pid: common.cpu_seconds(pid) for pid in p} for n, p in pids.items()}
            for arm in common.rotate(arms, i + rep):
                t0 = time.perf_counter()
                _apply(conns[arm.name], chunk, "set", slots[arm.name])
                if i >= warm:
                    measures[arm.name].wall += time.perf_counter() - t0
        for arm in arms:
            # a backend PL/Proxy opened after the warm-up counts from its start
            seen = pids[arm.name] | backends(admin, arm)
            spent, gone = cpu_by_side(seen, cpu0[arm.name])
            m = measures[arm.name]
            m.gone = gone
            m.proxy_cpu, m.partition_cpu = spent["proxy"], spent["partition"]
            m.backends = {side: list(seen.values()).count(side) for side in ("proxy", "partition")}
        return {a.name: (measures[a.name], outcome(a, batches)) for a in arms}


def outcome(arm: Arm, batches: list[str]) -> tuple[int, int]:
    """The stream's batches registered and completed, summed over the arm's partitions."""
    registered = completed = 0
    for url in arm.data_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(OUTCOME, {"batches": batches}).fetchone()
        assert row is not None
        registered, completed = registered + row[0], completed + row[1]
    return registered, completed


def check_outcomes(outcomes: dict[str, tuple[int, int]], expected: int) -> None:
    """Every arm registered and completed every batch of the stream, as ``direct`` did."""
    direct = outcomes["direct"]
    wrong = {n: o for n, o in outcomes.items() if o != direct or o != (expected, expected)}
    if wrong:
        raise RuntimeError(f"outcomes differ (registered, completed) of {expected} batches: "
                           f"direct {direct}, {wrong}")


def report(results: dict[str, list[Measure]], measured: int) -> str:
    """The table: medians per event over the repetitions, and ratios to the first arm."""
    def per_event(values: list[float]) -> float:
        return statistics.median(values) * 1e6 / measured

    rows, first = [], None
    for name, reps in results.items():
        wall = per_event([m.wall for m in reps])
        proxy = per_event([m.proxy_cpu for m in reps])
        part = per_event([m.partition_cpu for m in reps])
        total = per_event([m.proxy_cpu + m.partition_cpu for m in reps])
        first = first or (wall, total)
        rows.append([name, f"{wall:.0f}", f"{1e6 / wall:,.0f}",
                     f"{proxy:.0f}" if proxy else "-", f"{part:.0f}", f"{total:.0f}",
                     f"{wall / first[0]:.2f}x", f"{total / first[1]:.2f}x",
                     common.spread([m.wall for m in reps])])
    return common.table(["arm", "wall µs/event", "events/s", "proxy CPU µs/event",
                         "partition CPU µs/event", "total CPU µs/event", "wall ratio",
                         "CPU ratio", "wall spread"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", type=int, default=1200)
    ap.add_argument("--partitions", default="1,2,4",
                    help="the proxy arms' partition counts (powers of two), comma-separated")
    ap.add_argument("--reuse-template", action="store_true",
                    help="keep the seeded template of an earlier run (same migrations only)")
    args = ap.parse_args()
    counts = [int(c) for c in args.partitions.split(",")]

    stack = common.stack_from_env()
    if not (args.reuse_template and common.template_exists(stack)):
        common.build_template(stack, print)
    stream = e2e.build_stream(args.batches)
    messages = [(t, v) for t, _, v in stream.messages]
    chunks = [messages[s:s + e2e.GROUP] for s in range(0, len(messages), e2e.GROUP)]
    warm = max(1, len(chunks) // 4)
    measured = sum(len(c) for c in chunks[warm:])
    results: dict[str, list[Measure]] = {}
    for rep in range(args.reps):
        t0 = time.monotonic()
        by_arm = run_rep(stack, counts, chunks, warm, rep, stream.batches)
        check_outcomes({n: o for n, (_, o) in by_arm.items()}, len(stream.batches))
        for name, (m, _) in by_arm.items():
            results.setdefault(name, []).append(m)
            print(f"rep {rep + 1} {name}: {m.wall * 1e6 / measured:.0f} µs/event wall, CPU "
                  f"{m.proxy_cpu * 1e6 / measured:.0f} proxy + "
                  f"{m.partition_cpu * 1e6 / measured:.0f} partitions µs/event "
                  f"(backends {m.backends}, ended {m.gone})", flush=True)
        print(f"rep {rep + 1}: {time.monotonic() - t0:.0f} s, every arm registered and "
              f"completed all {len(stream.batches)} batches", flush=True)
    print(f"\n{measured} events measured per arm and repetition ({args.batches} batches, "
          f"micro-batches of {e2e.GROUP}, {warm} warm-up), medians of {args.reps}")
    print(report(results, measured))


if __name__ == "__main__":
    main()
