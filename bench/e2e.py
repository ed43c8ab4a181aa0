"""End to end through the real broker, against the direct-SQL ceiling.

The stream: N_BATCHES registrations of 10-essay batches plus the 10 contents of each
(11 events per batch), keyed by batch id, produced to fresh input topics before any
worker starts. A run times, watching the database, from the start of the worker
process(es) to the moment the last of the expected outbox rows (10 EssaySlotAssigned +
1 BatchContentProvisioningCompleted per batch) is marked published by the relay.

The ceiling applies the same message values by direct SQL calls with the worker's
grouping (micro-batches of ELS_BATCH_MAX_MESSAGES events, one els.apply_events call per
transaction with the worker's JSON document), one session per partition, each in its own
process, no Kafka and no relay. ``mode="per_event"`` gives the previous ceiling (the
per-event functions, pipelined, one call per event); ``mode="floor"`` writes the same
rows by plain set-based INSERT/UPDATE with no validation (FLOOR_SQL).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench.common import (
    ROOT,
    TOPIC_CONTENT,
    TOPIC_REGISTERED,
    Stack,
    content,
    cpu_seconds,
    dumps,
    fresh_database,
    registration,
)
from els_worker import contract, db
from testkit.db import load_functions
from testkit.kafka import Topics, create_topics
from testkit.worker import service_env, spawn

# The worker tree (worker.py, els_worker/) and, when set, the sql/ directory whose
# functions each run's database gets instead of the template's (bench/worker_ab.py
# points both at a checkout of the baseline revision).
SQL_DIR: Path | None = None


ESSAYS = 10
GROUP = 500  # the worker's default ELS_BATCH_MAX_MESSAGES
SQL_BY_TOPIC = {event.topic: event.statement for event in contract.INPUTS}
RUN_TIMEOUT_S = 240.0


@dataclass
class Stream:
    batches: list[str]
    # (topic, key, value) in production order: a registration, then its contents
    messages: list[tuple[str, str, str]]

    @property
    def expected_outbox(self) -> int:
        return len(self.batches) * (ESSAYS + 1)


def build_stream(n_batches: int) -> Stream:
    run = uuid.uuid4().hex[:6]
    batches = [f"e2e-{run}-{b:06d}" for b in range(n_batches)]
    messages: list[tuple[str, str, str]] = []
    for bid in batches:
        messages.append((TOPIC_REGISTERED, bid, dumps(registration(bid, ESSAYS))))
        messages.extend((TOPIC_CONTENT, bid, dumps(content(bid, i))) for i in range(ESSAYS))
    return Stream(batches, messages)


def content_first(messages: list[tuple[str, str]], group: int = GROUP) -> list[tuple[str, str]]:
    """The same events in the order a worker mostly meets them: it consumes the topics
    side by side, and the content topic's partitions are ten times fuller, so a
    micro-batch holds contents of batches whose registration comes in a later one
    (75% of the contents were pending on arrival in a 2-worker e2e run). Per block of
    a micro-batch's worth of messages: its contents, then its registrations."""
    out: list[tuple[str, str]] = []
    for start in range(0, len(messages), group):
        block = messages[start:start + group]
        out += [m for m in block if m[0] != TOPIC_REGISTERED]
        out += [m for m in block if m[0] == TOPIC_REGISTERED]
    return out


@dataclass
class RunResult:
    events: int
    seconds: float  # worker start (or ceiling start) -> done
    steady_seconds: float = 0.0  # first outbox row written -> done
    # the outbox from 10% to 90% of its rows: no start-up, group join or tail in it
    middle_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    # per-event latency the workers logged (duration_ms; none with ELS_LOG_EVENTS=false)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def steady_rate(self) -> float:
        return self.events / self.steady_seconds if self.steady_seconds else 0.0

    @property
    def middle_rate(self) -> float:
        return 0.8 * self.events / self.middle_seconds if self.middle_seconds else 0.0


# ---------------------------------------------------------------- Kafka helpers


def _admin(stack: Stack) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.kafka_bootstrap})


def _delete_topics(stack: Stack, prefix: str) -> None:
    admin = _admin(stack)
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result(timeout=30)
            except Exception:  # cleanup only
                pass


