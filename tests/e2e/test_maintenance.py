"""The worker's maintenance loop (SPEC 10) with two real workers: overdue batches are
closed by their deadline exactly once, by one worker at a time (a session advisory
lock), and when that worker dies the other takes the job over."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from testkit import events as ev
from testkit.db import all_complete, outbox_unpublished, query
from testkit.kafka import Topics, event_bytes, produce, read_topic
from testkit.worker import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.kafka


def _incomplete_batches(topics: Topics, n: int) -> tuple[list[tuple[str, bytes, bytes]], list[str]]:
    """n batches of 3 essays that get 1 content each: they can only end by deadline."""
    msgs, ids = [], []
    for b in range(n):
        batch_id = f"late-{uuid.uuid4().hex[:6]}-{b}"
        ids.append(batch_id)
        key = batch_id.encode()
        msgs.append((topics.batch_registered, key, event_bytes(
            ev.registration(batch_id, [f"{batch_id}-e{i}" for i in range(3)]))))
        msgs.append((topics.content_provisioned, key,
                     event_bytes(ev.content(batch_id, f"{batch_id}-t0"))))
    return msgs, ids


def _holds_lock(worker: WorkerProcess) -> bool:
    return any(r.get("msg", "").startswith("maintenance lock taken") for r in worker.log_records())


def test_two_workers_close_overdue_batches_once_and_hand_over_when_one_dies(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    settings = {"ELS_BATCH_DEADLINE_SECONDS": "3", "ELS_MAINTENANCE_INTERVAL_SECONDS": "1",
                "ELS_RETENTION_SECONDS": "3600"}
    first, first_ids = _incomplete_batches(topics, 3)
    second, second_ids = _incomplete_batches(topics, 2)
    a = WorkerProcess(worker_env(db_url, kafka_bootstrap, topics, **settings), tmp_path / "a.log")
    b = WorkerProcess(worker_env(db_url, kafka_bootstrap, topics, **settings), tmp_path / "b.log")
    with a, b:
        produce(kafka_bootstrap, first)
        wait_until(lambda: all_complete(db_url, first_ids), 60, "closed by deadline", a.tail)
        holders = [w for w in (a, b) if _holds_lock(w)]
        assert len(holders) == 1, "exactly one worker runs maintenance"
        holder = holders[0]
        other = b if holder is a else a
        holder.kill()  # its session ends, and the advisory lock with it
        produce(kafka_bootstrap, second)
        wait_until(lambda: all_complete(db_url, second_ids), 60, "closed after the hand-over",
                   other.tail)
        assert _holds_lock(other)
        wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "outbox drained", other.tail)
        assert other.terminate() == 0

    rows = query(db_url, "SELECT batch_id, completion_reason,"
                         " (SELECT count(*) FROM els.essay_slot s WHERE s.batch_id = t.batch_id"
                         "   AND s.failure_code = 'CONTENT_TIMEOUT')"
                         " FROM els.batch_tracker t WHERE batch_id = ANY(%(ids)s::text[])",
                 {"ids": first_ids + second_ids})
    assert sorted(rows) == sorted((bid, "deadline", 2) for bid in first_ids + second_ids)
    completions: dict[str, set[str]] = {}
    for msg in read_topic(kafka_bootstrap, topics.completed, timeout=30):
        data = json.loads(msg.value() or b"{}")
        assert data["data"]["completion_reason"] == "deadline"
        completions.setdefault(data["data"]["batch_id"], set()).add(data["event_id"])
    assert {k: len(v) for k, v in completions.items()} == dict.fromkeys(first_ids + second_ids, 1)
