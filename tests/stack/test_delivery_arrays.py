"""The relay's delivery coordinates, sent as array literals for speed
(``els_worker.db.delivery_arrays``), reach PostgreSQL as the values they were, whatever
a topic name holds."""

from __future__ import annotations

import psycopg

from els_worker import db


def test_delivery_coordinates_reach_postgresql_unchanged(db_url: str) -> None:
    topics = ["huleedu.els.essay.slot.assigned.v1", 'a"b', "a\\b", "a,b", "{x}", " sp ", "NULL",
              "\u00e9"]
    rows = [(i + 1, (t, i, 10**12 + i)) for i, t in enumerate(topics)]
    with psycopg.connect(db_url) as conn:
        got = conn.execute("SELECT %(ids)s::bigint[], %(topics)s::text[],"
                           " %(partitions)s::integer[], %(offsets)s::bigint[]",
                           db.delivery_arrays(rows)).fetchone()
        empty = conn.execute("SELECT %(ids)s::bigint[], %(topics)s::text[]",
                             db.delivery_arrays([])).fetchone()
    assert got == ([i for i, _ in rows], topics, [w[1] for _, w in rows],
                   [w[2] for _, w in rows])
    assert empty == ([], [])
