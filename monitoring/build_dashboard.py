"""Builds the Grafana dashboard of the worker, monitoring/grafana/dashboards/els.json,
with grafana-foundation-sdk (Grafana's own typed builders of the dashboard schema), so
the JSON is generated, never hand-edited.

    .venv/bin/python monitoring/build_dashboard.py           # rewrite els.json
    .venv/bin/python monitoring/build_dashboard.py --check   # exit 1 if els.json is stale

Every query uses only the worker's metrics (els_worker/observability.py). Grafana
provisions the file (monitoring/grafana/provisioning/); tests/unit/test_monitoring_dashboard.py
checks the committed file is this script's output, and tests/e2e/test_monitoring_live.py
evaluates every query against a real Prometheus scraping a real worker.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row, ThresholdsConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
)

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "monitoring" / "grafana" / "dashboards" / "els.json"
UID = "els-worker"
# the provisioned datasource (monitoring/grafana/provisioning/datasources/prometheus.yml)
DATASOURCE = DataSourceRef(type_val="prometheus", uid="els-prometheus")
RATE = "$__rate_interval"


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE).range()
    return q.legend_format(legend) if legend else q


def series(title: str, description: str, unit: str, *targets: tuple[str, str],
           width: int = 12, height: int = 8, stacked: bool = False) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE)
                .placement(LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"]))
    )
    for i, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + i)))
    return panel


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=v, color=c) for v, c in steps])


def single(title: str, description: str, expr: str, unit: str, steps: ThresholdsConfig,
           width: int = 4) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .thresholds(steps)
        .with_target(query(expr))
    )


GOOD_IS_ONE = thresholds((None, "red"), (1, "green"))
BAD_IF_ANY = thresholds((None, "green"), (1, "red"))


def build() -> Dashboard:
    hist = "sum by (le) (rate(els_event_processing_seconds_bucket[" + RATE + "]))"
    size = "sum by (le) (rate(els_microbatch_size_bucket[" + RATE + "]))"
    return (
        Dashboard("Essay Lifecycle Service: batch registration worker")
        .uid(UID)
        .description("Worker metrics (docs/worker.md); alerts: monitoring/alerts.yml; "
                     "what to do: docs/monitoring.md")
        .tags(["els", "kafka", "postgresql"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("utc")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
        # ------------------------------------------------------------------ health
        .with_row(Row("Health"))
        .with_panel(single("Workers scraped", "Targets of job els-worker Prometheus can scrape",
                           'sum(up{job="els-worker"})', "none",
                           thresholds((None, "red"), (1, "green"))))
        .with_panel(single("Worker healthy", "min over workers of els_worker_healthy "
                           "(1: /healthz answers 200)", "min(els_worker_healthy)", "bool",
                           GOOD_IS_ONE))
        .with_panel(single("Systemic fault", "1 while an unexpected error strikes every event "
                           "(the worker holds, dead-letters nothing; alert ElsSystemicFault)",
                           "max(els_systemic_fault)", "bool", BAD_IF_ANY))
        .with_panel(single("Database up", "min over workers of els_database_up",
                           "min(els_database_up)", "bool", GOOD_IS_ONE))
        .with_panel(single("Stuck batches", "Incomplete batches older than "
                           "ELS_STUCK_AFTER_SECONDS (SELECT * FROM els.stuck_batches)",
                           "max(els_stuck_batches)", "none", BAD_IF_ANY))
        .with_panel(single("Unpublishable outbox rows", "Rows Kafka refused, set aside "
                           "(SELECT * FROM els.outbox_set_aside)",
                           "max(els_outbox_unpublishable)", "none", BAD_IF_ANY))
        .with_panel(series(
            "Worker health and systemic fault", "Per worker: healthy (1 = /healthz 200), "
            "systemic fault (1 = holding), database up", "none",
            ("els_worker_healthy", "healthy {{instance}}"),
            ("els_systemic_fault", "systemic fault {{instance}}"),
            ("els_database_up", "database up {{instance}}"),
            width=24, height=6))
        # ------------------------------------------------------------------ events
        .with_row(Row("Events"))
        .with_panel(series(
            "Events/s by topic and outcome", "rate of els_events_total", "ops",
            ("sum by (topic, outcome) (rate(els_events_total[" + RATE + "]))",
             "{{topic}} {{outcome}}")))
        .with_panel(series(
            "Dead letters by SQLSTATE", "Events sent to <topic>.dlq, per SQLSTATE: increase "
            "over 5 minutes, and the total since each worker started", "short",
            ("sum by (sqlstate) (increase(els_dead_letters_total[5m]))", "{{sqlstate}} / 5m"),
            ("sum by (sqlstate) (els_dead_letters_total)", "{{sqlstate}} total")))
        .with_panel(series(
            "Processing latency (micro-batch start to commit)",
            "Quantiles of els_event_processing_seconds", "s",
            ("histogram_quantile(0.5, " + hist + ")", "p50"),
            ("histogram_quantile(0.95, " + hist + ")", "p95"),
            ("histogram_quantile(0.99, " + hist + ")", "p99")))
        .with_panel(series(
            "Micro-batch size", "Messages per database transaction (els_microbatch_size)",
            "short",
            ("histogram_quantile(0.5, " + size + ")", "p50"),
            ("histogram_quantile(0.95, " + size + ")", "p95"),
            ("sum(rate(els_microbatch_size_sum[" + RATE + "])) / "
             "sum(rate(els_microbatch_size_count[" + RATE + "]))", "mean")))
        .with_panel(series(
            "Batch registrations by outcome", "els_batch_registrations_total (applied) and "
            "els_batch_registration_failures_total (dead-lettered, by SQLSTATE), per second",
            "ops",
            ("sum by (outcome) (rate(els_batch_registrations_total[" + RATE + "]))",
             "{{outcome}}"),
            ("sum by (sqlstate) (rate(els_batch_registration_failures_total[" + RATE + "]))",
             "failed {{sqlstate}}")))
        .with_panel(series(
            "Consumer lag per partition", "els_consumer_lag (librdkafka statistics, every "
            "10 s); alert ElsConsumerLagGrowing", "short",
            ("sum by (topic, partition) (els_consumer_lag)", "{{topic}}[{{partition}}]")))
        # ------------------------------------------------------------------ outbox
        .with_row(Row("Outbox"))
        .with_panel(series(
            "Outbox backlog and oldest unpublished row", "els_outbox_backlog (rows), "
            "els_outbox_oldest_age_seconds (seconds) and rows set aside; alerts "
            "ElsOutboxBacklogOld, ElsOutboxUnpublishable", "short",
            ("max(els_outbox_backlog)", "unpublished rows"),
            ("max(els_outbox_oldest_age_seconds)", "oldest age (s)"),
            ("max(els_outbox_unpublishable)", "set aside (unpublishable)"),
            width=12))
        .with_panel(series(
            "Outbox published/s by event type", "rate of els_outbox_published_total", "ops",
            ("sum by (event_type) (rate(els_outbox_published_total[" + RATE + "]))",
             "{{event_type}}"),
            width=12))
        .with_panel(series(
            "Proof of delivery: outbox audit", "worker.py audit (ELS_AUDIT_INTERVAL_SECONDS): "
            "published rows read back at their offsets per hour, by result (missing: not "
            "where the delivery report said; republished: produced again), and delivery "
            "reports without an offset (no proof: produced again) by producer; alerts "
            "ElsOutboxRowsMissingFromKafka, ElsOutboxAuditUnrepaired", "short",
            ("sum by (result) (increase(els_outbox_audit_rows_total[1h]))", "{{result}} / 1h"),
            ("sum by (producer) (increase(els_kafka_unconfirmed_deliveries_total[1h]))",
             "no offset: {{producer}} / 1h"),
            width=24))
        # ------------------------------------------------------------------ batches
        .with_row(Row("Batches and maintenance"))
        .with_panel(series(
            "Stuck and deadline-closed batches", "els_stuck_batches (incomplete past "
            "ELS_STUCK_AFTER_SECONDS), batches closed by deadline in the last hour, and "
            "the age of the oldest incomplete batch in seconds; SELECT * FROM els.stuck_batches",
            "short",
            ("max(els_stuck_batches)", "stuck"),
            ("sum(increase(els_batches_closed_by_deadline_total[1h]))",
             "closed by deadline / 1h"),
            ("max(els_oldest_incomplete_batch_age_seconds)", "oldest incomplete (s)")))
        .with_panel(series(
            "Maintenance runs and duration", "els_maintenance_runs_total by task and result "
            "(per minute); p95 of els_maintenance_duration_seconds", "short",
            ("sum by (task, result) (increase(els_maintenance_runs_total[1m]))",
             "{{task}} {{result}} / min"),
            ("histogram_quantile(0.95, sum by (le, task) "
             "(rate(els_maintenance_duration_seconds_bucket[" + RATE + "])))",
             "p95 {{task}} (s)")))
    )


def render() -> str:
    data: dict[str, Any] = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run monitoring/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
