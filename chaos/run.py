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

The short variant (``--profile short``, used by tests/test_chaos_short.py) uses a
private PostgreSQL, the shared Kafka, fewer events, a few kills and one
PostgreSQL restart. ``--profile ha-short`` (also in tests/test_chaos_short.py) is the HA
variant in small: a private HA stack, 30 batches, one worker kill, one primary kill,
one broker kill.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.generator import GenConfig, Generated, generate  # noqa: E402
from chaos.oracle import TOPIC_NAMES, BatchExpectation  # noqa: E402
from els_worker import contract  # noqa: E402
from testkit.kafka import read_topic  # noqa: E402
from testkit.stack import stack_env  # noqa: E402

DEFAULT_TOPICS = {  # the contract's topics, under the run's short names
    **TOPIC_NAMES,
    "completed": contract.COMPLETED.topic,
    "slot_assigned": contract.SLOT_ASSIGNED.topic,
    "excess": contract.EXCESS.topic,
}
INPUT_KINDS = ("register", "content", "failure")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # topics and our producer: room for the 5 MB value
DLQ_HEADERS = contract.DLQ_HEADERS
WORKER_ROLE = "els_chaos_worker"
# the harness's own Kafka clients: failures surface as exceptions; no log spam while
# the broker is down
QUIET = {"log_level": 0}


