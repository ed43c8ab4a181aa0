"""The monitoring works against the real thing: the local stack's Prometheus
(scripts/stack.sh) scrapes a real `worker.py run` that was sent a real stream (a
complete batch, a stuck batch, a validation failure and an invalid registration that is
dead-lettered); then

* every dashboard panel query and every alert expression is evaluated through
  Prometheus' HTTP API (/api/v1/query): each is valid PromQL, each metric it names
  exists for this worker with the labels the query relies on (no misspelt metric, no
  missing label), and each dashboard query returns data;
* the shipped alerts.yml, copied with `for:` shortened to 1s (and the worker's stuck
  threshold at 2 s), is loaded by a reload (POST /-/reload), and the stuck-batch and
  dead-letter alerts become active (/api/v1/alerts), while the alerts about an
  unhealthy worker, the database or maintenance stay silent for it.

Needs the worker of the els_worker package (its metrics: els_worker/observability.py);
a worker that lacks some of them fails here, naming every missing metric."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka.admin import AdminClient
from psycopg import sql

from testkit import events
from testkit import monitoring as contract
from testkit.kafka import Topics, create_topics, event_bytes, produce
from testkit.stack import Stack
from testkit.worker import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "scripts" / "stack.sh"
RULES_DIR = ROOT / ".stack" / "prometheus" / "rules"
# how long every metric named by the monitoring gets to show up in Prometheus: the
# slowest are the consumer lag (librdkafka statistics every 10 s) and the batch gauges
METRICS_TIMEOUT_S = 60.0
ALERTS_TIMEOUT_S = 60.0
# the two alerts this test must see active, with the labels they must carry
WANTED_ALERTS = {"ElsBatchesStuck": {}, "ElsDeadLettersRejected": {"sqlstate_class": "EL"}}
# alerts that must stay silent for this healthy worker, even with for: 1s
QUIET_ALERTS = {"ElsWorkerDown", "ElsWorkerUnhealthy", "ElsDatabaseDown", "ElsSystemicFault",
                "ElsDeadLettersUnexpected", "ElsOutboxUnpublishable", "ElsMaintenanceFailing",
                "ElsPartitionStalled"}


# ---------------------------------------------------------------- Prometheus API


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        return body

    def query(self, expr: str) -> dict[str, Any]:
        """The /api/v1/query answer (status, data or error) for ``expr`` now."""
        result: dict[str, Any] = self._get("/api/v1/query", query=expr)
        return result

    def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer.get("status") == "success", f"{expr!r}: {answer}"
        series: list[dict[str, Any]] = answer["data"]["result"]
        return series

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["data"]["alerts"]
        return alerts

    def rule_groups(self) -> list[str]:
        return [g["name"] for g in self._get("/api/v1/rules")["data"]["groups"]]

    def reload(self) -> None:
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Prometheus:
    url = os.environ.get("ELS_PROMETHEUS_URL")
    assert url, "no ELS_PROMETHEUS_URL: the stack has no Prometheus (scripts/stack.sh up)"
    prom = Prometheus(url)
    assert prom.vector("vector(1)"), f"Prometheus at {url} does not answer"
    return prom


# ---------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Scene:
    worker: WorkerProcess
    target: str  # the worker label of its scrape target
    instance: str  # host:port Prometheus scrapes
    db_url: str
    topics: Topics
    stuck_batch: str


def _module_topics(bootstrap: str) -> tuple[Topics, list[str]]:
    topics = Topics.under(f"t{uuid.uuid4().hex[:12]}")
    create_topics(bootstrap, list(topics.all), partitions=3)
    return topics, list(topics.all)


@pytest.fixture(scope="module")
def scene(stack: Stack, template_db: str, kafka_admin: AdminClient,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """A database of its own, topics of its own, and one worker scraped by Prometheus,
    which has applied: a complete batch, a stuck batch (1 of 3 essays), a validation
    failure, and an invalid registration (ELV02, dead-lettered)."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_db)))
    db_url = stack.url_for(name)
    topics, created = _module_topics(stack.kafka_bootstrap)
    env = worker_env(db_url, stack.kafka_bootstrap, topics,
                     ELS_STUCK_AFTER_SECONDS="2", ELS_MAINTENANCE_INTERVAL_SECONDS="1")
    worker = WorkerProcess(env, tmp_path_factory.mktemp("live") / "worker.log")
    try:
        worker.start()
        run = uuid.uuid4().hex[:8]
        done, stuck, bad = f"live-{run}-done", f"live-{run}-stuck", f"live-{run}-bad"
        invalid = events.registration(bad, [f"{bad}-e1"])
        del invalid["data"]["user_id"]  # ELV02: a required field is missing
        messages = [
            (topics.batch_registered, done, events.registration(done, [f"{done}-e1",
                                                                       f"{done}-e2"])),
            (topics.content_provisioned, done, events.content(done, f"{done}-t1")),
            (topics.validation_failed, done, events.failure(done, f"{done}-u2")),
            (topics.batch_registered, stuck, events.registration(
                stuck, [f"{stuck}-e1", f"{stuck}-e2", f"{stuck}-e3"])),
            (topics.content_provisioned, stuck, events.content(stuck, f"{stuck}-t1")),
            (topics.batch_registered, bad, invalid),
        ]
        produce(stack.kafka_bootstrap,
                [(t, k.encode(), event_bytes(v)) for t, k, v in messages])
        instance = f"127.0.0.1:{worker.port}"
        yield Scene(worker, worker.target_name, instance, db_url, topics, stuck)
    finally:
        worker.kill()
        for fut in kafka_admin.delete_topics(created, operation_timeout=30).values():
            try:
                fut.result(timeout=30)
            except Exception:  # cleanup only
                pass
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _all_queries() -> list[tuple[str, str, str]]:
    out = [(f"panel {title!r}", contract.for_prometheus(expr), legend)
           for title, expr, legend in contract.dashboard_queries()]
    out += [(f"alert {r['alert']}", r["expr"], "") for r in contract.alert_rules()]
    return out


