"""The micro-batch processor's use of the error classification table (code by code:
tests/unit/test_error_map.py) against the real database: rejected events are
dead-lettered alone, operational and deployment faults are retried without limit, an
unexpected error dead-letters its event after bounded retries only while other events
apply (a poison event), and one that strikes every event is systemic: nothing is
dead-lettered."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message

from els_worker.apply import BatchProcessor, SystemicFault
from els_worker.config import Config
from els_worker.db import Session
from els_worker.errors import Action, classify
from els_worker.health import Health
from els_worker.messages import decode_item
from els_worker.observability import Metrics
from testkit import events as ev

DEAD = Action.DEAD_LETTER
FOREVER = Action.RETRY_FOREVER
BOUNDED = Action.RETRY_BOUNDED

# --- real exceptions from the real database ------------------------------------


def _error(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None
) -> psycopg.Error:
    try:
        conn.execute(sql, params or {})
    except psycopg.Error as exc:
        return exc
    raise AssertionError(f"{sql} did not fail")


def test_real_errors_classified(db: psycopg.Connection[Any], db_url: str) -> None:
    rejected = _error(db, "SELECT els.provision_content(%(e)s::jsonb)", {"e": '{"entity_id": "b"}'})
    assert rejected.sqlstate == "ELV02"
    assert classify(rejected).action is DEAD

    nul = _error(db, "SELECT els.provision_content(%(e)s::jsonb)", {"e": '{"a": "\\u0000"}'})
    assert nul.sqlstate == "22P05"
    assert classify(nul).action is DEAD and classify(nul).report_as == "ELV01"

    deep = _error(db, "SELECT els.provision_content(%(e)s::jsonb)",
                  {"e": "[" * 100_000 + "]" * 100_000})
    assert deep.sqlstate == "54001"
    assert classify(deep).action is DEAD and classify(deep).report_as == "ELV01"

    in_body = _error(db, "DO $$BEGIN PERFORM 1 / 0; END$$")
    assert in_body.sqlstate == "22012"
    assert classify(in_body).action is BOUNDED

    missing = _error(db, "SELECT els.no_such_function(%(e)s::jsonb)", {"e": "{}"})
    assert classify(missing).action is FOREVER and classify(missing).kind == "deployment"

    timeout = _error(db, "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
    assert timeout.sqlstate == "57014"
    assert classify(timeout).action is FOREVER

    # connection killed under us (admin shutdown / connection loss): retried forever
    victim = psycopg.connect(db_url, autocommit=True)
    pid = victim.info.backend_pid
    db.execute("SELECT pg_terminate_backend(%(p)s::integer)", {"p": pid})
    lost = _error(victim, "SELECT 1")
    assert isinstance(lost, psycopg.OperationalError)
    assert classify(lost).action is FOREVER
    victim.close()

    assert classify(psycopg.OperationalError("connection lost")).action is FOREVER
    # a value psycopg itself refuses to send (NUL character) is a verdict on the value
    client_side = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    rule = classify(client_side)
    assert rule.action is DEAD and rule.report_as == "ELV01"


# --- the micro-batch processor, on the real database ----------------------------


def _msg(topic: str, offset: int, value: bytes, key: bytes = b"k") -> Message:
    return Message(topic=topic, partition=0, offset=offset, key=key, value=value)


def _content(batch: str, text_id: str, offset: int) -> Any:
    value = json.dumps(ev.content(batch, text_id)).encode()
    return decode_item(_msg(ev.TOPIC_CONTENT, offset, value))


@pytest.fixture
def processor(db_url: str) -> Iterator[BatchProcessor]:
    cfg = Config(database_url=db_url, kafka_bootstrap="unused:1", group_id="g",
                 retry_base_ms=1, retry_max_ms=5, unexpected_max_attempts=3)
    metrics = Metrics()
    proc = BatchProcessor(cfg, metrics, threading.Event(), Health(metrics, 30))
    yield proc
    proc.close()


@pytest.fixture
def buggy_provision_content(db: psycopg.Connection[Any]) -> Iterator[None]:
    """Puts a bug in the content rules that both paths share (els._content_row, called
    by the set-based core of els.apply_events and so by els.provision_content): content
    whose text_storage_id starts with ``poison`` raises division_by_zero inside the
    function body, ``flaky`` content fails for its first two calls, the rest goes through."""
    db.execute("CREATE SEQUENCE public.flaky_calls")
    # the bug runs inside the SECURITY DEFINER functions, as their owner
    db.execute("GRANT USAGE ON SEQUENCE public.flaky_calls TO els_owner")
    db.execute("ALTER FUNCTION els._content_row(jsonb, jsonb) RENAME TO content_row_real")
    db.execute("""
        CREATE FUNCTION els._content_row(p_event jsonb, p_payload jsonb) RETURNS jsonb
        LANGUAGE plpgsql AS $$
        BEGIN
            IF p_event -> 'data' ->> 'text_storage_id' LIKE 'poison%' THEN
                RETURN to_jsonb(1 / 0);
            END IF;
            IF p_event -> 'data' ->> 'text_storage_id' LIKE 'flaky%'
               AND nextval('public.flaky_calls') <= 2 THEN
                RAISE EXCEPTION 'flaky bug' USING ERRCODE = 'XX000';
            END IF;
            RETURN els.content_row_real(p_event, p_payload);
        END $$""")
    try:
        yield
    finally:
        db.execute("DROP FUNCTION els._content_row(jsonb, jsonb)")
        db.execute("ALTER FUNCTION els.content_row_real(jsonb, jsonb) RENAME TO _content_row")
        db.execute("DROP SEQUENCE public.flaky_calls")


def test_rejected_event_dead_lettered_alone_neighbours_commit(
    processor: BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    batch = f"b-{uuid.uuid4().hex[:6]}"
    bad = ev.content(batch, "t-bad")
    del bad["data"]["text_storage_id"]
    values = [
        json.dumps(ev.registration(batch, ["e1", "e2"])).encode(),
        json.dumps(ev.content(batch, "t1")).encode(),
        json.dumps(bad).encode(),
        b"[1,",
        b'{"x": "\\u0000"}',
        json.dumps(ev.content(batch, "t2")).encode(),
    ]
    topics = [ev.TOPIC_REGISTERED] + [ev.TOPIC_CONTENT] * 5
    items = [decode_item(_msg(t, i, v))
             for i, (t, v) in enumerate(zip(topics, values, strict=True))]
    processor.apply(items)
    states = [(it.dead, it.sqlstate, (it.result or {}).get("outcome")) for it in items]
    assert states == [
        (False, None, "registered"),
        (False, None, "assigned"),
        (True, "ELV02", None),
        (True, "ELV01", None),  # Python's JSON parser refused it
        (True, "ELV01", None),  # PostgreSQL refused it as jsonb (22P05)
        (False, None, "assigned"),
    ]
    assert json.loads(items[4].error_detail)["original_sqlstate"] == "22P05"
    row = db.execute(
        "SELECT completed_at IS NOT NULL FROM els.batch_tracker WHERE batch_id = %(b)s",
        {"b": batch},
    ).fetchone()
    assert row == (True,)


def test_what_postgresql_accepts_the_worker_does_not_reject(
    processor: BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    """A 5,000-digit integer (over Python's 4,300-digit conversion limit) in an ignored
    field is valid JSON and valid jsonb: applied. JSON nested 100,000 deep is refused
    by PostgreSQL's parser: ELV01 at once, not after retries."""
    batch = f"b-{uuid.uuid4().hex[:6]}"
    huge = json.dumps(ev.registration(batch, ["e1"])).replace(
        '"metadata": {}', '"metadata": {"n": ' + "7" * 5000 + "}", 1)
    assert "7" * 5000 in huge
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    items = [decode_item(_msg(ev.TOPIC_REGISTERED, 0, huge.encode())),
             decode_item(_msg(ev.TOPIC_REGISTERED, 1, deep))]
    processor.apply(items)
    assert not items[0].dead and (items[0].result or {}).get("outcome") == "registered"
    assert items[1].dead and items[1].sqlstate == "ELV01" and items[1].attempts == 1
    assert json.loads(items[1].error_detail)["original_sqlstate"] == "54001"


@pytest.mark.usefixtures("buggy_provision_content")
def test_poison_event_dead_lettered_after_bounded_retries_neighbours_apply(
    processor: BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    batch = f"b-{uuid.uuid4().hex[:6]}"
    register = decode_item(_msg(ev.TOPIC_REGISTERED, 0,
                                json.dumps(ev.registration(batch, ["e1", "e2", "e3"])).encode()))
    items = [register, _content(batch, "t1", 1), _content(batch, "poison-1", 2),
             _content(batch, "flaky-1", 3), _content(batch, "t2", 4)]
    processor.apply(items)
    poison, flaky = items[2], items[3]
    # division_by_zero inside the function body is unexpected, not a verdict: bounded
    # retries (3 attempts), then dead-lettered because its neighbours applied
    assert poison.dead and poison.sqlstate == "22012" and poison.attempts == 3
    # the flaky one failed twice and then worked: applied, not dead
    assert not flaky.dead and (flaky.result or {}).get("outcome") == "assigned"
    assert [(it.result or {}).get("outcome") for it in (items[0], items[1], items[4])] == [
        "registered", "assigned", "assigned"]
    assert processor.metrics.retries.labels(kind="unexpected")._value.get() >= 2


@pytest.mark.usefixtures("buggy_provision_content")
def test_bug_that_strikes_every_event_is_systemic_nothing_dead_lettered(
    processor: BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    batch = f"b-{uuid.uuid4().hex[:6]}"
    items = [_content(batch, f"poison-{i}", i) for i in range(4)]
    with pytest.raises(SystemicFault) as fault:
        processor.apply(items)
    assert isinstance(fault.value.cause, psycopg.errors.DivisionByZero)
    assert not any(it.dead for it in items)
    pending = db.execute("SELECT count(*) FROM els.essay_content WHERE batch_id = %(b)s",
                         {"b": batch}).fetchone()
    assert pending == (0,), "a systemic fault commits nothing"


def test_operational_error_retried_until_database_answers(
    processor: BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    batch = f"b-{uuid.uuid4().hex[:6]}"
    value = json.dumps(ev.registration(batch, ["e"])).encode()
    items = [decode_item(_msg(ev.TOPIC_REGISTERED, 0, value))]
    # hold the batch's advisory lock elsewhere with a tiny lock_timeout for the worker:
    # the worker gets 55P03 (operational), retries, and succeeds once the lock is gone
    processor.session.get().execute("SET lock_timeout = '20ms'")
    holder = psycopg.connect(db.info.dsn)
    holder.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('els.batch:' || %(b)s::text, 0))",
        {"b": batch},
    )
    timer = threading.Timer(0.5, holder.rollback)
    timer.start()
    try:
        processor.apply(items)
    finally:
        timer.join()
        holder.close()
    assert items[0].result is not None and items[0].result["outcome"] == "registered"
    assert processor.metrics.retries.labels(kind="operational")._value.get() >= 1


@pytest.fixture
def commit_time_check(db: psycopg.Connection[Any]) -> Iterator[None]:
    """A deferred constraint trigger on els.essay_content that fails at COMMIT for
    content whose text_storage_id starts with ``commit-fails``."""
    db.execute("""
        CREATE FUNCTION public.deferred_check() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.text_storage_id LIKE 'commit-fails%' THEN
                RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'P0001';
            END IF;
            RETURN NULL;
        END $$""")
    db.execute(
        "CREATE CONSTRAINT TRIGGER deferred_check AFTER INSERT ON els.essay_content"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.deferred_check()"
    )
    try:
        yield
    finally:
        db.execute("DROP TRIGGER deferred_check ON els.essay_content")
        db.execute("DROP FUNCTION public.deferred_check()")


@pytest.mark.usefixtures("commit_time_check")
def test_commit_failure_falls_back_to_one_transaction_per_message(
    processor: BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    """A failure that only shows at COMMIT (a deferred constraint) cannot be pinned on
    one message inside the batch: the processor then commits message by message, so
    the culprit is dead-lettered after its bounded retries and the others are kept."""
    batch = f"b-{uuid.uuid4().hex[:6]}"
    items = [_content(batch, t, i) for i, t in enumerate(["t1", "commit-fails-1", "t2"])]
    processor.apply(items)
    assert [(it.dead, it.sqlstate) for it in items] == [
        (False, None), (True, "P0001"), (False, None)]
    assert items[1].attempts == 3
    rows = db.execute("SELECT text_storage_id FROM els.essay_content WHERE batch_id = %(b)s"
                      " ORDER BY 1", {"b": batch}).fetchall()
    assert rows == [("t1",), ("t2",)]


class _ServerGoneAfterRejection(psycopg.Connection[Any]):
    """A real connection whose server goes away, once per test, right after it answered
    with a rejection: raised by a per-event call (the rollback of its savepoint then
    meets a closed connection) or carried in a micro-batch call's results (the commit
    then does), as when PostgreSQL restarts in the middle of a micro-batch."""

    admin_dsn = ""
    struck = 0

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        try:
            cur = super().execute(query, params, **kwargs)
        except psycopg.Error as exc:
            if (exc.sqlstate or "").startswith("ELV"):
                self._strike()
            raise
        if "apply_events" in str(query):  # the micro-batch in one call, results in hand
            self._strike()
        return cur

    def _strike(self) -> None:
        if type(self).struck:
            return
        type(self).struck += 1
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%(pid)s::integer, 5000)",
                          {"pid": self.info.backend_pid})


def test_server_gone_right_after_a_rejection_retries_the_micro_batch(
    db_url: str, db: psycopg.Connection[Any]
) -> None:
    """The verdict of an event whose connection broke right after it (a PostgreSQL
    restart mid micro-batch) is not trusted: the micro-batch is retried on a new
    connection and the event dead-lettered there, its neighbours applied. Before the
    fix the rejection's SQLSTATE escaped ``apply`` and the worker exited."""
    cfg = Config(database_url=db_url, kafka_bootstrap="unused:1", group_id="g",
                 retry_base_ms=1, retry_max_ms=5)
    _ServerGoneAfterRejection.admin_dsn = db.info.dsn
    _ServerGoneAfterRejection.struck = 0
    metrics = Metrics()
    proc = BatchProcessor(cfg, metrics, threading.Event(), Health(metrics, 30),
                          session=Session(cfg, "els-worker",
                                          connection_class=_ServerGoneAfterRejection))
    batch = f"b-{uuid.uuid4().hex[:6]}"
    bad = ev.content(batch, "t-bad")
    del bad["data"]["text_storage_id"]
    items = [decode_item(_msg(ev.TOPIC_REGISTERED, 0,
                              json.dumps(ev.registration(batch, ["e1", "e2"])).encode())),
             decode_item(_msg(ev.TOPIC_CONTENT, 1, json.dumps(bad).encode())),
             _content(batch, "t1", 2)]
    try:
        proc.apply(items)
    finally:
        proc.close()
    assert _ServerGoneAfterRejection.struck == 1
    assert [(it.dead, it.sqlstate, (it.result or {}).get("outcome")) for it in items] == [
        (False, None, "registered"), (True, "ELV02", None), (False, None, "assigned")]
    assert metrics.retries.labels(kind="operational")._value.get() >= 1
    slots = db.execute("SELECT count(text_storage_id) FROM els.essay_slot"
                       " WHERE batch_id = %(b)s", {"b": batch}).fetchone()
    assert slots == (1,)


def test_prepared_statements_lost_under_the_worker_reconnect_and_apply(
    processor: BatchProcessor,
) -> None:
    """psycopg prepares the worker's fast-path statement; when the server forgets it
    behind the client's back (as a pooler, or a slip in the client's bookkeeping, would
    leave it) the micro-batch fails with 26000. That is the session's fault, not the
    events': the events are applied, nothing is dead-lettered, and the session is
    replaced (before, it was kept, and every later micro-batch failed its fast path on
    it and fell back to one savepoint per message)."""
    batch = f"b-{uuid.uuid4().hex[:6]}"
    for i in range(8):  # enough executions for psycopg to prepare the statement
        processor.apply([_content(batch, f"t{i}", i)])
    prepared = processor.session.get().execute(
        "SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared is not None and prepared[0] >= 1
    conn = processor.session.get()
    # behind psycopg's back (it clears its cache when it sees DEALLOCATE go through it)
    assert conn.pgconn.exec_(b"DEALLOCATE ALL").status == psycopg.pq.ExecStatus.COMMAND_OK
    later = [_content(batch, f"u{i}", 10 + i) for i in range(3)]
    processor.apply(later)
    assert [(it.dead, (it.result or {}).get("outcome")) for it in later] == [
        (False, "pending")] * 3
    assert processor.session.conn is not conn, "the forgetful session was replaced"