def _produce(stack: Stack, prefix: str, stream: Stream) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 20,
                         "enable.idempotence": True, "acks": "all",
                         "queue.buffering.max.messages": 200000})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for topic, key, value in stream.messages:
        while True:
            try:
                producer.produce(prefix + topic, key=key.encode(), value=value.encode(),
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failures:
        raise RuntimeError(f"pre-loading the input topics failed: {failures[:3]}")


def _listener_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:port (the broker), from /proc; None if unseen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


# ---------------------------------------------------------------- worker runs


def run_workers(stack: Stack, stream: Stream, workers: int, partitions: int,
                log_dir: Path, extra_env: dict[str, str] | None = None) -> RunResult:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    topics = Topics.under(prefix.rstrip("."), group_id=f"{prefix}group")
    try:
        # the inputs only: the workers create their dead-letter and output topics
        create_topics(stack.kafka_bootstrap, [topics.of(e) for e in contract.INPUTS], partitions)
        _produce(stack, prefix, stream)
        with fresh_database(stack, f"w{workers}p{partitions}") as url, \
                psycopg.connect(url, autocommit=True) as watch:
            if SQL_DIR is not None:
                load_functions(url, SQL_DIR)
            base = watch.execute("SELECT coalesce(max(id), 0) FROM els.event_outbox").fetchone()
            base_id = base[0] if base else 0
            env = service_env(url, stack.kafka_bootstrap, topics, ELS_METRICS_PORT="0",
                              ELS_TOPIC_PARTITIONS=str(partitions), **(extra_env or {}))
            procs: list[subprocess.Popen[bytes]] = []
            logs = []
            broker = _listener_pid(int(stack.kafka_bootstrap.rsplit(":", 1)[1]))
            broker_cpu0 = cpu_seconds(broker) if broker else 0.0
            busy0, total0 = _machine_busy()
            t0 = time.monotonic()
            for w in range(workers):
                logf = open(log_dir / f"{prefix}worker{w}.log", "wb")
                logs.append(logf)
                procs.append(spawn(env, logf, root=ROOT))
            first_row_at = tenth_at = ninth_at = 0.0
            try:
                while True:
                    row = watch.execute(
                        "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL)"
                        " FROM els.event_outbox WHERE id > %s", (base_id,)).fetchone()
                    now = time.monotonic()
                    total, unpublished = row if row else (0, 0)
                    if total and not first_row_at:
                        first_row_at = now
                    published = total - unpublished
                    if not tenth_at and published >= 0.1 * stream.expected_outbox:
                        tenth_at = now
                    if not ninth_at and published >= 0.9 * stream.expected_outbox:
                        ninth_at = now
                    if total >= stream.expected_outbox and unpublished == 0:
                        done_at = now
                        break
                    if now - t0 > RUN_TIMEOUT_S:
                        raise RuntimeError(
                            f"end to end with {workers} worker(s): {total} of "
                            f"{stream.expected_outbox} outbox rows, {unpublished} unpublished "
                            f"after {RUN_TIMEOUT_S:.0f}s; logs in {log_dir}")
                    for p in procs:
                        if p.poll() is not None:
                            raise RuntimeError(f"worker exited with {p.returncode}; "
                                               f"logs in {log_dir}")
                    time.sleep(0.05)
                cpu = {"worker processes": sum(cpu_seconds(p.pid) for p in procs)}
                backends = watch.execute(
                    "SELECT pid, application_name FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name LIKE 'els-%'"
                ).fetchall()
                by_session = {pid: name for pid, name in backends}
                spent = {pid: cpu_seconds(pid) for pid in by_session}
                cpu["their PG backends"] = sum(spent.values())
                # where the server's time goes: applying events, relaying the outbox, the rest
                for label, name in (("PG: apply", "els-worker"), ("PG: relay", "els-outbox-relay")):
                    cpu[label] = sum(t for pid, t in spent.items() if by_session[pid] == name)
                if broker:
                    cpu["Kafka broker"] = cpu_seconds(broker) - broker_cpu0
                busy1, total1 = _machine_busy()
                cpu["machine busy"] = busy1 - busy0
                cpu["machine total"] = total1 - total0
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in procs:
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                for logf in logs:
                    logf.close()
            _check_complete(watch, stream)
        latencies = logged_latencies([Path(f.name) for f in logs])
        return RunResult(len(stream.messages), done_at - t0, done_at - first_row_at,
                         ninth_at - tenth_at, cpu, latencies)
    finally:
        _delete_topics(stack, prefix)


def logged_latencies(paths: list[Path]) -> list[float]:
    """``duration_ms`` of every "event applied" line of the workers' JSON logs."""
    out: list[float] = []
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                if b'"duration_ms"' not in line or b'"event applied"' not in line:
                    continue
                try:
                    out.append(float(json.loads(line)["duration_ms"]))
                except (ValueError, KeyError, TypeError):
                    continue
    return out


def _check_complete(conn: psycopg.Connection, stream: Stream) -> None:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE completed_at IS NOT NULL), count(*)"
        " FROM els.batch_tracker WHERE batch_id = ANY(%s)", (stream.batches,)).fetchone()
    if not row or row[0] != len(stream.batches):
        raise RuntimeError(f"only {row} of {len(stream.batches)} batches complete")


