"""The outbox's layout, A/B: what writing and relaying a row costs PostgreSQL in the
layout we run against the HOT-friendly layouts one could run instead.

    .venv/bin/python -m bench.outbox_layouts [--rounds N] [--layouts update,queue_hot,queue]

Each layout is a copy of ``els.event_outbox`` (``LIKE … INCLUDING ALL``: its columns,
defaults, constraints and indexes) in a schema of its own, in one fresh clone of the
bench template, so all of them meet the same machine at the same moment:

- ``update``: as deployed. Unpublished rows are found by the partial index
  ``WHERE published_at IS NULL``; publishing updates the row, and because that column
  is in an index predicate the update can never be HOT: a new heap tuple and a new
  entry in every index of the table.
- ``queue_hot``: no index names ``published_at``; unpublished ids sit in a queue table
  of their own (written with the row, deleted at publish), and the outbox has
  fillfactor 50, so the publish update finds room on its page: HOT, no index entry.
- ``queue``: the same queue, default fillfactor (HOT only by chance), to show what
  HOT itself is worth.

A round writes 500 rows (statements of 50, as a micro-batch of the worker writes its
events), then relays 500 (claim them ``FOR UPDATE SKIP LOCKED``, then mark them with
delivery coordinates, in one transaction, as ``els_worker.relay`` does), layout after
layout, the order rotating each round. The writer and the relay of each layout are
separate sessions, so /proc gives each one's server CPU; the first fifth of the rounds
warms up. Output: server CPU µs per row written, claimed and marked, per layout, and
each layout's ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench import common

ROWS_PER_ROUND = 500
ROWS_PER_STATEMENT = 50

_WRITE = sql.SQL(
    "INSERT INTO {s}.event_outbox (event_id, event_type, topic, message_key, envelope)"
    " SELECT e.id, 'EssaySlotAssigned', 'huleedu.els.essay.slot.assigned.v1', e.k, e.env"
    " FROM unnest(%(ids)s::uuid[], %(keys)s::text[], %(envs)s::jsonb[]) AS e (id, k, env)")
_MARK = sql.SQL(
    "UPDATE {s}.event_outbox AS o SET published_at = now(), kafka_topic = d.t,"
    " kafka_partition = d.p, kafka_offset = d.off"
    " FROM unnest(%(ids)s::bigint[], %(topics)s::text[], %(partitions)s::int[],"
    " %(offsets)s::bigint[]) AS d (id, t, p, off)"
    " WHERE o.id = d.id AND o.published_at IS NULL")
_QUEUE_DDL = sql.SQL(
    "CREATE TABLE {s}.event_outbox (LIKE els.event_outbox INCLUDING ALL);"
    " CREATE TABLE {s}.outbox_queue (id bigint PRIMARY KEY)")
# the index that keeps the publish update from being HOT
_UNPUBLISHED_INDEX = ("SELECT c.relname FROM pg_index AS i"
                      " JOIN pg_class AS c ON c.oid = i.indexrelid"
                      " WHERE i.indrelid = %(table)s::regclass"
                      " AND pg_get_expr(i.indpred, i.indrelid) LIKE '%%published_at%%'")


@dataclass(frozen=True)
class Layout:
    ddl: sql.Composable
    write: sql.Composable
    claim: sql.Composable
    mark: tuple[sql.Composable, ...]
    queue: bool = False
    fillfactor: int = 100


_QUEUED_WRITE = sql.SQL(
    "WITH written AS ("
    "INSERT INTO {s}.event_outbox (event_id, event_type, topic, message_key, envelope)"
    " SELECT e.id, 'EssaySlotAssigned', 'huleedu.els.essay.slot.assigned.v1', e.k,"
    " e.env FROM unnest(%(ids)s::uuid[], %(keys)s::text[], %(envs)s::jsonb[])"
    " AS e (id, k, env) RETURNING id)"
    " INSERT INTO {s}.outbox_queue SELECT id FROM written")
# the queued ids first, then their rows by primary key: joined in one step, the
# planner merges the queue with the whole outbox from its first id
_QUEUED_CLAIM = sql.SQL(
    "WITH q AS (SELECT q.id FROM {s}.outbox_queue AS q ORDER BY q.id"
    " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " SELECT o.id, o.event_id, o.event_type, o.topic, o.message_key, o.envelope,"
    " o.created_at FROM q CROSS JOIN LATERAL"
    " (SELECT * FROM {s}.event_outbox AS o WHERE o.id = q.id OFFSET 0) AS o"
    " WHERE o.retry_after IS NULL OR o.retry_after <= now() ORDER BY o.id")
_DEQUEUE = sql.SQL("DELETE FROM {s}.outbox_queue AS q WHERE q.id = ANY (%(ids)s::bigint[])")


def _queued(fillfactor: int) -> Layout:
    return Layout(_QUEUE_DDL, _QUEUED_WRITE, _QUEUED_CLAIM, (_MARK, _DEQUEUE),
                  queue=True, fillfactor=fillfactor)


LAYOUTS: dict[str, Layout] = {
    "update": Layout(
        ddl=sql.SQL("CREATE TABLE {s}.event_outbox (LIKE els.event_outbox INCLUDING ALL)"),
        write=_WRITE,
        claim=sql.SQL(
            "SELECT o.id, o.event_id, o.event_type, o.topic, o.message_key, o.envelope,"
            " o.created_at FROM {s}.event_outbox AS o WHERE o.published_at IS NULL"
            " AND (o.retry_after IS NULL OR o.retry_after <= now())"
            " ORDER BY o.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"),
        mark=(_MARK,)),
    "queue_hot": _queued(fillfactor=50),
    "queue": _queued(fillfactor=100),
}


def _sql(template: sql.Composable, schema: str) -> sql.Composed:
    assert isinstance(template, sql.SQL)
    return template.format(s=sql.Identifier(schema))


def _pid(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _envelope(batch_id: str, i: int) -> str:
    """An EssaySlotAssigned envelope of the size the service writes."""
    return json.dumps({
        "event_id": str(uuid.uuid4()), "event_type": "huleedu.els.essay.slot.assigned.v1",
        "event_timestamp": "2026-12-07T12:00:00.123456Z",
        "source_service": "essay_lifecycle_service", "schema_version": 1,
        "correlation_id": str(uuid.uuid4()),
        "data": {"batch_id": batch_id, "essay_id": f"{batch_id}-essay-{i:04d}",
                 "file_upload_id": f"upload-{batch_id}-{i}",
                 "text_storage_id": f"text-{batch_id}-{i}-{uuid.uuid4().hex}",
                 "original_file_name": f"essay_{i}_final_version.docx",
                 "correlation_id": str(uuid.uuid4()), "timestamp": "2026-12-07T12:00:00.123456Z"},
        "metadata": {}})


def _round_rows(r: int) -> dict[str, list[str]]:
    keys = [f"b-{r}-{i // 10}" for i in range(ROWS_PER_ROUND)]
    return {"ids": [str(uuid.uuid4()) for _ in keys], "keys": keys,
            "envs": [_envelope(k, i) for i, k in enumerate(keys)]}


def run(url: str, layouts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """Server CPU seconds per layout and step over the measured rounds."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name in layouts:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            layout = LAYOUTS[name]
            conn.execute(_sql(layout.ddl, name))
            if layout.queue:
                for (index,) in conn.execute(_UNPUBLISHED_INDEX,
                                             {"table": f"{name}.event_outbox"}).fetchall():
                    conn.execute(sql.SQL("DROP INDEX {}.{}").format(sql.Identifier(name),
                                                                    sql.Identifier(index)))
            conn.execute(sql.SQL("ALTER TABLE {}.event_outbox SET (fillfactor = {})").format(
                sql.Identifier(name), sql.Literal(layout.fillfactor)))
    writers = {n: psycopg.connect(url, autocommit=True) for n in layouts}
    relays = {n: psycopg.connect(url) for n in layouts}
    pids = {n: (_pid(writers[n]), _pid(relays[n])) for n in layouts}
    for conn in relays.values():
        conn.commit()
    spent = {n: dict.fromkeys(("write", "claim", "mark"), 0.0) for n in layouts}
    warm = rounds // 5
    try:
        for r in range(rounds):
            rows = _round_rows(r)
            for name in common.rotate(layouts, r):
                spec, (writer_pid, relay_pid) = LAYOUTS[name], pids[name]
                t0 = common.cpu_seconds(writer_pid)
                for s in range(0, ROWS_PER_ROUND, ROWS_PER_STATEMENT):
                    writers[name].execute(_sql(spec.write, name),
                                          {k: v[s:s + ROWS_PER_STATEMENT] for k, v in rows.items()})
                t1, t1r = common.cpu_seconds(writer_pid), common.cpu_seconds(relay_pid)
                with relays[name].transaction():
                    claimed = relays[name].execute(_sql(spec.claim, name),
                                                   {"limit": ROWS_PER_ROUND}).fetchall()
                    t2 = common.cpu_seconds(relay_pid)
                    ids = [row[0] for row in claimed]
                    assert len(ids) == ROWS_PER_ROUND, (name, len(ids))
                    coordinates = {"ids": ids, "topics": ["t"] * len(ids),
                                   "partitions": [0] * len(ids), "offsets": list(range(len(ids)))}
                    for statement in spec.mark:
                        relays[name].execute(_sql(statement, name), coordinates)
                t3 = common.cpu_seconds(relay_pid)
                if r >= warm:
                    spent[name]["write"] += t1 - t0
                    spent[name]["claim"] += t2 - t1r
                    spent[name]["mark"] += t3 - t2
        for name in layouts:  # what a claim does after the run: the plan and its buffers
            explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}").format(
                _sql(LAYOUTS[name].claim, name))
            plan = relays[name].execute(explain, {"limit": ROWS_PER_ROUND}).fetchall()
            relays[name].rollback()
            print(f"{name}: one more claim, on an empty backlog\n"
                  + "\n".join("    " + line for (line,) in plan))
    finally:
        for conn in [*writers.values(), *relays.values()]:
            conn.close()
    return spent



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--layouts", default="update,queue_hot,queue")
    args = ap.parse_args()
    layouts = args.layouts.split(",")
    stack = common.stack_from_env()
    if not common.template_exists(stack):
        common.build_template(stack, print)
    with common.fresh_database(stack, "outbox") as url:
        spent = run(url, layouts, args.rounds)
        with psycopg.connect(url, autocommit=True) as conn:
            hot = {n: conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                                   " WHERE relid = %(t)s::regclass",
                                   {"t": f"{n}.event_outbox"}).fetchone() for n in layouts}
    rows = (args.rounds - args.rounds // 5) * ROWS_PER_ROUND
    first = sum(spent[layouts[0]].values())
    table = []
    for name in layouts:
        total = sum(spent[name].values())
        updated, hot_updated = hot[name] or (0, 0)
        steps = (f"{spent[name][k] * 1e6 / rows:.1f}" for k in ("write", "claim", "mark"))
        table.append([name, *steps,
                      f"{total * 1e6 / rows:.1f}", f"{total / first:.2f}x",
                      f"{100 * hot_updated / max(updated, 1):.0f}%"])
    print(f"{rows} rows measured per layout ({args.rounds} rounds of {ROWS_PER_ROUND}, "
          f"{args.rounds // 5} warm-up); server CPU µs per row")
    print(common.table(["layout", "write", "claim", "mark", "total", "ratio", "HOT updates"],
                       table))


if __name__ == "__main__":
    main()
