"""The worker behind the PL/Proxy proxy (SPEC 9, docs/SCALING.md), as deployed: ``worker.py
run`` with ELS_DATABASE_URL the proxy and ELS_PARTITION_URLS the partitions. Ingest goes
through the proxy; each partition's outbox has its own relay and auditor; maintenance
reaps the claims a crashed registration left on the partitions."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testkit import events as ev
from testkit.db import outbox_unpublished, query
from testkit.kafka import Topics, event_bytes, produce, read_topic
from testkit.partitions import Sharded
from testkit.stack import ROOT
from testkit.worker import WORKER, WorkerProcess, wait_until, worker_env

pytestmark = pytest.mark.kafka


def _batches_on_each(sharded: Sharded, per_partition: int) -> list[str]:
    """Batch ids, ``per_partition`` of them mapping to each partition."""
    found: dict[int, list[str]] = {i: [] for i in range(len(sharded.partition_urls))}
    while any(len(ids) < per_partition for ids in found.values()):
        batch_id = f"pw-{uuid.uuid4().hex[:8]}"
        part = found[sharded.partition_of(batch_id)]
        if len(part) < per_partition:
            part.append(batch_id)
    return [b for ids in found.values() for b in ids]


def _messages(topics: Topics, batch_id: str, n: int) -> list[tuple[str, bytes, bytes]]:
    key = batch_id.encode()
    out = [(topics.batch_registered, key, event_bytes(
        ev.registration(batch_id, [f"{batch_id}-e{i}" for i in range(n)])))]
    out += [(topics.content_provisioned, key, event_bytes(ev.content(batch_id, f"{batch_id}-t{i}")))
            for i in range(n)]
    return out


def _completed(sharded: Sharded, batch_ids: list[str]) -> int:
    """Batches completed, counted on the partitions (each holds its batches' trackers)."""
    return sum(int(query(url, "SELECT count(*) FROM els.batch_tracker WHERE batch_id ="
                              " ANY(%(b)s::text[]) AND completed_at IS NOT NULL",
                         {"b": batch_ids})[0][0]) for url in sharded.partition_urls)


def _pending_claims(sharded: Sharded, batch_id: str) -> int:
    return sum(int(query(url, "SELECT count(*) FROM els.essay_claim WHERE batch_id = %(b)s"
                              " AND owner_xid IS NOT NULL", {"b": batch_id})[0][0])
               for url in sharded.partition_urls)


def _published_rows(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT event_id::text, kafka_topic, kafka_partition, kafka_offset"
                      " FROM els.event_outbox WHERE published_at IS NOT NULL")


def test_worker_behind_the_proxy_publishes_every_partitions_outbox_and_reaps_claims(
    sharded: Sharded, kafka_bootstrap: str, unique_topics: Topics, tmp_path: Path
) -> None:
    topics = unique_topics
    batches = _batches_on_each(sharded, 3)
    # a registration that crashed after claiming: its claims stay pending until reaped
    crashed = batches[0]
    with psycopg.connect(sharded.partition_urls[0]) as conn:
        conn.execute("SELECT els.register_batch(%(e)s::jsonb)", {"e": json.dumps(
            ev.registration(f"{crashed}-x", [f"crash-{uuid.uuid4().hex[:6]}-{i}"
                                             for i in range(6)]))})
        conn.rollback()
    assert _pending_claims(sharded, f"{crashed}-x") > 0
    # one batch on each partition registered and never complete: stuck at once
    waiting = _batches_on_each(sharded, 1)
    env = worker_env(sharded.proxy_url, kafka_bootstrap, topics,
                     ELS_PARTITION_URLS=",".join(sharded.partition_urls),
                     ELS_MAINTENANCE_INTERVAL_SECONDS="1", ELS_CLAIM_REAP_SECONDS="1",
                     ELS_AUDIT_INTERVAL_SECONDS="2", ELS_STUCK_AFTER_SECONDS="0")
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        produce(kafka_bootstrap, [m for b in batches for m in _messages(topics, b, 4)]
                + [_messages(topics, b, 2)[0] for b in waiting])
        wait_until(lambda: _completed(sharded, batches) == len(batches), 90, "batches complete",
                   worker.tail)
        wait_until(lambda: all(outbox_unpublished(url) == 0 for url in sharded.partition_urls),
                   60, "every partition's outbox published", worker.tail)
        wait_until(lambda: _pending_claims(sharded, f"{crashed}-x") == 0, 30,
                   "the crashed registration's claims reaped", worker.tail)
        _, metrics = worker.http_status("/metrics")
        for label in ("0", "1"):
            assert f'els_outbox_backlog{{db_partition="{label}"}} 0.0' in metrics
            assert f'els_partition_database_up{{db_partition="{label}"}} 1.0' in metrics
        wait_until(lambda: all(f'els_outbox_audit_last_success_timestamp_seconds{{db_partition='
                               f'"{label}"}}' in worker.http_status("/metrics")[1]
                               for label in ("0", "1")),
                   30, "an audit of each partition", worker.tail)

        def stuck() -> list[str]:
            status, body = worker.http_status("/health/batches")
            assert status == 200, body
            return sorted(b["batch_id"] for b in json.loads(body)["stuck_batches"])

        # the list merged over the partitions, as one database would give it
        wait_until(lambda: stuck() == sorted(waiting), 30,
                   "both partitions' waiting batches in /health/batches", worker.tail)
        _, health = worker.http_status("/healthz")
        assert json.loads(health)["outbox_set_aside"] == 0

    # every batch completed once, and each partition's rows are where their offsets say
    completions: Counter[str] = Counter(
        json.loads(m.value() or b"{}")["data"]["batch_id"]
        for m in read_topic(kafka_bootstrap, topics.completed))
    assert completions == Counter({b: 1 for b in batches})
    for url in sharded.partition_urls:
        rows = _published_rows(url)
        assert rows and all(r[3] is not None for r in rows)
    for dlq in (topics.batch_registered_dlq, topics.content_provisioned_dlq):
        assert read_topic(kafka_bootstrap, dlq) == []

    # worker.py audit reads both partitions' rows back: one summary each, exit 0
    audit = subprocess.run([sys.executable, str(WORKER), "audit", "--since", "1 hour"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    summaries = [line for line in audit.stdout.splitlines() if line.startswith("partition ")]
    assert [s.split(":")[0] for s in summaries] == ["partition 0", "partition 1"]
    assert all(" 0 missing" in s for s in summaries), audit.stdout
