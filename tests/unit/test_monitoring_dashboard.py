"""The Grafana dashboard is generated, not hand-edited: the committed
monitoring/grafana/dashboards/els.json is exactly what monitoring/build_dashboard.py
(grafana-foundation-sdk) produces, and it has the panels an operator needs, each
querying the worker's metrics through the provisioned datasource."""

from __future__ import annotations

import json
import re

from monitoring import build_dashboard
from testkit import monitoring as contract

REQUIRED_PANELS = {
    # panel title -> a metric its queries must use
    "Events/s by topic and outcome": "els_events_total",
    "Dead letters by SQLSTATE": "els_dead_letters_total",
    "Processing latency (micro-batch start to commit)": "els_event_processing_seconds_bucket",
    "Micro-batch size": "els_microbatch_size_bucket",
    "Outbox backlog and oldest unpublished row": "els_outbox_oldest_age_seconds",
    "Unpublishable outbox rows": "els_outbox_unpublishable",
    "Consumer lag per partition": "els_consumer_lag",
    "Stuck and deadline-closed batches": "els_batches_closed_by_deadline_total",
    "Stuck batches": "els_stuck_batches",
    "Database up": "els_database_up",
    "Worker healthy": "els_worker_healthy",
    "Systemic fault": "els_systemic_fault",
    "Proof of delivery: outbox audit": "els_outbox_audit_rows_total",
}


def _dashboard() -> dict:
    return json.loads(build_dashboard.OUTPUT.read_text(encoding="utf-8"))


def test_committed_dashboard_is_the_generated_one() -> None:
    committed = build_dashboard.OUTPUT.read_text(encoding="utf-8")
    assert committed == build_dashboard.render(), (
        "monitoring/grafana/dashboards/els.json is stale: "
        "run .venv/bin/python monitoring/build_dashboard.py"
    )


def test_dashboard_has_the_panels_operators_need() -> None:
    panels = {p["title"]: p for p in _dashboard()["panels"] if p["type"] != "row"}
    for title, metric in REQUIRED_PANELS.items():
        assert title in panels, f"missing panel {title!r}"
        exprs = " ".join(t["expr"] for t in panels[title]["targets"])
        assert metric in exprs, f"{title!r} does not query {metric}"
    latency = " ".join(t["expr"] for t in panels[
        "Processing latency (micro-batch start to commit)"]["targets"])
    assert len(re.findall(r"histogram_quantile\(0\.\d+", latency)) >= 3


def test_every_query_uses_the_provisioned_datasource_and_a_unique_ref() -> None:
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "els-prometheus"}
            assert target["expr"].strip()


# ---------------------------------------------------------------- no misspelt metric


def _all_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every dashboard query and every alert expression."""
    out = [(f"panel {title!r}", expr, legend)
           for title, expr, legend in contract.dashboard_queries()]
    out += [(f"alert {r['alert']}", r["expr"], "") for r in contract.alert_rules()]
    return out


def test_the_query_parser_sees_metrics_and_labels() -> None:
    expr = ('sum by (job, sqlstate_class) (label_replace(increase('
            'els_dead_letters_total{sqlstate=~"EL.*"}[5m]) > 0, "c", "$1", "sqlstate", "(..).*"))')
    assert contract.metrics_in(expr) == {"els_dead_letters_total"}
    assert contract.grouping_labels(expr) == {"job", "sqlstate_class"}
    assert contract.matcher_labels(expr) == {"els_dead_letters_total": {"sqlstate"}}
    assert contract.metrics_in("max(els_outbox_backlog)") == {"els_outbox_backlog"}
    assert contract.metrics_in('absent(up{job="els-worker"})') == {"up"}


def test_every_metric_queried_is_one_the_worker_exports() -> None:
    for where, expr, _ in _all_queries():
        found = contract.metrics_in(expr)
        assert found, f"{where}: no metric found in {expr!r}"
        unknown = found - set(contract.METRICS)
        assert not unknown, f"{where}: not a worker metric: {sorted(unknown)}"


def test_every_label_queried_is_one_the_metric_has() -> None:
    for where, expr, legend in _all_queries():
        metrics = contract.metrics_in(expr)
        available = set(contract.TARGET_LABELS).union(*(contract.METRICS[m] for m in metrics))
        for metric, labels in contract.matcher_labels(expr).items():
            extra = labels - contract.METRICS[metric] - contract.TARGET_LABELS
            assert not extra, f"{where}: {metric} has no label {sorted(extra)}"
        # label_replace(v, "dst", "$1", "src", "regex") adds dst; by () may use it
        added = set(re.findall(r'"([a-zA-Z_]+)",\s*"\$\d+"', expr))
        extra = contract.grouping_labels(expr) - available - added
        assert not extra, f"{where}: groups by labels no metric has: {sorted(extra)}"
        grouped = contract.grouping_labels(expr) or available
        extra = contract.legend_labels(legend) - grouped
        assert not extra, f"{where}: legend uses labels the result lacks: {sorted(extra)}"
