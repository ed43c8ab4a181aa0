"""Faults that are not the event's own never reach the dead-letter topic (SPEC 4, 7):
the real worker on the real stack, a stream of batches, and a fault injected
mid-stream: an unmigrated database, a revoked grant, a read-only database, a bug
that strikes every event. Each test asserts what a user relies on: 0 valid events
dead-lettered, every event applied once the fault is gone, one completion id per
complete batch. A lone poison event is still dead-lettered, alone."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import els_migrate
from els_worker import contract
from testkit import events as ev
from testkit.db import all_complete, outbox_unpublished
from testkit.kafka import Topics, event_bytes, headers_of, produce, read_topic
from testkit.worker import WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.kafka

Messages = list[tuple[str, bytes, bytes]]


def stream(topics: Topics, prefix: str, batches: int = 4,
           essays: int = 3) -> tuple[Messages, list[str]]:
    """Registration then contents for each batch, as (topic, key, value)."""
    out: Messages = []
    ids = [f"{prefix}-{uuid.uuid4().hex[:6]}-{b}" for b in range(batches)]
    for batch_id in ids:
        key = batch_id.encode()
        out.append((topics.batch_registered, key, event_bytes(
            ev.registration(batch_id, [f"{batch_id}-e{i}" for i in range(essays)]))))
        out += [(topics.content_provisioned, key,
                 event_bytes(ev.content(batch_id, f"{batch_id}-t{i}"))) for i in range(essays)]
    return out, ids


def dead_letters(kafka_bootstrap: str, topics: Topics) -> list[Any]:
    return [m for dlq in (topics.batch_registered_dlq, topics.content_provisioned_dlq,
                          topics.validation_failed_dlq) for m in read_topic(kafka_bootstrap, dlq)]


def completion_ids(kafka_bootstrap: str, topics: Topics) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for msg in read_topic(kafka_bootstrap, topics.completed, timeout=30):
        envelope = json.loads(msg.value() or b"{}")
        ids.setdefault(envelope["data"]["batch_id"], set()).add(envelope["event_id"])
    return ids


def assert_nothing_lost(db_url: str, kafka_bootstrap: str, topics: Topics, batch_ids: list[str],
                        worker: WorkerProcess) -> None:
    wait_until(lambda: all_complete(db_url, batch_ids), 90, "every batch complete", worker.tail)
    wait_until(lambda: outbox_unpublished(db_url) == 0, 60, "outbox drained", worker.tail)
    assert dead_letters(kafka_bootstrap, topics) == [], "a valid event was dead-lettered"
    completions = completion_ids(kafka_bootstrap, topics)
    assert {b: len(completions.get(b, ())) for b in batch_ids} == dict.fromkeys(batch_ids, 1)


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = worker.http_status("/healthz")
    return status, (json.loads(body) if body else {})


def unhealthy_because(worker: WorkerProcess, word: str, what: str) -> dict[str, Any]:
    """Waits until /healthz answers 503 with ``word`` in its body; returns the body."""
    def check() -> dict[str, Any] | None:
        status, body = health(worker)
        return body if status == 503 and word in json.dumps(body) else None
    found = wait_until(check, 30, what, worker.tail)
    assert found is not None
    return found


def metric(worker: WorkerProcess, name: str) -> float:
    _, body = worker.http_status("/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def start_and_fault(worker: WorkerProcess, db_url: str, kafka_bootstrap: str, first: Messages,
                    rest: Messages, first_ids: list[str]) -> None:
    """Produces ``first`` and waits until it is applied, then produces ``rest``."""
    produce(kafka_bootstrap, first)
    wait_until(lambda: all_complete(db_url, first_ids), 60, "the stream before the fault",
               worker.tail)
    produce(kafka_bootstrap, rest)


# --- deployment faults ------------------------------------------------------------


@pytest.fixture
def empty_database(db_url: str) -> Iterator[str]:
    """A database with nothing in it: not migrated."""
    name = f"unmigrated_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    url = db_url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def test_worker_started_before_the_migrations_waits_then_applies_everything(
    empty_database: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    msgs, batch_ids = stream(topics, "unmigrated")
    produce(kafka_bootstrap, msgs)
    env = worker_env(empty_database, kafka_bootstrap, topics)
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        unhealthy_because(worker, "deployment", "/healthz to report the deployment fault")
        time.sleep(3)  # several retry rounds against the unmigrated database
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        assert dead_letters(kafka_bootstrap, topics) == []
        assert metric(worker, 'els_retries_total{kind="deployment"}') >= 2
        els_migrate.apply_migrations(empty_database)
        assert_nothing_lost(empty_database, kafka_bootstrap, topics, batch_ids, worker)
        wait_until(lambda: health(worker)[0] == 200, 30, "healthy again", worker.tail)
        assert worker.terminate() == 0


@pytest.fixture
def worker_login(db: psycopg.Connection[Any], db_url: str) -> Iterator[str]:
    """The URL of a login role that is a member of els_worker, as in production."""
    name = f"worker_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE els_worker").format(sql.Identifier(name)))
    db.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(db.info.dbname), sql.Identifier(name)))
    try:
        yield db_url.replace("://postgres@", f"://{name}@", 1)
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        # the worker is stopped by now; a straggling backend must not block the drop
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %(n)s",
                   {"n": name})
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_revoked_grant_waits_then_applies_everything(
    db: psycopg.Connection[Any], db_url: str, worker_login: str, kafka_bootstrap: str,
    unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    first, first_ids = stream(topics, "grant-a", batches=2)
    rest, rest_ids = stream(topics, "grant-b", batches=4)
    assert "://postgres@" not in worker_login
    env = worker_env(worker_login, kafka_bootstrap, topics)
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        start_and_fault(worker, db_url, kafka_bootstrap, first, [], first_ids)
        # the fast path's functions and the careful path's
        db.execute("REVOKE EXECUTE ON FUNCTION els.apply_events(jsonb),"
                   " els.apply_events(text[], text[]), els.provision_content(jsonb)"
                   " FROM els_worker")
        try:
            produce(kafka_bootstrap, rest)
            unhealthy_because(worker, "privilege", "/healthz to name the missing grant")
            time.sleep(8)
            assert dead_letters(kafka_bootstrap, topics) == []
        finally:
            db.execute("GRANT EXECUTE ON FUNCTION els.apply_events(jsonb),"
                       " els.apply_events(text[], text[]), els.provision_content(jsonb)"
                       " TO els_worker")
        assert_nothing_lost(db_url, kafka_bootstrap, topics, first_ids + rest_ids, worker)
        assert worker.terminate() == 0


# --- operational: a read-only database (what a worker sees after a failover) ---------


@pytest.fixture
def read_only_switch(db: psycopg.Connection[Any]) -> Iterator[Any]:
    """``switch(True/False)`` makes the whole cluster read-only for new transactions,
    as a demoted primary is; always switched back afterwards."""
    db.execute("SET default_transaction_read_only = off")  # this session stays writable

    def switch(on: bool) -> None:
        if on:
            db.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            db.execute("ALTER SYSTEM RESET default_transaction_read_only")
        db.execute("SELECT pg_reload_conf()")

    try:
        yield switch
    finally:
        switch(False)


@pytest.mark.serial  # stops or restricts the shared stack's PostgreSQL
def test_read_only_database_for_8_seconds_nothing_dead_lettered(
    db_url: str, read_only_switch: Any, kafka_bootstrap: str, unique_topics: Topics,
    tmp_path: Path
) -> None:
    topics = unique_topics
    first, first_ids = stream(topics, "ro-a", batches=2)
    rest, rest_ids = stream(topics, "ro-b", batches=6)
    env = worker_env(db_url, kafka_bootstrap, topics)
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        start_and_fault(worker, db_url, kafka_bootstrap, first, [], first_ids)
        read_only_switch(True)
        produce(kafka_bootstrap, rest)
        time.sleep(8)
        assert dead_letters(kafka_bootstrap, topics) == []
        assert metric(worker, 'els_retries_total{kind="operational"}') >= 1
        read_only_switch(False)
        started = time.monotonic()
        assert_nothing_lost(db_url, kafka_bootstrap, topics, first_ids + rest_ids, worker)
        recovery = time.monotonic() - started
        assert worker.terminate() == 0
    print(f"read-only 8 s: every batch complete {recovery:.1f} s after the database was writable")


# --- unexpected errors: systemic vs poison ------------------------------------------


@pytest.fixture
def bug_in_provision_content(db: psycopg.Connection[Any]) -> Iterator[Any]:
    """``install(pattern)`` puts a bug in the content rules that both paths share
    (els._content_row, called by the set-based core of els.apply_events and so by
    els.provision_content): content whose text_storage_id matches ``pattern`` (LIKE)
    raises division_by_zero inside the function body. ``restore()`` takes it away (also
    done at the end)."""
    state = {"installed": False}

    def install(pattern: str) -> None:
        db.execute("ALTER FUNCTION els._content_row(jsonb, jsonb) RENAME TO content_row_real")
        db.execute(sql.SQL("""
            CREATE FUNCTION els._content_row(p_event jsonb, p_payload jsonb) RETURNS jsonb
            LANGUAGE plpgsql AS $$
            BEGIN
                IF p_event -> 'data' ->> 'text_storage_id' LIKE {} THEN
                    RETURN to_jsonb(1 / 0);
                END IF;
                RETURN els.content_row_real(p_event, p_payload);
            END $$""").format(sql.Literal(pattern)))
        state["installed"] = True

    def restore() -> None:
        if state["installed"]:
            db.execute("DROP FUNCTION els._content_row(jsonb, jsonb)")
            db.execute("ALTER FUNCTION els.content_row_real(jsonb, jsonb) RENAME TO _content_row")
            state["installed"] = False

    try:
        yield install, restore
    finally:
        restore()


def test_bug_striking_every_event_is_systemic_then_resumes_by_itself(
    db_url: str, bug_in_provision_content: Any, kafka_bootstrap: str, unique_topics: Topics,
    tmp_path: Path
) -> None:
    install, restore = bug_in_provision_content
    topics = unique_topics
    first, first_ids = stream(topics, "sys-a", batches=2)
    rest, rest_ids = stream(topics, "sys-b", batches=4)
    env = worker_env(db_url, kafka_bootstrap, topics, ELS_UNEXPECTED_MAX_ATTEMPTS="3")
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        start_and_fault(worker, db_url, kafka_bootstrap, first, [], first_ids)
        install("%")  # every content event; registrations still apply
        produce(kafka_bootstrap, rest)
        body = unhealthy_because(worker, "22012", "/healthz to report the systemic fault")
        assert "division by zero" in body["systemic_fault"], body
        assert metric(worker, "els_systemic_fault") == 1
        time.sleep(8)
        assert dead_letters(kafka_bootstrap, topics) == [], "a systemic fault emptied the stream"
        restore()
        assert_nothing_lost(db_url, kafka_bootstrap, topics, first_ids + rest_ids, worker)
        wait_until(lambda: health(worker)[0] == 200, 30, "healthy again", worker.tail)
        assert metric(worker, "els_systemic_fault") == 0
        assert worker.terminate() == 0


def test_lone_poison_event_amid_good_ones_is_dead_lettered_alone(
    db_url: str, bug_in_provision_content: Any, kafka_bootstrap: str, unique_topics: Topics,
    tmp_path: Path
) -> None:
    install, _restore = bug_in_provision_content
    topics = unique_topics
    install("poison%")
    msgs, batch_ids = stream(topics, "lone", batches=4)
    victim = batch_ids[1]
    poison = (topics.content_provisioned, victim.encode(),
              event_bytes(ev.content(victim, "poison-1")))
    msgs.insert(len(msgs) // 2, poison)
    env = worker_env(db_url, kafka_bootstrap, topics, ELS_UNEXPECTED_MAX_ATTEMPTS="3")
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, msgs)
        wait_until(lambda: all_complete(db_url, batch_ids), 60, "every batch complete",
                   worker.tail)
        (letter,) = wait_until(lambda: read_topic(kafka_bootstrap, topics.content_provisioned_dlq),
                               30, "the poison event's dead letter", worker.tail)
        h = headers_of(letter)
        assert h["els.error.sqlstate"] == "22012" and h["els.attempts"] == "3"
        assert letter.value() == poison[2]
        assert read_topic(kafka_bootstrap, topics.batch_registered_dlq) == []
        completions = completion_ids(kafka_bootstrap, topics)
        assert Counter(len(completions.get(b, ())) for b in batch_ids) == {1: len(batch_ids)}
        assert worker.terminate() == 0


# --- no single event stalls the relay --------------------------------------------


def test_largest_completion_the_spec_allows_is_published_and_the_batch_behind_it_too(
    db_url: str, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    """10,000 essays with 255-character essay ids and text_storage_ids (SPEC 2's limits):
    a ~5.5 MB BatchContentProvisioningCompleted. It is published, and a small batch
    registered after it completes and is published as well."""
    topics = unique_topics
    big = f"big-{uuid.uuid4().hex[:6]}"
    essay_ids = [f"{big}-e{i:05d}".ljust(255, "e") for i in range(10_000)]
    msgs: Messages = [(topics.batch_registered, big.encode(),
                       event_bytes(ev.registration(big, essay_ids)))]
    for i in range(10_000):
        content = ev.content(big, f"{big}-t{i:05d}".ljust(255, "t"))
        content["data"]["file_upload_id"] = f"{big}-u{i:05d}".ljust(255, "u")
        content["data"]["raw_file_storage_id"] = f"{big}-r{i:05d}".ljust(255, "r")
        msgs.append((topics.content_provisioned, big.encode(), event_bytes(content)))
    small, small_ids = stream(topics, "behind", batches=1)
    env = worker_env(db_url, kafka_bootstrap, topics)
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, msgs + small, timeout=120)
        wait_until(lambda: all_complete(db_url, [big, *small_ids]), 300, "both batches complete",
                   worker.tail)
        wait_until(lambda: outbox_unpublished(db_url) == 0, 120, "outbox drained", worker.tail)
        completions = {json.loads(m.value() or b"{}")["data"]["batch_id"]: m
                       for m in read_topic(kafka_bootstrap, topics.completed, timeout=60)}
        assert set(completions) == {big, *small_ids}
        data = json.loads(completions[big].value() or b"{}")["data"]
        assert len(data["essays_for_processing"]) == 10_000
        assert data["essays_for_processing"][0]["essay_id"] == essay_ids[0]
        print(f"largest completion: {len(completions[big].value() or b'')} bytes")
        assert dead_letters(kafka_bootstrap, topics) == []
        assert worker.terminate() == 0


def test_a_row_kafka_refuses_is_set_aside_and_the_rows_behind_it_flow(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, unique_topics: Topics,
    topic_factory: Any, kafka_admin: Any, tmp_path: Path
) -> None:
    """The completion topic (one partition) refuses messages over 2,000 bytes: the
    completion row of a 200-essay batch is set aside with its reason (SQL, metric,
    /healthz) while the slot events and later batches' completions, produced in the
    same record batch as it, are published; once the topic accepts it, the set-aside
    row is published on its next try."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    def topic_limit(nbytes: int) -> None:
        res = ConfigResource(ConfigResource.Type.TOPIC, topics.completed, incremental_configs=[
            ConfigEntry("max.message.bytes", str(nbytes),
                        incremental_operation=AlterConfigOpType.SET)])
        for fut in kafka_admin.incremental_alter_configs([res]).values():
            fut.result(timeout=30)

    narrow = topic_factory("completed-narrow", partitions=1)
    topics = dataclasses.replace(unique_topics, completed=narrow)
    topic_limit(2000)
    wide = f"wide-{uuid.uuid4().hex[:6]}"
    essay_ids = [str(uuid.uuid4()) for _ in range(200)]
    msgs: Messages = [(topics.batch_registered, wide.encode(),
                       event_bytes(ev.registration(wide, essay_ids)))]
    msgs += [(topics.content_provisioned, wide.encode(),
              event_bytes(ev.content(wide, str(uuid.uuid4())))) for _ in range(200)]
    later, later_ids = stream(topics, "later", batches=2, essays=1)
    env = worker_env(db_url, kafka_bootstrap, topics, **{contract.COMPLETED.env_var: narrow})
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, msgs + later)
        wait_until(lambda: all_complete(db_url, [wide, *later_ids]), 60, "batches complete",
                   worker.tail)
        wait_until(lambda: outbox_unpublished(db_url) == 1, 60, "all but one row published",
                   worker.tail)
        row = db.execute("SELECT event_type, last_error, publish_attempts FROM els.outbox_set_aside"
                         ).fetchone()
        assert row is not None and row[0] == "BatchContentProvisioningCompleted"
        assert "MSG_SIZE_TOO_LARGE" in row[1] or "TOO_LARGE" in row[1], row
        wait_until(lambda: metric(worker, "els_outbox_unpublishable") == 1, 30,
                   "els_outbox_unpublishable", worker.tail)
        wait_until(lambda: health(worker)[1].get("outbox_set_aside") == 1, 30,
                   "/healthz to show the set-aside row", worker.tail)
        assert set(completion_ids(kafka_bootstrap, topics)) == set(later_ids)
        assert len(read_topic(kafka_bootstrap, topics.slot_assigned)) == 200 + 2
        topic_limit(64 * 1024 * 1024)
        db.execute("UPDATE els.event_outbox SET retry_after = now() WHERE last_error IS NOT NULL")
        wait_until(lambda: outbox_unpublished(db_url) == 0, 60, "the set-aside row published",
                   worker.tail)
        completions = completion_ids(kafka_bootstrap, topics)
        assert set(completions) == {wide, *later_ids}
        assert worker.terminate() == 0
