"""Deadlines, retention and the batch gauges, on a schedule (SPEC section 10).

Every worker refreshes the gauges (oldest incomplete batch, stuck batches) and the list
/health/batches serves. Closing overdue batches (``ELS_BATCH_DEADLINE_SECONDS``) and
purging history (``ELS_RETENTION_SECONDS``) run in one worker at a time: the one whose
session holds the maintenance advisory lock, which PostgreSQL releases when that session
ends (a crashed worker hands the job on). Behind the proxy the same worker also releases
the essay-id claims crashed registrations left (``ELS_CLAIM_REAP_SECONDS``,
els.reap_claims on every partition through the proxy). A failure here is logged and counted, and
never stops consumption.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from els_worker import db
from els_worker.config import Config
from els_worker.errors import pg_diagnostics
from els_worker.health import Health
from els_worker.observability import Metrics, log

STUCK_LIST_LIMIT = 1000
CLOSE_CHUNK = 1000
PURGE_CALLS_PER_ROUND = 100
# The gauges and /health/batches are at most this old, whatever the task interval.
GAUGE_REFRESH_SECONDS = 10.0


class Maintenance:
    def __init__(self, cfg: Config, metrics: Metrics, health: Health, stop: threading.Event,
                 session: db.Session | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.health = health
        self.stop = stop
        self.session = session or db.Session(cfg, "els-maintenance")
        self.thread: threading.Thread | None = None
        self.holds_lock = False

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="maintenance", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        log(logging.INFO, "maintenance loop started",
            deadline_seconds=self.cfg.batch_deadline_seconds,
            retention_seconds=self.cfg.retention_seconds,
            interval_seconds=self.cfg.maintenance_interval_seconds)
        interval = self.cfg.maintenance_interval_seconds
        last_tasks = float("-inf")
        while not self.stop.is_set():
            due = time.monotonic() - last_tasks >= interval
            self.run_once(tasks=due)
            if due:
                last_tasks = time.monotonic()
            self.stop.wait(min(interval, GAUGE_REFRESH_SECONDS))
        self.session.close()

    def run_once(self, tasks: bool = True) -> None:
        """One round (the gauges, then the scheduled tasks when due); never raises."""
        self._task("stuck_list", self._refresh_stuck_list)
        self._task("batch_gauges", self._refresh_gauges)
        reap = bool(self.cfg.partition_urls and self.cfg.claim_reap_seconds)
        if not tasks or not (self.cfg.batch_deadline_seconds or self.cfg.retention_seconds
                             or reap):
            return
        if not self._task("lock", self._take_lock) or not self.holds_lock:
            return
        if self.cfg.batch_deadline_seconds:
            self._task("close_overdue", self._close_overdue)
        if self.cfg.retention_seconds:
            self._task("purge_history", self._purge_history)
        if reap:
            self._task("reap_claims", self._reap_claims)

    def _task(self, task: str, work: Any) -> bool:
        started = time.monotonic()
        try:
            work()
        except (psycopg.Error, OSError) as exc:
            self.metrics.maintenance_runs.labels(task=task, result="error").inc()
            self.session.after_fault(exc)
            if self.session.conn is None:
                self.holds_lock = False  # the lock went with the session
            log(logging.WARNING, "maintenance task failed", task=task, **pg_diagnostics(exc))
            return False
        self.metrics.maintenance_runs.labels(task=task, result="ok").inc()
        self.metrics.maintenance_seconds.labels(task=task).observe(time.monotonic() - started)
        return True

    def _conn(self) -> psycopg.Connection[Any]:
        had = self.session.conn
        conn = self.session.get()
        if conn is not had:
            self.holds_lock = False  # a new session holds nothing yet
        return conn

    def _take_lock(self) -> None:
        if not self.holds_lock:
            row = self._conn().execute(db.TRY_MAINTENANCE_LOCK).fetchone()
            self.holds_lock = bool(row and row[0])
            if self.holds_lock:
                log(logging.INFO, "maintenance lock taken: this worker runs deadlines/retention")

    def _refresh_stuck_list(self) -> None:
        seconds = self.cfg.stuck_after_seconds
        row = self._conn().execute(db.STUCK_BATCHES, {"seconds": seconds,
                                                      "limit": STUCK_LIST_LIMIT}).fetchone()
        stuck = row[0] if row else []
        self.health.set_stuck({"threshold_seconds": seconds, "count": len(stuck),
                               "listed_at_most": STUCK_LIST_LIMIT, "stuck_batches": stuck})

    def _refresh_gauges(self) -> None:
        row = self._conn().execute(db.BATCH_HEALTH,
                                   {"seconds": self.cfg.stuck_after_seconds}).fetchone()
        stats = row[0] if row else {}
        self.metrics.stuck_batches.set(stats.get("stuck_batches") or 0)
        self.metrics.oldest_incomplete.set(stats.get("oldest_incomplete_age_seconds") or 0)

    def _close_overdue(self) -> None:
        conn = self._conn()
        while not self.stop.is_set():
            row = conn.execute(db.CLOSE_OVERDUE, {"seconds": self.cfg.batch_deadline_seconds,
                                                  "limit": CLOSE_CHUNK}).fetchone()
            result = row[0] if row else {}
            closed = int(result.get("batches_closed") or 0)
            if closed:
                self.metrics.deadline_closed.inc(closed)
                log(logging.INFO, "overdue batches closed", batches_closed=closed,
                    slots_timed_out=result.get("slots_timed_out"))
            if closed < CLOSE_CHUNK:
                return

    def _reap_claims(self) -> None:
        row = self._conn().execute(db.REAP_CLAIMS,
                                   {"seconds": self.cfg.claim_reap_seconds}).fetchone()
        result = row[0] if row else {}
        if result.get("claims_held") or result.get("claims_released"):
            log(logging.INFO, "essay-id claims resolved", **result)

    def _purge_history(self) -> None:
        """purge_history is bounded per call (one short transaction each): call it until
        it finds nothing more, or PURGE_CALLS_PER_ROUND times (the rest waits a round)."""
        conn = self._conn()
        totals: dict[str, int] = {}
        for _ in range(PURGE_CALLS_PER_ROUND):
            if self.stop.is_set():
                break
            row = conn.execute(db.PURGE_HISTORY, {"seconds": self.cfg.retention_seconds}).fetchone()
            result = row[0] if row else {}
            for key, value in result.items():
                totals[key] = totals.get(key, 0) + int(value or 0)
            if not any(result.values()):
                break
        if any(totals.values()):
            log(logging.INFO, "history purged", **totals)
