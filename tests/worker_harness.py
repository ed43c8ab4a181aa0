"""Helpers for the worker's end-to-end tests: run `worker.py` as a subprocess against
the real broker and database, produce events, read topics back, wait with deadlines.

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from els_worker import contract
from tests.conftest import Topics

ROOT = Path(__file__).resolve().parent.parent
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(db_url: str, kafka_bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELS_")}
    env.update(topics.env())
    env.update(
        {
            "ELS_DATABASE_URL": db_url,
            "ELS_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "ELS_TOPIC_OUT_COMPLETED": topics.completed,
            "ELS_TOPIC_OUT_SLOT_ASSIGNED": topics.slot_assigned,
            "ELS_TOPIC_OUT_EXCESS": topics.excess,
            "ELS_METRICS_HOST": "127.0.0.1",
            "ELS_METRICS_PORT": str(free_port()),
            "ELS_CREATE_TOPICS": "false",
            "ELS_RETRY_BASE_MS": "50",
            "ELS_RETRY_MAX_MS": "1000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


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
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "run"],
            env=self.env,
            cwd=str(ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
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
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

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


def produce(
    bootstrap: str,
    messages: Iterable[tuple[str, bytes | None, bytes | None]],
    timeout: float = 30,
    pause_every: int = 0,
    pause: float = 0.0,
) -> None:
    """Produces (topic, key, value) in order and waits for every delivery report;
    with ``pause_every``, flushes and sleeps ``pause`` seconds after every that many."""
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 2,
         "compression.type": "zstd", "message.max.bytes": contract.MAX_MESSAGE_BYTES}
    )
    for n, (topic, key, value) in enumerate(messages, 1):
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
        if pause_every and n % pause_every == 0:
            producer.flush(timeout)
            time.sleep(pause)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} message(s) not delivered within {timeout}s"
    assert not errors, f"delivery failed: {errors[:3]}"


def event_bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0) -> list[Message]:
    """Every message currently in ``topic`` (all partitions, from the beginning)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        parts = list(meta.topics[topic].partitions) if topic in meta.topics else []
        tps = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                tps.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        if not tps:
            return []
        consumer.assign(tps)
        pending = {tp.partition for tp in tps}
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} timed out; partitions left {pending}")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
                    continue
                raise AssertionError(f"consumer error on {topic}: {err}")
            out.append(msg)
        return out
    finally:
        consumer.close()


def headers_of(msg: Message) -> dict[str, str]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in items}


def batch_report(db_url: str, batch_id: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT els.batch_report(%(b)s::text)", {"b": batch_id}).fetchone()
    assert row is not None
    report: dict[str, Any] = row[0]
    return report


def query(db_url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True, connect_timeout=3) as conn:
        return conn.execute(sql, params or {}).fetchall()


def all_complete(db_url: str, batch_ids: Iterable[str]) -> bool:
    ids = list(batch_ids)
    try:
        rows = query(
            db_url,
            "SELECT count(*) FROM els.batch_tracker WHERE batch_id = ANY(%(ids)s::text[])"
            " AND completed_at IS NOT NULL",
            {"ids": ids},
        )
    except psycopg.OperationalError:
        return False
    return bool(rows[0][0] == len(ids))


def outbox_unpublished(db_url: str) -> int:
    rows = query(db_url, "SELECT unpublished FROM els.outbox_backlog()")
    return int(rows[0][0])
