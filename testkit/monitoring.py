"""What the monitoring may query: the worker's metrics and their labels (the contract
is els_worker/observability.py; docs/worker.md lists them), and helpers that pull the
queries out of monitoring/alerts.yml and the Grafana dashboard.

Used by tests/unit/test_monitoring_dashboard.py (statically: no misspelt metric, no label
the metric does not have) and tests/e2e/test_monitoring_live.py (against a real worker)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "els.json"

# metric (as Prometheus stores it) -> its labels, besides job/instance/worker
METRICS: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        "up": (),
        "els_events_total": ("topic", "outcome"),
        "els_dead_letters_total": ("sqlstate",),
        "els_retries_total": ("kind",),
        "els_batch_registrations_total": ("outcome",),
        "els_batch_registration_failures_total": ("sqlstate",),
        "els_event_processing_seconds_bucket": ("le",),
        "els_event_processing_seconds_sum": (),
        "els_event_processing_seconds_count": (),
        "els_microbatch_size_bucket": ("le",),
        "els_microbatch_size_sum": (),
        "els_microbatch_size_count": (),
        "els_outbox_backlog": ("db_partition",),
        "els_outbox_oldest_age_seconds": ("db_partition",),
        "els_outbox_unpublishable": ("db_partition",),
        "els_outbox_published_total": ("event_type",),
        "els_kafka_unconfirmed_deliveries_total": ("producer",),
        "els_outbox_audit_rows_total": ("result",),
        "els_outbox_audit_runs_total": ("result",),
        "els_outbox_audit_last_success_timestamp_seconds": ("db_partition",),
        "els_consumer_lag": ("topic", "partition"),
        "els_consumer_partition_stalls_total": ("topic", "partition"),
        "els_database_up": (),
        "els_partition_database_up": ("db_partition",),
        "els_worker_healthy": (),
        "els_systemic_fault": (),
        "els_batches_closed_by_deadline_total": (),
        "els_maintenance_runs_total": ("task", "result"),
        "els_maintenance_duration_seconds_bucket": ("task", "le"),
        "els_maintenance_duration_seconds_sum": ("task",),
        "els_maintenance_duration_seconds_count": ("task",),
        "els_oldest_incomplete_batch_age_seconds": (),
        "els_stuck_batches": (),
    }.items()
}
TARGET_LABELS = frozenset({"job", "instance", "worker"})
# Behind the PL/Proxy proxy only (docs/SCALING.md): the label of the partition whose
# outbox a series is about (empty, so absent to Prometheus, on one database), and the
# metrics that exist only there. tests/e2e/test_partition_worker.py reads them from a
# worker behind the proxy; the live Prometheus test runs one database.
PARTITION_LABEL = "db_partition"
PROXY_ONLY_METRICS = frozenset({"els_partition_database_up"})
# Grafana's variables, as the live test substitutes them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s"}

_METRIC = re.compile(r"\b(els_[a-z0-9_]+|up)\b(?=\s*(?:\{|\[|\)|$|\s|offset))")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"\b(els_[a-z0-9_]+|up)\s*\{([^}]*)\}")
_LABEL_NAME = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, expr, legend format) of every query of every panel."""
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    return out


def for_prometheus(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, ready for /api/v1/query."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def metrics_in(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by (...) / without (...) clauses."""
    return {lbl.strip() for group in _BY.findall(expr) for lbl in group.split(",") if lbl.strip()}


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """metric -> label names used in its {...} matchers."""
    out: dict[str, set[str]] = {}
    for metric, body in _MATCHER.findall(expr):
        out.setdefault(metric, set()).update(_LABEL_NAME.findall(body))
    return out


def legend_labels(legend: str) -> set[str]:
    return set(_LEGEND_LABEL.findall(legend))
