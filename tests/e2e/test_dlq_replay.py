"""``worker.py dlq-replay`` against the real broker: letters of any size the contract
allows move back exactly once, also when a run is killed mid-way and run again; the
target comes from the DLQ's own name, never from a header."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from els_worker import contract
from testkit import events as ev
from testkit.kafka import Topics, event_bytes, headers_of, read_topic
from testkit.stack import ROOT
from testkit.worker import worker_env

pytestmark = pytest.mark.kafka


def _letters(kafka_bootstrap: str, dlq: str, source: str,
             letters: list[tuple[bytes, bytes, dict[str, str]]]) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "compression.type": "zstd",
                         "message.max.bytes": contract.MAX_MESSAGE_BYTES, "linger.ms": 20})
    for key, value, extra in letters:
        headers = {contract.H_SQLSTATE: "42883", contract.H_MESSAGE: "function missing",
                   contract.H_DETAIL: "{}", contract.H_SOURCE_TOPIC: source,
                   contract.H_SOURCE_PARTITION: "0", contract.H_SOURCE_OFFSET: "0",
                   contract.H_FAILED_AT: "2026-01-01T00:00:00+00:00", contract.H_ATTEMPTS: "1",
                   **extra}
        while True:
            try:
                producer.produce(dlq, key=key, value=value, headers=list(headers.items()))
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def _committed(kafka_bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
    finally:
        c.close()


def _replay_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "worker.py"), "dlq-replay", *args]


def test_replay_killed_mid_run_and_run_again_moves_each_letter_exactly_once(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    topics = unique_topics
    source, dlq = topics.content_provisioned, topics.content_provisioned_dlq
    batch = f"replay-{uuid.uuid4().hex[:6]}"
    big = ev.content(batch, "t-big")
    # over 1 MB even compressed: 1.5 MB of random base64 in an ignored field
    big["data"]["notes"] = base64.b64encode(os.urandom(1_100_000)).decode("ascii")
    letters: list[tuple[bytes, bytes, dict[str, str]]] = [(batch.encode(), event_bytes(big), {})]
    letters += [(batch.encode(), event_bytes(ev.content(batch, f"t-{i}")), {})
                for i in range(3000)]
    _letters(kafka_bootstrap, dlq, source, letters)
    env = worker_env(db_url, kafka_bootstrap, topics)
    group = f"{topics.group_id}.dlq-replay"

    run = subprocess.Popen(_replay_cmd("--topic", source), env=env, cwd=str(ROOT),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        if _committed(kafka_bootstrap, group, dlq) > 0:  # at least one chunk committed
            break
        time.sleep(0.02)
    killed_mid_run = run.poll() is None
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)

    again = subprocess.run(_replay_cmd("--topic", source), env=env, cwd=str(ROOT),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    moved = read_topic(kafka_bootstrap, source, timeout=60)
    counts = Counter(m.value() for m in moved)
    assert len(counts) == len(letters), "a letter was lost"
    assert set(counts.values()) == {1}, "a letter was replayed twice"
    assert all(m.key() == batch.encode() for m in moved)
    # nothing left to replay; the DLQ itself kept its history and gained nothing
    third = subprocess.run(_replay_cmd("--topic", source), env=env, cwd=str(ROOT),
                           capture_output=True, text=True, timeout=120)
    assert "replayed 0" in third.stdout or "nothing to replay" in third.stdout, third.stdout
    assert len(read_topic(kafka_bootstrap, dlq, timeout=60)) == len(letters)
    print(f"killed mid-run: {killed_mid_run}")


def test_forged_source_topic_header_is_refused(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    """A letter claiming to come from the completion topic stays in its DLQ; a replay
    aimed at a topic that is not an input topic is refused outright."""
    topics = unique_topics
    batch = f"forged-{uuid.uuid4().hex[:6]}"
    honest = event_bytes(ev.content(batch, "t-honest"))
    forged = event_bytes(ev.content(batch, "t-forged"))
    _letters(kafka_bootstrap, topics.content_provisioned_dlq, topics.content_provisioned, [
        (batch.encode(), honest, {}),
        (batch.encode(), forged, {contract.H_SOURCE_TOPIC: topics.completed}),
    ])
    env = worker_env(db_url, kafka_bootstrap, topics)
    done = subprocess.run(_replay_cmd(), env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "replayed 1" in done.stdout and "kept 1" in done.stdout, done.stdout
    assert [m.value() for m in read_topic(kafka_bootstrap, topics.content_provisioned)] == [honest]
    assert read_topic(kafka_bootstrap, topics.completed) == []
    kept = read_topic(kafka_bootstrap, topics.content_provisioned_dlq)
    assert [m.value() for m in kept].count(forged) == 2  # the original and its re-append
    assert all(headers_of(m)[contract.H_SOURCE_TOPIC] == topics.completed
               for m in kept if m.value() == forged)

    refused = subprocess.run(_replay_cmd("--topic", topics.completed), env=env, cwd=str(ROOT),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not an input topic" in refused.stderr
    assert read_topic(kafka_bootstrap, topics.completed) == []


