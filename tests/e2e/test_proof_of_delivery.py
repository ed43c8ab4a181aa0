"""Proof of delivery (SPEC 5) against the real broker and database: a delivery report
without an offset never marks an outbox row, never lets an input offset move past its
dead letter, never commits a dlq-replay chunk; ``worker.py audit`` reads published rows
back at their offsets and produces the missing ones again.

The reports without an offset are injected (``testkit.kafka.OffsetlessReports``)
around a real producer: the rule is tested deterministically here. The real librdkafka
fault that produces such reports is reproduced in ``test_implicit_ack_loss.py``."""

from __future__ import annotations

import io
import threading
import time
import uuid
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from els_worker import audit, contract, replay
from els_worker.config import Config
from els_worker.dead_letters import DeadLetterWriter
from els_worker.kafka import producer as make_kafka_producer
from els_worker.messages import Item
from els_worker.observability import Metrics
from els_worker.relay import Relay, relay_producer
from testkit import events as ev
from testkit.db import outbox_unpublished
from testkit.kafka import OffsetlessReports, Topics, event_bytes, headers_of, read_topic
from testkit.kafka import produce as produce_messages
from testkit.worker import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.kafka


def _config(db_url: str, kafka_bootstrap: str, topics: Topics, **kw: str) -> Config:
    return Config.from_env(worker_env(db_url, kafka_bootstrap, topics, ELS_RETRY_BASE_MS="10",
                                      ELS_RETRY_MAX_MS="50", **kw))


def _fill_outbox(db: psycopg.Connection[Any], batches: int = 3) -> int:
    for b in range(batches):
        batch_id = f"pod-{b}-{uuid.uuid4().hex[:6]}"
        ev.apply(db, "register", ev.registration(batch_id, [f"{batch_id}-e{i}" for i in range(3)]))
        for i in range(4):
            ev.apply(db, "content", ev.content(batch_id, f"{batch_id}-t{i}"))
    row: Any = db.execute("SELECT count(*) FROM els.event_outbox").fetchone()
    return int(row[0])


def _drain(relay: Relay, rounds: int = 50) -> None:
    for _ in range(rounds):
        try:
            if relay.run_once() == 0:
                return
        except Exception:  # a round with nothing proven is retried, as the thread does
            continue
    raise AssertionError("the relay did not drain the outbox")


def _published_rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT id, event_id::text, kafka_topic, kafka_partition, kafka_offset, published_at"
        " FROM els.event_outbox ORDER BY id").fetchall()


def _message_at(kafka_bootstrap: str, topic: str, partition: int, offset: int) -> Any:
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "pod-reader",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg
        raise AssertionError(f"nothing read at {topic}[{partition}]@{offset}")
    finally:
        c.close()