# ---------------------------------------------------------------- ceiling


KIND_BY_TOPIC = {TOPIC_REGISTERED: "register_batch", TOPIC_CONTENT: "provision_content"}


# The floor: the same rows as the stream's events write (trackers, slots, content,
# filled slots, completions, outbox rows), by plain set-based INSERT/UPDATE, one statement
# each per micro-batch, with no validation, no lock and no rule: what writing them costs.
FLOOR_SQL = (
    """INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id,
                                      correlation_id, registration_event_id)
       SELECT r.batch_id, r.n, ARRAY(SELECT jsonb_array_elements_text(r.ids)), r.course, r.usr,
              r.corr, r.src
         FROM jsonb_to_recordset(%(regs)s::jsonb) AS r(batch_id text, n integer, ids jsonb,
              course text, usr text, corr text, src text)""",
    """INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
       SELECT * FROM unnest(%(s_essay)s::text[], %(s_batch)s::text[], %(s_no)s::integer[])""",
    """INSERT INTO els.essay_content (batch_id, text_storage_id, disposition, essay_id,
                                      file_upload_id, original_file_name, raw_file_storage_id,
                                      file_size_bytes, content_md5_hash, correlation_id,
                                      source_event_id, disposed_at)
       SELECT c.b, c.t, 'assigned', c.e, c.u, c.n, c.r, c.sz, c.md5, c.corr, c.src, now()
         FROM jsonb_to_recordset(%(contents)s::jsonb) AS c(b text, t text, e text, u text, n text,
              r text, sz bigint, md5 text, corr text, src text)""",
    """UPDATE els.essay_slot AS s
          SET status = 'ready_for_processing', text_storage_id = c.t, filled_at = now()
         FROM unnest(%(c_essay)s::text[], %(c_text)s::text[]) AS c(e, t)
        WHERE s.essay_id = c.e""",
    """UPDATE els.batch_tracker AS t
          SET completed_at = now(), completion_reason = 'all_slots_closed'
        WHERE t.batch_id = ANY(%(done)s::text[])""",
    """INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
       SELECT * FROM unnest(%(o_id)s::uuid[], %(o_type)s::text[], %(o_topic)s::text[],
                            %(o_key)s::text[], %(o_env)s::jsonb[])""",
)


