"""The worker's error classification table (worker.CLASSIFICATION), and the micro-batch
processor's use of it against the real database: rejected events are dead-lettered
alone, unexpected errors are retried a bounded number of times, operational ones
forever."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message

import worker
from tests import events as ev
from worker import Action, classify_exception, classify_sqlstate

# --- the table, code by code --------------------------------------------------

DEAD = Action.DEAD_LETTER
FOREVER = Action.RETRY_FOREVER
BOUNDED = Action.RETRY_BOUNDED


@pytest.mark.parametrize(
    ("sqlstate", "action"),
    [
        # rejections of SPEC section 4
        *[(code, DEAD) for code in ("ELV01", "ELV02", "ELV03", "ELV04", "ELV05", "ELV06")],
        ("ELC01", DEAD),
        ("ELC02", DEAD),
        # data exceptions (class 22): a verdict on the value
        ("22P02", DEAD),
        ("22P05", DEAD),
        ("22012", DEAD),
        ("22001", DEAD),
        # operational: retried forever
        ("08000", FOREVER),
        ("08003", FOREVER),
        ("08006", FOREVER),
        ("08001", FOREVER),
        ("08P01", FOREVER),
        ("40001", FOREVER),
        ("40P01", FOREVER),
        ("55P03", FOREVER),
        ("57014", FOREVER),
        ("57P01", FOREVER),
        ("57P02", FOREVER),
        ("57P03", FOREVER),
        ("53000", FOREVER),
        ("53100", FOREVER),
        ("53200", FOREVER),
        ("53300", FOREVER),
        (None, FOREVER),  # connection lost: no SQLSTATE at all
        # anything else: bounded
        ("42883", BOUNDED),  # undefined function
        ("42P01", BOUNDED),  # undefined table
        ("XX000", BOUNDED),  # internal error
        ("P0001", BOUNDED),  # plain RAISE EXCEPTION
        ("40002", BOUNDED),  # integrity constraint violation at commit
        ("55000", BOUNDED),  # object not in prerequisite state
        ("57P04", BOUNDED),  # database dropped
        ("23505", BOUNDED),  # unique violation escaping a function would be a bug
        ("ELX01", BOUNDED),  # unknown custom code
    ],
)
def test_classification_table(sqlstate: str | None, action: Action) -> None:
    assert classify_sqlstate(sqlstate).action is action


def test_longest_prefix_wins_and_every_rule_is_reachable() -> None:
    for rule in worker.CLASSIFICATION:
        if rule.prefix:
            probe = rule.prefix + "000"[: max(0, 5 - len(rule.prefix))]
            assert classify_sqlstate(probe) == rule, rule
    # the catch-all is last and bounded
    assert worker.CLASSIFICATION[-1].prefix == ""
    assert worker.CLASSIFICATION[-1].action is BOUNDED
    # a data exception is reported as ELV01 (the value was refused as jsonb)
    assert classify_sqlstate("22P05").report_as == "ELV01"


def test_help_lists_table_and_every_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        worker.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, _default, _text in worker.ENV_VARS:
        assert name in out
    for rule in worker.CLASSIFICATION:
        assert rule.action.value in out


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
    assert classify_exception(rejected).action is DEAD

    nul = _error(db, "SELECT els.provision_content(%(e)s::jsonb)", {"e": '{"a": "\\u0000"}'})
    assert nul.sqlstate == "22P05"
    assert classify_exception(nul).action is DEAD

    bug = _error(db, "SELECT els.no_such_function(%(e)s::jsonb)", {"e": "{}"})
    assert classify_exception(bug).action is BOUNDED

    timeout = _error(db, "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")
    assert timeout.sqlstate == "57014"
    assert classify_exception(timeout).action is FOREVER

    # connection killed under us (admin shutdown / connection loss): retried forever
    victim = psycopg.connect(db_url, autocommit=True)
    pid = victim.info.backend_pid
    db.execute("SELECT pg_terminate_backend(%(p)s::integer)", {"p": pid})
    lost = _error(victim, "SELECT 1")
    assert isinstance(lost, psycopg.OperationalError)
    assert classify_exception(lost).action is FOREVER
    victim.close()

    assert classify_exception(psycopg.OperationalError("connection lost")).action is FOREVER
    # a value psycopg itself refuses to send (NUL character) is a verdict on the value
    client_side = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    rule = classify_exception(client_side)
    assert rule.action is DEAD and rule.report_as == "ELV01"


# --- the micro-batch processor, on the real database ----------------------------


def _msg(topic: str, offset: int, value: bytes, key: bytes = b"k") -> Message:
    return Message(topic=topic, partition=0, offset=offset, key=key, value=value)


@pytest.fixture
def processor(db_url: str) -> Iterator[worker.BatchProcessor]:
    cfg = worker.Config(
        database_url=db_url,
        kafka_bootstrap="unused:1",
        group_id="g",
        topic_batch_registered=ev.TOPIC_REGISTERED,
        topic_content_provisioned=ev.TOPIC_CONTENT,
        topic_validation_failed=ev.TOPIC_FAILED,
        retry_base_ms=1,
        retry_max_ms=5,
        unexpected_max_attempts=3,
    )
    metrics = worker.Metrics()
    proc = worker.BatchProcessor(cfg, metrics, threading.Event(), worker.Health(metrics, 30))
    yield proc
    proc.close()


def test_rejected_event_dead_lettered_alone_neighbours_commit(
    processor: worker.BatchProcessor, db: psycopg.Connection[Any]
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
    items = [
        worker.decode_item(_msg(t, i, v))
        for i, (t, v) in enumerate(zip(topics, values, strict=True))
    ]
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
    assert items[2].attempts == 1
    row = db.execute(
        "SELECT completed_at IS NOT NULL FROM els.batch_tracker WHERE batch_id = %(b)s",
        {"b": batch},
    ).fetchone()
    assert row == (True,)


def test_unexpected_error_retried_bounded_then_dead_lettered(
    processor: worker.BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    # a "bug": a function that fails with an unexpected SQLSTATE a few times
    db.execute("CREATE SEQUENCE public.flaky_calls")
    db.execute(
        """CREATE FUNCTION public.flaky(event jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('public.flaky_calls') <= (event ->> 'fail_times')::int THEN
                RAISE EXCEPTION 'flaky bug' USING ERRCODE = 'XX000';
            END IF;
            RETURN jsonb_build_object('outcome', 'ok', 'batch_id', event ->> 'batch');
        END $$"""
    )
    processor.routes["flaky"] = "SELECT public.flaky(%(event)s::jsonb)"
    # fails twice, then works: retried within its savepoint, applied, not dead
    recovers = worker.decode_item(_msg("flaky", 0, b'{"fail_times": 2, "batch": "x"}'))
    processor.apply([recovers])
    assert not recovers.dead and recovers.result == {"outcome": "ok", "batch_id": "x"}
    # the pipelined fast path took the first failure (not attributable to one message),
    # the savepoint path the second, then it worked
    assert recovers.attempts == 2
    # always fails: dead-lettered after unexpected_max_attempts (3), with its SQLSTATE
    db.execute("SELECT setval('public.flaky_calls', 1, false)")
    hopeless = worker.decode_item(_msg("flaky", 1, b'{"fail_times": 1000000, "batch": "y"}'))
    neighbour = worker.decode_item(_msg("flaky", 2, b'{"fail_times": 0, "batch": "z"}'))
    processor.apply([hopeless, neighbour])
    assert hopeless.dead and hopeless.sqlstate == "XX000" and hopeless.attempts == 3
    assert not neighbour.dead and neighbour.result is not None
    retries = processor.metrics.retries.labels(kind="unexpected")._value.get()
    assert retries == 1 + 2


def test_operational_error_retried_until_database_answers(
    processor: worker.BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    batch = f"b-{uuid.uuid4().hex[:6]}"
    items = [
        worker.decode_item(
            _msg(ev.TOPIC_REGISTERED, 0, json.dumps(ev.registration(batch, ["e"])).encode())
        )
    ]
    # lock the batch's advisory lock elsewhere with a tiny lock_timeout for the worker:
    # the worker gets 55P03 (operational), retries, and succeeds once the lock is gone
    processor.apply([])  # connects
    assert processor.conn is not None
    processor.conn.execute("SET lock_timeout = '20ms'")
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


def test_commit_failure_falls_back_to_one_transaction_per_message(
    processor: worker.BatchProcessor, db: psycopg.Connection[Any]
) -> None:
    """A failure that only shows at COMMIT (a deferred constraint) cannot be pinned on
    one message inside the batch: the processor then commits message by message, so
    the culprit is dead-lettered after its bounded retries and the others are kept."""
    db.execute("CREATE TABLE public.deferred_t (x int)")
    db.execute(
        """CREATE FUNCTION public.deferred_check() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.x < 0 THEN RAISE EXCEPTION 'negative at commit' USING ERRCODE = 'P0001'; END IF;
            RETURN NULL;
        END $$"""
    )
    db.execute(
        "CREATE CONSTRAINT TRIGGER deferred_t_check AFTER INSERT ON public.deferred_t"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.deferred_check()"
    )
    db.execute(
        """CREATE FUNCTION public.insert_x(event jsonb) RETURNS jsonb LANGUAGE sql AS $$
        INSERT INTO public.deferred_t VALUES ((event ->> 'x')::int);
        SELECT jsonb_build_object('outcome', 'inserted', 'batch_id', event ->> 'x');
        $$"""
    )
    processor.routes["deferred"] = "SELECT public.insert_x(%(event)s::jsonb)"
    items = [
        worker.decode_item(_msg("deferred", i, json.dumps({"x": x}).encode()))
        for i, x in enumerate([1, -1, 2])
    ]
    processor.apply(items)
    assert [(it.dead, it.sqlstate) for it in items] == [
        (False, None),
        (True, "P0001"),
        (False, None),
    ]
    assert items[1].attempts == 3
    rows = db.execute("SELECT x FROM public.deferred_t ORDER BY x").fetchall()
    assert rows == [(1,), (2,)]
