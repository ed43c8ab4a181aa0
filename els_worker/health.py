"""The worker's health verdict and its HTTP server: /metrics, /healthz, /health/batches.

The server never touches the database: /health/batches answers from the list the
maintenance loop refreshes (so a burst of requests cannot exhaust connections), and a
503 names the fault, never the database's host or port. Requests have a read timeout
and a client that goes away mid-answer is not an error worth a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from els_worker.observability import Metrics, log

PATHS = ["/metrics", "/healthz", "/health/batches"]


class Health:
    """State shared by the loops and the HTTP server."""

    def __init__(self, metrics: Metrics, max_age: float) -> None:
        self.metrics = metrics
        self.max_age = max_age
        self._lock = threading.Lock()
        self.loop_beat = time.monotonic()
        self.last_db_ok = 0.0
        self.loop_running = False
        self.db_fault: str | None = None  # "deployment: function missing ..."
        self.systemic: str | None = None
        # db_partition -> rows set aside there (replaced whole: the HTTP threads read it)
        self.outbox_set_aside: dict[str, int] = {}
        self.stuck: dict[str, Any] | None = None  # the last /health/batches answer
        # "topic[partition]" -> why the stall watchdog declared it stalled (replaced whole,
        # never mutated: the HTTP threads read it)
        self.stalled_partitions: dict[str, str] = {}

    def beat(self) -> None:
        self.loop_beat = time.monotonic()

    def db_ok(self) -> None:
        self.last_db_ok = time.monotonic()
        self.db_fault = None
        self.metrics.db_up.set(1)

    def db_failed(self, kind: str, reason: str = "") -> None:
        # a deployment fault means the database answers, but cannot apply events
        self.db_fault = f"{kind}: {reason}" if reason else kind
        self.metrics.db_up.set(1 if kind == "deployment" else 0)

    def systemic_fault(self, reason: str | None) -> None:
        if reason != self.systemic:
            log(logging.ERROR if reason else logging.INFO,
                "systemic fault" if reason else "systemic fault cleared", reason=reason)
        self.systemic = reason
        self.metrics.systemic.set(1 if reason else 0)

    def set_aside(self, db_partition: str, rows: int) -> None:
        # one relay per partition calls this: the copy-and-replace under the lock, so
        # that two relays updating at once do not drop each other's count
        with self._lock:
            self.outbox_set_aside = {**self.outbox_set_aside, db_partition: rows}

    def partition_stalls(self, reasons: dict[str, str]) -> None:
        self.stalled_partitions = dict(reasons)

    def set_stuck(self, answer: dict[str, Any]) -> None:
        with self._lock:
            self.stuck = answer

    def status(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        loop_age = now - self.loop_beat
        db_age = now - self.last_db_ok if self.last_db_ok else None
        loop_ok = self.loop_running and loop_age <= self.max_age
        db_ok = db_age is not None and db_age <= self.max_age and self.db_fault is None
        stalled = self.stalled_partitions
        ok = loop_ok and db_ok and self.systemic is None and not stalled
        self.metrics.healthy.set(1 if ok else 0)
        body: dict[str, Any] = {
            "consumer_loop": "ok" if loop_ok else "stale",
            "consumer_loop_age_seconds": round(loop_age, 3),
            "database": "ok" if db_ok else (self.db_fault or "unreachable"),
            "database_last_ok_seconds_ago": round(db_age, 3) if db_age is not None else None,
            "systemic_fault": self.systemic,
            "stalled_partitions": stalled,
            "outbox_set_aside": sum(self.outbox_set_aside.values()),
        }
        return ok, body


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    health: Health
    timeout = 10  # seconds to read a request: half-open connections do not pile up

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.health.status()  # refreshes els_worker_healthy
            self._send(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, body = self.health.status()
            self._json(200 if ok else 503, {"status": "ok" if ok else "unhealthy", **body})
        elif path == "/health/batches":
            stuck = self.health.stuck
            if stuck is None:
                self._json(503, {"error": "stuck batches not read yet (database unreachable?)"})
            else:
                self._json(200, stuck)
        else:
            self._json(404, {"error": "not found", "paths": PATHS})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hung up (BrokenPipe, reset, read timeout) is not our error
        exc = sys.exc_info()[1]
        log(logging.DEBUG, "http client error", error=f"{type(exc).__name__}: {exc}")


def make_http_server(host: str, port: int, metrics: Metrics, health: Health) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
    return _Server((host, port), handler)
