"""The chaos run: workers under fire, then a comparison with the oracle.

``python -m chaos.run`` (``make chaos``) does, with a fixed seed:

1. starts a *private* PostgreSQL cluster and Kafka broker for this run (a copy of
   scripts/stack.sh rooted in ``.stack/chaos-<run id>/``), so that restarting them
   disturbs nobody else on the machine; migrates a fresh database; creates a login
   role that is only a member of ``els_worker``; creates unique topics;
2. generates the stream (``chaos.generator``: ~20,900 messages, 226 malformed) and
   produces it at a steady pace with an idempotent producer, recording where each
   message landed (partition, offset);
3. runs two ``worker.py run`` processes on it while a seeded controller SIGKILLs a
   random worker at random moments (and restarts it), restarts PostgreSQL (once
   with a fast shutdown, once by SIGKILL of the postmaster, i.e. crash recovery)
   and restarts the Kafka broker; like a process supervisor, it also restarts a
   worker that exits on its own, and counts that;
4. waits for quiescence (every input partition committed up to its end, no
   unpublished outbox row, nothing moving), stops the workers with SIGTERM;
5. compares everything with the oracle (``chaos.oracle``): each batch's tracker,
   slots, content and failure ledgers (fields stored verbatim, first copy wins),
   the SPEC rule 3 invariants, the outbox (all published), the three output topics
   (exactly one distinct completion event id per complete batch, none for the
   others), and the dead-letter topics (every malformed message there, with its
   SQLSTATE, same key and value, and nothing else);
6. prints a report and writes it as JSON to ``build/chaos/``.

Dead letters are counted by their source (topic, partition, offset): a worker
killed after a dead letter was confirmed but before its offset commit dead-letters
the message again when it is redelivered. "Exactly once in the DLQ" therefore
means: the set of distinct sources in the DLQ equals the set of malformed
messages, every copy carries the expected SQLSTATE; extra copies are reported.

The HA variant (``--profile ha``, ``make chaos-ha``; docs/HA.md) runs the same stream on
the production topology (``scripts/stack.sh --ha``: PostgreSQL primary + synchronous
standby under pg_auto_failover, three Kafka nodes, topics with replication factor 3) and
replaces the restarts by: SIGKILLs of the PostgreSQL primary's node (the monitor
promotes the standby; the old primary is started again and rejoins as the standby) and
SIGKILLs of the broker leading the most input partitions (one of them struck during an
outbox relay round; the broker is started again). It reports, per kill, the time to the
first event applied afterwards and to the first output event published afterwards.

The sharded variant (``--profile sharded``, ``make chaos-sharded``; docs/SCALING.md) runs
it on two partition databases behind a PL/Proxy proxy (SPEC 9): the workers ingest
through the proxy and relay every partition's outbox; besides worker kills and a
PostgreSQL restart, one partition at a time refuses connections for a few seconds (a
partition down or failing over). ``--profile sharded-short`` is its small version, in
tests/chaos/test_chaos_short.py.

The short variant (``--profile short``, used by tests/chaos/test_chaos_short.py) uses a
private PostgreSQL, the shared Kafka, fewer events, a few kills and one
PostgreSQL restart. ``--profile ha-short`` (also in tests/chaos/test_chaos_short.py) is the HA
variant in small: a private HA stack, 30 batches, one worker kill, one primary kill,
one broker kill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient
from psycopg import sql

from chaos.config import (
    DEFAULT_TOPICS,
    INPUT_KINDS,
    PROFILES,
    QUIET,
    WORKER_ROLE,
    ChaosConfig,
    log,
)
from chaos.controller import Controller
from chaos.generator import GenConfig, Generated, generate
from chaos.report import Reporting, format_report
from chaos.stack import WorkerSlot
from chaos.state import RunState
from chaos.stream import Stream
from chaos.verify_db import DatabaseChecks, read_db
from chaos.verify_topics import TopicChecks
from els_worker import contract
from testkit.kafka import create_topics
from testkit.worker import service_env

STALL_LOG_LINES = 100  # of each worker's log, printed when a run does not quiesce


class ChaosRun:
    """One run: setup, stream + controller, quiescence, checks, report, cleanup. The
    parts are collaborators that share one explicit state (``RunState``): the stream,
    the controller (which pauses the stream), the topic and database checks, the
    report."""

    def __init__(self, cfg: ChaosConfig) -> None:
        self.state = RunState(cfg)
        self.stream = Stream(self.state)
        self.controller = Controller(self.state, self.stream)
        self.topic_checks = TopicChecks(self.state)
        self.db_checks = DatabaseChecks(self.state)
        self.reporting = Reporting(self.state)

    def setup(self) -> None:
        cfg = self.state.cfg
        t0 = time.monotonic()
        self.state.pg.prepare()
        log(f"private stack in {self.state.pg.root} (log {self.state.pg.log_path})")
        self.state.pg.run("pg-up")
        if self.state.kafka_stack is not None:
            self.state.kafka_stack.run("kafka-up")
        self.state.env = self.state.pg.env()
        if cfg.kafka == "shared":
            if not cfg.kafka_bootstrap:
                raise SystemExit("--kafka shared needs --kafka-bootstrap")
            self.state.bootstrap = cfg.kafka_bootstrap
        else:
            self.state.bootstrap = self.state.env["ELS_KAFKA_BOOTSTRAP"]
        import els_migrate
        from els_worker import partitions

        with psycopg.connect(self.state.env["ELS_PG_ADMIN_URL"], autocommit=True) as conn:
            for name in [self.state.dbname, *self.state.partition_names]:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.state.db_url = self.state.admin_url(self.state.dbname)
        if self.state.partition_names:  # the database is the proxy (SPEC 9)
            self.state.partition_urls = [self.state.admin_url(n)
                                         for n in self.state.partition_names]
            partitions.migrate(self.state.db_url, self.state.partition_urls)
        else:
            els_migrate.apply_migrations(self.state.db_url)
        with psycopg.connect(self.state.data_urls()[0], autocommit=True) as conn:
            conn.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname ="
                " 'els_chaos_worker') THEN CREATE ROLE els_chaos_worker LOGIN IN ROLE els_worker;"
                " END IF; END $$")

        def as_worker(url: str) -> str:
            return url.replace("postgresql://postgres@", f"postgresql://{WORKER_ROLE}@")

        self.state.worker_db_url = as_worker(self.state.db_url)
        self.state.worker_partition_urls = [as_worker(u) for u in self.state.partition_urls]
        self.create_topics()
        self.state.timings["setup_s"] = time.monotonic() - t0
        log(f"database {self.state.dbname}, kafka {self.state.bootstrap}, topics "
            f"chaos.{self.state.run_id}.*")

    def create_topics(self) -> None:
        rf = 3 if self.state.ha else 1
        names = list(self.state.topic_set.all)
        create_topics(self.state.bootstrap, names, partitions=3, replication_factor=rf)
        self.wait_topics_ready(AdminClient({"bootstrap.servers": self.state.bootstrap, **QUIET}),
                               names, replicas=rf)

    def wait_topics_ready(self, admin: AdminClient, names: list[str], replicas: int) -> None:
        """Until every partition has a leader and all its replicas in sync. A stream that
        starts while a new topic's leaders settle is what upstream services rarely do: the
        one acknowledged-then-missing loss seen in an HA run (three messages, the first of
        a partition, verify_input) was of that moment."""
        deadline = time.monotonic() + 60
        while True:
            meta = admin.list_topics(timeout=10)
            pending = [n for n in names if n not in meta.topics or meta.topics[n].error
                       or len(meta.topics[n].partitions) != 3
                       or any(p.leader < 0 or len(p.isrs) < replicas
                              for p in meta.topics[n].partitions.values())]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not ready after 60 s: {pending[:3]}")
            time.sleep(0.2)

    def delete_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.state.bootstrap, **QUIET})
        names = [*self.state.topics.values(),
                 *(contract.dlq_topic(self.state.topics[k]) for k in INPUT_KINDS)]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result(timeout=60)
            except Exception as exc:  # cleanup only
                log(f"topic cleanup: {exc}")

    def kafka_config(self, index: int) -> dict[str, Any]:
        conf = dict(self.state.cfg.worker_kafka_config)
        static = self.state.cfg.static_members
        if index < len(static) and static[index]:
            conf["group.instance.id"] = f"{self.state.group}.worker-{index}"
        return conf

    def worker_env(self, index: int) -> dict[str, str]:
        return service_env(self.state.worker_db_url, self.state.bootstrap, self.state.topic_set, **{
            "ELS_METRICS_PORT": "0",
            "ELS_KAFKA_CONSUMER_CONFIG": json.dumps(self.kafka_config(index)),
            "ELS_PARTITION_URLS": ",".join(self.state.worker_partition_urls),
            **self.state.cfg.worker_env})

    def lag(self, consumer: Consumer) -> tuple[int, dict[str, int]]:
        self.state.partition_lag.clear()
        tps = [TP(self.state.topics[k], p) for k in INPUT_KINDS for p in range(3)]
        committed = consumer.committed(tps, timeout=20)
        total = 0
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(TP(tp.topic, tp.partition), timeout=20)
            pos = tp.offset if tp.offset is not None and tp.offset >= 0 else 0
            total += max(0, high - pos)
            if high > pos:
                self.state.partition_lag[f"{tp.topic}[{tp.partition}]"] = (
                    f"committed {pos} of {high}")
        dlq_ends = {}
        for k in INPUT_KINDS:
            for p in range(3):
                dlq_ends[f"{k}.dlq[{p}]"] = consumer.get_watermark_offsets(
                    TP(contract.dlq_topic(self.state.topics[k]), p), timeout=20)[1]
        return total, dlq_ends

    def unpublished(self) -> int:
        total = 0
        for url in self.state.data_urls():
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT count(*) FROM els.event_outbox"
                                   " WHERE published_at IS NULL").fetchone()
            total += int(row[0]) if row else 0
        return total

    def quiesce(self) -> bool:
        t0 = time.monotonic()
        consumer = Consumer({"bootstrap.servers": self.state.bootstrap,
                             "group.id": self.state.group, "enable.auto.commit": False, **QUIET})
        stable = 0
        last: Any = None
        try:
            while time.monotonic() - t0 < self.state.cfg.quiesce_timeout:
                self.controller.supervise()
                try:
                    lag, dlq = self.lag(consumer)
                    backlog = self.unpublished()
                except Exception as exc:  # the broker or database may still be settling
                    log(f"quiescence probe failed: {exc}")
                    time.sleep(2)
                    continue
                state = (lag, backlog, tuple(sorted(dlq.items())))
                if lag == 0 and backlog == 0 and state == last:
                    stable += 1
                    if stable >= 2:
                        self.state.timings["quiesce_s"] = time.monotonic() - t0
                        return True
                else:
                    stable = 0
                last = state
                if int(time.monotonic() - t0) % 15 < 3:
                    log(f"waiting for quiescence: lag {lag}, unpublished outbox {backlog}")
                time.sleep(3)
        finally:
            consumer.close()
        self.state.timings["quiesce_s"] = time.monotonic() - t0
        return False

    def show_stall(self) -> None:
        """What a run that did not quiesce leaves to look at (CI keeps only the output):
        the partitions behind, and each worker's stacks (SIGUSR1) and last log lines."""
        log(f"partitions behind: {self.state.partition_lag}")
        try:
            admin = AdminClient({"bootstrap.servers": self.state.bootstrap, **QUIET})
            group = admin.describe_consumer_groups(
                [self.state.group])[self.state.group].result(timeout=20)
            log(f"group {self.state.group}: state {group.state}, members:")
            kinds = {topic: kind for kind, topic in self.state.topics.items()}
            for m in group.members:
                owned = [f"{kinds.get(tp.topic, tp.topic)}[{tp.partition}]"
                         for tp in (m.assignment.topic_partitions if m.assignment else [])]
                log(f"  {m.client_id} {m.member_id} instance {m.group_instance_id}: {owned}")
        except Exception as exc:  # diagnostics only
            log(f"group description failed: {exc}")
        for slot in self.state.slots:
            if slot.alive() and slot.proc is not None:
                slot.proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        for slot in self.state.slots:
            lines = slot.log_path.read_text(errors="replace").splitlines()[-STALL_LOG_LINES:]
            log(f"worker {slot.index}: last {len(lines)} log lines\n" + "\n".join(lines))

    def verify(self, gen: Generated) -> dict[str, Any]:
        t0 = time.monotonic()
        summary: dict[str, Any] = {}
        if self.state.produce_errors:
            self.state.mismatch(f"harness: {len(self.state.produce_errors)} produce error(s): "
                                f"{self.state.produce_errors[:3]}")
        missing = [m.seq for m in gen.messages if m.seq not in self.state.delivered]
        if missing:
            self.state.mismatch(f"harness: {len(missing)} message(s) without delivery report")
        summary["input"] = self.topic_checks.verify_input(gen)
        summary["dlq"] = self.topic_checks.verify_dlq(gen)
        pred = self.topic_checks.arrival_prediction(gen)
        conns = [psycopg.connect(url, autocommit=True) for url in self.state.data_urls()]
        try:
            db_state = read_db(conns)
            summary["db"] = self.db_checks.verify_db(pred.batches, db_state, conns)
        finally:
            for conn in conns:
                conn.close()
        summary["outputs"] = self.topic_checks.verify_outputs(pred.batches, db_state)
        self.state.timings["verify_s"] = time.monotonic() - t0
        return summary

    def tamper(self, gen: Generated) -> None:
        """Damages the final state in five known ways before verification, to show that
        the comparison catches each (``--tamper``; the run must then FAIL with at least
        these five mismatches)."""
        if self.state.partition_urls:
            raise SystemExit("--tamper runs on one database, not behind the proxy")
        log("TAMPERING with the final state (negative control)")
        pred = gen.prediction
        complete = sorted(b for b, e in pred.batches.items() if e.complete)
        incomplete = sorted(b for b, e in pred.batches.items() if e.registered
                            and not e.complete)
        valid = next(m for m in gen.messages if m.expect is None and m.kind == "content")
        with psycopg.connect(self.state.db_url, autocommit=True) as conn:
            conn.execute("UPDATE els.essay_content SET original_file_name = 'tampered'"
                         " WHERE (batch_id, text_storage_id) = (SELECT batch_id, text_storage_id"
                         " FROM els.essay_content WHERE batch_id = %(b)s LIMIT 1)",
                         {"b": complete[0]})
            conn.execute("UPDATE els.event_outbox SET published_at = NULL, kafka_topic = NULL,"
                         " kafka_partition = NULL, kafka_offset = NULL WHERE id ="
                         " (SELECT min(id) FROM els.event_outbox)")
            conn.execute(contract.REGISTERED.statement, {"event": json.dumps({
                "entity_id": "ghost", "expected_essay_count": 1, "essay_ids": ["ghost-e"],
                "course_code": "ENG5", "user_id": "nobody"})})
        producer = Producer({"bootstrap.servers": self.state.bootstrap, **QUIET})
        p, o = self.state.delivered[valid.seq]
        producer.produce(contract.dlq_topic(self.state.topics[valid.kind]), key=valid.key,
                         value=valid.value,
                         headers=[(contract.H_SQLSTATE, b"ELV03"),
                                  (contract.H_MESSAGE, b"tampered"),
                                  (contract.H_DETAIL, b"{}"),
                                  (contract.H_SOURCE_TOPIC, self.state.topics[valid.kind].encode()),
                                  (contract.H_SOURCE_PARTITION, str(p).encode()),
                                  (contract.H_SOURCE_OFFSET, str(o).encode()),
                                  (contract.H_FAILED_AT, b"2026-01-01T00:00:00Z"),
                                  (contract.H_ATTEMPTS, b"1")])
        forged = {"event_id": str(uuid.uuid4()), "event_type": DEFAULT_TOPICS["completed"],
                  "source_service": contract.SOURCE_SERVICE, "data": {"batch_id": incomplete[0]}}
        producer.produce(self.state.topics["completed"], key=incomplete[0].encode(),
                         value=json.dumps(forged).encode())
        producer.flush(30)

    def run(self) -> dict[str, Any]:
        cfg = self.state.cfg
        started = time.monotonic()
        gen = generate(GenConfig(seed=cfg.seed, batches=cfg.batches, malformed=cfg.malformed))
        self.state.stats = gen.stats()
        stats = self.state.stats
        log(f"stream: {stats['messages']} messages ({stats['malformed']} malformed, "
            f"{stats['redeliveries']} redeliveries), {stats['batches']} batches")
        report: dict[str, Any] = {}
        try:
            self.setup()  # inside: a failed setup still stops what it started
            self.state.slots = [
                WorkerSlot(i, self.worker_env(i), self.state.out / f"worker-{i}.log")
                for i in range(cfg.workers)]
            for slot in self.state.slots:
                slot.start()
            self.controller.schedule()
            self.state.stream_started = time.monotonic()
            producer = threading.Thread(target=self.stream.produce, args=(gen,), name="producer",
                                        daemon=True)
            producer.start()
            self.controller.control()
            producer.join(timeout=60)
            self.controller.wait_rejoined()
            log("stream produced and chaos done; waiting for quiescence")
            quiet = self.quiesce()
            if not quiet:
                self.state.mismatch(f"no quiescence within {cfg.quiesce_timeout:.0f} s")
                self.show_stall()
            exit_codes = [slot.stop() for slot in self.state.slots]
            for slot, code in zip(self.state.slots, exit_codes, strict=True):
                if code not in (0, None):
                    self.state.mismatch(f"worker {slot.index} exited with {code} on SIGTERM")
            log("workers stopped; verifying")
            self.controller.measure_recovery()
            if cfg.tamper:
                self.tamper(gen)
            summary = self.verify(gen)
            report = self.reporting.report(gen, summary, time.monotonic() - started)
        finally:
            for slot in self.state.slots:
                if slot.alive():
                    slot.stop(10)
            self.cleanup()
        return report

    def cleanup(self) -> None:
        if self.state.cfg.keep:
            log(f"kept: database {self.state.dbname}, topics chaos.{self.state.run_id}.*, stack "
                f"{self.state.pg.root}")
            return
        if hasattr(self, "bootstrap"):  # setup got as far as creating the topics
            try:
                self.delete_topics()
            except Exception as exc:
                log(f"topic cleanup failed: {exc}")
            try:
                with psycopg.connect(self.state.env["ELS_PG_ADMIN_URL"], autocommit=True) as conn:
                    for name in [self.state.dbname, *self.state.partition_names]:
                        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)))
            except Exception as exc:
                log(f"database cleanup failed: {exc}")
        # whatever setup started, even when it failed half-way (a private cluster left
        # running would outlive the run)
        try:
            if self.state.ha:
                self.state.pg.run("down")
            else:
                if self.state.kafka_stack is not None:
                    self.state.kafka_stack.run("kafka-down")
                self.state.pg.run("pg-down")
        except subprocess.CalledProcessError as exc:
            log(f"stack cleanup failed: {exc} (see {self.state.pg.log_path})")
        self.state.pg.remove()


