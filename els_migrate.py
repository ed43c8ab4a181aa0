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
import sys
from pathlib import Path

from yoyo import get_backend, read_migrations

PROJECT_ROOT = Path(__file__).resolve().parent
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def yoyo_url(dsn: str) -> str:
    """yoyo picks its driver from the URL scheme; ours is psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


def apply_migrations(dsn: str) -> list[str]:
    """Apply pending migrations, then reload sql/. Returns the ids applied."""
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
    backend = get_backend(yoyo_url(dsn))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        to_rollback = backend.to_rollback(migrations)
        backend.rollback_migrations(to_rollback)
    return [m.id for m in to_rollback]


def applied_migrations(dsn: str) -> list[str]:
    backend = get_backend(yoyo_url(dsn))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    return [m.id for m in migrations if backend.is_applied(m)]


def main(argv: list[str]) -> int:
    dsn = os.environ.get("ELS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/els")
    if argv[1:2] == ["rollback"]:
        print("rolled back:", ", ".join(rollback_migrations(dsn)) or "nothing")
    else:
        print("applied:", ", ".join(apply_migrations(dsn)) or "nothing (functions reloaded)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
