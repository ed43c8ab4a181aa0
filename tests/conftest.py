"""Shared pytest fixtures: the local stack, a migrated template database, a fresh
database per test, and unique Kafka topics per test.

The stack is the one of ``scripts/stack.sh`` (started here if it is not running).
Set ``ELS_TEST_EXTERNAL_STACK=1`` together with ``ELS_PG_ADMIN_URL`` and
``ELS_KAFKA_BOOTSTRAP`` to run against services started some other way (e.g. compose).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg import sql

from testkit.kafka import Topics, create_topics
from testkit.stack import STACK_SH, Stack, discover

# One template per pytest process: under pytest-xdist (make pytest) every worker
# process builds its own, so none drops a template another is cloning.
TEMPLATE_DB = "els_template_" + os.environ.get("PYTEST_XDIST_WORKER", "main")
KAFKA_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The running local stack; its URLs are also exported into os.environ."""
    found = discover()
    os.environ.update(found.env)
    return found


@pytest.fixture(scope="session")
def stack_ctl(stack: Stack) -> Callable[[str], None]:
    """``stack_ctl("pg-restart")`` runs a scripts/stack.sh subcommand (for chaos tests:
    pg-restart, pg-kill, pg-up, kafka-restart, kafka-kill, kafka-up, ...)."""

    def run(command: str) -> None:
        subprocess.run([str(STACK_SH), command], check=True)

    return run


def _admin_conn(stack: Stack) -> psycopg.Connection:
    return psycopg.connect(stack.admin_url, autocommit=True)


def _drop_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(stack: Stack) -> str:
    """Database ``els_template_<process>``, rebuilt from the current migrations and sql/
    once per session and marked as a template. Returns its name."""
    import els_migrate

    with _admin_conn(stack) as conn:
        ident = sql.Identifier(TEMPLATE_DB)
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE_DB,)
        ).fetchone()
        if exists:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false ALLOW_CONNECTIONS true").format(
                    ident
                )
            )
            _drop_database(conn, TEMPLATE_DB)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        els_migrate.apply_migrations(stack.url_for(TEMPLATE_DB))
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template:
        # close whatever the migration tool left open and keep others out.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (TEMPLATE_DB,),
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(ident)
        )
    return TEMPLATE_DB


@pytest.fixture
def db_url(stack: Stack, template_db: str) -> Iterator[str]:
    """URL of a brand-new database cloned from the migrated template; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    with _admin_conn(stack) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield stack.url_for(name)
    finally:
        with _admin_conn(stack) as conn:
            _drop_database(conn, name)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg 3 connection (superuser) to the per-test database."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_factory(kafka_bootstrap: str, kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """``topic_factory(name="x", partitions=3) -> str`` creates a topic whose name is
    unique to this test (``t<hex>.<name>``); all are deleted after the test."""
    created: list[str] = []
    prefix = f"t{uuid.uuid4().hex[:12]}"

    def make(name: str = "topic", partitions: int = 3) -> str:
        topic = f"{prefix}.{name}"
        create_topics(kafka_bootstrap, [topic], partitions)
        created.append(topic)
        return topic

    yield make
    if created:
        for fut in kafka_admin.delete_topics(created, operation_timeout=KAFKA_TIMEOUT_S).values():
            try:
                fut.result(timeout=KAFKA_TIMEOUT_S)
            except Exception:  # cleanup only; a leftover test topic harms no one
                pass


@pytest.fixture
def unique_topics(kafka_bootstrap: str, kafka_admin: AdminClient) -> Iterator[Topics]:
    """Creates (3 partitions each) the input, DLQ and output topics under a prefix
    unique to this test, plus a unique consumer group id; deletes them afterwards."""
    topics = Topics.under(f"t{uuid.uuid4().hex[:12]}")
    everything = list(topics.all)
    create_topics(kafka_bootstrap, everything, partitions=3)
    yield topics
    for fut in kafka_admin.delete_topics(everything, operation_timeout=KAFKA_TIMEOUT_S).values():
        try:
            fut.result(timeout=KAFKA_TIMEOUT_S)
        except Exception:  # cleanup only
            pass
