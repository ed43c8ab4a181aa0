"""`worker.py run` as a subprocess against the real broker and database: its
environment, its start (healthy or dead), its HTTP endpoints, its JSON log, its stop
(SIGTERM, bounded) or SIGKILL, and its registration as a Prometheus scrape target.

Everything here is bounded in time and fails loudly (with the worker's log tail)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from testkit.kafka import Topics
from testkit.stack import ROOT

WORKER = ROOT / "worker.py"
# the local stack's Prometheus discovers scrape targets here (scripts/stack.sh prom-target)
PROM_TARGETS = ROOT / ".stack" / "prometheus" / "targets"
T = TypeVar("T")


def prometheus_target(name: str, address: str | None) -> None:
    """Registers (``address`` "host:port") or removes (None) a scrape target of the
    local stack's Prometheus, as ``scripts/stack.sh prom-target add|remove`` does; a
    no-op when the stack has no Prometheus directory (e.g. an external stack)."""
    if not PROM_TARGETS.is_dir():
        return
    body = [{"targets": [address], "labels": {"worker": name}}] if address else []
    tmp = PROM_TARGETS / f"{name}.json.tmp"
    tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
    tmp.replace(PROM_TARGETS / f"{name}.json")


def http_status(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET ``path`` on a worker's HTTP port; (0, "") if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(db_url: str, kafka_bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    """The environment of one ``worker.py run`` against these services and topics: the
    caller's, without its own ``ELS_*`` variables, plus these and ``extra`` (the one
    environment builder of tests, chaos runs and benchmarks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELS_")}
    env.update(topics.env())
    env.update({"ELS_DATABASE_URL": db_url, "ELS_KAFKA_BOOTSTRAP": kafka_bootstrap,
                "ELS_METRICS_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def worker_env(db_url: str, kafka_bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    """``service_env`` for a test's worker: an HTTP port of its own, the topics the test
    created (none created by the worker), retries quick enough for a test's patience."""
    return service_env(db_url, kafka_bootstrap, topics, **{
        "ELS_METRICS_PORT": str(free_port()), "ELS_CREATE_TOPICS": "false",
        "ELS_RETRY_BASE_MS": "50", "ELS_RETRY_MAX_MS": "1000", **extra})


def spawn(env: dict[str, str], log: IO[bytes], root: Path = ROOT,
          new_session: bool = False) -> subprocess.Popen[bytes]:
    """``python worker.py run`` of the worker tree ``root`` (a benchmark's baseline is
    another checkout), its output to ``log``: the one way tests, chaos runs and
    benchmarks start a worker. ``new_session``: its own process group, out of reach of
    the terminal's signals (a chaos run kills its workers on its own schedule)."""
    return subprocess.Popen([sys.executable, str(root / "worker.py"), "run"], env=env,
                            cwd=str(root), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=new_session)


class WorkerProcess:
    """`python worker.py run` in a subprocess; its JSON log goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["ELS_METRICS_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        # scraped by the local stack's Prometheus while it runs (label worker=<name>)
        self.target_name = f"test-{os.getpid()}-{self.port}"

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = spawn(self.env, self._log)
        prometheus_target(self.target_name, f"127.0.0.1:{self.port}")
        wait_until(self.healthy_or_dead, 60, "worker to start and get healthy", self.tail)
        assert self.proc.poll() is None, f"worker exited at start:\n{self.tail()}"
        return self

    def healthy_or_dead(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        return self.http_status("/healthz")[0] == 200

    def http_status(self, path: str) -> tuple[int, str]:
        return http_status(self.port, path)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM; returns the exit code (fails if the worker does not stop in time)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker did not stop within {timeout}s:\n{self.tail()}") from exc
        self._log.close()
        prometheus_target(self.target_name, None)
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if hasattr(self, "_log") and not self._log.closed:
            self._log.close()
        prometheus_target(self.target_name, None)

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    diagnostics: Callable[[], str] | None = None,
    interval: float = 0.2,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diagnostics()}" if diagnostics else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)