def _floor_params(chunk: list[tuple[str, str]], slots: dict[str, list[str]]) -> dict[str, Any]:
    """The rows of one micro-batch of the bench stream (a registration, then its contents
    in order: content i fills slot i); ``slots`` carries each batch's essay ids across
    micro-batches."""
    p: dict[str, Any] = {k: [] for k in ("regs", "s_essay", "s_batch", "s_no", "contents",
                                          "c_essay", "c_text", "done", "o_id", "o_type",
                                          "o_topic", "o_key", "o_env")}
    for topic, value in chunk:
        ev = json.loads(value)
        d = ev["data"]
        bid = d["entity_id"]
        if topic == TOPIC_REGISTERED:
            slots[bid] = list(d["essay_ids"])
            p["regs"].append({"batch_id": bid, "n": d["expected_essay_count"],
                              "ids": d["essay_ids"], "course": d["course_code"],
                              "usr": d["user_id"], "corr": ev["correlation_id"],
                              "src": ev["event_id"]})
            p["s_essay"] += d["essay_ids"]
            p["s_batch"] += [bid] * len(d["essay_ids"])
            p["s_no"] += list(range(1, len(d["essay_ids"]) + 1))
            continue
        essay = slots[bid].pop(0)
        p["contents"].append({"b": bid, "t": d["text_storage_id"], "e": essay,
                              "u": d["file_upload_id"], "n": d["original_file_name"],
                              "r": d["raw_file_storage_id"], "sz": d["file_size_bytes"],
                              "md5": d["content_md5_hash"], "corr": ev["correlation_id"],
                              "src": ev["event_id"]})
        p["c_essay"].append(essay)
        p["c_text"].append(d["text_storage_id"])
        outs = [("EssaySlotAssigned", {"batch_id": bid, "essay_id": essay,
                                       "text_storage_id": d["text_storage_id"]})]
        if not slots[bid]:
            p["done"].append(bid)
            outs.append(("BatchContentProvisioningCompleted", {"batch_id": bid}))
        for event_type, data in outs:
            event_id = str(uuid.uuid4())
            p["o_id"].append(event_id)
            p["o_type"].append(event_type)
            p["o_topic"].append(event_type)
            p["o_key"].append(bid)
            p["o_env"].append(json.dumps({"event_id": event_id, "event_type": event_type,
                                          "correlation_id": ev["correlation_id"], "data": data}))
    p["regs"] = json.dumps(p["regs"])
    p["contents"] = json.dumps(p["contents"])
    return p


def _ceiling_child(url: str, messages: list[tuple[str, str]], group: int,
                   ready: Any, go: Any, results: Any, mode: str = "set") -> None:
    conn = psycopg.connect(url, autocommit=True)
    slots: dict[str, list[str]] = {}
    chunks = [messages[s:s + group] for s in range(0, len(messages), group)]
    # the floor's parameters are built before the clock starts: it measures the database
    floor = [_floor_params(chunk, slots) for chunk in chunks] if mode == "floor" else []
    ready.put(os.getpid())
    go.wait()
    for n, chunk in enumerate(chunks):
        if mode == "floor":
            with conn.transaction():
                for statement in FLOOR_SQL:
                    conn.execute(statement, floor[n])
            continue
        if mode == "set":
            # what the worker sends (els_worker.db): one JSON array of {kind, event}
            document = db.events_document([KIND_BY_TOPIC[t] for t, _ in chunk],
                                          [v for _, v in chunk])
            with conn.transaction():
                conn.execute(db.APPLY_EVENTS_JSON, {"events": document}).fetchone()
            continue
        with conn.transaction():
            cursors = []
            with conn.pipeline():
                for topic, value in chunk:
                    cur = conn.cursor()
                    cur.execute(SQL_BY_TOPIC[topic], {"event": value})
                    cursors.append(cur)
            for cur in cursors:
                cur.fetchone()
    results.put((time.monotonic(), cpu_seconds(os.getpid())))
    conn.close()


def run_ceiling(stack: Stack, stream: Stream, sessions: int, mode: str = "set") -> RunResult:
    """The same message values, by direct SQL: one process and session per partition
    (batches split by key), micro-batches of GROUP events per transaction: one
    els.apply_events call (mode "set"), GROUP per-event calls, pipelined ("per_event"),
    or the floor's plain INSERT/UPDATE statements ("floor")."""
    parts: list[list[tuple[str, str]]] = [[] for _ in range(sessions)]
    index = {bid: i % sessions for i, bid in enumerate(stream.batches)}
    for topic, key, value in stream.messages:
        parts[index[key]].append((topic, value))
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    with fresh_database(stack, f"ceil{sessions}") as url:
        procs = [ctx.Process(target=_ceiling_child,
                             args=(url, part, GROUP, ready, go, results, mode))
                 for part in parts]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        busy0, total0 = _machine_busy()
        t0 = time.monotonic()
        go.set()
        ends = [results.get(timeout=RUN_TIMEOUT_S) for _ in procs]
        busy1, total1 = _machine_busy()
        for p in procs:
            p.join(30)
        with psycopg.connect(url, autocommit=True) as conn:
            _check_complete(conn, stream)
    wall = max(e[0] for e in ends) - t0
    cpu = {"client processes": sum(e[1] for e in ends), "machine busy": busy1 - busy0,
           "machine total": total1 - total0}
    return RunResult(len(stream.messages), wall, wall, cpu=cpu)


def log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="els-bench-"))
