"""Migrations: they build the schema from nothing, are idempotent, roll back, and
load function files whole (no statement splitting inside dollar quotes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

import els_migrate
from testkit import events
from testkit.db import load_functions
from testkit.invariants import check_invariants
from testkit.stack import ROOT

# every migration of this release, in order (a new one must be added here on purpose)
MIGRATIONS = ["0001_roles_and_schema", "0002_batch_registration_tables", "0003_outbox_set_aside",
              "0004_deadlines_and_retention", "0005_outbox_delivery_proof",
              "0006_essay_ids_of_purged_batches", "0007_item_step_type", "0008_essay_claims",
              "0009_retired_essay_ids"]


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


@pytest.fixture
def other_empty_db_url(db_url: str) -> Iterator[str]:
    """A second empty database, for comparing two ways of building a schema."""
    admin = other_database(db_url, "postgres")
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield other_database(db_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


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


def test_rollback_of_deadlines_keeps_a_working_previous_release(empty_db_url: str,
                                                                 other_empty_db_url: str) -> None:
    """0004 rolled back over real data (a batch closed by its deadline, a purged one):
    the schema is exactly the previous release's (0001-0003 and its function files),
    timed-out slots became recorded failures, and the previous functions still work."""
    from yoyo import get_backend, read_migrations
    from yoyo.migrations import MigrationList

    els_migrate.apply_migrations(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        events.apply(conn, "register", events.registration("rb-closed", ["rbc-1", "rbc-2"]))
        events.apply(conn, "content", events.content("rb-closed", "t1"))
        conn.execute("SELECT els.close_batch(batch_id => %(b)s::text)", {"b": "rb-closed"})
        events.apply(conn, "register", events.registration("rb-purged", ["rbp-1"]))
        conn.execute("SELECT els.close_batch(batch_id => %(b)s::text)", {"b": "rb-purged"})
        conn.execute("UPDATE els.batch_tracker SET completed_at = now() - interval '2 days'"
                     " WHERE batch_id = 'rb-purged'")
        row = conn.execute("SELECT els.purge_history('1 day')").fetchone()
        assert row is not None and row[0]["batches_purged"] == 1

    backend = get_backend(els_migrate.yoyo_url(empty_db_url))
    migrations = read_migrations(str(els_migrate.MIGRATIONS_DIR))
    with backend.lock():
        for later in ("0009_retired_essay_ids", "0008_essay_claims", "0007_item_step_type",
                      "0006_essay_ids_of_purged_batches",
                      "0005_outbox_delivery_proof", "0004_deadlines_and_retention"):
            backend.rollback_migrations(MigrationList([m for m in migrations if m.id == later]))
    assert els_migrate.applied_migrations(empty_db_url) == [
        "0001_roles_and_schema", "0002_batch_registration_tables", "0003_outbox_set_aside"]

    # the previous release, built from nothing: 0001-0003, then its own function files
    other = get_backend(els_migrate.yoyo_url(other_empty_db_url))
    with other.lock():
        other.apply_migrations_only(MigrationList(
            [m for m in migrations if m.id not in ("0004_deadlines_and_retention",
                                                    "0005_outbox_delivery_proof",
                                                    "0006_essay_ids_of_purged_batches",
                                                    "0007_item_step_type",
                                                    "0008_essay_claims",
                                                    "0009_retired_essay_ids")]))
    with psycopg.connect(other_empty_db_url, autocommit=True) as conn:
        conn.execute("SET ROLE els_owner")
        for path in sorted((els_migrate.MIGRATIONS_DIR / "0004_rollback").glob("*.sql")):
            conn.execute(path.read_text(encoding="utf-8"))
    assert els_migrate.dump_schema(empty_db_url) == els_migrate.dump_schema(other_empty_db_url)

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        slots = conn.execute(
            "SELECT essay_id, status::text, failed_file_upload_id FROM els.essay_slot"
            " WHERE batch_id = 'rb-closed' ORDER BY slot_no").fetchall()
        assert slots == [("rbc-1", "ready_for_processing", None),
                         ("rbc-2", "content_ingestion_failed", "els-timeout:rbc-2")]
        failure = conn.execute(
            "SELECT validation_error_code, validation_error_detail FROM els.validation_failure"
            " WHERE file_upload_id = 'els-timeout:rbc-2'").fetchone()
        assert failure == ("UNKNOWN_VALIDATION_ERROR", {"failure_code": "CONTENT_TIMEOUT"})
        # the previous release's functions work on the rolled-back schema
        registered = events.apply(conn, "register", events.registration("rb-new", ["rbn-1"]))
        assert registered["outcome"] == "registered"
        assigned = events.apply(conn, "content", events.content("rb-new", "t9"))
        assert (assigned["outcome"], assigned["complete"]) == ("assigned", True)
        report = conn.execute("SELECT els.batch_report('rb-closed')").fetchone()
        assert report is not None and report[0]["complete"] is True
    # and forward again, over the previous release's data: completion reasons backfilled,
    # the timed-out slot that the rollback kept as a failure is a timed-out slot again
    assert els_migrate.apply_migrations(empty_db_url) == ["0004_deadlines_and_retention",
                                                          "0005_outbox_delivery_proof",
                                                          "0006_essay_ids_of_purged_batches",
                                                          "0007_item_step_type",
                                                          "0008_essay_claims",
                                                          "0009_retired_essay_ids"]
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        reasons = conn.execute("SELECT batch_id, completion_reason FROM els.batch_tracker"
                               " ORDER BY batch_id").fetchall()
        assert reasons == [("rb-closed", "deadline"), ("rb-new", "all_slots_closed")]
        closed_batch = check_invariants(conn, "rb-closed")
        assert (closed_batch["failed"], closed_batch["timed_out"]) == (1, 1)
        assert conn.execute("SELECT count(*) FROM els.validation_failure"
                            " WHERE batch_id = 'rb-closed'").fetchone() == (0,)
        # completed by the previous release: its completion event has no completion_reason
        assert check_invariants(conn, "rb-new", outbox_partial=True)["complete"] is True
        closed = conn.execute("SELECT els.close_batch(batch_id => %(b)s::text)",
                              {"b": "rb-new"}).fetchone()
        assert closed is not None and closed[0]["outcome"] == "already_complete"


def test_rollback_of_delivery_proof_gives_the_previous_release(empty_db_url: str,
                                                               tmp_path: Path) -> None:
    """0005 rolled back over published rows: exactly the previous release's schema (its
    own snapshot), and its relay's one-argument mark_outbox_published works again."""
    from yoyo import get_backend, read_migrations
    from yoyo.migrations import MigrationList

    els_migrate.apply_migrations(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        events.apply(conn, "register", events.registration("rp-1", ["rp-e1"]))
        events.apply(conn, "content", events.content("rp-1", "rp-t1"))
        with conn.transaction():
            ids = [r[0] for r in conn.execute("SELECT id FROM els.claim_outbox(10)")]
            conn.execute("SELECT els.mark_outbox_published(%(i)s::bigint[], %(t)s::text[],"
                         " %(p)s::integer[], %(o)s::bigint[])",
                         {"i": ids, "t": ["t"] * len(ids), "p": [0] * len(ids),
                          "o": list(range(len(ids)))})
        events.apply(conn, "register", events.registration("rp-2", ["rp-e2"]))
        events.apply(conn, "content", events.content("rp-2", "rp-t2"))  # rows to publish
    backend = get_backend(els_migrate.yoyo_url(empty_db_url))
    migrations = read_migrations(str(els_migrate.MIGRATIONS_DIR))
    with backend.lock():
        for later in ("0009_retired_essay_ids", "0008_essay_claims", "0007_item_step_type",
                      "0006_essay_ids_of_purged_batches",
                      "0005_outbox_delivery_proof"):
            backend.rollback_migrations(MigrationList([m for m in migrations if m.id == later]))
    # what deploying that release does: its own functions
    old = _previous_release(tmp_path, "824e0af")
    load_functions(empty_db_url, old / "sql")
    assert els_migrate.dump_schema(empty_db_url) == (old / "docs/schema.sql").read_text("utf-8")
    with psycopg.connect(empty_db_url, autocommit=True) as conn, conn.transaction():
        ids = [r[0] for r in conn.execute("SELECT id FROM els.claim_outbox(10)")]
        marked = conn.execute("SELECT els.mark_outbox_published(%(i)s::bigint[])",
                              {"i": ids}).fetchone()
        assert ids and marked == (len(ids),)


def test_rollback_to_the_previous_release_gives_its_schema(empty_db_url: str,
                                                           tmp_path: Path) -> None:
    """The migrations since the previous release rolled back over a purged batch, and
    that release's functions deployed: exactly its schema, and it registers."""
    from yoyo import get_backend, read_migrations
    from yoyo.migrations import MigrationList

    els_migrate.apply_migrations(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        events.apply(conn, "register", events.registration("rg-1", ["rg-e1"]))
        conn.execute("SELECT els.close_batch(batch_id => %(b)s::text)", {"b": "rg-1"})
        conn.execute("UPDATE els.batch_tracker SET completed_at = now() - interval '2 days'")
        conn.execute("SELECT els.purge_history('1 day')")
    backend = get_backend(els_migrate.yoyo_url(empty_db_url))
    old = _previous_release(tmp_path)
    newer = sorted((m for m in read_migrations(str(els_migrate.MIGRATIONS_DIR))
                    if m.id not in _migrations_of(old)), key=lambda m: m.id, reverse=True)
    assert [m.id for m in newer] == ["0009_retired_essay_ids", "0008_essay_claims"]
    with backend.lock():
        for migration in newer:
            backend.rollback_migrations(MigrationList([migration]))
    load_functions(empty_db_url, old / "sql")
    assert els_migrate.dump_schema(empty_db_url) == (old / "docs/schema.sql").read_text("utf-8")
    # and that release's registration works on the rolled-back schema
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        registered = events.apply(conn, "register", events.registration("rg-2", ["rg-e2"]))
        assert registered["outcome"] == "registered"


def test_migrations_run_as_a_non_superuser_migrator(db_url: str) -> None:
    """As compose.yaml runs them: a login role with CREATEROLE that owns the database and
    is a member of els_owner, not a superuser. The result is the committed schema."""
    admin = other_database(db_url, "postgres")
    role, name = f"migrator_{uuid.uuid4().hex[:8]}", f"asmigrator_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE IN ROLE els_owner").format(
            sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            sql.Identifier(name), sql.Identifier(role)))
    try:
        url = other_database(db_url, name).replace("://postgres@", f"://{role}@", 1)
        assert els_migrate.apply_migrations(url) == MIGRATIONS
        snapshot = els_migrate.SCHEMA_SNAPSHOT.read_text(encoding="utf-8")
        assert els_migrate.dump_schema(other_database(db_url, name)) == snapshot
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# The last release before the current migrations (main before 0008 and 0009): a database
# built by its code must upgrade to exactly what a fresh migrate builds, and the newest
# migration rolled back must give exactly its schema.
PREVIOUS_RELEASE = "46cafdb"


