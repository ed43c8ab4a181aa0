"""Throwaway databases: a template migrated from this tree (and seeded, for a benchmark)
and clones of it, one per test or scenario. The one template machinery of tests/ and
bench/: cloning a template takes a fraction of a second where migrating takes seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from testkit.stack import Stack


def _admin(stack: Stack) -> psycopg.Connection:
    return psycopg.connect(stack.admin_url, autocommit=True)


def drop_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def exists(stack: Stack, name: str) -> bool:
    with _admin(stack) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %(name)s",
                            {"name": name}).fetchone() is not None


def build_template(stack: Stack, name: str,
                   prepare: Callable[[str], None] | None = None) -> None:
    """(Re)creates database ``name`` from this tree's migrations and sql/, runs
    ``prepare(url)`` on it (a benchmark's seed), and marks it a template nobody connects
    to (``CREATE DATABASE … TEMPLATE`` fails while anyone is connected)."""
    import els_migrate

    ident = sql.Identifier(name)
    with _admin(stack) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %(name)s",
                        {"name": name}).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false"
                                 " ALLOW_CONNECTIONS true").format(ident))
            drop_database(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    url = stack.url_for(name)
    els_migrate.apply_migrations(url)
    if prepare is not None:
        prepare(url)
    with _admin(stack) as conn:
        # close whatever the migration tool (or the seed) left open, keep others out
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = %(name)s AND pid <> pg_backend_pid()", {"name": name})
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true"
                             " ALLOW_CONNECTIONS false").format(ident))


def drop_template(stack: Stack, name: str) -> None:
    with _admin(stack) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(
            sql.Identifier(name)))
        drop_database(conn, name)


@contextmanager
def clone(stack: Stack, template: str, name: str) -> Iterator[str]:
    """Database ``name``, a copy of ``template``, for the ``with`` block; its URL.
    Dropped afterwards, whatever its sessions are doing."""
    with _admin(stack) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    try:
        yield stack.url_for(name)
    finally:
        with _admin(stack) as conn:
            drop_database(conn, name)
