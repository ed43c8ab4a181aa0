"""The controller: a seeded schedule of blows (worker SIGKILLs, PostgreSQL restarts and
crashes, broker restarts; on the HA topology primary and broker kills; behind the proxy,
a partition down), each struck,
when it can be, while a worker holds uncommitted work; and the recovery time of each."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from chaos.config import (
    INPUT_KINDS,
    QUIET,
    log,
)
from chaos.stack import WorkerSlot, pg_client_ports
from chaos.state import Action, RunState
from chaos.stream import Stream


class Controller:
    """Schedules and strikes the blows (pausing the stream for some); supervises the
    workers. Its actions and workers live in the run's state."""

    def __init__(self, state: RunState, stream: Stream) -> None:
        self.state = state
        self.stream = stream

    def schedule(self) -> None:
        cfg, rng = self.state.cfg, self.state.rng
        lo, hi = cfg.chaos_start, cfg.produce_seconds + cfg.chaos_tail
        times = sorted(rng.uniform(lo, hi) for _ in range(cfg.kills))
        self.state.actions = [Action(t, "kill") for t in times]
        pg_kinds = ["pg-restart", "pg-crash"]
        for i in range(cfg.pg_restarts):
            self.state.actions.append(Action(rng.uniform(lo + 5, max(lo + 6, hi - 10)),
                                       pg_kinds[i % 2]))
        for _ in range(cfg.kafka_restarts if cfg.kafka == "private" else 0):
            self.state.actions.append(Action(rng.uniform(lo + 10, max(lo + 11, hi - 20)),
                                       "kafka-restart"))
        for _ in range(cfg.partition_blackouts if self.state.partition_names else 0):
            self.state.actions.append(Action(rng.uniform(lo + 3, max(lo + 4, hi - 10)),
                                       "partition-down"))
        if self.state.ha:
            # failovers and broker kills in separate, ordered windows, so that each
            # PostgreSQL kill finds the formation whole again (primary + sync standby)
            n = cfg.pg_failovers + cfg.broker_kills
            kinds = ["pg-failover"] * cfg.pg_failovers + ["broker-kill"] * cfg.broker_kills
            rng.shuffle(kinds)
            span = (hi - 15 - (lo + 5)) / max(1, n)
            for i, kind in enumerate(kinds):
                start = lo + 5 + i * span
                self.state.actions.append(Action(rng.uniform(start, start + span * 0.5), kind))
        self.state.actions.sort(key=lambda a: a.at)

    def supervise(self) -> None:
        for slot in self.state.slots:
            code = slot.check_exit()
            if code is not None:
                log(f"worker {slot.index} exited on its own with code {code}: restarting")
                time.sleep(1.0)
                slot.start()
            elif not slot.alive() and slot.proc is not None:
                slot.start()

    def busy(self, conn: psycopg.Connection[Any]) -> list[tuple[WorkerSlot, str]]:
        """(worker, application_name) for each backend of a live worker that is inside a
        transaction holding uncommitted work (it has a transaction id: rows written or
        locked): els-worker = a micro-batch applied but not committed, els-outbox-relay
        = a relay round between claim (rows locked) and mark. Behind the proxy the
        worker's proxy session writes nothing itself (the partitions apply its calls
        through PL/Proxy's connections), so a call in flight there counts: els-worker
        active = a micro-batch being applied on the partitions."""
        pg_port = conn.info.port  # the primary's, in the HA topology
        owner = {port: slot for slot in self.state.slots if slot.alive() and slot.proc is not None
                 for port in pg_client_ports(slot.proc.pid, pg_port)}
        if not owner:
            return []
        rows = conn.execute(
            "SELECT client_port, application_name FROM pg_stat_activity"
            " WHERE client_port = ANY(%(ports)s) AND (backend_xid IS NOT NULL"
            "       OR (%(sharded)s AND application_name = 'els-worker' AND state = 'active'"
            "           AND query LIKE '%%apply_events%%'))",
            {"ports": list(owner), "sharded": bool(self.state.partition_urls)}).fetchall()
        return [(owner[port], app) for port, app in rows if port in owner]

    def wait_busy(self, patience: float, prefer: str | None = None
                  ) -> list[tuple[WorkerSlot, str]]:
        """Waits up to ``patience`` seconds for a worker to hold uncommitted work
        (``prefer``: in that application, for the first 3/4 of the time), so that the
        blow lands mid-flight; returns who was caught (empty: nobody was)."""
        start = time.monotonic()
        try:
            with psycopg.connect(self.state.db_url, autocommit=True, connect_timeout=2) as conn:
                while time.monotonic() - start < patience:
                    busy = self.busy(conn)
                    picky = prefer is not None and time.monotonic() - start < patience * 0.75
                    if busy and (not picky or any(app == prefer for _, app in busy)):
                        if picky:
                            busy = [b for b in busy if b[1] == prefer] + [
                                b for b in busy if b[1] != prefer]
                        return busy
                    time.sleep(0.002)
        except psycopg.Error:
            pass  # the database is down: strike anyway
        return []

    def perform(self, action: Action) -> None:
        rng = self.state.rng
        if action.kind == "kill":
            kills = sum(1 for a in self.state.actions if a.kind == "kill" and a.done_at is not None)
            caught = self.wait_busy(6.0, ("els-worker", "els-outbox-relay")[kills % 2])
            # the worker caught with uncommitted work, else one drawn at random
            slot = caught[0][0] if caught else rng.choice(self.state.slots)
            busy = sorted({app for s, app in caught if s is slot})
            pid = slot.proc.pid if slot.proc else None
            if slot.kill():
                action.in_transaction = busy
                action.detail = f"worker {slot.index} pid {pid}" + (
                    f", uncommitted work in {'+'.join(busy)}" if busy else ", no open work")
                time.sleep(rng.uniform(0.2, 2.5))
            else:
                action.detail = f"worker {slot.index} was not running"
            slot.start()
        elif action.kind in ("pg-restart", "pg-crash"):
            down = rng.uniform(1.0, 5.0)
            action.in_transaction = sorted({app for _, app in self.wait_busy(6.0, "els-worker")})
            self.state.pg.run("pg-down" if action.kind == "pg-restart" else "pg-kill")
            time.sleep(down)
            self.state.pg.run("pg-up")
            action.detail = f"down {down:.1f} s" + (
                f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
                if action.in_transaction else "")
        elif action.kind == "partition-down":
            self.partition_down(action)
        elif action.kind == "kafka-restart":
            assert self.state.kafka_stack is not None
            down = rng.uniform(1.0, 3.0)
            paused = self.stream.pause_stream()
            try:
                self.state.kafka_stack.run("kafka-down")
                time.sleep(down)
                self.state.kafka_stack.run("kafka-up")
            finally:
                self.state.pause_requested.clear()
            action.detail = f"down {down:.1f} s" + (" (stream paused)" if paused else "")
        elif action.kind == "pg-failover":
            self.wait_rejoined()  # the previous failover's old primary is the standby again
            action.in_transaction = sorted({app for _, app in self.wait_busy(6.0, "els-worker")})
            old = self.state.pg.output("pg-primary").split()[0]
            action.struck_at = t0 = time.time()
            self.state.pg.run("pg-kill-primary")
            new = self.state.pg.output("pg-wait-failover 180")
            promoted = time.time() - t0
            action.recovery["kill_to_new_primary_s"] = round(promoted, 1)

            def rejoin(action: Action = action, t0: float = t0) -> None:
                # the old primary's keeper, again: it rejoins as the standby (in the
                # background, so that the other actions keep their schedule)
                try:
                    self.state.pg.run("pg-wait-healthy 600")
                    action.recovery["kill_to_standby_rejoined_s"] = round(time.time() - t0, 1)
                except subprocess.CalledProcessError as exc:
                    self.state.mismatch(f"harness: the old primary did not rejoin: {exc}")

            self.state.rejoin_thread = threading.Thread(target=rejoin, name="rejoin", daemon=True)
            self.state.rejoin_thread.start()
            action.detail = f"primary {old} killed, {new} promoted after {promoted:.1f} s" + (
                f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
                if action.in_transaction else "")
        elif action.kind == "broker-kill":
            kills = sum(1 for a in self.state.actions if a.kind == "broker-kill" and a.done_at)
            prefer = "els-outbox-relay" if kills % 2 == 0 else "els-worker"
            node, led = self.busiest_broker()
            action.in_transaction = sorted({app for _, app in self.wait_busy(6.0, prefer)})
            action.struck_at = t0 = time.time()
            self.state.pg.run(f"kafka-kill {node}")
            fenced = time.time() - t0
            down = rng.uniform(1.0, 5.0)
            time.sleep(down)
            self.state.pg.run(f"kafka-start {node}")
            action.recovery["kill_to_fenced_s"] = round(fenced, 1)
            action.detail = (f"broker {node} (leader of {led} input partitions) killed, "
                             f"fenced after {fenced:.1f} s, down {fenced + down:.1f} s") + (
                f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
                if action.in_transaction else "")
        action.done_at = time.monotonic() - self.state.stream_started
        log(f"{action.kind:<13} at {action.done_at:6.1f} s  {action.detail}")

    def partition_down(self, action: Action) -> None:
        """One partition refuses connections for a while and loses the ones it had (the
        rest of the cluster, the proxy and the other partitions stay up), as a partition
        that is down or failing over looks to the proxy and the workers."""
        rng = self.state.rng
        name = rng.choice(self.state.partition_names)
        down = rng.uniform(2.0, 6.0)
        action.in_transaction = sorted({app for _, app in self.wait_busy(6.0, "els-worker")})
        with psycopg.connect(self.state.env["ELS_PG_ADMIN_URL"], autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                sql.Identifier(name)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %(d)s", {"d": name})
            time.sleep(down)
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                sql.Identifier(name)))
        action.detail = f"{name} down {down:.1f} s" + (
            f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
            if action.in_transaction else "")

    def wait_rejoined(self) -> None:
        if self.state.rejoin_thread is not None:
            self.state.rejoin_thread.join(timeout=900)
            self.state.rejoin_thread = None

    def busiest_broker(self) -> tuple[int, int]:
        """(node id, count) of the broker leading the most partitions of the input topics."""
        admin = AdminClient({"bootstrap.servers": self.state.bootstrap, **QUIET})
        md = admin.list_topics(timeout=20)
        leaders: Counter[int] = Counter()
        for k in INPUT_KINDS:
            for p in md.topics[self.state.topics[k]].partitions.values():
                if p.leader >= 0:
                    leaders[p.leader] += 1
        node, count = leaders.most_common(1)[0]
        return node, count

    def measure_recovery(self) -> None:
        """For each PostgreSQL or broker kill: the time from the blow to the first event
        applied afterwards (a row written by a transaction that started after it) and to
        the first output event published afterwards (an outbox row marked published)."""
        struck = [a for a in self.state.actions if a.struck_at is not None]
        if not struck:
            return
        with psycopg.connect(self.state.db_url, autocommit=True) as conn:
            for a in struck:
                t = a.struck_at or 0.0
                row = conn.execute(
                    "SELECT extract(epoch FROM least("
                    " (SELECT min(registered_at) FROM els.batch_tracker"
                    "   WHERE registered_at > to_timestamp(%(t)s::float8)),"
                    " (SELECT min(received_at) FROM els.essay_content"
                    "   WHERE received_at > to_timestamp(%(t)s::float8)),"
                    " (SELECT min(received_at) FROM els.validation_failure"
                    "   WHERE received_at > to_timestamp(%(t)s::float8)))),"
                    " extract(epoch FROM (SELECT min(published_at) FROM els.event_outbox"
                    "   WHERE published_at > to_timestamp(%(t)s::float8)))",
                    {"t": t}).fetchone()
                applied, published = row if row else (None, None)
                a.recovery["kill_to_first_applied_s"] = (
                    round(float(applied) - t, 1) if applied is not None else None)
                a.recovery["kill_to_first_published_s"] = (
                    round(float(published) - t, 1) if published is not None else None)

    def control(self) -> None:
        pending = list(self.state.actions)
        give_up = self.state.cfg.produce_seconds + self.state.cfg.quiesce_timeout
        while pending or not self.state.stream_done.is_set():
            if time.monotonic() - self.state.stream_started > give_up:
                self.state.mismatch(f"harness: the stream did not finish within {give_up:.0f} s")
                return
            now = time.monotonic() - self.state.stream_started
            while pending and pending[0].at <= now:
                self.perform(pending.pop(0))
                self.supervise()
            self.supervise()
            time.sleep(0.2)
