"""Schema migrations for the els schema.

Tables live in yoyo migrations (``migrations/``); functions and views live in
``sql/``, one file per concern, and are (re)loaded whole by the post-apply hook
``migrations/post-apply.py``. Loading whole files matters: yoyo splits ``.sql``
migrations with sqlparse, which has been known to cut ``$$`` bodies apart.

The hook runs on every ``apply_migrations`` call, even when no migration is
pending, so an edited function file reaches the database with ``make migrate``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations

PROJECT_ROOT = Path(__file__).resolve().parent
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
SCHEMA_SNAPSHOT = PROJECT_ROOT / "docs" / "schema.sql"


def yoyo_url(dsn: str) -> str:
    """yoyo picks its driver from the URL scheme; ours is psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


def primary_dsn(dsn: str) -> str:
    """The single-host URL of the server a multi-host URL reaches.

    A multi-host libpq URL (``postgresql://u@h1:p1,h2:p2/els?target_session_attrs=read-write``,
    the HA topology of docs/HA.md) is resolved by connecting with libpq, which picks the
    writable primary; migrations then run against that server alone (yoyo parses the
    URL itself and takes one host). A single-host URL is returned unchanged."""
    parts = urlsplit(dsn)
    if "," not in parts.netloc:
        return dsn
    with psycopg.connect(dsn, connect_timeout=30) as conn:
        host, port = conn.info.host, conn.info.port
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = "&".join(q for q in parts.query.split("&")
                     if q and not q.startswith("target_session_attrs="))
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}", query=query))


def apply_migrations(dsn: str) -> list[str]:
    """Apply pending migrations, then reload sql/. Returns the ids applied."""
    dsn = primary_dsn(dsn)
    backend = get_backend(yoyo_url(dsn))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        applied = [m.id for m in pending]
        if pending:
            backend.apply_migrations(pending)
        else:
            backend.run_post_apply(migrations)
    return applied


def rollback_migrations(dsn: str) -> list[str]:
    """Roll back every applied migration (newest first). Returns the ids."""
    dsn = primary_dsn(dsn)
    backend = get_backend(yoyo_url(dsn))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        to_rollback = backend.to_rollback(migrations)
        backend.rollback_migrations(to_rollback)
    return [m.id for m in to_rollback]


def applied_migrations(dsn: str) -> list[str]:
    dsn = primary_dsn(dsn)
    backend = get_backend(yoyo_url(dsn))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    return [m.id for m in migrations if backend.is_applied(m)]


def dump_schema(dsn: str) -> str:
    """pg_dump of schema els without the lines that vary between runs and versions.

    docs/schema.sql holds this dump for the migrated schema: the one readable
    picture of tables, functions and grants, which a test proves the migrations
    produce exactly.
    """
    params = conninfo_to_dict(dsn)
    command = ["pg_dump", "--schema-only", "--schema=els",
               "-h", str(params.get("host", "127.0.0.1")), "-p", str(params.get("port", 5432)),
               "-U", str(params.get("user", "postgres")), str(params["dbname"])]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    varying = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith(varying)]
    return "\n".join(lines) + "\n"


def write_schema_snapshot(dsn: str) -> None:
    """Migrates a scratch database on dsn's server and writes its dump to docs/schema.sql."""
    scratch = f"els_snapshot_{uuid.uuid4().hex[:12]}"
    admin = urlunsplit(urlsplit(dsn)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        scratch_dsn = urlunsplit(urlsplit(dsn)._replace(path="/" + scratch))
        apply_migrations(scratch_dsn)
        SCHEMA_SNAPSHOT.write_text(dump_schema(scratch_dsn), encoding="utf-8")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(scratch)))


def main(argv: list[str]) -> int:
    dsn = os.environ.get("ELS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/els")
    if argv[1:2] == ["rollback"]:
        print("rolled back:", ", ".join(rollback_migrations(dsn)) or "nothing")
    elif argv[1:2] == ["snapshot"]:
        write_schema_snapshot(dsn)
        print(f"wrote {SCHEMA_SNAPSHOT.relative_to(PROJECT_ROOT)}")
    else:
        print("applied:", ", ".join(apply_migrations(dsn)) or "nothing (functions reloaded)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
