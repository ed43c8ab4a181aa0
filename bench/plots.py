"""Pictures of a benchmark run (`make bench` writes them into docs/; BENCHMARKS.md shows
them), drawn from the results bench/run.py collects:

* ``bench_throughput.png``: end-to-end events/s per variant (median, whiskers min-max
  over the repetitions), the worker variants against the direct-SQL ceiling;
* ``bench_latency.png``: distribution of the per-event latency the worker logs
  (``duration_ms``: micro-batch start to commit), one curve per worker variant;
* ``bench_register_cost.png``: register cost per essay against batch size, for
  ``els.register_batch``, the COPY floor and one INSERT per essay.

    .venv/bin/python -m bench.plots [docs/bench_results.json] [--out docs]

redraws them from a saved results file (bench/run.py writes docs/bench_results.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS_FILE = DOCS / "bench_results.json"
THROUGHPUT = "bench_throughput.png"
LATENCY = "bench_latency.png"
REGISTER_COST = "bench_register_cost.png"
PERCENTILES = 101  # latency distributions are kept as percentiles 0..100


def latency_percentiles(samples: list[float]) -> list[float]:
    """Percentiles 0, 1, ..., 100 of ``samples`` (linear interpolation)."""
    if not samples:
        return []
    data = sorted(samples)
    out = []
    for i in range(PERCENTILES):
        pos = (len(data) - 1) * i / (PERCENTILES - 1)
        lo = int(pos)
        hi = min(lo + 1, len(data) - 1)
        out.append(data[lo] + (data[hi] - data[lo]) * (pos - lo))
    return out


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(results: dict[str, Any], path: Path) -> Path | None:
    e2e: dict[str, Any] = results.get("e2e") or {}
    rows = [(v, r["rates"]) for v, r in e2e.items() if r.get("rates")]
    if not rows:
        return None
    labels = [v for v, _ in rows]
    med = [statistics.median(r) for _, r in rows]
    low = [m - min(r) for m, (_, r) in zip(med, rows, strict=True)]
    high = [max(r) - m for m, (_, r) in zip(med, rows, strict=True)]
    colors = ["#8c8c8c" if v.startswith("ceiling") else "#3b75af" for v in labels]
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(rows) + 1.6))
    y = list(range(len(rows)))
    ax.barh(y, med, xerr=[low, high], color=colors, capsize=3)
    for yi, m, h in zip(y, med, high, strict=True):
        ax.text(m + h, yi, f"  {m:,.0f}/s", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("events/s, worker start to last outbox row published (median; min-max)")
    events = results.get("e2e_events")
    ax.set_title("End-to-end throughput per variant"
                 + (f" ({events:,} events)" if events else "")
                 + "\nblue: worker(s) through Kafka; grey: direct-SQL ceiling", fontsize=10)
    ax.margins(x=0.18)
    return _save(fig, path)


def plot_latency(results: dict[str, Any], path: Path) -> Path | None:
    e2e: dict[str, Any] = results.get("e2e") or {}
    curves = [(v, r["latency_percentiles_ms"]) for v, r in e2e.items()
              if r.get("latency_percentiles_ms")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    share = [i / (PERCENTILES - 1) for i in range(PERCENTILES)]
    for label, pct in curves:
        ax.plot(pct, share, label=f"{label} (p50 {pct[50]:.0f} ms, p99 {pct[99]:.0f} ms)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("per-event latency, ms (worker log duration_ms: micro-batch start to "
                  "commit; log scale)")
    ax.set_ylabel("share of events at or below")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Latency distribution of the end-to-end runs (all repetitions pooled)",
                 fontsize=10)
    return _save(fig, path)


def plot_register_cost(results: dict[str, Any], path: Path) -> Path | None:
    reg: list[dict[str, Any]] = results.get("register") or []
    if not reg:
        return None
    sizes = [r["essays"] for r in reg]
    variants = list(reg[0]["per_batch_s"])
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for variant in variants:
        per_essay = [[t / r["essays"] * 1e6 for t in r["per_batch_s"][variant]] for r in reg]
        med = [statistics.median(x) for x in per_essay]
        ax.plot(sizes, med, marker="o", label=variant)
        ax.fill_between(sizes, [min(x) for x in per_essay], [max(x) for x in per_essay],
                        alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_xlabel("essays per batch (one registration per transaction)")
    ax.set_ylabel("µs per essay (median; band min-max; log scale)")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title("Register cost per essay vs batch size", fontsize=10)
    return _save(fig, path)


def write_plots(results: dict[str, Any], out_dir: Path = DOCS) -> list[Path]:
    """Draws every plot the results have data for into ``out_dir``; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = [
        plot_throughput(results, out_dir / THROUGHPUT),
        plot_latency(results, out_dir / LATENCY),
        plot_register_cost(results, out_dir / REGISTER_COST),
    ]
    return [p for p in drawn if p is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", type=Path, default=RESULTS_FILE)
    ap.add_argument("--out", type=Path, default=DOCS)
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    for path in write_plots(results, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