def _needed_labels() -> dict[str, set[str]]:
    """metric -> the labels the monitoring's queries rely on it having, on the one
    database this scene runs (no partition label, no metric of the proxy's topology)."""
    need: dict[str, set[str]] = {}
    for _, expr, _ in _all_queries():
        for metric in contract.metrics_in(expr) - contract.PROXY_ONLY_METRICS:
            need.setdefault(metric, set()).update(contract.METRICS[metric])
        for metric, labels in contract.matcher_labels(expr).items():
            if metric not in contract.PROXY_ONLY_METRICS:
                need[metric].update(labels)
    return {metric: labels - {contract.PARTITION_LABEL} for metric, labels in need.items()}


def _missing(prom: Prometheus, scene: Scene) -> dict[str, str]:
    """metric -> why it does not count as present for this worker ('' when present)."""
    problems: dict[str, str] = {}
    for metric, labels in sorted(_needed_labels().items()):
        series = prom.vector(f'{metric}{{worker="{scene.target}"}}')
        if not series:
            problems[metric] = "no series for this worker"
            continue
        lacking = {lbl for lbl in labels
                   if not any(s["metric"].get(lbl) for s in series)}
        if lacking:
            problems[metric] = f"no series with label(s) {sorted(lacking)}"
    return problems


@pytest.fixture(scope="module")
def scraped(prometheus: Prometheus, scene: Scene) -> Scene:
    """Waits until Prometheus scrapes the worker and has seen the whole stream applied
    (6 events counted, the completion published), then until every metric named by the
    monitoring is there (or the timeout: the test that needs them says what is missing)."""
    sel = f'worker="{scene.target}"'
    wait_until(lambda: prometheus.vector(f"up{{{sel}}} == 1"), 30,
               "Prometheus to scrape the worker", scene.worker.tail)
    wait_until(lambda: sum(float(s["value"][1]) for s in prometheus.vector(
        f"els_events_total{{{sel}}}")) >= 6, 60, "the 6 events in Prometheus", scene.worker.tail)
    wait_until(lambda: prometheus.vector(f"els_outbox_published_total{{{sel}}}"), 60,
               "published outbox rows in Prometheus", scene.worker.tail)
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    while _missing(prometheus, scene) and time.monotonic() < deadline:
        time.sleep(1)
    return scene


# ---------------------------------------------------------------- the checks


def test_the_stream_left_a_stuck_batch_and_a_dead_letter(scraped: Scene) -> None:
    status, body = scraped.worker.http_status("/health/batches")
    assert status == 200
    assert scraped.stuck_batch in body
    rows = psycopg.connect(scraped.db_url, autocommit=True).execute(
        "SELECT count(*) FROM els.batch_tracker WHERE completed_at IS NULL").fetchone()
    assert rows is not None and rows[0] == 1


def test_every_metric_the_monitoring_names_exists_with_its_labels(
        prometheus: Prometheus, scraped: Scene) -> None:
    problems = _missing(prometheus, scraped)
    assert not problems, (
        "metrics named by monitoring/alerts.yml or the dashboard, missing for a live worker:\n"
        + "\n".join(f"  {m}: {why}" for m, why in problems.items())
    )


