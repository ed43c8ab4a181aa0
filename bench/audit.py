"""The audit's throughput: ``worker.py audit`` over N published outbox rows.

    .venv/bin/python -m bench.audit [--rows 100000] [--reps 3] [--missing 100]
    .venv/bin/python -m bench.audit --relay-inflight [--rows 50000] [--reps 3]

A freshly migrated database of its own gets N outbox rows (completion-sized
envelopes of ~1.3 kB, as many batches as rows), which the real relay publishes to
private topics of 3 partitions. Then the audit runs ``--reps`` times over them; the
first run also finds ``--missing`` rows whose recorded offset was moved past the end of
their partition (as if the broker had not kept them) and produces them again.
Reported per run: rows/s over the whole audit (reading the outbox, asking the
watermarks, reading every offset back, checking event ids, producing the missing
ones again), and the split between the database read and the Kafka read-back.

``--relay-inflight`` instead times the relay itself over N rows with the producer's
``max.in.flight.requests.per.connection`` at 1 and at librdkafka's default 5,
interleaved (the order reverses every repetition): what closing the implicit-ack
window with one request in flight costs (docs/BENCHMARKS.md, "Proof of delivery").
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from bench import common
from els_worker import audit, contract, kafka
from els_worker.config import Config
from els_worker.observability import Metrics
from els_worker.relay import Relay
from testkit import databases
from testkit.kafka import create_topics
from testkit.stack import Stack

FILL = """
INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
SELECT gen_random_uuid(), 'BatchContentProvisioningCompleted', %(topic)s::text,
       'audit-bench-' || g,
       jsonb_build_object('event_type', 'BatchContentProvisioningCompleted',
                          'source_service', 'essay_lifecycle_service',
                          'data', jsonb_build_object(
                              'batch_id', 'audit-bench-' || g,
                              'essays_for_processing', (
                                  SELECT jsonb_agg(jsonb_build_object(
                                      'essay_id', 'audit-bench-' || g || '-e' || e,
                                      'text_storage_id', md5(g::text || e::text)))
                                    FROM generate_series(1, 15) AS e)))
  FROM generate_series(1, %(rows)s::integer) AS g
"""


@contextmanager
def migrated_database(stack: Stack) -> Iterator[str]:
    """An empty database with the migrations applied (the audit reads the outbox only:
    the seeded template of the other benchmarks would add nothing but minutes)."""
    import els_migrate

    name = f"els_bench_audit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        els_migrate.apply_migrations(stack.url_for(name))
        yield stack.url_for(name)
    finally:
        with psycopg.connect(stack.admin_url, autocommit=True) as conn:
            databases.drop_database(conn, name)


def relay_seconds(cfg: Config, url: str, topic: str, rows: int, in_flight: int) -> float:
    """Fills the outbox with ``rows`` rows and relays them all; the relay's wall time."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM els.event_outbox")
        conn.execute(FILL, {"topic": topic, "rows": rows})
        conn.execute("VACUUM ANALYZE els.event_outbox")
    relay = Relay(cfg, Metrics(), threading.Event(), make_producer=lambda c: kafka.producer(
        c, "els-outbox-relay", **{"max.in.flight.requests.per.connection": in_flight}))
    t0 = time.monotonic()
    while relay.run_once():
        pass
    took = time.monotonic() - t0
    relay.close()
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--missing", type=int, default=100)
    ap.add_argument("--relay-inflight", action="store_true",
                    help="time the relay with max.in.flight 1 against 5 instead")
    args = ap.parse_args(argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[audit {time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    stack = common.stack_from_env()
    prefix = f"abench{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}.{contract.COMPLETED.topic}"
    create_topics(stack.kafka_bootstrap, [topic], partitions=3)
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    try:
        with migrated_database(stack) as url:
            cfg = Config.from_env({"ELS_DATABASE_URL": url,
                                   "ELS_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
                                   contract.COMPLETED.env_var: topic,
                                   "ELS_GROUP_ID": f"{prefix}.els",
                                   "ELS_RELAY_BATCH_SIZE": "5000"})
            if args.relay_inflight:
                times: dict[int, list[float]] = {1: [], 5: []}
                for rep in range(args.reps):
                    for n in ((1, 5) if rep % 2 == 0 else (5, 1)):
                        times[n].append(relay_seconds(cfg, url, topic, args.rows, n))
                        log(f"max.in.flight={n}: {args.rows / times[n][-1]:,.0f} rows/s")
                per_s = {n: args.rows / common.median(t) for n, t in times.items()}
                print(f"relay of {args.rows:,} rows, medians of {args.reps}: max.in.flight 1 "
                      f"{per_s[1]:,.0f} rows/s, 5 {per_s[5]:,.0f} rows/s "
                      f"({per_s[1] / per_s[5]:.2f}x)")
                return 0
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM els.event_outbox")
                conn.execute(FILL, {"topic": topic, "rows": args.rows})
            log(f"{args.rows} outbox rows written; relaying")
            relay = Relay(cfg, Metrics(), threading.Event())
            t0 = time.monotonic()
            while relay.run_once():
                pass
            relay.close()
            log(f"relayed in {time.monotonic() - t0:.1f} s")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE els.event_outbox SET kafka_offset = kafka_offset + 10000000"
                             " WHERE id IN (SELECT id FROM els.event_outbox ORDER BY random()"
                             " LIMIT %(n)s)", {"n": args.missing})
                conn.execute("VACUUM ANALYZE els.event_outbox")
            rates = []
            for rep in range(args.reps):
                with psycopg.connect(url, autocommit=True) as conn:
                    t_db = time.monotonic()
                    conn.execute(
                        "SELECT count(*) FROM els.outbox_published_since('1 hour')").fetchone()
                    db_s = time.monotonic() - t_db
                    report = audit.Audit(cfg, Metrics(), conn).run("1 hour", timeout=600)
                rate = report.checked / report.seconds
                rates.append(rate)
                log(f"run {rep + 1}: {report.checked} rows in {report.seconds:.2f} s = "
                    f"{rate:,.0f} rows/s (outbox read alone {db_s:.2f} s); found "
                    f"{report.found}, missing {len(report.missing)}, produced again "
                    f"{len(report.republished)}")
                if rep == 0 and len(report.republished) != args.missing:
                    raise SystemExit(f"expected {args.missing} rows produced again")
                if rep > 0 and report.found != report.checked:
                    raise SystemExit("the second run must find every row")
            print(f"audit of {args.rows:,} published rows: median {common.median(rates):,.0f} "
                  f"rows/s over {args.reps} runs ({common.spread(rates)})")
    finally:
        for fut in admin.delete_topics([topic], operation_timeout=30).values():
            try:
                fut.result(timeout=30)
            except Exception:  # cleanup only
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