@dataclass
class ChaosConfig:
    name: str = "full"
    seed: int = 20261128
    batches: int = 500
    malformed: int = 220
    workers: int = 2
    kills: int = 22
    pg_restarts: int = 2
    kafka_restarts: int = 1
    topology: str = "single"  # single | ha (scripts/stack.sh --ha, docs/HA.md)
    pg_failovers: int = 0  # ha: SIGKILLs of the PostgreSQL primary's node
    broker_kills: int = 0  # ha: SIGKILLs of the broker leading the most input partitions
    produce_seconds: float = 150.0
    chaos_start: float = 6.0  # first action at the earliest this long after the stream starts
    chaos_tail: float = 10.0  # actions may happen until this long after the stream ends
    kafka: str = "private"  # private | shared (then kafka_bootstrap is required)
    kafka_bootstrap: str | None = None
    quiesce_timeout: float = 600.0
    keep: bool = False  # keep database, topics and the private stack running
    # librdkafka settings for the workers (ELS_KAFKA_CONFIG): a shorter session timeout
    # lets the group notice a SIGKILLed member in seconds instead of 45 s. Nothing else:
    # the workers run with their defaults.
    worker_kafka_config: dict[str, Any] = field(default_factory=lambda: {
        "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
    worker_env: dict[str, str] = field(default_factory=dict)
    # per worker: static group membership (group.instance.id), so that a restarted
    # worker takes its partitions back at once; the others are dynamic members, whose
    # restarts go through rebalances. Both kinds are exercised.
    static_members: tuple[bool, ...] = (True, False)
    tamper: bool = False  # negative control: damage the final state before verifying
    out_dir: Path | None = None


PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "short": {"name": "short", "batches": 40, "malformed": 130, "kills": 3, "pg_restarts": 1,
              "kafka_restarts": 0, "produce_seconds": 25.0, "chaos_start": 4.0,
              "chaos_tail": 5.0, "kafka": "shared", "quiesce_timeout": 240.0},
    "ha": {"name": "ha", "topology": "ha", "pg_restarts": 0, "kafka_restarts": 0,
           "pg_failovers": 2, "broker_kills": 2},
    "ha-short": {"name": "ha-short", "topology": "ha", "batches": 30, "malformed": 40,
                 "kills": 1, "pg_restarts": 0, "kafka_restarts": 0, "pg_failovers": 1,
                 "broker_kills": 1, "produce_seconds": 40.0, "chaos_start": 5.0,
                 "chaos_tail": 5.0, "quiesce_timeout": 240.0},
}


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# A private copy of the local stack
# ---------------------------------------------------------------------------


class PrivateStack:
    """scripts/stack.sh, copied under .stack/chaos-<run id>/ so that it manages its own
    cluster, broker, ports and data, private to one run (two runs in one checkout do
    not meet); the Kafka jars and the venv are shared by links. ``remove()`` deletes
    it after the run."""

    def __init__(self, name: str, log_path: Path, topology: str = "single") -> None:
        self.topology = topology
        self.root = ROOT / ".stack" / f"chaos-{name}"
        self.script = self.root / "scripts" / "stack.sh"
        self.log_path = log_path

    def prepare(self) -> None:
        scripts = self.root / "scripts"
        if scripts.exists():
            shutil.rmtree(scripts)
        shutil.copytree(ROOT / "scripts", scripts, ignore=shutil.ignore_patterns("__pycache__"))
        venv = self.root / ".venv"
        if not venv.exists():
            venv.symlink_to(ROOT / ".venv")
        libs = ROOT / ".stack" / "kafka" / "libs"
        mine = self.root / ".stack" / "kafka"
        if libs.is_dir() and not (mine / "libs").exists():
            mine.mkdir(parents=True, exist_ok=True)
            (mine / "libs").symlink_to(libs)
            shutil.copy(ROOT / ".stack" / "kafka" / "libs.stamp", mine / "libs.stamp")

    def remove(self) -> None:
        for pg in (self.root / ".stack" / "pg", self.root / ".stack" / "ha" / "pg"):
            if pg.is_symlink():  # stack.sh put the cluster elsewhere (see pg_prepare_dir)
                shutil.rmtree(pg.resolve(), ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def argv(self, command: str) -> list[str]:
        return [str(self.script), *(["--ha"] if self.topology == "ha" else []),
                *command.split()]

    def run(self, command: str) -> None:
        with self.log_path.open("a") as out:
            out.write(f"--- {datetime.now(UTC).isoformat()} stack.sh {command}\n")
            out.flush()
            subprocess.run(self.argv(command), check=True, stdout=out, stderr=out,
                           stdin=subprocess.DEVNULL)

    def output(self, command: str) -> str:
        """stdout of a stack.sh command (its log lines go to the stack log)."""
        with self.log_path.open("a") as err:
            err.write(f"--- {datetime.now(UTC).isoformat()} stack.sh {command}\n")
            err.flush()
            return subprocess.run(self.argv(command), check=True, stdout=subprocess.PIPE,
                                  stderr=err, text=True, stdin=subprocess.DEVNULL).stdout.strip()

    def env(self) -> dict[str, str]:
        return stack_env(self.script, ha=self.topology == "ha", start=False)


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


@dataclass
class WorkerSlot:
    index: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed_pids: set[int] = field(default_factory=set)
    unexpected_exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"--- start #{self.starts} at {datetime.now(UTC).isoformat()}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py"), "run"],
                env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=str(ROOT),
                start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        if not self.alive():
            return False
        assert self.proc is not None
        self.killed_pids.add(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return True

    def check_exit(self) -> int | None:
        """The exit code if the process ended on its own (not by our SIGKILL)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        if self.proc.pid in self.killed_pids:
            return None
        code = self.proc.returncode
        self.killed_pids.add(self.proc.pid)  # report once
        self.unexpected_exits.append(code)
        return code

    def stop(self, timeout: float = 60.0) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            return -9


def pg_client_ports(pid: int, pg_port: int) -> list[int]:
    """Local ports of the TCP connections process ``pid`` holds to ``pg_port`` (Linux
    /proc), i.e. the ``client_port`` of its backends in pg_stat_activity."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    ports = []
    for line in lines:
        parts = line.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if inode in inodes and int(remote.split(":")[1], 16) == pg_port:
            ports.append(int(local.split(":")[1], 16))
    return ports


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class Action:
    at: float
    kind: str  # kill | pg-restart | pg-crash | kafka-restart | pg-failover | broker-kill
    done_at: float | None = None
    struck_at: float | None = None  # wall clock (time.time()) of the blow, for recovery times
    recovery: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    in_transaction: list[str] = field(default_factory=list)


class ChaosRun:
    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.run_id = (f"{cfg.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-"
                       f"{uuid.uuid4().hex[:4]}")
        self.out = cfg.out_dir or ROOT / "build" / "chaos" / self.run_id
        self.out.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(cfg.seed ^ 0xC4A05)
        self.pg = PrivateStack(self.run_id, self.out / "stack.log", cfg.topology)
        self.ha = cfg.topology == "ha"
        self.kafka_stack = self.pg if cfg.kafka == "private" else None
        self.topics = {k: f"chaos.{self.run_id}.{v}" for k, v in DEFAULT_TOPICS.items()}
        self.group = f"chaos.{self.run_id}.els"
        self.dbname = f"chaos_{uuid.uuid4().hex[:10]}"
        self.mismatches: list[str] = []
        self.timings: dict[str, float] = {}
        self.actions: list[Action] = []
        self.slots: list[WorkerSlot] = []
        self.delivered: dict[int, tuple[int, int]] = {}
        self.produce_errors: list[str] = []
        self.stream_started = 0.0
        self.stream_done = threading.Event()
        self.pause_requested = threading.Event()
        self.paused = threading.Event()
        self.stats: dict[str, Any] = {}
        self.rejoin_thread: threading.Thread | None = None

    # -- helpers -----------------------------------------------------------
    def mismatch(self, text: str) -> None:
        self.mismatches.append(text if len(text) <= 500 else text[:497] + "...")

    def admin_url(self, dbname: str) -> str:
        """The admin URL with another database (a multi-host URL keeps its hosts and its
        target_session_attrs)."""
        return urlunsplit(urlsplit(self.env["ELS_PG_ADMIN_URL"])._replace(path="/" + dbname))

    # -- setup -------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self.pg.prepare()
        log(f"private stack in {self.pg.root} (log {self.pg.log_path})")
        self.pg.run("pg-up")
        if self.kafka_stack is not None:
            self.kafka_stack.run("kafka-up")
        self.env = self.pg.env()
        if cfg.kafka == "shared":
            if not cfg.kafka_bootstrap:
                raise SystemExit("--kafka shared needs --kafka-bootstrap")
            self.bootstrap = cfg.kafka_bootstrap
        else:
            self.bootstrap = self.env["ELS_KAFKA_BOOTSTRAP"]
        import els_migrate

        with psycopg.connect(self.env["ELS_PG_ADMIN_URL"], autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        self.db_url = self.admin_url(self.dbname)
        els_migrate.apply_migrations(self.db_url)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname ="
                " 'els_chaos_worker') THEN CREATE ROLE els_chaos_worker LOGIN IN ROLE els_worker;"
                " END IF; END $$")
        user_url = self.db_url.replace("postgresql://postgres@", f"postgresql://{WORKER_ROLE}@")
        self.worker_db_url = user_url
        self.create_topics()
        self.timings["setup_s"] = time.monotonic() - t0
        log(f"database {self.dbname}, kafka {self.bootstrap}, topics chaos.{self.run_id}.*")

    def create_topics(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})
        big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        rf = 3 if self.ha else 1
        new = [NewTopic(t, num_partitions=3, replication_factor=rf, config=big)
               for k in INPUT_KINDS for t in (self.topics[k], self.topics[k] + ".dlq")]
        new += [NewTopic(self.topics[k], num_partitions=3, replication_factor=rf)
                for k in ("completed", "slot_assigned", "excess")]
        for name, fut in admin.create_topics(new, operation_timeout=30).items():
            fut.result(timeout=60)
            del name
        self.wait_topics_ready(admin, [t.topic for t in new], replicas=rf)

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
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})
        names = [*self.topics.values(), *(self.topics[k] + ".dlq" for k in INPUT_KINDS)]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result(timeout=60)
            except Exception as exc:  # cleanup only
                log(f"topic cleanup: {exc}")

    def kafka_config(self, index: int) -> dict[str, Any]:
        conf = dict(self.cfg.worker_kafka_config)
        static = self.cfg.static_members
        if index < len(static) and static[index]:
            conf["group.instance.id"] = f"{self.group}.worker-{index}"
        return conf

    def worker_env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ELS_")}
        env.update({
            "ELS_DATABASE_URL": self.worker_db_url,
            "ELS_KAFKA_BOOTSTRAP": self.bootstrap,
            "ELS_GROUP_ID": self.group,
            "ELS_TOPIC_BATCH_REGISTERED": self.topics["register"],
            "ELS_TOPIC_CONTENT_PROVISIONED": self.topics["content"],
            "ELS_TOPIC_VALIDATION_FAILED": self.topics["failure"],
            "ELS_TOPIC_OUT_COMPLETED": self.topics["completed"],
            "ELS_TOPIC_OUT_SLOT_ASSIGNED": self.topics["slot_assigned"],
            "ELS_TOPIC_OUT_EXCESS": self.topics["excess"],
            "ELS_METRICS_PORT": "0",
            "ELS_METRICS_HOST": "127.0.0.1",
            "ELS_KAFKA_CONFIG": json.dumps(self.kafka_config(index)),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.cfg.worker_env)
        return env

    # -- the stream --------------------------------------------------------
    def new_producer(self) -> Producer:
        return Producer({
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "message.timeout.ms": 300000,
            "client.id": "chaos-producer",
            **QUIET,
        })

    def produce(self, gen: Generated) -> None:
        """Produces the stream in order at a steady pace. The stream stands in for the
        upstream services, which are not under test: while the broker restarts it pauses
        with everything delivered (``pause_stream``) and resumes with a new producer,
        because librdkafka's idempotent producer may hold messages whose fate a broker
        restart left unknown until message.timeout.ms, which would stall the stream."""
        producer = self.new_producer()
        messages = gen.messages
        interval = self.cfg.produce_seconds / max(1, len(messages))

        def on_delivery(seq: int) -> Callable[[KafkaError | None, Message], None]:
            def cb(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    self.produce_errors.append(f"#{seq}: {err}")
                else:
                    self.delivered[seq] = (msg.partition() or 0, msg.offset() or 0)
            return cb

        start = time.monotonic()
        paused_for = 0.0
        for m in messages:
            if self.pause_requested.is_set():
                t0 = time.monotonic()
                left = producer.flush(300)
                if left:
                    self.produce_errors.append(f"{left} message(s) not delivered before a pause")
                self.paused.set()
                while self.pause_requested.is_set():
                    time.sleep(0.05)
                producer = self.new_producer()
                self.paused.clear()
                paused_for += time.monotonic() - t0
            due = start + paused_for + m.seq * interval
            while True:
                now = time.monotonic()
                if now >= due:
                    break
                producer.poll(min(0.05, due - now))
            while True:
                try:
                    producer.produce(self.topics[m.kind], key=m.key, value=m.value,
                                     on_delivery=on_delivery(m.seq))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(600)
        if left:
            self.produce_errors.append(f"{left} message(s) not delivered after 600 s")
        self.timings["stream_s"] = time.monotonic() - start
        self.timings["stream_paused_s"] = paused_for
        self.stream_done.set()

    def pause_stream(self) -> bool:
        """Asks the stream to pause with everything delivered; False if it has ended."""
        self.pause_requested.set()
        while not self.paused.wait(0.2):
            if self.stream_done.is_set():
                self.pause_requested.clear()
                return False
        return True

    # -- the controller ----------------------------------------------------
    def schedule(self) -> None:
        cfg, rng = self.cfg, self.rng
        lo, hi = cfg.chaos_start, cfg.produce_seconds + cfg.chaos_tail
        times = sorted(rng.uniform(lo, hi) for _ in range(cfg.kills))
        self.actions = [Action(t, "kill") for t in times]
        pg_kinds = ["pg-restart", "pg-crash"]
        for i in range(cfg.pg_restarts):
            self.actions.append(Action(rng.uniform(lo + 5, max(lo + 6, hi - 10)),
                                       pg_kinds[i % 2]))
        for _ in range(cfg.kafka_restarts if cfg.kafka == "private" else 0):
            self.actions.append(Action(rng.uniform(lo + 10, max(lo + 11, hi - 20)),
                                       "kafka-restart"))
        if self.ha:
            # failovers and broker kills in separate, ordered windows, so that each
            # PostgreSQL kill finds the formation whole again (primary + sync standby)
            n = cfg.pg_failovers + cfg.broker_kills
            kinds = ["pg-failover"] * cfg.pg_failovers + ["broker-kill"] * cfg.broker_kills
            rng.shuffle(kinds)
            span = (hi - 15 - (lo + 5)) / max(1, n)
            for i, kind in enumerate(kinds):
                start = lo + 5 + i * span
                self.actions.append(Action(rng.uniform(start, start + span * 0.5), kind))
        self.actions.sort(key=lambda a: a.at)

    def supervise(self) -> None:
        for slot in self.slots:
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
        = a relay round between claim (rows locked) and mark."""
        pg_port = conn.info.port  # the primary's, in the HA topology
        owner = {port: slot for slot in self.slots if slot.alive() and slot.proc is not None
                 for port in pg_client_ports(slot.proc.pid, pg_port)}
        if not owner:
            return []
        rows = conn.execute(
            "SELECT client_port, application_name FROM pg_stat_activity"
            " WHERE client_port = ANY(%(ports)s) AND backend_xid IS NOT NULL",
            {"ports": list(owner)}).fetchall()
        return [(owner[port], app) for port, app in rows if port in owner]

    def wait_busy(self, patience: float, prefer: str | None = None
                  ) -> list[tuple[WorkerSlot, str]]:
        """Waits up to ``patience`` seconds for a worker to hold uncommitted work
        (``prefer``: in that application, for the first 3/4 of the time), so that the
        blow lands mid-flight; returns who was caught (empty: nobody was)."""
        start = time.monotonic()
        try:
            with psycopg.connect(self.db_url, autocommit=True, connect_timeout=2) as conn:
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
        rng = self.rng
        if action.kind == "kill":
            kills = sum(1 for a in self.actions if a.kind == "kill" and a.done_at is not None)
            caught = self.wait_busy(6.0, ("els-worker", "els-outbox-relay")[kills % 2])
            # the worker caught with uncommitted work, else one drawn at random
            slot = caught[0][0] if caught else rng.choice(self.slots)
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
            self.pg.run("pg-down" if action.kind == "pg-restart" else "pg-kill")
            time.sleep(down)
            self.pg.run("pg-up")
            action.detail = f"down {down:.1f} s" + (
                f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
                if action.in_transaction else "")
        elif action.kind == "kafka-restart":
            assert self.kafka_stack is not None
            down = rng.uniform(1.0, 3.0)
            paused = self.pause_stream()
            try:
                self.kafka_stack.run("kafka-down")
                time.sleep(down)
                self.kafka_stack.run("kafka-up")
            finally:
                self.pause_requested.clear()
            action.detail = f"down {down:.1f} s" + (" (stream paused)" if paused else "")
        elif action.kind == "pg-failover":
            self.wait_rejoined()  # the previous failover's old primary is the standby again
            action.in_transaction = sorted({app for _, app in self.wait_busy(6.0, "els-worker")})
            old = self.pg.output("pg-primary").split()[0]
            action.struck_at = t0 = time.time()
            self.pg.run("pg-kill-primary")
            new = self.pg.output("pg-wait-failover 180")
            promoted = time.time() - t0
            action.recovery["kill_to_new_primary_s"] = round(promoted, 1)

            def rejoin(action: Action = action, t0: float = t0) -> None:
                # the old primary's keeper, again: it rejoins as the standby (in the
                # background, so that the other actions keep their schedule)
                try:
                    self.pg.run("pg-wait-healthy 600")
                    action.recovery["kill_to_standby_rejoined_s"] = round(time.time() - t0, 1)
                except subprocess.CalledProcessError as exc:
                    self.mismatch(f"harness: the old primary did not rejoin: {exc}")

            self.rejoin_thread = threading.Thread(target=rejoin, name="rejoin", daemon=True)
            self.rejoin_thread.start()
            action.detail = f"primary {old} killed, {new} promoted after {promoted:.1f} s" + (
                f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
                if action.in_transaction else "")
        elif action.kind == "broker-kill":
            kills = sum(1 for a in self.actions if a.kind == "broker-kill" and a.done_at)
            prefer = "els-outbox-relay" if kills % 2 == 0 else "els-worker"
            node, led = self.busiest_broker()
            action.in_transaction = sorted({app for _, app in self.wait_busy(6.0, prefer)})
            action.struck_at = t0 = time.time()
            self.pg.run(f"kafka-kill {node}")
            fenced = time.time() - t0
            down = rng.uniform(1.0, 5.0)
            time.sleep(down)
            self.pg.run(f"kafka-start {node}")
            action.recovery["kill_to_fenced_s"] = round(fenced, 1)
            action.detail = (f"broker {node} (leader of {led} input partitions) killed, "
                             f"fenced after {fenced:.1f} s, down {fenced + down:.1f} s") + (
                f", struck with uncommitted work in {'+'.join(action.in_transaction)}"
                if action.in_transaction else "")
        action.done_at = time.monotonic() - self.stream_started
        log(f"{action.kind:<13} at {action.done_at:6.1f} s  {action.detail}")

    def wait_rejoined(self) -> None:
        if self.rejoin_thread is not None:
            self.rejoin_thread.join(timeout=900)
            self.rejoin_thread = None

    def busiest_broker(self) -> tuple[int, int]:
        """(node id, count) of the broker leading the most partitions of the input topics."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})
        md = admin.list_topics(timeout=20)
        leaders: Counter[int] = Counter()
        for k in INPUT_KINDS:
            for p in md.topics[self.topics[k]].partitions.values():
                if p.leader >= 0:
                    leaders[p.leader] += 1
        node, count = leaders.most_common(1)[0]
        return node, count

    def measure_recovery(self) -> None:
        """For each PostgreSQL or broker kill: the time from the blow to the first event
        applied afterwards (a row written by a transaction that started after it) and to
        the first output event published afterwards (an outbox row marked published)."""
        struck = [a for a in self.actions if a.struck_at is not None]
        if not struck:
            return
        with psycopg.connect(self.db_url, autocommit=True) as conn:
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
        pending = list(self.actions)
        give_up = self.cfg.produce_seconds + self.cfg.quiesce_timeout
        while pending or not self.stream_done.is_set():
            if time.monotonic() - self.stream_started > give_up:
                self.mismatch(f"harness: the stream did not finish within {give_up:.0f} s")
                return
            now = time.monotonic() - self.stream_started
            while pending and pending[0].at <= now:
                self.perform(pending.pop(0))
                self.supervise()
            self.supervise()
            time.sleep(0.2)

    # -- quiescence --------------------------------------------------------
    def lag(self, consumer: Consumer) -> tuple[int, dict[str, int]]:
        tps = [TP(self.topics[k], p) for k in INPUT_KINDS for p in range(3)]
        committed = consumer.committed(tps, timeout=20)
        total = 0
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(TP(tp.topic, tp.partition), timeout=20)
            pos = tp.offset if tp.offset is not None and tp.offset >= 0 else 0
            total += max(0, high - pos)
        dlq_ends = {}
        for k in INPUT_KINDS:
            for p in range(3):
                dlq_ends[f"{k}.dlq[{p}]"] = consumer.get_watermark_offsets(
                    TP(self.topics[k] + ".dlq", p), timeout=20)[1]
        return total, dlq_ends

    def unpublished(self) -> int:
        with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM els.event_outbox"
                               " WHERE published_at IS NULL").fetchone()
        return int(row[0]) if row else -1

    def quiesce(self) -> bool:
        t0 = time.monotonic()
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                             "enable.auto.commit": False, **QUIET})
        stable = 0
        last: Any = None
        try:
            while time.monotonic() - t0 < self.cfg.quiesce_timeout:
                self.supervise()
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
                        self.timings["quiesce_s"] = time.monotonic() - t0
                        return True
                else:
                    stable = 0
                last = state
                if int(time.monotonic() - t0) % 15 < 3:
                    log(f"waiting for quiescence: lag {lag}, unpublished outbox {backlog}")
                time.sleep(3)
        finally:
            consumer.close()
        self.timings["quiesce_s"] = time.monotonic() - t0
        return False

    def verify_input(self, gen: Generated) -> dict[str, int]:
        """Every message the broker acknowledged is in its input topic, at the offset of
        its delivery report. A failure here is the stream's loss (Kafka or its client,
        upstream of the worker), reported apart from the worker's mismatches that follow
        from it."""
        landed: dict[tuple[str, int, int], bytes | None] = {}
        for kind in INPUT_KINDS:
            for msg in self.read_all(self.topics[kind]):
                landed[(kind, msg.partition() or 0, msg.offset() or 0)] = msg.value()
        lost = [m for m in gen.messages if m.seq in self.delivered
                and landed.get((m.kind, *self.delivered[m.seq]), b"\0absent") != m.value]
        for m in lost[:5]:
            p, off = self.delivered[m.seq]
            self.mismatch(f"stream: message #{m.seq} ({m.kind}, {m.label}, batch "
                          f"{m.batch_id!r}) acknowledged at partition {p} offset {off}, "
                          "which holds other bytes or nothing: lost upstream of the worker")
        if len(lost) > 5:
            self.mismatch(f"stream: {len(lost) - 5} more acknowledged message(s) lost")
        return {"acknowledged": len(self.delivered), "in_topics": len(landed),
                "lost": len(lost)}

    # -- reading topics ----------------------------------------------------
    def read_all(self, topic: str) -> list[Message]:
        try:
            return read_topic(self.bootstrap, topic, timeout=300, **QUIET)
        except AssertionError as exc:
            self.mismatch(f"could not read {topic} to its end: {exc}")
            return []

    # -- verification ------------------------------------------------------
    def verify(self, gen: Generated) -> dict[str, Any]:
        t0 = time.monotonic()
        pred = gen.prediction
        summary: dict[str, Any] = {}
        if self.produce_errors:
            self.mismatch(f"harness: {len(self.produce_errors)} produce error(s): "
                          f"{self.produce_errors[:3]}")
        missing = [m.seq for m in gen.messages if m.seq not in self.delivered]
        if missing:
            self.mismatch(f"harness: {len(missing)} message(s) without delivery report")
        summary["input"] = self.verify_input(gen)
        summary["dlq"] = self.verify_dlq(gen)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            db_state = read_db(conn)
            summary["db"] = self.verify_db(pred.batches, db_state, conn)
        summary["outputs"] = self.verify_outputs(pred.batches, db_state)
        self.timings["verify_s"] = time.monotonic() - t0
        return summary

    def verify_dlq(self, gen: Generated) -> dict[str, Any]:
        by_source: dict[tuple[str, int, int], int] = {}
        for m in gen.messages:
            if m.seq in self.delivered:
                p, o = self.delivered[m.seq]
                by_source[(self.topics[m.kind], p, o)] = m.seq
        messages = {m.seq: m for m in gen.messages}
        expected = {m.seq for m in gen.messages if m.expect is not None}
        seen: Counter[int] = Counter()
        by_state: Counter[str] = Counter()
        for kind in INPUT_KINDS:
            dlq = self.topics[kind] + ".dlq"
            for msg in self.read_all(dlq):
                headers = {str(k): _text(v) for k, v in list(msg.headers() or [])}
                absent = [h for h in DLQ_HEADERS if h not in headers]
                if absent:
                    self.mismatch(f"DLQ {dlq}@{msg.partition()}:{msg.offset()} lacks {absent}")
                try:
                    source = (headers.get("els.source.topic", ""),
                              int(headers.get("els.source.partition", "-1")),
                              int(headers.get("els.source.offset", "-1")))
                except ValueError:
                    self.mismatch(f"DLQ {dlq}@{msg.offset()}: bad source headers {headers}")
                    continue
                seq = by_source.get(source)
                if seq is None:
                    self.mismatch(f"DLQ {dlq}: unknown source {source}")
                    continue
                m = messages[seq]
                seen[seq] += 1
                state = headers.get("els.error.sqlstate")
                by_state[state or "?"] += 1
                if m.expect is None:
                    self.mismatch(f"valid message #{seq} ({m.label}, batch {m.batch_id!r}) was "
                                  f"dead-lettered with {state}: {headers.get('els.error.message')}")
                elif state != m.expect:
                    self.mismatch(f"#{seq} {m.label}: dead-lettered with {state}, expected "
                                  f"{m.expect}: {headers.get('els.error.message')}")
                if source[0] + ".dlq" != dlq:
                    self.mismatch(f"#{seq}: dead-lettered to {dlq}, source {source[0]}")
                if msg.key() != m.key or msg.value() != m.value:
                    self.mismatch(f"#{seq} {m.label}: DLQ key/value differ from the original")
                try:
                    detail = json.loads(headers.get("els.error.detail", ""))
                    if not isinstance(detail, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.mismatch(f"#{seq} {m.label}: els.error.detail is not a JSON object: "
                                  f"{headers.get('els.error.detail', '')[:200]!r}")
        for seq in sorted(expected - set(seen)):
            m = messages[seq]
            self.mismatch(f"malformed #{seq} {m.label} (expected {m.expect}) is not in the DLQ")
        copies = sum(seen.values())
        return {"distinct": len(seen), "copies": copies, "extra_copies": copies - len(seen),
                "expected": len(expected), "by_sqlstate": dict(sorted(by_state.items()))}

    def verify_db(self, batches: dict[str, BatchExpectation], db: dict[str, Any],
                  conn: psycopg.Connection[Any]) -> dict[str, Any]:
        from testkit.invariants import check_invariants

        trackers = db["trackers"]
        unknown = (set(trackers) | set(db["contents"]) | set(db["failures"])) - set(batches)
        for bid in sorted(unknown):
            self.mismatch(f"batch {bid!r} has rows but no accepted event names it")
        checked = 0
        for bid, exp in batches.items():
            checked += 1
            try:
                check_invariants(conn, bid)
            except AssertionError as exc:
                self.mismatch(f"batch {bid!r}: SPEC rule 3 invariant broken: {exc}")
            self.compare_batch(exp, db)
        unpublished = sum(1 for o in db["outbox"] if not o["published"])
        if unpublished:
            self.mismatch(f"{unpublished} outbox row(s) not published")
        return {"batches_checked": checked, "trackers": len(trackers),
                "slots": sum(len(s) for s in db["slots"].values()),
                "contents": sum(len(c) for c in db["contents"].values()),
                "failures": sum(len(f) for f in db["failures"].values()),
                "outbox_rows": len(db["outbox"]), "unpublished": unpublished}

    def compare_batch(self, exp: BatchExpectation, db: dict[str, Any]) -> None:
        bid = exp.batch_id
        tracker = db["trackers"].get(bid)
        slots = db["slots"].get(bid, [])
        contents = db["contents"].get(bid, {})
        failures = db["failures"].get(bid, {})
        where = f"batch {bid!r}"
        if exp.registered != (tracker is not None):
            self.mismatch(f"{where}: registered {tracker is not None}, expected {exp.registered}")
            return
        if tracker is not None and exp.registration is not None:
            p = exp.registration.payload
            want = {"expected_count": p["expected_essay_count"], "essay_ids": p["essay_ids"],
                    "course_code": p["course_code"], "user_id": p["user_id"],
                    "org_id": p.get("org_id"), "class_id": p.get("class_id"),
                    "class_type": "GUEST" if p.get("class_id") is None else "REGULAR",
                    "metadata": p.get("metadata") or {},
                    "student_prompt_ref": p.get("student_prompt_ref"),
                    "registration_event_id": exp.registration.event_id}
            if exp.registration.correlation_id is not None:
                want["correlation_id"] = exp.registration.correlation_id
            for name, value in want.items():
                if tracker[name] != value:
                    self.mismatch(f"{where}: tracker.{name} = {tracker[name]!r}, "
                                  f"expected {value!r}")
            if [s["essay_id"] for s in slots] != p["essay_ids"]:
                self.mismatch(f"{where}: slots are not the essay ids in order")
            if tracker["complete"] != exp.complete:
                self.mismatch(f"{where}: complete {tracker['complete']}, expected {exp.complete}")
        status = Counter(s["status"] for s in slots)
        actual = {
            "slots": len(slots),
            "filled": status["ready_for_processing"],
            "failed": status["content_ingestion_failed"],
            "empty": status["uploaded"],
            "pending_content": sum(1 for c in contents.values() if c["disposition"] == "pending"),
            "pending_failures": sum(1 for f in failures.values() if f["disposition"] == "pending"),
            "excess_content": sum(1 for c in contents.values() if c["disposition"] == "excess"),
            "excess_failures": sum(1 for f in failures.values() if f["disposition"] == "excess"),
            "completion_events": sum(1 for o in db["outbox_by_batch"].get(bid, [])
                                     if o["event_type"] == "BatchContentProvisioningCompleted"),
        }
        for name, (lo, hi) in exp.counts().items():
            if not lo <= actual[name] <= hi:
                self.mismatch(f"{where}: {name} = {actual[name]}, expected "
                              f"{lo if lo == hi else f'{lo}..{hi}'}")
        if set(contents) != set(exp.contents):
            lost = sorted(set(exp.contents) - set(contents))[:3]
            extra = sorted(set(contents) - set(exp.contents))[:3]
            self.mismatch(f"{where}: contents {len(contents)} differ from the expected "
                          f"{len(exp.contents)} (missing {lost}, extra {extra})")
        if set(failures) != set(exp.failures):
            self.mismatch(f"{where}: failures {sorted(failures)[:3]} differ from the expected "
                          f"{sorted(exp.failures)[:3]}")
        for key, item in exp.contents.items():
            row = contents.get(key)
            if row is None or not item.fields_certain:
                continue
            p = item.payload
            want = {"file_upload_id": p["file_upload_id"],
                    "original_file_name": p["original_file_name"],
                    "raw_file_storage_id": p.get("raw_file_storage_id"),
                    "file_size_bytes": p.get("file_size_bytes"),
                    "content_md5_hash": p.get("content_md5_hash"),
                    "source_event_id": item.event_id, "event_timestamp": p.get("timestamp")}
            if item.correlation_id is not None:
                want["correlation_id"] = item.correlation_id
            for name, value in want.items():
                if row[name] != value:
                    self.mismatch(f"{where}: content {key!r}.{name} = {row[name]!r}, "
                                  f"expected {value!r}")
        for key, item in exp.failures.items():
            row = failures.get(key)
            if row is None or not item.fields_certain:
                continue
            p = item.payload
            want = {"original_file_name": p["original_file_name"],
                    "validation_error_code": p["validation_error_code"],
                    "validation_error_detail": p.get("validation_error_detail"),
                    "raw_file_storage_id": p.get("raw_file_storage_id"),
                    "file_size_bytes": p.get("file_size_bytes"),
                    "source_event_id": item.event_id, "event_timestamp": p.get("timestamp")}
            if item.correlation_id is not None:
                want["correlation_id"] = item.correlation_id
            for name, value in want.items():
                if row[name] != value:
                    self.mismatch(f"{where}: failure {key!r}.{name} = {row[name]!r}, "
                                  f"expected {value!r}")
        order = exp.deterministic_slots()
        if order is not None:
            got = [s["text_storage_id"] for s in slots if s["text_storage_id"] is not None]
            if got != order:
                self.mismatch(f"{where}: slot contents {got[:4]}... differ from the "
                              f"order-determined {order[:4]}...")

    def verify_outputs(self, batches: dict[str, BatchExpectation], db: dict[str, Any]
                       ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        outbox_ids: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for row in db["outbox"]:
            outbox_ids[row["event_type"]][row["message_key"]].add(row["event_id"])
        for key, event_type in (("completed", "BatchContentProvisioningCompleted"),
                                ("slot_assigned", "EssaySlotAssigned"),
                                ("excess", "ExcessContentProvisioned")):
            topic = self.topics[key]
            ids: dict[str, set[str]] = defaultdict(set)
            envelopes: dict[str, dict[str, Any]] = {}
            total = 0
            for msg in self.read_all(topic):
                total += 1
                env = json.loads(msg.value() or b"null")
                bid = (msg.key() or b"").decode()
                if env.get("event_type") != DEFAULT_TOPICS[key]:
                    self.mismatch(f"{topic}: event_type {env.get('event_type')!r}")
                if env.get("data", {}).get("batch_id") != bid:
                    self.mismatch(f"{topic}: key {bid!r} but data.batch_id "
                                  f"{env.get('data', {}).get('batch_id')!r}")
                ids[bid].add(env["event_id"])
                envelopes[env["event_id"]] = env
            for bid in set(ids) | set(outbox_ids[event_type]):
                if ids.get(bid, set()) != outbox_ids[event_type].get(bid, set()):
                    self.mismatch(f"{topic}: batch {bid!r} event ids on the topic "
                                  f"{sorted(ids.get(bid, set()))[:3]} != outbox "
                                  f"{sorted(outbox_ids[event_type].get(bid, set()))[:3]}")
            distinct = sum(len(v) for v in ids.values())
            out[key] = {"messages": total, "distinct_event_ids": distinct,
                        "republished_copies": total - distinct}
            if key == "completed":
                for bid, exp in batches.items():
                    n = len(ids.get(bid, set()))
                    if n != int(exp.complete):
                        self.mismatch(f"batch {bid!r}: {n} distinct completion event id(s) on "
                                      f"{topic}, expected {int(exp.complete)}")
                    if n == 1 and exp.complete:
                        self.check_completion(bid, envelopes[next(iter(ids[bid]))], db)
                out[key]["complete_batches"] = sum(1 for b in batches.values() if b.complete)
        return out

    def check_completion(self, bid: str, env: dict[str, Any], db: dict[str, Any]) -> None:
        tracker = db["trackers"][bid]
        slots = db["slots"][bid]
        data = env.get("data", {})
        ready = [{"essay_id": s["essay_id"], "text_storage_id": s["text_storage_id"]}
                 for s in slots if s["status"] == "ready_for_processing"]
        want = {"batch_id": bid, "expected_count": tracker["expected_count"],
                "provisioned_count": len(ready), "course_code": tracker["course_code"],
                "user_id": tracker["user_id"], "class_type": tracker["class_type"],
                "essays_for_processing": ready, "correlation_id": tracker["correlation_id"]}
        for name, value in want.items():
            if data.get(name) != value:
                self.mismatch(f"completion of {bid!r}: data.{name} = {data.get(name)!r}, "
                              f"expected {value!r}")
        if env.get("source_service") != "essay_lifecycle_service":
            self.mismatch(f"completion of {bid!r}: source_service {env.get('source_service')!r}")

    # -- negative control --------------------------------------------------
    def tamper(self, gen: Generated) -> None:
        """Damages the final state in five known ways before verification, to show that
        the comparison catches each (``--tamper``; the run must then FAIL with at least
        these five mismatches)."""
        log("TAMPERING with the final state (negative control)")
        pred = gen.prediction
        complete = sorted(b for b, e in pred.batches.items() if e.complete)
        incomplete = sorted(b for b, e in pred.batches.items() if e.registered
                            and not e.complete)
        valid = next(m for m in gen.messages if m.expect is None and m.kind == "content")
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("UPDATE els.essay_content SET original_file_name = 'tampered'"
                         " WHERE (batch_id, text_storage_id) = (SELECT batch_id, text_storage_id"
                         " FROM els.essay_content WHERE batch_id = %(b)s LIMIT 1)",
                         {"b": complete[0]})
            conn.execute("UPDATE els.event_outbox SET published_at = NULL WHERE id ="
                         " (SELECT min(id) FROM els.event_outbox)")
            conn.execute("SELECT els.register_batch(%(e)s::jsonb)", {"e": json.dumps({
                "entity_id": "ghost", "expected_essay_count": 1, "essay_ids": ["ghost-e"],
                "course_code": "ENG5", "user_id": "nobody"})})
        producer = Producer({"bootstrap.servers": self.bootstrap, **QUIET})
        p, o = self.delivered[valid.seq]
        producer.produce(self.topics[valid.kind] + ".dlq", key=valid.key, value=valid.value,
                         headers=[("els.error.sqlstate", b"ELV03"),
                                  ("els.error.message", b"tampered"),
                                  ("els.error.detail", b"{}"),
                                  ("els.source.topic", self.topics[valid.kind].encode()),
                                  ("els.source.partition", str(p).encode()),
                                  ("els.source.offset", str(o).encode()),
                                  ("els.failed_at", b"2026-01-01T00:00:00Z"),
                                  ("els.attempts", b"1")])
        producer.produce(self.topics["completed"], key=incomplete[0].encode(), value=json.dumps({
            "event_id": str(uuid.uuid4()), "event_type": DEFAULT_TOPICS["completed"],
            "source_service": "essay_lifecycle_service",
            "data": {"batch_id": incomplete[0]}}).encode())
        producer.flush(30)

    # -- logs --------------------------------------------------------------
    def worker_log_summary(self) -> dict[str, int]:
        wanted = {
            "event applied": "event_applied_lines",
            "event dead-lettered": "event_dead_lettered_lines",
            "operational database error: retrying micro-batch": "operational_retries",
            "unexpected error: retrying event": "unexpected_retries",
            "outbox relay round failed: rolled back, will republish": "relay_round_failures",
            "offset commit failed; messages may be redelivered (idempotent)": "commit_failures",
            "dead-letter produce not confirmed: retrying": "dlq_produce_retries",
            "partitions assigned": "partition_assignments",
            "worker stopped": "clean_stops",
        }
        counts: Counter[str] = Counter()
        tracebacks = 0
        for slot in self.slots:
            with slot.log_path.open("rb") as f:
                for raw in f:
                    if raw.startswith(b"Traceback"):
                        tracebacks += 1
                    if not raw.startswith(b"{"):
                        continue
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    name = wanted.get(rec.get("msg", ""))
                    if name:
                        counts[name] += 1
        counts["tracebacks"] = tracebacks
        return dict(counts)

    # -- main --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.monotonic()
        gen = generate(GenConfig(seed=cfg.seed, batches=cfg.batches, malformed=cfg.malformed))
        self.stats = gen.stats()
        log(f"stream: {self.stats['messages']} messages ({self.stats['malformed']} malformed, "
            f"{self.stats['redeliveries']} redeliveries), {self.stats['batches']} batches")
        self.setup()
        report: dict[str, Any] = {}
        try:
            self.slots = [WorkerSlot(i, self.worker_env(i), self.out / f"worker-{i}.log")
                          for i in range(cfg.workers)]
            for slot in self.slots:
                slot.start()
            self.schedule()
            self.stream_started = time.monotonic()
            producer = threading.Thread(target=self.produce, args=(gen,), name="producer",
                                        daemon=True)
            producer.start()
            self.control()
            producer.join(timeout=60)
            self.wait_rejoined()
            log("stream produced and chaos done; waiting for quiescence")
            quiet = self.quiesce()
            if not quiet:
                self.mismatch(f"no quiescence within {cfg.quiesce_timeout:.0f} s")
            exit_codes = [slot.stop() for slot in self.slots]
            for slot, code in zip(self.slots, exit_codes, strict=True):
                if code not in (0, None):
                    self.mismatch(f"worker {slot.index} exited with {code} on SIGTERM")
            log("workers stopped; verifying")
            self.measure_recovery()
            if cfg.tamper:
                self.tamper(gen)
            summary = self.verify(gen)
            report = self.report(gen, summary, time.monotonic() - started)
        finally:
            for slot in self.slots:
                if slot.alive():
                    slot.stop(10)
            self.cleanup()
        return report

    def cleanup(self) -> None:
        if not hasattr(self, "env"):
            return
        if self.cfg.keep:
            log(f"kept: database {self.dbname}, topics chaos.{self.run_id}.*, stack "
                f"{self.pg.root}")
            return
        try:
            self.delete_topics()
        except Exception as exc:
            log(f"topic cleanup failed: {exc}")
        try:
            with psycopg.connect(self.env["ELS_PG_ADMIN_URL"], autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.dbname)))
        except Exception as exc:
            log(f"database cleanup failed: {exc}")
        if self.ha:
            self.pg.run("down")
        else:
            if self.kafka_stack is not None:
                self.kafka_stack.run("kafka-down")
            self.pg.run("pg-down")
        self.pg.remove()

    def report(self, gen: Generated, summary: dict[str, Any], duration: float) -> dict[str, Any]:
        kills = [a for a in self.actions if a.kind == "kill" and "was not running" not in a.detail]
        logs = self.worker_log_summary()
        report = {
            "run_id": self.run_id,
            "profile": self.cfg.name,
            "seed": self.cfg.seed,
            "command": " ".join(["python -m chaos.run", f"--profile {self.cfg.name}",
                                 f"--seed {self.cfg.seed}"]),
            "events": self.stats,
            "kills": len(kills),
            "kills_inside_transaction": sum(1 for a in kills if a.in_transaction),
            "kills_inside_consumer_transaction": sum(1 for a in kills
                                                     if "els-worker" in a.in_transaction),
            "kills_inside_relay_transaction": sum(1 for a in kills
                                                  if "els-outbox-relay" in a.in_transaction),
            "pg_restarts": sum(1 for a in self.actions if a.kind.startswith("pg-")),
            "kafka_restarts": sum(1 for a in self.actions if a.kind == "kafka-restart"),
            "topology": self.cfg.topology,
            "pg_failovers": sum(1 for a in self.actions if a.kind == "pg-failover"),
            "broker_kills": sum(1 for a in self.actions if a.kind == "broker-kill"),
            "recovery": [{"kind": a.kind, "at_s": round(a.done_at or 0, 1), **a.recovery}
                         for a in self.actions if a.struck_at is not None],
            "valid_events_per_s": round(self.stats["valid"] / max(
                1e-9, self.timings.get("stream_s", 0) + self.timings.get("quiesce_s", 0)), 1),
            "actions": [asdict(a) for a in self.actions],
            "unexpected_worker_exits": sum(len(s.unexpected_exits) for s in self.slots),
            "applied": self.stats["valid"],
            "input": summary["input"],
            "dead_lettered": summary["dlq"],
            "db": summary["db"],
            "outputs": summary["outputs"],
            "worker_logs": logs,
            "mismatches": len(self.mismatches),
            "mismatch_list": self.mismatches[:200],
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "duration_s": round(duration, 1),
            "artifacts": str(self.out),
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        latest = ROOT / "build" / "chaos" / f"last-{self.cfg.name}.json"
        latest.parent.mkdir(parents=True, exist_ok=True)
        latest.write_text(json.dumps(report, indent=2, default=str))
        return report


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_db(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The whole final state, as plain Python."""
    def rows(query: str) -> Iterable[dict[str, Any]]:
        cur = conn.execute(query)
        names = [c.name for c in cur.description or []]
        for row in cur.fetchall():
            yield dict(zip(names, row, strict=True))

    trackers = {r["batch_id"]: r for r in rows(
        "SELECT batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,"
        " class_type, metadata, student_prompt_ref, correlation_id, registration_event_id,"
        " completed_at IS NOT NULL AS complete FROM els.batch_tracker")}
    slots: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows("SELECT batch_id, essay_id, slot_no, status::text AS status, text_storage_id,"
                  " failed_file_upload_id FROM els.essay_slot ORDER BY batch_id, slot_no"):
        slots[r["batch_id"]].append(r)
    contents: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows("SELECT batch_id, text_storage_id, disposition::text AS disposition, essay_id,"
                  " file_upload_id, original_file_name, raw_file_storage_id, file_size_bytes,"
                  " content_md5_hash, correlation_id, source_event_id, event_timestamp"
                  " FROM els.essay_content"):
        contents[r["batch_id"]][r["text_storage_id"]] = r
    failures: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows("SELECT batch_id, file_upload_id, disposition::text AS disposition, essay_id,"
                  " original_file_name, validation_error_code, validation_error_detail,"
                  " raw_file_storage_id, file_size_bytes, correlation_id, source_event_id,"
                  " event_timestamp FROM els.validation_failure"):
        failures[r["batch_id"]][r["file_upload_id"]] = r
    outbox = list(rows("SELECT event_id::text AS event_id, event_type, message_key,"
                       " published_at IS NOT NULL AS published FROM els.event_outbox"))
    by_batch: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in outbox:
        by_batch[o["message_key"]].append(o)
    return {"trackers": trackers, "slots": slots, "contents": contents, "failures": failures,
            "outbox": outbox, "outbox_by_batch": by_batch}


def format_report(r: dict[str, Any]) -> str:
    ev, dlq, out = r["events"], r["dead_lettered"], r["outputs"]
    completed = out.get("completed", {})
    verdict = "PASS" if r["mismatches"] == 0 else "FAIL"
    lines = [
        f"chaos run {r['run_id']} (seed {r['seed']}): {verdict}",
        f"  events        {ev['messages']} produced: {ev['valid']} valid "
        f"(incl. {ev['redeliveries']} redeliveries), {ev['malformed']} malformed "
        f"of {ev['malformed_kinds']} variants; {ev['batches']} batches "
        f"({ev['batches_registered']} registered, {ev['batches_complete']} to complete)",
        f"  kills         {r['kills']} SIGKILLs of a worker (each restarted), "
        f"{r['kills_inside_transaction']} of them with uncommitted work in the database "
        f"({r['kills_inside_consumer_transaction']} mid micro-batch, "
        f"{r['kills_inside_relay_transaction']} mid outbox relay round); "
        f"{r['unexpected_worker_exits']} unexpected worker exit(s)",
        f"  restarts      PostgreSQL {r['pg_restarts']}, Kafka {r['kafka_restarts']}; "
        f"topology {r['topology']}: {r['pg_failovers']} primary kill(s), "
        f"{r['broker_kills']} broker kill(s)",
        *(f"  recovery      {x}" for x in r["recovery"]),
        f"  throughput    {r['valid_events_per_s']} valid events/s (stream start to quiescence)",
        f"  input topics  {r['input']['acknowledged']} acknowledged, {r['input']['in_topics']} "
        f"read back, {r['input']['lost']} acknowledged but not at their offset",
        f"  applied       {r['applied']} valid deliveries; database: {r['db']['trackers']} "
        f"trackers, {r['db']['slots']} slots, {r['db']['contents']} contents, "
        f"{r['db']['failures']} failures, {r['db']['outbox_rows']} outbox rows "
        f"({r['db']['unpublished']} unpublished)",
        f"  dead-lettered {dlq['distinct']} distinct of {dlq['expected']} expected "
        f"({dlq['copies']} DLQ messages, {dlq['extra_copies']} redelivered copies) "
        f"{dlq['by_sqlstate']}",
        f"  completions   {completed.get('distinct_event_ids', 0)} distinct event ids for "
        f"{completed.get('complete_batches', 0)} complete batches "
        f"({completed.get('messages', 0)} messages)",
        f"  worker logs   {r['worker_logs']}",
        f"  mismatches    {r['mismatches']}",
        f"  duration      {r['duration_s']} s {r['timings_s']}",
        f"  artifacts     {r['artifacts']}",
    ]
    for m in r["mismatch_list"][:30]:
        lines.append(f"    MISMATCH {m}")
    return "\n".join(lines)


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
                        help="ELS_KAFKA_CONFIG of the workers, a JSON object (replaces the "
                             "default, a 10 s session timeout)")
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