def test_every_query_and_alert_expression_evaluates(
        prometheus: Prometheus, scraped: Scene) -> None:
    """Valid PromQL on this Prometheus, and each dashboard query returns data with the
    labels its grouping and legend use."""
    failures = []
    for where, expr, legend in _all_queries():
        answer = prometheus.query(expr)
        if answer.get("status") != "success":
            failures.append(f"{where}: {answer.get('error')}")
            continue
        if not where.startswith("panel"):
            continue  # an alert expression is empty while nothing is wrong
        result = answer["data"]["result"]
        if not result:
            failures.append(f"{where}: no data for {expr!r}")
            continue
        wanted = (contract.grouping_labels(expr) - {"le"}) | contract.legend_labels(legend)
        for lbl in sorted(wanted):
            if not any(s["metric"].get(lbl) for s in result):
                failures.append(f"{where}: no series with label {lbl!r} in {expr!r}")
    assert not failures, "\n".join(failures)


def _short_rules(tag: str) -> dict[str, Any]:
    """alerts.yml with every `for:` at 1s, group names prefixed and a label that marks
    the copies' alerts as this test's."""
    data = yaml.safe_load(contract.ALERTS.read_text(encoding="utf-8"))
    for group in data["groups"]:
        group["name"] = f"live-test-{tag}-{group['name']}"
        for rule in group["rules"]:
            rule["for"] = "1s"
            rule.setdefault("labels", {})["els_live_test"] = tag
    return data


def test_stuck_batch_and_dead_letter_alerts_become_active(
        prometheus: Prometheus, scraped: Scene) -> None:
    tag = uuid.uuid4().hex[:8]
    RULES_DIR.mkdir(parents=True, exist_ok=True)
    rules = RULES_DIR / f"live-{tag}.yml"
    rules.write_text(yaml.safe_dump(_short_rules(tag), sort_keys=False), encoding="utf-8")
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        prometheus.reload()
        wait_until(lambda: any(g.startswith(f"live-test-{tag}-")
                               for g in prometheus.rule_groups()), 30, "the rules to load")

        def active() -> dict[str, dict[str, Any]]:
            # an alert by instance: this scene's worker's only (the workers of tests running
            # beside it are scraped too, and one that dead-letters fires the same alert for
            # its own instance); an alert by job has no instance
            mine = [a for a in prometheus.alerts()
                    if a["labels"].get("els_live_test") == tag and a["state"] == "firing"
                    and a["labels"].get("instance") in (None, scraped.instance)]
            found = {}
            for name, labels in WANTED_ALERTS.items():
                for alert in mine:
                    if alert["labels"]["alertname"] == name and all(
                            alert["labels"].get(k) == v for k, v in labels.items()):
                        found[name] = alert
            return found if len(found) == len(WANTED_ALERTS) else {}

        try:
            found = wait_until(active, ALERTS_TIMEOUT_S, "the stuck-batch and dead-letter alerts")
        except AssertionError as exc:
            seen = sorted({(a["labels"]["alertname"], a["state"]) for a in prometheus.alerts()
                           if a["labels"].get("els_live_test") == tag})
            maintenance = [r for r in scraped.worker.log_records()
                           if r.get("msg") == "maintenance task failed"][-3:]
            raise AssertionError(f"{exc}\nthis test's alerts seen: {seen}\n"
                                 f"worker's maintenance failures: {maintenance}") from None
        noisy = sorted({a["labels"]["alertname"] for a in prometheus.alerts()
                        if a["labels"].get("els_live_test") == tag
                        and a["labels"]["alertname"] in QUIET_ALERTS
                        and a["labels"].get("instance") == scraped.instance})
        assert not noisy, f"alerts active for a healthy worker: {noisy}"
        dead = found["ElsDeadLettersRejected"]
        assert dead["labels"]["instance"] == scraped.instance
        assert re.search(r"dlq-replay --dry-run", dead["annotations"]["runbook"])
        assert "els.stuck_batches" in found["ElsBatchesStuck"]["annotations"]["runbook"]
    finally:
        rules.unlink(missing_ok=True)
        prometheus.reload()


def test_stack_prom_target_add_and_remove(prometheus: Prometheus, scraped: Scene) -> None:
    """`scripts/stack.sh prom-target add NAME HOST:PORT` makes Prometheus scrape it (what
    make demo does); `remove` stops that."""
    name = f"live-cli-{uuid.uuid4().hex[:8]}"

    def targets() -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = prometheus._get("/api/v1/targets", state="active")[
            "data"]["activeTargets"]
        return [t for t in active if t["labels"].get("worker") == name]

    subprocess.run([str(STACK_SH), "prom-target", "add", name, scraped.instance], check=True)
    try:
        found = wait_until(lambda: [t for t in targets() if t["health"] == "up"], 30,
                           f"target {name} scraped")
        assert found[0]["labels"]["job"] == "els-worker"
        assert found[0]["labels"]["instance"] == scraped.instance
    finally:
        subprocess.run([str(STACK_SH), "prom-target", "remove", name], check=True)
    wait_until(lambda: not targets(), 30, f"target {name} gone")