def _previous_release(tmp_path: Path, release: str = PREVIOUS_RELEASE) -> Path:
    out = tmp_path / f"previous-{release}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", release, "els_migrate.py", "migrations",
         "sql", "docs/schema.sql"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def test_upgrade_from_the_previous_release_equals_a_fresh_migrate(
    empty_db_url: str, tmp_path: Path
) -> None:
    old = _previous_release(tmp_path)
    subprocess.run(
        [sys.executable, "-c",
         "import els_migrate, sys; els_migrate.apply_migrations(sys.argv[1])", empty_db_url],
        cwd=old, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(old)})
    # the old release's own schema, and some of its data
    assert els_migrate.dump_schema(empty_db_url) == (old / "docs/schema.sql").read_text("utf-8")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        events.apply(conn, "register", events.registration("up-1", ["up-e1", "up-e2"]))
        events.apply(conn, "content", events.content("up-1", "up-t1"))
    applied = els_migrate.apply_migrations(empty_db_url)
    assert applied == [m for m in MIGRATIONS if m not in _migrations_of(old)]
    assert els_migrate.dump_schema(empty_db_url) == els_migrate.SCHEMA_SNAPSHOT.read_text("utf-8")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        done = events.apply(conn, "content", events.content("up-1", "up-t2"))
        assert done["outcome"] == "assigned" and done["complete"] is True
        reason = conn.execute("SELECT completion_reason FROM els.batch_tracker"
                              " WHERE batch_id = 'up-1'").fetchone()
        assert reason == ("all_slots_closed",)


def _migrations_of(release: Path) -> set[str]:
    return {p.stem for p in (release / "migrations").glob("0*.py")}


def test_a_function_removed_from_sql_is_dropped_by_the_next_migrate(empty_db_url: str) -> None:
    els_migrate.apply_migrations(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("SET ROLE els_owner")
        # as if an older sql/ had defined it, and a later one renamed it away
        conn.execute("CREATE FUNCTION els.renamed_away(p integer, q double precision)"
                     " RETURNS integer LANGUAGE sql AS 'SELECT p'")
        conn.execute("CREATE VIEW els.old_view AS SELECT 1 AS x")
    assert els_migrate.apply_migrations(empty_db_url) == []
    objects = dict((name, kind) for kind, name in els_objects(empty_db_url))
    assert not [n for n in objects if "renamed_away" in n] and "old_view" not in objects
    assert els_migrate.dump_schema(empty_db_url) == els_migrate.SCHEMA_SNAPSHOT.read_text("utf-8")
