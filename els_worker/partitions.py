"""Partitions behind PL/Proxy (SPEC 9, docs/SCALING.md): ``worker.py migrate`` with
``ELS_PARTITION_URLS`` migrates every partition, tells each which one it is and where
its peers are (the PL/Proxy cluster of sql/cluster/), then rebuilds the proxy database
(``ELS_DATABASE_URL``) from the first partition's catalog (sql/proxy/).

The proxy holds no state: it is dropped and built again on every migrate, in one
transaction. The partition count is a power of two and never changes once data exists
(the mapping, sql/001_partition_map.sql, would send batches elsewhere); a partition
that already has a different number refuses the migrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

import els_migrate

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# The partitions' public functions and views with what the proxy needs to rebuild them.
CATALOG = """
SELECT jsonb_build_object(
  'functions', (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
             'name', p.proname,
             'args', pg_catalog.pg_get_function_arguments(p.oid),
             'identity_args', pg_catalog.pg_get_function_identity_arguments(p.oid),
             'arg_types', pg_catalog.oidvectortypes(p.proargtypes),
             'result', pg_catalog.pg_get_function_result(p.oid),
             'nargs', p.pronargs, 'variadic', p.provariadic <> 0,
             'arg_names', to_jsonb(p.proargnames),
             'volatility', CASE p.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE'
                                              ELSE 'VOLATILE' END,
             'description', pg_catalog.obj_description(p.oid, 'pg_proc'),
             'grantees', (SELECT coalesce(jsonb_agg(DISTINCT a.grantee::regrole::text), '[]')
                            FROM pg_catalog.aclexplode(p.proacl) AS a
                           WHERE a.grantee NOT IN (0, p.proowner) AND a.privilege_type = 'EXECUTE'))
           ORDER BY p.proname, p.oid), '[]')
      FROM pg_catalog.pg_proc AS p
     WHERE p.pronamespace = 'els'::regnamespace AND p.proname !~ '^_'),
  'views', (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
             'name', c.relname,
             'columns', (SELECT string_agg(format('%I %s', a.attname,
                                                  pg_catalog.format_type(a.atttypid, a.atttypmod)),
                                           ', ' ORDER BY a.attnum)
                           FROM pg_catalog.pg_attribute AS a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
             'description', pg_catalog.obj_description(c.oid, 'pg_class'),
             'grantees', (SELECT coalesce(jsonb_agg(DISTINCT a.grantee::regrole::text), '[]')
                            FROM pg_catalog.aclexplode(c.relacl) AS a
                           WHERE a.grantee NOT IN (0, c.relowner) AND a.privilege_type = 'SELECT'))
           ORDER BY c.relname), '[]')
      FROM pg_catalog.pg_class AS c
     WHERE c.relnamespace = 'els'::regnamespace AND c.relkind = 'v'))
