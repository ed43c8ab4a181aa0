"""A/B of the worker: a git revision's worker and SQL against the working tree's, end to end.

    .venv/bin/python -m bench.worker_ab --base REV [--batches N] [--reps N]
                                        [--variants 1w2p,2w4p] [--new-env K=V,...]

The same pre-loaded stream and seeded template as `make bench`'s end-to-end part
(bench/e2e.py). The baseline is a checkout of REV's worker.py, els_worker/ and sql/:
its worker runs from there (its own package first on sys.path) against a database whose
functions are REV's sql/ (the tables are the template's: no migration between them).
The two workers interleaved (the order reverses every repetition) so
that the machine's drift falls on both alike; medians per variant. Its own template
and databases (els_wab_*), so it can run beside `make bench`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common, e2e
from bench.common import median

SHAPES = {"1w2p": (1, 2), "2w2p": (2, 2), "2w4p": (2, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision of the baseline worker.py")
    ap.add_argument("--batches", type=int, default=4546, help="10-essay batches (11 events each)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default="1w2p,2w4p", help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--new-env", default="", help="K=V,... for the working tree's worker only")
    args = ap.parse_args(argv)
    common.TEMPLATE, common.DB_PREFIX = "els_wab_template", "els_wab_"
    new_env = dict(kv.split("=", 1) for kv in args.new_env.split(",") if kv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[wab {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="els-wab-") as tmp:
        base = Path(tmp)
        archive = subprocess.run(
            ["git", "archive", args.base, "worker.py", "els_worker", "sql"], cwd=common.ROOT,
            check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        roots = {f"base {args.base}": base, "working tree": common.ROOT}
        stack = common.stack_from_env()
        common.build_template(stack, log)
        stream = e2e.build_stream(args.batches)
        logs = e2e.log_dir()
        runs: dict[tuple[str, str], list[e2e.RunResult]] = {}
        try:
            order = [(v, w) for v in args.variants.split(",") for w in roots]
            for rep in range(args.reps):
                for v, w in (order if rep % 2 == 0 else order[::-1]):
                    e2e.ROOT = roots[w]
                    e2e.SQL_DIR = base / "sql" if w != "working tree" else None
                    workers, partitions = SHAPES[v]
                    res = e2e.run_workers(stack, stream, workers, partitions, logs,
                                          new_env if w == "working tree" else {})
                    runs.setdefault((v, w), []).append(res)
                    log(f"{v} {w}: {res.rate:,.0f}/s (steady {res.steady_rate:,.0f}/s)")
        finally:
            e2e.ROOT, e2e.SQL_DIR = common.ROOT, None
            common.drop_template(stack)
    events = len(stream.messages)
    rows = []
    for (v, w), rs in runs.items():
        def per_event(key: str, rs: list[e2e.RunResult] = rs) -> str:
            return f"{median([r.cpu.get(key, 0.0) for r in rs]) / events * 1e6:.0f}"
        busy = median([r.cpu["machine busy"] / r.cpu["machine total"] for r in rs])
        rows.append([v, w, f"{median([r.rate for r in rs]):,.0f}/s",
                     f"{median([r.steady_rate for r in rs]):,.0f}/s",
                     per_event("worker processes"), per_event("their PG backends"),
                     per_event("PG: apply"), per_event("PG: relay"),
                     per_event("Kafka broker"), f"{busy * 100:.0f}%"])
    print(f"{events:,} events, medians of {args.reps}, worker logs in {logs}\n")
    print(common.table(["variant", "worker", "events/s", "steady", "worker CPU µs/event",
                        "PG CPU µs/event", "of which apply", "of which relay",
                        "broker CPU µs/event", "machine busy"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
