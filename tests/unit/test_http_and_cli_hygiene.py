"""Small things a user hits: the worker's HTTP server against misbehaving clients (it
closes half-open connections, never prints a traceback for a client that hung up,
never shows the database's address), and operator output that escapes what came
from events. The HTTP server is the real one, on a real socket."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from els_worker.admin import format_report, printable
from els_worker.health import Health, make_http_server
from els_worker.observability import Metrics


@pytest.fixture
def server() -> Iterator[tuple[Any, Health]]:
    metrics = Metrics()
    health = Health(metrics, 30)
    httpd = make_http_server("127.0.0.1", 0, metrics, health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, health
    finally:
        httpd.shutdown()
        httpd.server_close()


def _get(httpd: Any, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_half_open_connections_are_closed_not_kept(server: tuple[Any, Health]) -> None:
    httpd, _ = server
    port = httpd.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        started = time.monotonic()
        idle[0].settimeout(30)
        assert idle[0].recv(1) == b"", "the server must hang up on a client that sends nothing"
        assert time.monotonic() - started < 25
        # meanwhile, and after, real requests are answered
        assert _get(httpd, "/metrics")[0] == 200
    finally:
        for s in idle:
            s.close()


def test_a_client_that_hangs_up_leaves_no_traceback(
    server: tuple[Any, Health], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    httpd, _ = server
    port = httpd.server_address[1]
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # reset while the server writes
    time.sleep(0.5)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert _get(httpd, "/healthz")[0] in (200, 503)


def test_unhealthy_answers_name_the_fault_not_the_database_address(
    server: tuple[Any, Health]
) -> None:
    httpd, health = server
    health.loop_running = True
    health.beat()
    health.db_failed("operational", "connection exception")
    status, body = _get(httpd, "/healthz")
    assert status == 503 and json.loads(body)["database"] == "operational: connection exception"
    status, body = _get(httpd, "/health/batches")
    assert status == 503 and "127.0.0.1" not in body and "5432" not in body


def test_inspect_escapes_control_characters_and_ansi_escapes_from_stored_data() -> None:
    evil = "b-\x1b[2J\x1b[31mred\x07\r\nfake line"
    report = {"batch_id": evil, "registered": True, "complete": False,
              "tracker": {"user_id": "\x1b]0;title\x07u", "class_type": "GUEST"},
              "slots": [{"slot_no": 1, "essay_id": "e\x1b[1m", "status": "uploaded"}]}
    text = format_report(report)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "\\x1b[2J" in text and "fake line" in text
    assert text.count("\n") == format_report(printable(report)).count("\n")
    assert printable({"k\n": ["\x00"]}) == {"k\\n": ["\\x00"]}