"""


class PartitionError(Exception):
    """The partitions cannot be (re)configured as asked."""


def cluster_connstr(url: str) -> tuple[str, str, str | None]:
    """A partition's URL as PL/Proxy takes it: the libpq keyword string without user and
    password (those go into the user mapping), the user and the password."""
    params = conninfo_to_dict(url)
    user = str(params.pop("user", "") or "postgres")
    password = params.pop("password", None)
    return make_conninfo("", **params), user, (str(password) if password is not None else None)


def _load(conn: psycopg.Connection[Any], path: Path) -> None:
    conn.execute(path.read_text(encoding="utf-8"))


def _define_cluster(conn: psycopg.Connection[Any], urls: list[str]) -> None:
    parts = [cluster_connstr(u) for u in urls]
    users = {(user, password) for _, user, password in parts}
    if len(users) != 1:
        raise PartitionError("every partition URL must name the same user and password "
                             "(one PL/Proxy user mapping)")
    ((user, password),) = users
    conn.execute("CREATE EXTENSION IF NOT EXISTS plproxy")
    conn.execute("CREATE SCHEMA IF NOT EXISTS els_cluster")
    conn.execute("GRANT USAGE ON SCHEMA els_cluster TO els_owner")
    for path in sorted((SQL_DIR / "cluster").glob("*.sql")):
        _load(conn, path)
    conn.execute("SELECT els_cluster.define(%(connstrs)s::text[], %(user)s::text,"
                 " %(password)s::text)",
                 {"connstrs": [c for c, _, _ in parts], "user": user, "password": password})


def check_numbering(url: str, number: int, count: int) -> None:
    """Refuses to make partition ``number`` of ``count`` of a database that holds data
    under another number or count: its batches would map elsewhere."""
    with psycopg.connect(els_migrate.primary_dsn(url)) as conn:
        row = conn.execute("SELECT p.partition_no, p.partition_count,"
                           " EXISTS (SELECT FROM els.batch_tracker)"
                           " OR EXISTS (SELECT FROM els.batch_tombstone)"
                           " FROM els.partition_self AS p").fetchone()
    if row is not None and (row[0], row[1]) != (number, count) and row[2]:
        raise PartitionError(
            f"{url}: partition {row[0]} of {row[1]} holds data, and is asked to be "
            f"{number} of {count}; the mapping never changes once data exists")


def configure_partition(url: str, number: int, urls: list[str]) -> None:
    """Partition ``number`` of ``urls``: its peers' cluster and its own number."""
    check_numbering(url, number, len(urls))
    with psycopg.connect(els_migrate.primary_dsn(url)) as conn:
        _define_cluster(conn, urls)
        conn.execute("INSERT INTO els.partition_self (partition_no, partition_count)"
                     " VALUES (%(no)s::integer, %(count)s::integer)"
                     " ON CONFLICT (singleton) DO UPDATE"
                     " SET partition_no = excluded.partition_no,"
                     " partition_count = excluded.partition_count",
                     {"no": number, "count": len(urls)})


def build_proxy(proxy_url: str, urls: list[str]) -> int:
    """Drops and rebuilds the proxy's schemas from the first partition's catalog, in one
    transaction. Returns how many functions and views it exposes."""
    with psycopg.connect(els_migrate.primary_dsn(urls[0])) as conn:
        row = conn.execute(CATALOG).fetchone()
    assert row is not None
    catalog = row[0]
    with psycopg.connect(els_migrate.primary_dsn(proxy_url)) as conn:
        conn.execute("DROP SCHEMA IF EXISTS els_proxy, els_remote, els CASCADE")
        conn.execute("CREATE SCHEMA els AUTHORIZATION els_owner")
        conn.execute("GRANT USAGE ON SCHEMA els TO els_worker, els_readonly")
        conn.execute("CREATE SCHEMA els_remote AUTHORIZATION els_owner")
        conn.execute("CREATE SCHEMA els_proxy AUTHORIZATION els_owner")
        _define_cluster(conn, urls)
        _load(conn, SQL_DIR / "001_partition_map.sql")
        for path in sorted((SQL_DIR / "proxy").glob("*.sql")):
            _load(conn, path)
        built = conn.execute("SELECT els_proxy.build(%(catalog)s::jsonb)",
                             {"catalog": Jsonb(catalog)}).fetchone()
    assert built is not None
    return int(built[0])


def migrate(proxy_url: str, urls: list[str]) -> list[str]:
    """Every partition migrated and configured, then the proxy rebuilt; what was done."""
    if not urls or len(urls) & (len(urls) - 1):
        raise PartitionError(f"the partition count must be a power of two, not {len(urls)}")
    done = [f"partition {number}: {len(els_migrate.apply_migrations(url))} migration(s) applied"
            for number, url in enumerate(urls)]
    # every partition checked before any is changed: a refusal leaves all as they were
    for number, url in enumerate(urls):
        check_numbering(url, number, len(urls))
    for number, url in enumerate(urls):
        configure_partition(url, number, urls)
    done.append(f"proxy: {build_proxy(proxy_url, urls)} function(s) and view(s)")
    return done