def _audit(cfg: Config, since: str = "1 hour", **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = audit.cmd_audit(cfg, since, kw.pop("timeout", 60.0), **kw)
    return code, out.getvalue()


# -- the relay ------------------------------------------------------------------------


def test_a_report_without_offset_never_marks_a_row_and_the_row_goes_out_again(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    total = _fill_outbox(db)
    cfg = _config(db_url, kafka_bootstrap, unique_topics)
    made: list[OffsetlessReports] = []

    def every_third(c: Config) -> Any:
        made.append(OffsetlessReports(relay_producer(c), lambda n: n % 3 == 0))
        return made[-1]

    metrics = Metrics()
    relay = Relay(cfg, metrics, threading.Event(), make_producer=every_third)
    try:
        relay.run_once()  # one round: the stripped third of the rows stays unpublished
        stripped = made[0].stripped
        assert stripped >= total // 3
        assert outbox_unpublished(db_url) == stripped
        _drain(relay)
    finally:
        relay.close()
    assert outbox_unpublished(db_url) == 0
    rows = _published_rows(db)
    assert len(rows) == total
    for _id, event_id, topic, partition, offset, _at in rows:
        assert topic is not None and partition is not None and offset is not None
        msg = _message_at(kafka_bootstrap, topic, partition, offset)
        assert headers_of(msg)[contract.H_EVENT_ID] == event_id
    sample = metrics.registry.get_sample_value(
        "els_kafka_unconfirmed_deliveries_total", {"producer": "relay"})
    assert sample == sum(p.stripped for p in made)


def test_mark_outbox_published_refuses_coordinates_that_prove_nothing(
    db: psycopg.Connection[Any],
) -> None:
    _fill_outbox(db, batches=1)
    ids = [r[0] for r in db.execute("SELECT id FROM els.event_outbox ORDER BY id LIMIT 2")]
    for topics, partitions, offsets in ((["t", "t"], [0, 0], [5, None]),
                                        (["t", "t"], [0, 0], [5, -1]),
                                        (["t", "t"], [0, -1], [5, 6]),
                                        (["t"], [0], [5])):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            db.execute("SELECT els.mark_outbox_published(p_ids => %(i)s::bigint[], p_topics =>"
                       " %(t)s::text[], p_partitions => %(p)s::integer[], p_offsets =>"
                       " %(o)s::bigint[])", {"i": ids, "t": topics, "p": partitions,
                                              "o": offsets})
    assert db.execute("SELECT count(*) FROM els.event_outbox WHERE published_at IS NOT NULL"
                      ).fetchone() == (0,)


# -- dead letters ---------------------------------------------------------------------


class _FakeMessage:
    def __init__(self, topic: str, value: bytes) -> None:
        self._topic, self._value = topic, value

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k"


def test_dead_letter_write_returns_only_once_every_letter_has_an_offset(
    kafka_bootstrap: str, db_url: str, unique_topics: Topics
) -> None:
    cfg = _config(db_url, kafka_bootstrap, unique_topics)
    source = unique_topics.content_provisioned
    producer = OffsetlessReports(make_kafka_producer(cfg, "test-dlq"), lambda n: n < 2)
    metrics = Metrics()
    writer = DeadLetterWriter(cfg, metrics, threading.Event(), producer=producer)  # type: ignore[arg-type]
    items = []
    for n in range(4):
        msg: Any = _FakeMessage(source, f"letter-{n}".encode())
        it = Item(msg, source, 0, n)
        it.sqlstate, it.error_message, it.error_detail = "ELV03", "bad", "{}"
        items.append(it)
    writer.write(items)
    writer.close()
    assert producer.stripped == 2
    values = [m.value() for m in read_topic(kafka_bootstrap, contract.dlq_topic(source))]
    # the two letters without an offset went out again: every letter is there
    assert {v.decode() for v in values if v} == {f"letter-{n}" for n in range(4)}
    assert metrics.registry.get_sample_value(
        "els_kafka_unconfirmed_deliveries_total", {"producer": "dead_letters"}) == 2


# -- dlq-replay -----------------------------------------------------------------------


def test_dlq_replay_commits_a_chunk_only_when_every_letter_has_an_offset(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    """What a committed transaction proves: the group's positions and the commit
    markers; not that each letter is in its topic. The first transaction's first letter
    is reported without an offset: that transaction is aborted (none of its letters is
    visible to read_committed readers), the chunk goes again, and each letter is then
    read back exactly once at the offsets its reports gave."""
    source, dlq = unique_topics.content_provisioned, unique_topics.content_provisioned_dlq
    batch = f"rp-{uuid.uuid4().hex[:6]}"
    letters = [event_bytes(ev.content(batch, f"t-{i}")) for i in range(10)]
    produce_messages(kafka_bootstrap, [(dlq, batch.encode(), v) for v in letters])
    cfg = _config(db_url, kafka_bootstrap, unique_topics)
    made: list[OffsetlessReports] = []

    def first_report_without_offset(c: Config) -> Any:
        made.append(OffsetlessReports(replay.transactional_producer(c), lambda n: n == 0))
        return made[-1]

    code = replay.cmd_dlq_replay(cfg, [source], [], False, 20.0,
                                 make_producer=first_report_without_offset)
    assert code == 0
    assert made[0].stripped == 1 and made[0].reports >= 20  # the chunk went twice
    committed: dict[str, Any] = {"isolation.level": "read_committed"}
    replayed = read_topic(kafka_bootstrap, source, **committed)
    assert sorted(m.value() or b"" for m in replayed) == sorted(letters)
    # the aborted transaction's letters are in the log, but no read_committed reader
    # sees them; the group's position is past every letter
    everything: dict[str, Any] = {"isolation.level": "read_uncommitted"}
    uncommitted = read_topic(kafka_bootstrap, source, **everything)
    assert len(uncommitted) == 20


# -- the audit ------------------------------------------------------------------------


def _relayed(db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str,
             topics: Topics, batches: int = 3) -> tuple[Config, int]:
    total = _fill_outbox(db, batches)
    cfg = _config(db_url, kafka_bootstrap, topics)
    relay = Relay(cfg, Metrics(), threading.Event())
    try:
        _drain(relay)
    finally:
        relay.close()
    return cfg, total


def test_audit_finds_every_relayed_row_at_its_offset(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    cfg, total = _relayed(db, db_url, kafka_bootstrap, unique_topics)
    code, out = _audit(cfg)
    assert code == 0, out
    assert f"{total} checked" in out and f"{total} found at their offset" in out
    assert "0 missing" in out


def test_audit_produces_a_missing_row_again_and_records_where_it_went(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    cfg, total = _relayed(db, db_url, kafka_bootstrap, unique_topics)
    rows = _published_rows(db)
    lost_id, lost_event = rows[0][0], rows[0][1]
    other = rows[1]
    # as if the broker never stored it: its recorded offset holds another event, and
    # a second row points past the end of its partition
    db.execute("UPDATE els.event_outbox SET kafka_topic = %(t)s, kafka_partition = %(p)s,"
               " kafka_offset = %(o)s WHERE id = %(id)s",
               {"t": other[2], "p": other[3], "o": other[4], "id": lost_id})
    db.execute("UPDATE els.event_outbox SET kafka_offset = kafka_offset + 1000000"
               " WHERE id = %(id)s", {"id": rows[2][0]})
    code, out = _audit(cfg)
    assert code == 0, out
    assert "2 missing (2 produced again)" in out and f"{total - 2} found" in out
    after = {r[0]: r for r in _published_rows(db)}
    for row_id, event_id in ((lost_id, lost_event), (rows[2][0], rows[2][1])):
        _id, _event, topic, partition, offset, _at = after[row_id]
        msg = _message_at(kafka_bootstrap, topic, partition, offset)
        assert headers_of(msg)[contract.H_EVENT_ID] == event_id
    assert db.execute("SELECT count(*) FROM els.event_outbox WHERE redelivered_at IS NOT NULL"
                      ).fetchone() == (2,)
    code, out = _audit(cfg)  # proven now
    assert code == 0 and f"{total} found" in out and "0 missing" in out


def test_audit_takes_a_row_recorded_in_a_partition_that_is_gone_as_missing(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    """A partition the broker does not have (a topic deleted, or recreated smaller) holds
    none of its rows: they are missing and produced again, not a reason to give up."""
    cfg, total = _relayed(db, db_url, kafka_bootstrap, unique_topics)
    db.execute("UPDATE els.event_outbox SET kafka_partition = 99"
               " WHERE id = (SELECT min(id) FROM els.event_outbox)")
    code, out = _audit(cfg)
    assert code == 0, out
    assert "1 missing (1 produced again)" in out and f"{total - 1} found" in out


def test_audit_counts_expired_and_unproven_rows_and_produces_neither(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics,
    kafka_admin: AdminClient,
) -> None:
    cfg, total = _relayed(db, db_url, kafka_bootstrap, unique_topics)
    topic = unique_topics.slot_assigned
    # retention removed the slot events of one partition (log start offset moved past
    # them): one that holds some (the batch ids, and so the partitions, are random)
    expired: Any = db.execute("SELECT count(*), max(kafka_offset), kafka_partition"
                              " FROM els.event_outbox WHERE kafka_topic = %(t)s"
                              " GROUP BY kafka_partition ORDER BY count(*) DESC LIMIT 1",
                              {"t": topic}).fetchone()
    assert expired is not None and expired[0] > 0
    futures = kafka_admin.delete_records([TopicPartition(topic, expired[2], expired[1] + 1)])
    for fut in futures.values():
        fut.result(timeout=30)
    # and one row published before offsets were kept
    db.execute("UPDATE els.event_outbox SET kafka_topic = NULL, kafka_partition = NULL,"
               " kafka_offset = NULL WHERE id = (SELECT max(id) FROM els.event_outbox)")
    code, out = _audit(cfg)
    assert code == 0, out
    assert f"{expired[0]} expired" in out and "1 unproven" in out and "0 missing" in out
    assert f"{total - 1} checked" in out


def test_audit_exits_1_when_a_missing_row_cannot_be_produced_again(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics
) -> None:
    cfg, _total = _relayed(db, db_url, kafka_bootstrap, unique_topics, batches=1)
    db.execute("UPDATE els.event_outbox SET kafka_offset = kafka_offset + 1000000"
               " WHERE id = (SELECT min(id) FROM els.event_outbox)")
    code, out = _audit(cfg, make_producer=lambda c: OffsetlessReports(
        make_kafka_producer(c, "test-audit"), lambda n: True))
    assert code == 1, out
    assert "1 missing (0 produced again)" in out and "NOT produced again" in out


def test_audit_gives_up_in_bounded_time_when_kafka_or_postgres_is_unreachable(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _relayed(db, db_url, kafka_bootstrap, unique_topics, batches=1)
    no_kafka = _config(db_url, "127.0.0.1:1", unique_topics)
    started = time.monotonic()
    assert audit.cmd_audit(no_kafka, "1 hour", 10.0) == 2
    assert time.monotonic() - started < 30
    assert "audit failed: Kafka" in capsys.readouterr().err
    no_pg = _config("postgresql://postgres@127.0.0.1:1/els", kafka_bootstrap, unique_topics)
    started = time.monotonic()
    assert audit.cmd_audit(no_pg, "1 hour", 10.0) == 2
    assert time.monotonic() - started < 30
    assert "audit failed" in capsys.readouterr().err


def test_the_worker_audits_periodically_in_one_worker_and_repairs_a_missing_row(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics,
    tmp_path: Path,
) -> None:
    """ELS_AUDIT_INTERVAL_SECONDS: two workers, one audit lock. A row whose recorded
    offset is moved past the end of its partition (as if the broker had not kept it) is
    found and produced again by the worker's own audit, and only one worker audits."""
    batch = f"pa-{uuid.uuid4().hex[:6]}"
    produce_messages(kafka_bootstrap, [
        (unique_topics.batch_registered, batch.encode(),
         event_bytes(ev.registration(batch, [f"{batch}-e1", f"{batch}-e2"]))),
        (unique_topics.content_provisioned, batch.encode(),
         event_bytes(ev.content(batch, f"{batch}-t1"))),
        (unique_topics.content_provisioned, batch.encode(),
         event_bytes(ev.content(batch, f"{batch}-t2")))])
    env = {"ELS_AUDIT_INTERVAL_SECONDS": "1"}
    with WorkerProcess(worker_env(db_url, kafka_bootstrap, unique_topics, **env),
                       tmp_path / "w1.log") as w1, \
            WorkerProcess(worker_env(db_url, kafka_bootstrap, unique_topics, **env),
                          tmp_path / "w2.log") as w2:
        wait_until(lambda: db.execute(
            "SELECT count(*) = 3 AND bool_and(kafka_offset IS NOT NULL) FROM els.event_outbox"
            ).fetchone() == (True,), 60, "the three events published with offsets", w1.tail)
        lost = db.execute("UPDATE els.event_outbox SET kafka_offset = kafka_offset + 1000000"
                          " WHERE event_type = 'BatchContentProvisioningCompleted'"
                          " RETURNING id, event_id::text").fetchone()
        assert lost is not None
        row: Any = wait_until(lambda: db.execute(
            "SELECT kafka_topic, kafka_partition, kafka_offset FROM els.event_outbox"
            " WHERE id = %(id)s AND redelivered_at IS NOT NULL", {"id": lost[0]}).fetchone(),
            60, "the worker's audit to produce the completion again", w1.tail)
        msg = _message_at(kafka_bootstrap, row[0], row[1], row[2])
        assert headers_of(msg)[contract.H_EVENT_ID] == lost[1]
        audits = [sum(1 for r in w.log_records() if r.get("msg") == "audit done")
                  for w in (w1, w2)]
        assert sorted(audits)[0] == 0 and sorted(audits)[1] >= 1, audits
        metrics = (w1 if audits[0] else w2).http_status("/metrics")[1]
        assert 'els_outbox_audit_rows_total{result="republished"} 1.0' in metrics
