"""The short chaos run (part of `make test`), and a worker regression found by chaos.

``test_short_chaos_run`` is ``make chaos`` in small: a seeded stream of 40 batches
(~1,400 messages, ~130 malformed of every variant, the 5 MB value included) through
two worker processes while a controller SIGKILLs a worker 3 times and restarts a
private PostgreSQL once (the shared Kafka is used as is); then the final state, the
outbox, the output topics and the dead-letter topics must match the oracle exactly.
See chaos/run.py and docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from chaos.config import MAX_MESSAGE_BYTES, PROFILES, ChaosConfig
from chaos.report import format_report
from chaos.run import run_chaos
from chaos.world import BIG_PAYLOAD_BYTES
from testkit import events
from testkit.db import query
from testkit.kafka import Topics, headers_of, read_topic
from testkit.stack import ROOT, Stack
from testkit.worker import WorkerProcess, worker_env

pytestmark = pytest.mark.kafka


def test_short_chaos_run(stack: Stack, tmp_path: Path) -> None:
    settings: dict[str, Any] = dict(PROFILES["short"])
    settings.update(kafka_bootstrap=stack.kafka_bootstrap, out_dir=tmp_path / "chaos")
    report = run_chaos(ChaosConfig(**settings))
    text = format_report(report)
    print(text)
    assert report["mismatches"] == 0, text
    assert report["kills"] >= 3 and report["pg_restarts"] >= 1, text
    assert report["unexpected_worker_exits"] == 0, text
    assert report["dead_lettered"]["distinct"] == report["events"]["malformed"] > 100, text


def test_short_chaos_run_behind_the_proxy(stack: Stack, tmp_path: Path) -> None:
    """``make chaos-sharded`` in small (issue 27): the same stream through two workers on
    two partitions behind PL/Proxy (one relay and one auditor per partition in each
    worker), while a controller SIGKILLs a worker twice and makes one partition refuse
    connections for a few seconds. Pass: the state merged over the partitions, the
    outboxes, the output topics and the dead letters match the oracle exactly."""
    settings: dict[str, Any] = dict(PROFILES["sharded-short"])
    settings.update(kafka_bootstrap=stack.kafka_bootstrap, out_dir=tmp_path / "chaos")
    report = run_chaos(ChaosConfig(**settings))
    text = format_report(report)
    print(text)
    assert report["mismatches"] == 0, text
    assert report["partitions"] == 2 and report["partition_blackouts"] >= 1, text
    assert report["kills"] >= 2 and report["unexpected_worker_exits"] == 0, text
    assert report["dead_lettered"]["distinct"] == report["events"]["malformed"] > 50, text


def test_short_chaos_run_on_the_ha_topology(tmp_path: Path) -> None:
    """``make chaos-ha`` in small, so that CI keeps the HA promise (issue 13): a private
    pg_auto_failover pair and three Kafka nodes; one worker SIGKILL, one SIGKILL of the
    PostgreSQL primary's node (automatic promotion, the old primary rejoins), one SIGKILL
    of the broker leading the most input partitions. Pass: nothing lost or doubled
    against the oracle (final state, outbox all published, one completion id per complete
    batch, output topics), no valid event dead-lettered, every malformed one is."""
    settings: dict[str, Any] = dict(PROFILES["ha-short"])
    settings.update(out_dir=tmp_path / "chaos")
    report = run_chaos(ChaosConfig(**settings))
    text = format_report(report)
    print(text)
    assert report["mismatches"] == 0, text
    assert report["pg_failovers"] == 1 and report["broker_kills"] == 1, text
    assert report["input"]["lost"] == 0, text
    assert report["db"]["unpublished"] == 0, text
    assert report["unexpected_worker_exits"] == 0, text
    assert report["dead_lettered"]["distinct"] == report["events"]["malformed"] > 30, text
    completed = report["outputs"]["completed"]
    assert completed["distinct_event_ids"] == completed["complete_batches"] > 0, text


@pytest.fixture
def big_topics(stack: Stack) -> Iterator[Topics]:
    """Unique topics whose input and dead-letter topics accept 16 MB messages."""
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    prefix = f"t{uuid.uuid4().hex[:12]}"
    names = {
        "batch_registered": f"{prefix}.{events.TOPIC_REGISTERED}",
        "content_provisioned": f"{prefix}.{events.TOPIC_CONTENT}",
        "validation_failed": f"{prefix}.{events.TOPIC_FAILED}",
        "completed": f"{prefix}.completed",
        "slot_assigned": f"{prefix}.slot-assigned",
        "excess": f"{prefix}.excess",
    }
    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    inputs = [names["batch_registered"], names["content_provisioned"], names["validation_failed"]]
    new = [NewTopic(t, num_partitions=1, replication_factor=1, config=big)
           for t in inputs + [t + ".dlq" for t in inputs]]
    new += [NewTopic(names[k], num_partitions=1, replication_factor=1)
            for k in ("completed", "slot_assigned", "excess")]
    for fut in admin.create_topics(new, operation_timeout=30).values():
        fut.result(timeout=60)
    topics = Topics(**names, group_id=f"{prefix}.els", all=tuple(t.topic for t in new))
    yield topics
    for fut in admin.delete_topics(list(topics.all), operation_timeout=30).values():
        try:
            fut.result(timeout=60)
        except Exception:  # cleanup only
            pass


def test_oversized_malformed_event_does_not_stall_its_partition(
    db_url: str, stack: Stack, big_topics: Topics, tmp_path: Path
) -> None:
    """A 5 MB malformed content event (original_file_name too long: ELV03), followed on
    the same partition by a valid one: the valid one must be applied and the big one
    dead-lettered, with the worker's default Kafka settings."""
    big = events.content("big-batch", "t-big")
    big["data"]["original_file_name"] = "A" * BIG_PAYLOAD_BYTES
    after = events.content("big-batch", "t-after")
    delivered: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition() or 0, msg.offset() or 0))

    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "enable.idempotence": True,
                         "message.max.bytes": MAX_MESSAGE_BYTES})
    for event in (big, after):
        producer.produce(big_topics.content_provisioned, key=b"big-batch",
                         value=json.dumps(event).encode(), on_delivery=on_delivery)
    assert producer.flush(60) == 0 and not errors, errors
    big_offset = delivered[0][1]

    env = worker_env(db_url, stack.kafka_bootstrap, big_topics)
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        deadline = time.monotonic() + 45
        applied = dead = False
        while time.monotonic() < deadline and not (applied and dead):
            assert worker.proc is not None
            assert worker.proc.poll() is None, f"the worker died:\n{worker.tail(30)}"
            applied = bool(query(db_url, "SELECT 1 FROM els.essay_content"
                                 " WHERE text_storage_id = 't-after'"))
            dead = any(headers_of(m).get("els.source.offset") == str(big_offset)
                       for m in read_topic(stack.kafka_bootstrap,
                                           big_topics.content_provisioned_dlq, timeout=20))
            time.sleep(1)
        assert applied, f"the event behind the 5 MB one was not applied\n{worker.tail(30)}"
        assert dead, f"the 5 MB event is not in the DLQ\n{worker.tail(30)}"


