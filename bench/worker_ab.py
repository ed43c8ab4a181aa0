"""A/B of the worker: a git revision's worker and SQL against the working tree's, end to
end, with an A/A beside it.

    .venv/bin/python -m bench.worker_ab --base REV [--batches N] [--reps N]
                                        [--variants 1w2p,2w4p] [--new-env K=V,...] [--no-aa]

The same pre-loaded stream and seeded template as `make bench`'s end-to-end part
(bench/e2e.py). The baseline is a checkout of REV's worker.py, els_worker/ and sql/
(byte-compiled before the first run, as the working tree is): its worker runs from there
(its own package first on sys.path) against a database whose functions are REV's sql/
(the tables are the template's: no migration between them).

What makes two identical sides differ, and what this does about it:
- start-up (Python, the group join and its rebalances: seconds of a ten-second run):
  the rate that decides is the *middle* one, the outbox from 10% to 90% of its rows;
  the rate from the workers' start is printed beside it;
- the first run of a session (cold page cache, the broker's and the template's first
  use): one warm-up run, not counted;
- drift and the other tenant's load: the arms run in a different order every repetition
  (a Latin square: each arm first, middle and last equally often), medians per arm;
- the baseline's own checkout: the A/A arm is a second, separate checkout of REV, run
  exactly as the baseline is. Its ratio to the baseline is the resolution of the run:
  an A/B ratio inside the A/A's distance from 1.00x is noise.
Its own template and databases (els_wab_*), so it can run beside `make bench`.
"""

from __future__ import annotations

import argparse
import compileall
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, e2e
from bench.common import median

SHAPES = {"1w2p": (1, 2), "2w2p": (2, 2), "2w4p": (2, 4)}
TREE = "working tree"


def _checkout(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "worker.py", "els_worker", "sql"],
                             cwd=common.ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compileall.compile_dir(str(into), quiet=1)
    return into


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision of the baseline worker.py")
    ap.add_argument("--batches", type=int, default=4546, help="10-essay batches (11 events each)")
    ap.add_argument("--reps", type=int, default=6, help="a multiple of the number of arms keeps "
                                                        "the order balanced")
    ap.add_argument("--variants", default="2w4p", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--new-env", default="", help="K=V,... for the working tree's worker only")
    ap.add_argument("--no-aa", action="store_true", help="leave out the A/A arm")
    args = ap.parse_args(argv)
    common.TEMPLATE, common.DB_PREFIX = "els_wab_template", "els_wab_"
    new_env = dict(kv.split("=", 1) for kv in args.new_env.split(",") if kv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[wab {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    base_arm, aa_arm = f"base {args.base}", f"base {args.base} (A/A)"
    with tempfile.TemporaryDirectory(prefix="els-wab-") as tmp:
        roots = {base_arm: _checkout(args.base, Path(tmp) / "a")}
        if not args.no_aa:
            roots[aa_arm] = _checkout(args.base, Path(tmp) / "a2")
        roots[TREE] = common.ROOT
        arms = list(roots)
        stack = common.stack_from_env()
        common.build_template(stack, log)
        stream = e2e.build_stream(args.batches)
        logs = e2e.log_dir()
        runs: dict[tuple[str, str], list[e2e.RunResult]] = {}

        def run(v: str, arm: str) -> e2e.RunResult:
            e2e.ROOT = roots[arm]
            e2e.SQL_DIR = roots[arm] / "sql" if arm != TREE else None
            workers, partitions = SHAPES[v]
            return e2e.run_workers(stack, stream, workers, partitions, logs,
                                   new_env if arm == TREE else {})

        try:
            for v in args.variants.split(","):
                res = run(v, arms[0])
                log(f"{v} warm-up ({arms[0]}, not counted): {res.middle_rate:,.0f}/s")
                for rep in range(args.reps):
                    for arm in common.rotate(arms, rep):
                        res = run(v, arm)
                        runs.setdefault((v, arm), []).append(res)
                        log(f"{v} rep {rep + 1} {arm}: middle {res.middle_rate:,.0f}/s, "
                            f"from start {res.rate:,.0f}/s")
        finally:
            e2e.ROOT, e2e.SQL_DIR = common.ROOT, None
            common.drop_template(stack)
    events = len(stream.messages)
    rows = []
    for (v, arm), rs in runs.items():
        def per_event(key: str, rs: list[e2e.RunResult] = rs) -> float:
            return median([r.cpu.get(key, 0.0) for r in rs]) / events * 1e6
        base = runs[(v, base_arm)]
        middle = median([r.middle_rate for r in rs])
        pg = per_event("their PG backends")
        base_pg = median([r.cpu.get("their PG backends", 0.0) for r in base]) / events * 1e6
        busy = median([r.cpu["machine busy"] / r.cpu["machine total"] for r in rs])
        rows.append([v, arm, f"{middle:,.0f}/s {common.spread([r.middle_rate for r in rs])}",
                     f"{middle / median([r.middle_rate for r in base]):.2f}x",
                     f"{median([r.rate for r in rs]):,.0f}/s",
                     f"{per_event('worker processes'):.0f}", f"{pg:.0f}",
                     f"{pg / base_pg:.2f}x", f"{per_event('PG: apply'):.0f}",
                     f"{per_event('PG: relay'):.0f}", f"{per_event('Kafka broker'):.0f}",
                     f"{busy * 100:.0f}%"])
    print(f"{events:,} events, medians of {args.reps} after one warm-up run, arms in "
          f"rotating order; ratios to {base_arm}; worker logs in {logs}\n")
    print(common.table(["variant", "arm", "events/s (middle 80%)", "ratio", "from start",
                        "worker CPU µs/event", "PG CPU µs/event", "PG ratio",
                        "of which apply", "of which relay", "broker CPU µs/event",
                        "machine busy"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
