"""`make bench`: every comparison side by side in one run, as ratios, median of repetitions.

    .venv/bin/python -m bench.run [--reps N] [--quick] [--skip-e2e] [--e2e-batches N]
                                  [--markdown FILE] [--plots DIR | --no-plots]

Also writes the raw results (DIR/bench_results.json) and PNG plots of them into DIR
(default docs/; bench/plots.py: throughput per variant, latency distribution, register
cost per essay vs batch size).

Runs against the local stack of scripts/stack.sh (started if needed), or the one named
by ELS_PG_ADMIN_URL + ELS_KAFKA_BOOTSTRAP. Creates and drops its own databases
(els_bench_*) and topics (bench<hex>.*); touches nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import psycopg

from bench import common, e2e, plots, sql_bench
from bench.common import fmt_time, median, spread, table


def machine(stack: common.Stack) -> str:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    with psycopg.connect(stack.admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name)"
            " FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync',"
            " 'work_mem', 'jit')").fetchone()
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, "
            f"PostgreSQL {row[0] if row else '?'} ({settings[0] if settings else ''}), "
            f"Python {platform.python_version()}, psycopg {psycopg.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions of SQL scenarios (median)")
    ap.add_argument("--e2e-reps", type=int, default=3, help="repetitions of end-to-end runs")
    ap.add_argument("--e2e-batches", type=int, default=4546,
                    help="10-essay batches in the end-to-end stream (11 events each)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller stream")
    ap.add_argument("--skip-e2e", action="store_true", help="SQL scenarios only")
    ap.add_argument("--markdown", type=Path, help="also write the report to this file")
    ap.add_argument("--plots", type=Path, default=plots.DOCS,
                    help="directory for bench_results.json and the PNG plots (default docs/)")
    ap.add_argument("--no-plots", action="store_true", help="write no results file or plots")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.e2e_reps, args.e2e_batches = 3, 1, 910
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    stack = common.stack_from_env()
    out: list[str] = []
    results: dict[str, object] = {
        "machine": machine(stack),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {"reps": args.reps, "e2e_reps": args.e2e_reps,
                 "e2e_batches": args.e2e_batches, "quick": args.quick},
    }
    out.append(f"Machine: {results['machine']}")
    out.append(f"Background: every scenario starts from a fresh database cloned from a template "
               f"with {common.SEED_BATCHES} registered batches of {common.SEED_ESSAYS} essays.")
    common.build_template(stack, log)
    try:
        # ---- register_batch vs floor vs old way
        reg = sql_bench.bench_register(stack, [10, 100, 1000, 10000], args.reps, log)
        results["register"] = [{"essays": r.n, "per_batch_s": r.per_batch} for r in reg]
        rows = []
        for r in reg:
            f, c, i = (median(r.per_batch[k]) for k in
                       ("register_batch", "COPY floor", "INSERT per essay"))
            rows.append([
                str(r.n), fmt_time(f), fmt_time(f / r.n), spread(r.per_batch["register_batch"]),
                fmt_time(c), fmt_time(i), f"{f / c:.2f}x", f"{i / f:.1f}x",
            ])
        out.append("\n### register_batch against the COPY floor and one INSERT per essay\n")
        out.append(table(["essays", "register_batch / batch", "/ essay", "spread",
                          "COPY floor / batch", "INSERT per essay / batch",
                          "register ÷ COPY", "INSERT-per-essay ÷ register"], rows))

        # ---- duplicate vs first
        dup = sql_bench.bench_duplicate(stack, [10, 100, 1000], args.reps, log)
        rows = [[str(n), fmt_time(median(t["first"])), fmt_time(median(t["duplicate"])),
                 f"{median(t['duplicate']) / median(t['first']):.2f}x"]
                for n, t in dup.items()]
        out.append("\n### duplicate registration against first registration (per call)\n")
        out.append(table(["essays", "first", "duplicate", "duplicate ÷ first"], rows))

        # ---- provision_content 1 vs 4 sessions
        rows = []
        for group, label in ((1, "one call per transaction"),
                             (100, "100 calls per transaction, savepoint each")):
            prov = sql_bench.bench_provision(stack, max(3, args.reps - 2), 1000, group, log)
            one, four = median(prov["1 session"]), median(prov["4 sessions"])
            rows.append([label, f"{one:,.0f}/s", f"{four:,.0f}/s", f"{four / one:.2f}x"])
        out.append("\n### provision_content throughput, distinct batches (events/s)\n")
        out.append(table(["mode", "1 session", "4 sessions", "4 ÷ 1"], rows))

        # ---- plans
        check = sql_bench.check_plans(stack, log)
        out.append("\n### nested plans (auto_explain, generic plans, seeded tables)\n")
        out.append(f"{check.statements} nested statements checked; seq scans on els tables: "
                   + ("none" if not check.seq_scans else "; ".join(check.seq_scans)))
        prof = sorted(check.profile, reverse=True)
        total = max((d for d, q in prof if q.startswith("SELECT els.register_batch")), default=0)
        if total:
            out.append("\nregister_batch(1000) by nested statement (auto_explain, log_analyze, "
                       "3 calls, top 6):\n")
            out.append(table(["ms", "share", "statement"],
                             [[f"{d:.2f}", f"{d / total * 100:.0f}%", q] for d, q in prof[:6]]))

        # ---- end to end
        if not args.skip_e2e:
            stream = e2e.build_stream(args.e2e_batches)
            logs = e2e.log_dir()
            log(f"end to end: {len(stream.messages)} events, worker logs in {logs}")
            # label -> (workers or sessions, partitions, extra worker env); "ceiling" = direct SQL
            variants: dict[str, tuple[int, int, dict[str, str]]] = {
                "1 worker, 2 partitions": (1, 2, {}),
                "2 workers, 2 partitions": (2, 2, {}),
                "2 workers, 4 partitions": (2, 4, {}),
                "1 worker, 2 partitions, ELS_LOG_EVENTS=false (diagnostic)":
                    (1, 2, {"ELS_LOG_EVENTS": "false"}),
                "ceiling 1 session": (1, 0, {}),
                "ceiling 2 sessions": (2, 0, {}),
                "floor 2 sessions (plain INSERT/UPDATE, no validation)": (2, 0, {"mode": "floor"}),
            }
            runs: dict[str, list[e2e.RunResult]] = {v: [] for v in variants}
            for rep in range(args.e2e_reps):
                for v in common.rotate(list(variants), rep):
                    n, parts, extra = variants[v]
                    res = (e2e.run_workers(stack, stream, n, parts, logs, extra) if parts
                           else e2e.run_ceiling(stack, stream, n, extra.get("mode", "set")))
                    runs[v].append(res)
                    log(f"e2e {v}: {res.rate:,.0f} events/s ({res.seconds:.1f}s; steady "
                        f"{res.steady_rate:,.0f}/s; cpu "
                        + ", ".join(f"{k} {x:.1f}s" for k, x in res.cpu.items()) + ")")
            results["e2e_events"] = len(stream.messages)
            results["e2e"] = {
                v: {"rates": [r.rate for r in rs], "steady_rates": [r.steady_rate for r in rs],
                    "latency_percentiles_ms": plots.latency_percentiles(
                        [x for r in rs for x in r.latencies_ms])}
                for v, rs in runs.items()}
            e2e_rate = {v: median([r.rate for r in rs]) for v, rs in runs.items()}
            steady = {v: median([r.steady_rate for r in rs]) for v, rs in runs.items()}
            events = len(stream.messages)

            def per_event(v: str, key: str) -> str:
                vals = [r.cpu.get(key, 0.0) for r in runs[v]]
                return f"{median(vals) / events * 1e6:.0f}"

            rows = []
            for v, (n, parts, _) in variants.items():
                ceiling = f"ceiling {n} session" + ("s" if n > 1 else "")
                busy = median([r.cpu["machine busy"] / r.cpu["machine total"] for r in runs[v]])
                if parts:
                    rows.append([
                        v, f"{e2e_rate[v]:,.0f}/s", f"{steady[v]:,.0f}/s",
                        f"{median([r.seconds for r in runs[v]]):.1f}s",
                        f"{e2e_rate[v] / e2e_rate[ceiling] * 100:.0f}% of {ceiling}",
                        per_event(v, "their PG backends"), per_event(v, "worker processes"),
                        per_event(v, "Kafka broker"), f"{busy * 100:.0f}%"])
                else:
                    rows.append([
                        v + " (direct SQL, no Kafka)", f"{e2e_rate[v]:,.0f}/s", "",
                        f"{median([r.seconds for r in runs[v]]):.1f}s", "", "",
                        per_event(v, "client processes"), "", f"{busy * 100:.0f}%"])
            out.append(f"\n### end to end through Kafka: {events:,} events "
                       f"({len(stream.batches):,} batches of {e2e.ESSAYS} essays + their content), "
                       f"pre-loaded; worker start -> last outbox row published\n")
            out.append(table(["variant", "events/s", "steady events/s", "wall", "vs ceiling",
                              "PG backend CPU µs/event", "worker (client) CPU µs/event",
                              "broker CPU µs/event", "machine busy"], rows))
            scale_w = e2e_rate["2 workers, 2 partitions"] / e2e_rate["1 worker, 2 partitions"]
            scale_p = e2e_rate["2 workers, 4 partitions"] / e2e_rate["1 worker, 2 partitions"]
            scale_c = e2e_rate["ceiling 2 sessions"] / e2e_rate["ceiling 1 session"]
            out.append(f"\nScaling: 2 workers ÷ 1 worker: {scale_w:.2f}x (2 partitions), "
                       f"{scale_p:.2f}x (4 partitions); ceiling 2 ÷ 1 sessions: {scale_c:.2f}x. "
                       f"steady = from the first outbox row written (worker start-up excluded). "
                       f"machine busy = share of both cores busy during the run, anything "
                       f"running on the machine included.")
            floor = e2e_rate["floor 2 sessions (plain INSERT/UPDATE, no validation)"]
            out.append(f"\nAgainst the floor (the same rows by plain set-based INSERT/UPDATE, "
                       f"2 sessions): ceiling 2 sessions "
                       f"{e2e_rate['ceiling 2 sessions'] / floor:.2f}x "
                       f"of it, 2 workers on 4 partitions "
                       f"{e2e_rate['2 workers, 4 partitions'] / floor:.2f}x.")
    finally:
        common.drop_template(stack)
    out.append(f"\n(bench took {time.monotonic() - started:.0f}s; medians of {args.reps} "
               f"repetitions for SQL, {args.e2e_reps} for end to end; variants interleaved)")
    report = "\n".join(out)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n", encoding="utf-8")
    if not args.no_plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        (args.plots / plots.RESULTS_FILE.name).write_text(
            json.dumps(results, indent=1) + "\n", encoding="utf-8")
        for path in plots.write_plots(results, args.plots):
            log(f"plot {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
