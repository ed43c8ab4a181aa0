"""The test fixtures themselves: each test gets its own migrated database."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from testkit.stack import Stack

_seen: list[str] = []


def _check_fresh(db: psycopg.Connection, db_url: str) -> None:
    row = db.execute("SELECT current_database(), to_regnamespace('els') IS NOT NULL").fetchone()
    assert row is not None
    name, has_schema = row
    assert name.startswith("test_") and db_url.endswith("/" + name)
    assert has_schema, "per-test database lacks schema els: template not migrated"
    assert name not in _seen, "two tests shared a database"
    _seen.append(name)
    # a table made here must not leak into the next test's database
    leaked = db.execute("SELECT to_regclass('public.fixture_probe') IS NOT NULL").fetchone()
    assert leaked == (False,)
    db.execute("CREATE TABLE public.fixture_probe (x int)")


def test_db_is_migrated_and_private_1(db: psycopg.Connection, db_url: str) -> None:
    _check_fresh(db, db_url)


def test_db_is_migrated_and_private_2(db: psycopg.Connection, db_url: str) -> None:
    _check_fresh(db, db_url)


def test_template_is_a_template(stack: Stack, template_db: str) -> None:
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s",
            (template_db,),
        ).fetchone()
    assert row == (True, False)


def test_stack_urls_point_at_running_services(stack: Stack) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("els",)


@pytest.mark.serial  # stops or restricts the shared stack's PostgreSQL
def test_stack_ctl_restarts_postgres(stack: Stack, stack_ctl: Callable[[str], None]) -> None:
    stack_ctl("pg-restart")
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
