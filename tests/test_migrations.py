"""Migrations: they build the schema from nothing, are idempotent, roll back, and
load function files whole (no statement splitting inside dollar quotes)."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import els_migrate

# every migration of this release, in order (a new one must be added here on purpose)
MIGRATIONS = ["0001_roles_and_schema", "0002_batch_registration_tables", "0003_outbox_set_aside"]


def other_database(url: str, dbname: str) -> str:
    """The same server URL with another database name."""
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


@pytest.fixture
def empty_db_url(db_url: str) -> Iterator[str]:
    """A database with nothing in it, not even the template's migrations."""
    admin = other_database(db_url, "postgres")
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield other_database(db_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def els_objects(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("""
            SELECT c.relkind::text, c.relname::text FROM pg_class c
             WHERE c.relnamespace = 'els'::regnamespace
            UNION ALL
            SELECT 'f', p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'els'::regnamespace
            ORDER BY 1, 2""").fetchall()
    return [(r[0], r[1]) for r in rows]


def test_migrations_build_the_schema_from_an_empty_database(empty_db_url: str) -> None:
    applied = els_migrate.apply_migrations(empty_db_url)
    assert applied == MIGRATIONS
    objects = dict((name, kind) for kind, name in els_objects(empty_db_url))
    assert objects["batch_tracker"] == "r" and objects["event_outbox"] == "r"
    assert objects["stuck_batches"] == "v"
    assert "els.register_batch(jsonb)" in objects


def test_migrations_produce_the_committed_schema(empty_db_url: str) -> None:
    """docs/schema.sql is the readable source of truth; the migrations must produce it
    exactly. Regenerate it with `make schema-snapshot` after a deliberate change."""
    els_migrate.apply_migrations(empty_db_url)
    snapshot = els_migrate.SCHEMA_SNAPSHOT.read_text(encoding="utf-8")
    assert els_migrate.dump_schema(empty_db_url) == snapshot


def test_a_second_apply_is_a_no_op(empty_db_url: str) -> None:
    els_migrate.apply_migrations(empty_db_url)
    before = els_migrate.dump_schema(empty_db_url)
    assert els_migrate.apply_migrations(empty_db_url) == []
    assert els_migrate.dump_schema(empty_db_url) == before


def test_rollback_then_reapply(empty_db_url: str) -> None:
    els_migrate.apply_migrations(empty_db_url)
    before = els_migrate.dump_schema(empty_db_url)
    rolled_back = els_migrate.rollback_migrations(empty_db_url)
    assert rolled_back == MIGRATIONS[::-1]
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'els'").fetchone() == (0,)
    assert els_migrate.applied_migrations(empty_db_url) == []
    els_migrate.apply_migrations(empty_db_url)
    assert els_migrate.dump_schema(empty_db_url) == before


TRICKY_FUNCTION = r"""
-- A body full of what breaks naive statement splitters: semicolons inside
-- strings and comments, and a dollar-quoted string nested in the body.
CREATE OR REPLACE FUNCTION els.zz_tricky_body()
RETURNS text
LANGUAGE plpgsql AS $outer$
DECLARE
    v_text text := 'a;b;c';  -- a comment; with semicolons;
BEGIN
    EXECUTE $inner$SELECT 'x;y'$inner$ INTO v_text;
    RETURN v_text || $$;$$ || 'end';
END
$outer$;
"""


def test_function_files_are_loaded_whole(empty_db_url: str, tmp_path: Path) -> None:
    """The real post-apply hook, run against a sql/ folder holding a tricky body."""
    shutil.copytree(els_migrate.MIGRATIONS_DIR, tmp_path / "migrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(els_migrate.MIGRATIONS_DIR.parent / "sql", tmp_path / "sql")
    (tmp_path / "sql" / "999_tricky.sql").write_text(TRICKY_FUNCTION, encoding="utf-8")

    from yoyo import get_backend, read_migrations

    backend = get_backend(els_migrate.yoyo_url(empty_db_url))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(read_migrations(str(tmp_path / "migrations"))))
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT els.zz_tricky_body()").fetchone() == ("x;y;end",)
        owner = conn.execute(
            "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'zz_tricky_body'"
        ).fetchone()
    assert owner == ("els_owner",)


def test_function_files_sort_in_dependency_order() -> None:
    names = [p.name for p in sorted((els_migrate.MIGRATIONS_DIR.parent / "sql").glob("*.sql"))]
    assert names and all(re.match(r"^\d{3}_[a-z_]+\.sql$", n) for n in names), names
