"""Reading the service's state in PostgreSQL, for assertions: one connection per call,
autocommit, so a helper never holds a snapshot or a lock."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

_POST_APPLY = Path(__file__).resolve().parent.parent / "migrations" / "post-apply.py"


def load_functions(db_url: str, sql_dir: Path) -> None:
    """Makes the functions and views of schema els exactly those of ``sql_dir`` (another
    release's, or a benchmark's baseline), as migrations/post-apply.py does for sql/:
    its own drop statement, then every file whole, as els_owner, in one transaction."""
    # post-apply.py's drop statement (the module itself only runs inside yoyo)
    drop_code = _POST_APPLY.read_text().split('DROP_CODE = """', 1)[1].split('"""', 1)[0]
    with psycopg.connect(db_url) as conn:
        cur = conn.cursor()
        cur.execute("SET LOCAL ROLE els_owner")
        cur.execute(drop_code)
        for path in sorted(sql_dir.glob("*.sql")):
            cur.execute(path.read_text(encoding="utf-8"))


def query(db_url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True, connect_timeout=3) as conn:
        return conn.execute(sql, params or {}).fetchall()


def batch_report(db_url: str, batch_id: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT els.batch_report(%(b)s::text)", {"b": batch_id}).fetchone()
    assert row is not None
    report: dict[str, Any] = row[0]
    return report


def all_complete(db_url: str, batch_ids: Iterable[str]) -> bool:
    ids = list(batch_ids)
    try:
        rows = query(
            db_url,
            "SELECT count(*) FROM els.batch_tracker WHERE batch_id = ANY(%(ids)s::text[])"
            " AND completed_at IS NOT NULL",
            {"ids": ids},
        )
    except psycopg.OperationalError:
        return False
    return bool(rows[0][0] == len(ids))


def outbox_unpublished(db_url: str) -> int:
    rows = query(db_url, "SELECT unpublished FROM els.outbox_backlog()")
    return int(rows[0][0])
