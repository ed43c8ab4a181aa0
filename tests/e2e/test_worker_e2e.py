"""The worker end to end, against the real broker and database (no mocks).

Each test gets a fresh database cloned from the migrated template (``db_url``) and
its own topics and consumer group (``unique_topics``); the worker runs as
``python worker.py run`` in a subprocess, exactly as deployed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from testkit import events as ev
from testkit.db import all_complete, batch_report, outbox_unpublished, query
from testkit.kafka import DEFAULT_TOPICS as DEFAULT_TOPIC_NAMES
from testkit.kafka import Topics, event_bytes, headers_of, produce, read_topic
from testkit.stack import ROOT, STACK_SH
from testkit.worker import WORKER, WorkerProcess, free_port, wait_until, worker_env

pytestmark = pytest.mark.kafka

DLQ_HEADERS = {
    "els.error.sqlstate",
    "els.error.message",
    "els.error.detail",
    "els.source.topic",
    "els.source.partition",
    "els.source.offset",
    "els.failed_at",
    "els.attempts",
}


def _batch_messages(
    topics: Topics, batch_id: str, n: int, *, class_id: str | None = None
) -> list[tuple[str, bytes, bytes]]:
    """Registration + n contents for one batch, as (topic, key, value)."""
    key = batch_id.encode()
    essay_ids = [f"{batch_id}-e{i}" for i in range(n)]
    out = [
        (
            topics.batch_registered,
            key,
            event_bytes(ev.registration(batch_id, essay_ids, class_id=class_id)),
        )
    ]
    for i in range(n):
        out.append(
            (topics.content_provisioned, key, event_bytes(ev.content(batch_id, f"{batch_id}-t{i}")))
        )
    return out


def _completion_ids(kafka_bootstrap: str, topics: Topics) -> Counter[str]:
    ids: Counter[str] = Counter()
    for msg in read_topic(kafka_bootstrap, topics.completed):
        envelope = json.loads(msg.value() or b"{}")
        assert headers_of(msg)["event_id"] == envelope["event_id"]
        ids[envelope["data"]["batch_id"] + "/" + envelope["event_id"]] += 1
    return ids


def test_guest_batch_shuffled_with_duplicates_completes_once(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    batch_id = f"guest-{uuid.uuid4().hex[:8]}"
    msgs = _batch_messages(topics, batch_id, 6)
    rng = random.Random(5)
    msgs = msgs + rng.sample(msgs, 4)  # duplicates: same event delivered twice
    rng.shuffle(msgs)
    env = worker_env(db_url, kafka_bootstrap, topics, ELS_STUCK_AFTER_SECONDS="0")
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, msgs)
        wait_until(lambda: all_complete(db_url, [batch_id]), 60, "batch complete", worker.tail)
        wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "outbox drained", worker.tail)

        def completion_seen() -> Counter[str]:
            return _completion_ids(kafka_bootstrap, topics)

        ids = wait_until(completion_seen, 30, "completion event on its topic", worker.tail)
        # exactly one distinct event id for the completion (and here exactly one message)
        assert len(ids) == 1, ids
        (only,) = ids
        assert only.startswith(batch_id + "/")
        completion = json.loads(read_topic(kafka_bootstrap, topics.completed)[0].value() or b"")
        assert completion["event_type"] == "huleedu.batch.content.provisioning.completed.v1"
        assert completion["data"]["provisioned_count"] == 6
        assert completion["data"]["class_type"] == "GUEST"
        assert len(completion["data"]["essays_for_processing"]) == 6

        rep = batch_report(db_url, batch_id)
        assert rep["complete"] is True
        assert rep["slot_counts"] == {"ready_for_processing": 6}
        assigned = read_topic(kafka_bootstrap, topics.slot_assigned)
        assert len({headers_of(m)["event_id"] for m in assigned}) == 6
        for dlq in (topics.batch_registered_dlq, topics.content_provisioned_dlq):
            assert read_topic(kafka_bootstrap, dlq) == []

        # metrics and health while the worker is up
        status, body = worker.http_status("/metrics")
        assert status == 200
        assert (
            f'els_events_total{{outcome="duplicate",topic="{topics.batch_registered}"}}' in body
            or (
                f'els_events_total{{outcome="duplicate",topic="{topics.content_provisioned}"}}'
                in body
            )
        )
        assert "els_outbox_published_total" in body
        # the runbook's `curl :9095/metrics | grep els_batch_registration`
        assert 'els_batch_registrations_total{outcome="registered"} 1.0' in body
        assert worker.http_status("/healthz")[0] == 200
        status, body = worker.http_status("/health/batches")
        assert status == 200 and json.loads(body)["count"] == 0
        assert worker.terminate() == 0

    # one structured line per event: 16 messages in, 16 lines with the required fields
    lines = [
        r for r in worker.log_records() if r.get("msg") in ("event applied", "event dead-lettered")
    ]
    assert len(lines) == len(msgs)
    for rec in lines:
        for key in (
            "topic",
            "partition",
            "offset",
            "batch_id",
            "correlation_id",
            "outcome",
            "duration_ms",
        ):
            assert key in rec, (key, rec)
        assert rec["batch_id"] == batch_id
    outcomes = Counter(r["outcome"] for r in lines)
    assert outcomes["duplicate"] == 4, outcomes


def test_malformed_events_dead_lettered_neighbours_applied(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    batch_id = f"regular-{uuid.uuid4().hex[:8]}"
    key = batch_id.encode()
    good = _batch_messages(topics, batch_id, 3, class_id="class-1")
    bad_missing = ev.content(batch_id, "t-missing")
    del bad_missing["data"]["file_upload_id"]
    conflicting = ev.registration(batch_id, [f"{batch_id}-e0", "other"], class_id="class-1")
    bad: list[tuple[str, bytes, bytes]] = [
        (topics.content_provisioned, key, b'{"event_id": "x", "data": {'),  # not JSON
        (topics.content_provisioned, key, b"\xff\xfe{}"),  # not UTF-8
        (topics.content_provisioned, key, b'{"data": {"entity_id": "a\\u0000"}}'),  # PG refuses
        (topics.content_provisioned, key, event_bytes(bad_missing)),  # ELV02
    ]
    # registration, one content, the four bad ones, then the rest, then a conflicting
    # re-registration; all with the batch id as key, so in one partition per topic
    msgs = [
        good[0],
        good[1],
        *bad,
        good[2],
        good[3],
        (topics.batch_registered, key, event_bytes(conflicting)),
    ]
    waiting = f"waiting-{uuid.uuid4().hex[:8]}"  # registered, never complete: "stuck"
    msgs.append(_batch_messages(topics, waiting, 2)[0])
    env = worker_env(db_url, kafka_bootstrap, topics, ELS_STUCK_AFTER_SECONDS="0")
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, msgs)
        wait_until(lambda: all_complete(db_url, [batch_id]), 60, "batch complete", worker.tail)

        def stuck() -> list[str]:
            status, body = worker.http_status("/health/batches")
            assert status == 200, body
            return [b["batch_id"] for b in json.loads(body)["stuck_batches"]]

        assert wait_until(stuck, 30, "the waiting batch in /health/batches") == [waiting]

        def dlq_count() -> bool:
            return (
                len(read_topic(kafka_bootstrap, topics.content_provisioned_dlq)) == 4
                and len(read_topic(kafka_bootstrap, topics.batch_registered_dlq)) == 1
            )

        wait_until(dlq_count, 30, "5 dead letters", worker.tail)
        assert worker.terminate() == 0

    dead = read_topic(kafka_bootstrap, topics.content_provisioned_dlq)
    source = {m.offset(): m for m in read_topic(kafka_bootstrap, topics.content_provisioned)}
    by_value = {}
    for msg in dead:
        h = headers_of(msg)
        assert set(h) == DLQ_HEADERS, h
        assert h["els.source.topic"] == topics.content_provisioned
        original = source[int(h["els.source.offset"])]
        assert int(h["els.source.partition"]) == original.partition()
        assert msg.key() == original.key() == key
        assert msg.value() == original.value()
        assert datetime.fromisoformat(h["els.failed_at"]).tzinfo is not None
        assert int(h["els.attempts"]) >= 1
        assert "\n" not in h["els.error.message"]
        json.loads(h["els.error.detail"])  # detail is a JSON object
        by_value[msg.value()] = h
    assert by_value[bad[0][2]]["els.error.sqlstate"] == "ELV01"
    assert by_value[bad[1][2]]["els.error.sqlstate"] == "ELV01"
    assert "utf" in by_value[bad[1][2]]["els.error.detail"].lower()
    nul = by_value[bad[2][2]]
    assert nul["els.error.sqlstate"] == "ELV01"
    assert json.loads(nul["els.error.detail"])["original_sqlstate"] == "22P05"
    missing = by_value[bad[3][2]]
    assert missing["els.error.sqlstate"] == "ELV02"
    assert json.loads(missing["els.error.detail"])["field"] == "file_upload_id"
    (conflict,) = read_topic(kafka_bootstrap, topics.batch_registered_dlq)
    assert headers_of(conflict)["els.error.sqlstate"] == "ELC01"

    rep = batch_report(db_url, batch_id)
    assert rep["complete"] is True
    assert rep["tracker"]["class_type"] == "REGULAR"
    assert rep["slot_counts"] == {"ready_for_processing": 3}

    # errors carry the full PostgreSQL diagnostics in the log
    dl = [r for r in worker.log_records() if r.get("msg") == "event dead-lettered"]
    assert len(dl) == 5
    pg = next(r for r in dl if r["sqlstate"] == "ELV02")["pg"]
    assert pg["sqlstate"] == "ELV02" and "context" in pg and "detail" in pg


@pytest.mark.serial  # stops or restricts the shared stack's PostgreSQL
def test_database_down_ten_seconds_nothing_dead_lettered(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    batches = [f"outage-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    msgs = [m for b in batches for m in _batch_messages(topics, b, 4)]
    first, second = msgs[: len(msgs) // 3], msgs[len(msgs) // 3 :]
    env = worker_env(
        db_url,
        kafka_bootstrap,
        topics,
        ELS_RETRY_MAX_MS="2000",
        ELS_HEALTH_MAX_AGE_SECONDS="3",
    )
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, first)
        wait_until(lambda: all_complete(db_url, batches[:1]), 60, "first batch", worker.tail)
        subprocess.run(["bash", str(STACK_SH), "pg-down"], check=True, timeout=90)
        try:
            down_at = time.monotonic()
            produce(kafka_bootstrap, second)
            wait_until(
                lambda: worker.http_status("/healthz")[0] == 503,
                40,
                "/healthz to report the database unreachable",
                worker.tail,
            )
            time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
            assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        finally:
            subprocess.run(["bash", str(STACK_SH), "pg-up"], check=True, timeout=120)
        wait_until(
            lambda: all_complete(db_url, batches), 90, "all batches after the outage", worker.tail
        )
        wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "outbox drained", worker.tail)
        wait_until(
            lambda: worker.http_status("/healthz")[0] == 200, 30, "healthy again", worker.tail
        )
        assert worker.terminate() == 0

    for dlq in (
        topics.batch_registered_dlq,
        topics.content_provisioned_dlq,
        topics.validation_failed_dlq,
    ):
        assert read_topic(kafka_bootstrap, dlq) == [], f"{dlq} must be empty"
    records = worker.log_records()
    assert any(
        r.get("retry_kind") == "operational" and r.get("messages") for r in records
    ), "the outage was never noticed"
    assert not [r for r in records if r.get("msg") == "event dead-lettered"]
    ids = _completion_ids(kafka_bootstrap, topics)
    assert sorted(k.split("/")[0] for k in ids) == sorted(batches)
    rows = query(
        db_url, "SELECT count(*) FROM els.essay_slot WHERE status = 'ready_for_processing'"
    )
    assert rows[0][0] == 6 * 4


def test_sigterm_mid_stream_then_restart_nothing_lost_nothing_twice(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    batches = [f"sigterm-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    msgs = [m for b in batches for m in _batch_messages(topics, b, 5)]  # 240 events
    # small micro-batches so that the stream is still going when SIGTERM arrives
    env = worker_env(db_url, kafka_bootstrap, topics, ELS_BATCH_MAX_MESSAGES="3")
    first = WorkerProcess(env, tmp_path / "worker1.log")
    with first:
        produce(kafka_bootstrap, msgs)

        def some_applied() -> bool:
            n = query(db_url, "SELECT count(*) FROM els.essay_content")[0][0]
            return bool(n >= 10)

        wait_until(some_applied, 60, "first events applied", first.tail, interval=0.05)
        assert first.terminate() == 0, first.tail()
    records1 = first.log_records()
    assert any(r.get("msg") == "worker stopped" for r in records1), first.tail()
    applied1 = [r for r in records1 if r.get("msg") == "event applied"]
    assert 0 < len(applied1) < len(msgs), "SIGTERM should land mid-stream"
    print(f"first run applied {len(applied1)} of {len(msgs)} before SIGTERM")

    second = WorkerProcess(env, tmp_path / "worker2.log")
    with second:
        wait_until(lambda: all_complete(db_url, batches), 120, "all batches", second.tail)
        wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "outbox drained", second.tail)
        assert second.terminate() == 0
    applied2 = [r for r in second.log_records() if r.get("msg") == "event applied"]

    # nothing lost: every message was applied exactly once over the two runs; nothing
    # twice: no event came back as `duplicate` (the first run committed its offsets)
    seen = Counter((r["topic"], r["partition"], r["offset"]) for r in applied1 + applied2)
    assert len(seen) == len(msgs)
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1][:5]
    assert not [r for r in applied1 + applied2 if r["outcome"] == "duplicate"]
    # one completion per batch, in the outbox and on the topic
    rows = query(
        db_url,
        "SELECT count(*), count(DISTINCT message_key) FROM els.event_outbox"
        " WHERE event_type = 'BatchContentProvisioningCompleted'",
    )
    assert rows[0] == (40, 40)
    ids = wait_until(lambda: _completion_ids(kafka_bootstrap, topics), 30, "completions")
    assert sorted(k.split("/")[0] for k in ids) == sorted(batches)


def test_inspect_and_dlq_replay(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    batch_id = f"replay-{uuid.uuid4().hex[:8]}"
    key = batch_id.encode()
    fixable = event_bytes(ev.content(batch_id, "t-late"))
    dead: list[tuple[str, bytes, bytes, dict[str, str]]] = [
        (topics.content_provisioned_dlq, key, fixable, {"els.error.sqlstate": "XX000"}),
        (topics.content_provisioned_dlq, key, b"{not json", {"els.error.sqlstate": "ELV01"}),
    ]
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for topic, k, value, extra in dead:
        headers = {
            "els.error.message": "boom",
            "els.error.detail": "{}",
            "els.source.topic": topics.content_provisioned,
            "els.source.partition": "0",
            "els.source.offset": "0",
            "els.failed_at": "2026-01-01T00:00:00+00:00",
            "els.attempts": "5",
            **extra,
        }
        producer.produce(topic, key=k, value=value, headers=list(headers.items()))
    assert producer.flush(30) == 0
    env = worker_env(db_url, kafka_bootstrap, topics)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(WORKER), *args],
            env=env,
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = cli("dlq-replay", "--dry-run", "--sqlstate", "XX")
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1" in dry.stdout, dry.stdout
    assert read_topic(kafka_bootstrap, topics.content_provisioned) == []

    done = cli("dlq-replay", "--sqlstate", "XX")
    assert done.returncode == 0, done.stderr
    assert "replayed 1" in done.stdout and "kept 1" in done.stdout, done.stdout
    (back,) = read_topic(kafka_bootstrap, topics.content_provisioned)
    assert back.key() == key and back.value() == fixable
    # the kept one was re-queued at the DLQ's tail; a second run finds nothing new
    again = cli("dlq-replay", "--sqlstate", "XX")
    assert "replayed 0" in again.stdout and "kept 1" in again.stdout, again.stdout

    # the replayed event is applied by the worker; inspect shows the batch
    reg = ev.registration(batch_id, [f"{batch_id}-e0"])
    produce(kafka_bootstrap, [(topics.batch_registered, key, event_bytes(reg))])
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        wait_until(lambda: all_complete(db_url, [batch_id]), 60, "batch complete", worker.tail)
        assert worker.terminate() == 0
    out = cli("inspect", batch_id)
    assert out.returncode == 0, out.stderr
    assert "COMPLETE" in out.stdout and "t-late" in out.stdout, out.stdout
    raw = cli("inspect", "--json", batch_id)
    assert json.loads(raw.stdout)["complete"] is True
    missing = cli("inspect", "no-such-batch")
    assert missing.returncode == 1 and "NOT REGISTERED" in missing.stdout


def test_rebalance_second_worker_joins_then_first_leaves(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    """Partitions move between two workers mid-stream (join, then SIGTERM of the
    first): every event is applied exactly once, every batch completes once."""
    topics = unique_topics
    batches = [f"rebal-{i}-{uuid.uuid4().hex[:6]}" for i in range(60)]
    msgs = [m for b in batches for m in _batch_messages(topics, b, 4)]
    env = worker_env(db_url, kafka_bootstrap, topics, ELS_BATCH_MAX_MESSAGES="2")
    w1 = WorkerProcess(env, tmp_path / "w1.log")
    w2 = WorkerProcess(dict(env, ELS_METRICS_PORT=str(free_port())), tmp_path / "w2.log")
    # the stream comes in three parts: before the second worker joins, while both are in
    # the group, and after the first one left; each part trickles in, and the next waits
    # for its rebalance, so both rebalances happen mid-stream however slow the machine
    third = len(msgs) // 3
    parts = [msgs[:third], msgs[third:2 * third], msgs[2 * third:]]
    gates = [threading.Event(), threading.Event(), threading.Event()]
    produced = [threading.Event(), threading.Event(), threading.Event()]
    gates[0].set()

    def send() -> None:
        for part, gate, done in zip(parts, gates, produced, strict=True):
            if not gate.wait(180):
                return
            produce(kafka_bootstrap, part, pause_every=5, pause=0.05)
            done.set()

    sender = threading.Thread(target=send)
    with w1:
        sender.start()
        try:
            with w2:
                wait_until(
                    lambda: any(r.get("msg") == "partitions assigned" for r in w2.log_records()),
                    60,
                    "second worker assigned",
                    w2.tail,
                )
                gates[1].set()
                assert produced[1].wait(120), "the second part was not produced"
                assert w1.terminate() == 0, w1.tail()
                gates[2].set()
                assert produced[2].wait(120), "the third part was not produced"
                wait_until(lambda: all_complete(db_url, batches), 120, "all batches", w2.tail)
                wait_until(lambda: outbox_unpublished(db_url) == 0, 30, "outbox drained", w2.tail)
                assert w2.terminate() == 0
        finally:
            for gate in gates:
                gate.set()
            sender.join(60)
    applied = [r for w in (w1, w2) for r in w.log_records() if r.get("msg") == "event applied"]
    assert [r for r in w1.log_records() if r.get("msg") == "partitions revoked"]
    seen = Counter((r["topic"], r["partition"], r["offset"]) for r in applied)
    assert len(seen) == len(msgs)
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1][:5]
    rows = query(
        db_url,
        "SELECT count(*) FROM els.event_outbox"
        " WHERE event_type = 'BatchContentProvisioningCompleted'",
    )
    assert rows[0][0] == len(batches)
    by_w2 = [r for r in w2.log_records() if r.get("msg") == "event applied"]
    assert by_w2, "the second worker should have taken over part of the stream"
    print(f"worker 1 applied {len(applied) - len(by_w2)}, worker 2 applied {len(by_w2)}")


def test_dead_letter_too_large_for_its_topic_goes_as_stand_in(
    db_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The input topic takes 4 MB messages, its DLQ only the broker default (1 MB): a
    3 MB rejected event is dead-lettered as a stand-in (no value, source coordinates
    in the headers, the size in the detail) and the event behind it is applied; the
    partition does not stall."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"t{uuid.uuid4().hex[:12]}"
    names = {k: f"{prefix}.{v}" for k, v in DEFAULT_TOPIC_NAMES.items()}
    topics = Topics(
        batch_registered=names["batch_registered"],
        content_provisioned=names["content_provisioned"],
        validation_failed=names["validation_failed"],
        completed=names["completed"],
        slot_assigned=names["slot_assigned"],
        excess=names["excess"],
        group_id=f"{prefix}.els",
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    big = {"max.message.bytes": str(4 * 1024 * 1024)}
    new = [
        NewTopic(names["content_provisioned"], num_partitions=1, replication_factor=1, config=big),
        *[
            NewTopic(names[k], num_partitions=1, replication_factor=1)
            for k in names
            if k != "content_provisioned"
        ],
        *[
            NewTopic(names[k] + ".dlq", num_partitions=1, replication_factor=1)
            for k in ("batch_registered", "content_provisioned", "validation_failed")
        ],
    ]
    for fut in admin.create_topics(new, operation_timeout=30).values():
        fut.result(timeout=60)
    try:
        batch_id = f"big-{uuid.uuid4().hex[:6]}"
        oversized = ev.content(batch_id, "t-big")
        # ELV03 (too long), and incompressible: zstd cannot shrink it under the DLQ's 1 MB
        noise = base64.b64encode(os.urandom(9 * 1024 * 1024 // 4)).decode("ascii")
        oversized["data"]["original_file_name"] = noise
        producer = Producer(
            {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 8 * 1024 * 1024}
        )
        for event in (oversized, ev.content(batch_id, "t-after")):
            producer.produce(
                topics.content_provisioned, key=batch_id.encode(), value=event_bytes(event)
            )
        assert producer.flush(60) == 0
        env = worker_env(db_url, kafka_bootstrap, topics)
        with WorkerProcess(env, tmp_path / "worker.log") as worker:

            def applied() -> bool:
                return bool(
                    query(
                        db_url, "SELECT 1 FROM els.essay_content WHERE text_storage_id = 't-after'"
                    )
                )

            wait_until(applied, 60, "the event behind the big one", worker.tail)
            dead = wait_until(
                lambda: read_topic(kafka_bootstrap, topics.content_provisioned_dlq),
                30,
                "the stand-in dead letter",
                worker.tail,
            )
            assert worker.proc is not None and worker.proc.poll() is None
            assert worker.terminate() == 0
        (standin,) = dead
        h = headers_of(standin)
        assert set(h) == DLQ_HEADERS
        assert standin.value() is None and standin.key() == batch_id.encode()
        assert h["els.error.sqlstate"] == "ELV03" and h["els.source.offset"] == "0"
        detail = json.loads(h["els.error.detail"])
        assert detail["dlq_value_omitted"] is True
        assert detail["original_value_bytes"] > 3 * 1024 * 1024
        assert detail["field"] == "original_file_name"
    finally:
        admin.delete_topics([t.topic for t in new], operation_timeout=30)
