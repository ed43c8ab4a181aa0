"""Reading the service's state in PostgreSQL, for assertions: one connection per call,
autocommit, so a helper never holds a snapshot or a lock."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg


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
