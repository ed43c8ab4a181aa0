"""The shipped alert rules (monitoring/alerts.yml) are valid Prometheus rules, and
their promtool unit tests (monitoring/alerts_test.yml) pass: every alert fires on a
series that should fire it and stays silent on one that should not.

Also checks what promtool does not: every alert has `for:`, a severity, a summary and
a runbook that names a command to run, and every alert has both a firing and a silent
case in the unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts.yml"
ALERTS_TEST = ROOT / "monitoring" / "alerts_test.yml"
SEVERITIES = {"critical", "warning", "info"}
# a runbook must name something to run: the worker's CLI or a SQL call on schema els
RUNBOOK_COMMAND = re.compile(r"python worker\.py \w|SELECT .*els\.|curl |pg_isready|psql ")

PROMTOOL = shutil.which("promtool")


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool not installed: run scripts/bootstrap.sh (as root)"
    return subprocess.run(
        [PROMTOOL, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_rules() -> None:
    res = _promtool("check", "rules", ALERTS.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in res.stdout


def test_promtool_unit_tests_pass() -> None:
    res = _promtool("test", "rules", ALERTS_TEST.name)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_has_for_severity_summary_and_runbook() -> None:
    rules = _rules()
    assert len(rules) >= 10
    for rule in rules:
        name = rule.get("alert")
        assert name, f"recording rules are not expected here: {rule}"
        assert rule.get("for"), f"{name}: no for:"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert RUNBOOK_COMMAND.search(annotations.get("runbook", "")), (
            f"{name}: the runbook names no command to run"
        )


def test_the_alerts_the_issue_asks_for_exist() -> None:
    """Worker down / absent, systemic fault, dead letters by SQLSTATE class, outbox
    age, unpublishable rows, consumer lag growing, stuck batches, deadline closures,
    database down: each by the metric it must watch."""
    by_name = {r["alert"]: r["expr"] for r in _rules()}
    wanted = {
        "ElsWorkerDown": "up{",
        "ElsWorkerAbsent": "absent(up{",
        "ElsSystemicFault": "els_systemic_fault",
        "ElsDeadLettersRejected": "els_dead_letters_total",
        "ElsDeadLettersUnexpected": "els_dead_letters_total",
        "ElsOutboxBacklogOld": "els_outbox_oldest_age_seconds",
        "ElsOutboxUnpublishable": "els_outbox_unpublishable",
        "ElsConsumerLagGrowing": "els_consumer_lag",
        "ElsPartitionStalled": "els_consumer_partition_stalls_total",
        "ElsBatchesStuck": "els_stuck_batches",
        "ElsBatchesClosedByDeadline": "els_batches_closed_by_deadline_total",
        "ElsDatabaseDown": "els_database_up",
        "ElsPartitionDatabaseDown": "els_partition_database_up",
    }
    for name, metric in wanted.items():
        assert name in by_name, f"missing alert {name}"
        assert metric in by_name[name], f"{name} does not watch {metric}"
    for name in ("ElsDeadLettersRejected", "ElsDeadLettersUnexpected"):
        assert '"sqlstate_class"' in by_name[name], f"{name} is not by SQLSTATE class"


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]
    cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {r["alert"] for r in _rules()}
    assert names - fired == set(), f"never shown firing: {sorted(names - fired)}"
    assert names - silent == set(), f"never shown silent: {sorted(names - silent)}"
