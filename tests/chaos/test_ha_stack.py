"""The production topology (docs/HA.md): losing the PostgreSQL primary or one Kafka broker
loses nothing that was acknowledged (SPEC section 9).

Runs on ``scripts/stack.sh --ha``: a primary and a synchronous standby under
pg_auto_failover, and a three-node Kafka cluster (replication factor 3,
``min.insync.replicas`` 2). Marked ``ha`` and deselected by default (pyproject addopts),
so ``make test`` neither runs nor skips it; ``make test-ha`` runs it.

What is proven, against the real services:

* every ``els.register_batch`` call whose COMMIT returned before the primary's
  postmaster was SIGKILLed (while a writer kept committing) is on the new primary,
  slots included: synchronous replication gives RPO 0 for acknowledged calls;
* the multi-host URL with ``target_session_attrs=read-write`` reaches the new primary
  by itself, and a new call succeeds there; redelivering an acknowledged registration
  answers ``duplicate`` (it is really there, not re-created);
* the old primary rejoins as the synchronous standby;
* with one broker SIGKILLed (the leader of the partition written to), an ``acks=all``
  produce to a replication-factor-3 topic still succeeds, and every message produced
  before and after the kill is read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from psycopg import sql

from testkit.events import apply, registration
from testkit.kafka import read_topic

pytestmark = pytest.mark.ha

ROOT = Path(__file__).resolve().parents[2]
STACK = [str(ROOT / "scripts" / "stack.sh"), "--ha"]


def stack(*args: str, timeout: float = 300) -> str:
    out = subprocess.run([*STACK, *args], check=True, capture_output=True, text=True,
                         timeout=timeout)
    return out.stdout.strip()


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.strip("'\"")
    return env


@dataclass(frozen=True)
class HA:
    env: dict[str, str]
    db_url: str  # multi-host, target_session_attrs=read-write, a fresh migrated database

    @property
    def bootstrap(self) -> str:
        return self.env["ELS_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="module")
def ha() -> Iterator[HA]:
    if os.environ.get("ELS_STACK_TOPOLOGY") != "ha":
        pytest.skip("HA topology not requested (make test-ha sets ELS_STACK_TOPOLOGY=ha)")
    subprocess.run([*STACK, "up"], check=True, timeout=600)
    stack("pg-wait-healthy", "180")
    env = parse_env(stack("env"))
    admin = env["ELS_PG_ADMIN_URL"]
    name = f"ha_{uuid.uuid4().hex[:12]}"
    db_url = admin.replace("/postgres?", f"/{name}?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    import els_migrate

    els_migrate.apply_migrations(db_url)
    try:
        yield HA(env, db_url)
    finally:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
        except psycopg.Error:
            pass


def record(name: str, figures: dict[str, Any]) -> None:
    """Adds this run's figures to build/ha/last-test.json (quoted in docs/HA.md)."""
    path = ROOT / "build" / "ha" / "last-test.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = {**figures, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(data, indent=2) + "\n")


def primary() -> tuple[str, int]:
    """(node name, port) of the writable primary, as scripts/stack.sh reports it."""
    name, hostport, _state = stack("pg-primary").split()
    return name, int(hostport.rsplit(":", 1)[1])


def new_batch() -> tuple[str, dict[str, Any]]:
    tag = uuid.uuid4().hex[:10]
    batch_id = f"ha-{tag}"
    return batch_id, registration(batch_id, [f"{batch_id}-e{i}" for i in range(3)])