def run_chaos(cfg: ChaosConfig) -> dict[str, Any]:
    return ChaosRun(cfg).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batches", type=int)
    parser.add_argument("--kills", type=int)
    parser.add_argument("--pg-restarts", type=int)
    parser.add_argument("--kafka-restarts", type=int)
    parser.add_argument("--pg-failovers", type=int, help="ha: SIGKILLs of the primary's node")
    parser.add_argument("--broker-kills", type=int, help="ha: SIGKILLs of the busiest broker")
    parser.add_argument("--produce-seconds", type=float)
    parser.add_argument("--kafka", choices=["private", "shared"])
    parser.add_argument("--kafka-bootstrap")
    parser.add_argument("--worker-kafka-config", type=json.loads,
                        help="ELS_KAFKA_CONSUMER_CONFIG of the workers, a JSON object "
                             "(replaces the default, a 10 s session timeout)")
    parser.add_argument("--tamper", action="store_true", default=None,
                        help="negative control: damage the final state in five ways before "
                             "verifying; the run must FAIL and list each")
    parser.add_argument("--keep", action="store_true", default=None,
                        help="keep the database, topics and private stack for inspection")
    args = parser.parse_args(argv)
    settings = dict(PROFILES[args.profile])
    for name in ("seed", "batches", "kills", "pg_restarts", "kafka_restarts", "produce_seconds",
                 "pg_failovers", "broker_kills",
                 "kafka", "kafka_bootstrap", "keep",
                 "worker_kafka_config", "tamper"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if settings.get("kafka") == "shared" and not settings.get("kafka_bootstrap"):
        settings["kafka_bootstrap"] = os.environ.get("ELS_KAFKA_BOOTSTRAP")
    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # run the cleanup in `finally`

    signal.signal(signal.SIGTERM, terminate)
    report = run_chaos(ChaosConfig(**settings))
    print(format_report(report), flush=True)
    return 0 if report["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
