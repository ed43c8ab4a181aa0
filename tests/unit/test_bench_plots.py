"""`make bench` draws its pictures (bench/plots.py) from the results it collects: here
on a small sample of results in bench/run.py's format, and the plots BENCHMARKS.md
shows are there."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg

from bench import e2e, plots

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sample() -> dict[str, Any]:
    """A small run in bench/run.py's results format (two sizes, two e2e variants)."""
    lat_a = [5.0 + (i % 50) * 0.8 for i in range(400)]
    lat_b = [3.0 + (i % 40) * 0.5 for i in range(400)]
    return {
        "machine": "test",
        "register": [
            {"essays": 10, "per_batch_s": {"register_batch": [0.0011, 0.0012, 0.0013],
                                           "COPY floor": [0.0009, 0.001, 0.0011],
                                           "INSERT per essay": [0.004, 0.0041, 0.0045]}},
            {"essays": 1000, "per_batch_s": {"register_batch": [0.031, 0.032, 0.035],
                                             "COPY floor": [0.030, 0.031, 0.033],
                                             "INSERT per essay": [0.34, 0.35, 0.36]}},
        ],
        "e2e_events": 10010,
        "e2e": {
            "1 worker, 2 partitions": {"rates": [2700.0, 2800.0, 2650.0],
                                       "latency_percentiles_ms": plots.latency_percentiles(lat_a)},
            "2 workers, 2 partitions": {"rates": [3500.0, 3600.0],
                                        "latency_percentiles_ms": plots.latency_percentiles(lat_b)},
            "ceiling 1 session": {"rates": [6000.0, 6100.0], "latency_percentiles_ms": []},
        },
    }


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert width >= 600 and height >= 200, (path, image.shape)
    assert image.std() > 0.01, f"{path} is blank"


def test_write_plots_draws_the_three_pictures(tmp_path: Path) -> None:
    written = plots.write_plots(_sample(), tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [plots.THROUGHPUT, plots.LATENCY, plots.REGISTER_COST])
    for path in written:
        _assert_png(path)


def test_results_round_trip_through_the_results_file(tmp_path: Path) -> None:
    """bench/run.py saves JSON; `python -m bench.plots FILE` redraws from it."""
    results = tmp_path / "bench_results.json"
    results.write_text(json.dumps(_sample()), encoding="utf-8")
    assert plots.main([str(results), "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_sql_only_run_draws_only_the_register_plot(tmp_path: Path) -> None:
    """--skip-e2e: no throughput or latency data, no empty pictures of them."""
    sample = _sample()
    del sample["e2e"]
    assert [p.name for p in plots.write_plots(sample, tmp_path)] == [plots.REGISTER_COST]


def test_latency_percentiles() -> None:
    pct = plots.latency_percentiles([float(x) for x in range(1, 101)])
    assert len(pct) == plots.PERCENTILES
    assert pct[0] == 1.0 and pct[100] == 100.0 and abs(pct[50] - 50.5) < 1e-9
    assert plots.latency_percentiles([]) == []


def test_latencies_come_from_the_workers_event_lines(tmp_path: Path) -> None:
    log = tmp_path / "worker0.log"
    log.write_text("\n".join([
        json.dumps({"msg": "event applied", "duration_ms": 4.5, "outcome": "assigned"}),
        json.dumps({"msg": "event dead-lettered", "duration_ms": 9.0}),
        json.dumps({"msg": "relay round", "rows": 3}),
        "not json",
        json.dumps({"msg": "event applied", "duration_ms": 1.25}),
    ]) + "\n", encoding="utf-8")
    assert e2e.logged_latencies([log]) == [4.5, 1.25]


def test_benchmarks_md_shows_the_committed_plots() -> None:
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text))
    for name in (plots.THROUGHPUT, plots.LATENCY, plots.REGISTER_COST):
        assert name in shown, f"docs/BENCHMARKS.md does not show {name}"
        _assert_png(ROOT / "docs" / name)