def test_deeply_nested_valid_event_is_applied(
    db_url: str, stack: Stack, unique_topics: Topics, tmp_path: Path
) -> None:
    """A registration whose free-form metadata nests 3000 arrays deep is valid JSON that
    PostgreSQL accepts: it must be registered, not dead-lettered."""
    event = events.registration("deep-batch", ["deep-e1"])
    deep = "[" * 3000 + "]" * 3000
    value = json.dumps(event).replace('"metadata": {}', '"metadata": {"deep": ' + deep + '}', 1)
    assert deep in value
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(unique_topics.batch_registered, key=b"deep-batch", value=value.encode())
    assert producer.flush(30) == 0
    env = worker_env(db_url, stack.kafka_bootstrap, unique_topics)
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        deadline = time.monotonic() + 30
        registered = dead = False
        while time.monotonic() < deadline and not (registered or dead):
            registered = bool(query(db_url, "SELECT 1 FROM els.batch_tracker"
                                    " WHERE batch_id = 'deep-batch'"))
            dead = bool(read_topic(stack.kafka_bootstrap, unique_topics.batch_registered_dlq))
            time.sleep(0.5)
        assert registered and not dead, (
            f"registered={registered} dead_lettered={dead}\n{worker.tail(5)}")



def test_a_run_whose_setup_fails_stops_what_it_started(tmp_path: Path) -> None:
    """A setup that fails half-way (here: PostgreSQL is up, then the Kafka settings are
    refused) stops the private cluster and removes its copy of the stack; it once left
    pg_auto_failover keepers running for good after a Kafka format error."""
    name = f"setupfail{uuid.uuid4().hex[:6]}"
    cfg = ChaosConfig(name=name, batches=10, kafka="shared", kafka_bootstrap=None,
                      out_dir=tmp_path / "chaos")
    with pytest.raises(SystemExit, match="needs --kafka-bootstrap"):
        run_chaos(cfg)
    stacks = [p for p in (ROOT / ".stack").glob(f"chaos-{name}-*")]
    assert stacks == [], "the private stack's copy was left behind"
    left = subprocess.run(["pgrep", "-f", f".stack/chaos-{name}-"], capture_output=True,
                          text=True).stdout.split()
    assert left == [], f"processes of the failed run still running: {left}"