def test_primary_loss_keeps_every_acknowledged_call(ha: HA) -> None:
    old_name, old_port = primary()
    with psycopg.connect(ha.db_url, autocommit=True) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (old_port,)
        sync_names = conn.execute("SHOW synchronous_standby_names").fetchone()
        assert sync_names is not None and sync_names[0].startswith("ANY 1")
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        first_id, first_event = new_batch()
        assert apply(conn, "register", first_event)["outcome"] == "registered"

    # a writer commits registrations one by one; the primary is killed under it
    acknowledged: dict[str, dict[str, Any]] = {first_id: first_event}
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            with psycopg.connect(ha.db_url, autocommit=True) as wconn:
                while not stop.is_set():
                    batch_id, event = new_batch()
                    result = apply(wconn, "register", event)  # returns after COMMIT
                    assert result["outcome"] == "registered"
                    acknowledged[batch_id] = event
        except psycopg.OperationalError as exc:  # the primary died under us
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while len(acknowledged) < 50 and thread.is_alive():
        time.sleep(0.01)
    t_kill = time.monotonic()
    killed = stack("pg-kill-primary")
    assert killed == old_name
    thread.join(timeout=60)
    stop.set()
    assert not thread.is_alive()
    assert errors, "the writer should have lost its connection to the killed primary"
    acked = dict(acknowledged)

    new_name = stack("pg-wait-failover", "120")
    failover_s = time.monotonic() - t_kill
    assert new_name != old_name
    name, port = primary()
    assert name == new_name and port != old_port

    with psycopg.connect(ha.db_url, autocommit=True, connect_timeout=10) as conn:
        # the multi-host URL found the new primary on its own
        assert conn.execute("SELECT inet_server_port()").fetchone() == (port,)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        rows = conn.execute(
            "SELECT t.batch_id, count(s.*) FROM els.batch_tracker t"
            " LEFT JOIN els.essay_slot s ON s.batch_id = t.batch_id"
            " WHERE t.batch_id = ANY(%(ids)s::text[]) GROUP BY t.batch_id",
            {"ids": list(acked)}).fetchall()
        found: dict[str, int] = {str(b): int(n) for b, n in rows}
        missing = sorted(set(acked) - set(found))
        assert not missing, f"{len(missing)} acknowledged registrations lost: {missing[:5]}"
        assert all(n == 3 for n in found.values())
        # redelivered: the registration is there, so nothing is created twice
        assert apply(conn, "register", acked[first_id])["outcome"] == "duplicate"
        # a new call succeeds on the new primary
        _bid, event = new_batch()
        assert apply(conn, "register", event)["outcome"] == "registered"
        first_call_s = time.monotonic() - t_kill

    # the old primary rejoins as the synchronous standby
    states = dict(line.split()[0:3:2] for line in stack("pg-wait-healthy", "180").splitlines())
    assert states == {new_name: "primary", old_name: "secondary"}
    with psycopg.connect(ha.db_url, autocommit=True) as conn:
        sync = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchall()
        assert ("quorum",) in sync or ("sync",) in sync
    rejoined_s = time.monotonic() - t_kill
    record("pg_failover", {"acknowledged_before_kill": len(acked), "lost": 0,
                           "old_primary": old_name, "new_primary": new_name,
                           "kill_to_new_primary_s": round(failover_s, 1),
                           "kill_to_first_call_s": round(first_call_s, 1),
                           "kill_to_standby_rejoined_s": round(rejoined_s, 1)})


def produce_all(bootstrap: str, topic: str, values: list[str]) -> None:
    """acks=all, idempotent; raises unless every message is confirmed by the cluster."""
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "message.timeout.ms": 60000,
                         "log_level": 0})

    def cb(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for v in values:
        producer.produce(topic, key=v.encode(), value=v.encode(), on_delivery=cb)
        producer.poll(0)
    assert producer.flush(90) == 0
    assert errors == []


def read_all(bootstrap: str, topic: str) -> list[str]:
    return [(m.value() or b"").decode()
            for m in read_topic(bootstrap, topic, timeout=120, log_level=0)]


def test_broker_loss_keeps_every_message(ha: HA) -> None:
    topic = f"ha.test.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": ha.bootstrap, "log_level": 0})
    # no replication factor given: the cluster's default (3)
    for fut in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        fut.result(timeout=60)
    md = admin.list_topics(topic=topic, timeout=10).topics[topic]
    assert all(len(p.replicas) == 3 for p in md.partitions.values())
    cfg = admin.describe_configs([ConfigResource("topic", topic)])
    config = next(iter(cfg.values())).result(timeout=30)
    assert config["min.insync.replicas"].value == "2"

    before = [json.dumps({"n": i, "phase": "before"}) for i in range(300)]
    produce_all(ha.bootstrap, topic, before)
    leader = stack("kafka-leader", topic, "0")
    assert leader in ("1", "2", "3")
    t_kill = time.monotonic()
    stack("kafka-kill", leader)
    try:
        after = [json.dumps({"n": i, "phase": "after"}) for i in range(300)]
        produce_all(ha.bootstrap, topic, after)  # acks=all with two of three replicas
        record("kafka_broker_loss", {"killed_node": int(leader), "before": len(before),
                                     "after": len(after),
                                     "kill_to_after_batch_confirmed_s":
                                         round(time.monotonic() - t_kill, 1)})
        assert stack("kafka-leader", topic, "0") != leader
        got = read_all(ha.bootstrap, topic)
        assert sorted(got) == sorted(before + after)
    finally:
        stack("kafka-start", leader)
    # the restarted broker catches up: everything still readable with all three up
    assert sorted(read_all(ha.bootstrap, topic)) == sorted(before + after)
    for fut in admin.delete_topics([topic], operation_timeout=30).values():
        try:
            fut.result(timeout=60)
        except KafkaException:
            pass
