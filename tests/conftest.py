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

from testkit import databases, partitions
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


@pytest.fixture(scope="session")
def template_db(stack: Stack) -> str:
    """Database ``els_template_<process>``, rebuilt from the current migrations and sql/
    once per session and marked as a template. Returns its name."""
    databases.build_template(stack, TEMPLATE_DB)
    return TEMPLATE_DB


@pytest.fixture
def db_url(stack: Stack, template_db: str) -> Iterator[str]:
    """URL of a brand-new database cloned from the migrated template; dropped afterwards."""
    with databases.clone(stack, template_db, f"test_{uuid.uuid4().hex}") as url:
        yield url


@pytest.fixture
def sharded(stack: Stack, template_db: str) -> Iterator[partitions.Sharded]:
    """Two partition databases behind a PL/Proxy proxy (SPEC 9), brand-new; dropped after."""
    with partitions.sharded(stack, template_db, 2) as topology:
        yield topology


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
