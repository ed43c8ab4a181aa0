"""`make demo`: the worker on the local stack, fed a realistic stream, with a summary.

Run by `make demo` after the stack is up and migrated (ELS_DATABASE_URL and
ELS_KAFKA_BOOTSTRAP come from `scripts/stack.sh env`). It

1. (re)starts `worker.py run` in the background (pid in .stack/worker.pid, JSON log in
   .stack/worker.log), on the default topics and database `els`;
2. sends a stream: GUEST and REGULAR batches, content before and after registration,
   duplicates, a validation failure, an excess file, a malformed event and a
   conflicting re-registration (batch ids are unique to this run);
3. shows progress while the worker applies it;
4. prints a summary: each batch's status and counts, the completion events read back
   from Kafka, the dead letters with their reasons;
5. leaves the stack and the worker running, and says how to explore and stop them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    KafkaError,
    Message,
    Producer,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the checkout's packages
    sys.path.insert(0, str(ROOT))

from els_worker import contract  # noqa: E402
from testkit import events  # noqa: E402
from testkit.kafka import headers_of, read_topic  # noqa: E402
from testkit.stack import stack_env  # noqa: E402
from testkit.worker import http_status, spawn  # noqa: E402

STACK = ROOT / ".stack"
PID_FILE = STACK / "worker.pid"
LOG_FILE = STACK / "worker.log"

T_REGISTERED = contract.REGISTERED.topic
T_CONTENT = contract.CONTENT_PROVISIONED.topic
T_FAILED = contract.VALIDATION_FAILED.topic
T_COMPLETED = contract.COMPLETED.topic

BOLD = "\033[1m" if sys.stdout.isatty() else ""
DIM = "\033[2m" if sys.stdout.isatty() else ""
GREEN = "\033[32m" if sys.stdout.isatty() else ""
YELLOW = "\033[33m" if sys.stdout.isatty() else ""
RED = "\033[31m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def say(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------
# events
# ---------------------------------------------------------------------------


def envelope(topic: str, data: dict[str, Any]) -> dict[str, Any]:
    return events.envelope(topic, data, source_service="demo", metadata={"demo": True},
                           timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def registration(
    batch_id: str, essay_ids: list[str], class_id: str | None, course: str, user: str
) -> dict[str, Any]:
    return envelope(
        T_REGISTERED,
        {
            "entity_id": batch_id,
            "expected_essay_count": len(essay_ids),
            "essay_ids": essay_ids,
            "course_code": course,
            "user_id": user,
            "org_id": "org-demo" if class_id else None,
            "class_id": class_id,
            "student_prompt_ref": {"storage_id": "prompt-" + batch_id} if class_id else None,
            "metadata": {},
        },
    )


def content(batch_id: str, n: int, name: str) -> dict[str, Any]:
    return envelope(
        T_CONTENT,
        {
            "entity_id": batch_id,
            "text_storage_id": f"text-{batch_id}-{n}",
            "file_upload_id": f"upload-{batch_id}-{n}",
            "original_file_name": name,
            "raw_file_storage_id": f"raw-{batch_id}-{n}",
            "file_size_bytes": 20_000 + n * 137,
            "content_md5_hash": uuid.uuid5(uuid.NAMESPACE_OID, f"{batch_id}{n}").hex,
        },
    )


def failure(batch_id: str, n: int, name: str) -> dict[str, Any]:
    return envelope(
        T_FAILED,
        {
            "entity_id": batch_id,
            "file_upload_id": f"upload-{batch_id}-{n}",
            "original_file_name": name,
            "validation_error_code": "TEXT_EXTRACTION_FAILED",
            "validation_error_detail": {"reason": "scanned PDF without a text layer"},
        },
    )


Step = tuple[str, str, str, bytes]  # (label, topic, key, value)


def stream(run: str) -> tuple[list[Step], dict[str, str]]:
    """The demo's events in send order, and each batch's story."""
    a, b, c, d = (f"demo-{run}-{x}" for x in ("guest-a", "regular-b", "guest-c", "regular-d"))
    ids = {
        x: [f"{x}-essay-{i}" for i in range(1, n + 1)] for x, n in ((a, 3), (b, 4), (c, 2), (d, 3))
    }

    def j(ev: dict[str, Any]) -> bytes:
        return json.dumps(ev).encode()

    reg_a = j(registration(a, ids[a], None, "ENG5", "teacher-anna"))
    reg_b = j(registration(b, ids[b], "class-9b", "SV1", "teacher-bo"))
    c_a1, c_a2 = j(content(a, 1, "alice.docx")), j(content(a, 2, "bruno.pdf"))
    steps: list[Step] = [
        ("content for guest batch A arrives BEFORE its registration", T_CONTENT, a, c_a1),
        ("second early content for A", T_CONTENT, a, c_a2),
        ("registration of REGULAR batch B", T_REGISTERED, b, reg_b),
        ("registration of GUEST batch A (reconciles the 2 pending texts)", T_REGISTERED, a, reg_a),
        ("content for B", T_CONTENT, b, j(content(b, 1, "astrid.docx"))),
        ("duplicate delivery of A's first content", T_CONTENT, a, c_a1),
        ("content for B", T_CONTENT, b, j(content(b, 2, "bertil.docx"))),
        ("validation failure for B (closes a slot)", T_FAILED, b, j(failure(b, 3, "scan.pdf"))),
        (
            "malformed event (not JSON)",
            T_CONTENT,
            a,
            b'{"event_type": "essay.content.provisioned", ',
        ),
        ("last content for A: A completes", T_CONTENT, a, j(content(a, 3, "carla.odt"))),
        ("duplicate registration of A (redelivery)", T_REGISTERED, a, reg_a),
        (
            "registration of GUEST batch C",
            T_REGISTERED,
            c,
            j(registration(c, ids[c], None, "ENG7", "guest-1")),
        ),
        ("content for C", T_CONTENT, c, j(content(c, 1, "essay1.docx"))),
        ("content for C: C completes", T_CONTENT, c, j(content(c, 2, "essay2.docx"))),
        ("a third file for 2-essay batch C: excess", T_CONTENT, c, j(content(c, 3, "essay3.docx"))),
        (
            "last content for B: B completes (3 ready + 1 failed)",
            T_CONTENT,
            b,
            j(content(b, 4, "cecilia.docx")),
        ),
        (
            "conflicting re-registration of B (other essay ids)",
            T_REGISTERED,
            b,
            j(registration(b, ["x-1", "x-2"], "class-9b", "SV1", "teacher-bo")),
        ),
        (
            "registration of REGULAR batch D",
            T_REGISTERED,
            d,
            j(registration(d, ids[d], "class-7a", "ENG6", "teacher-dan")),
        ),
        (
            "content for D (D stays incomplete: 1 of 3)",
            T_CONTENT,
            d,
            j(content(d, 1, "draft.docx")),
        ),
    ]
    stories = {
        a: "GUEST, 3 essays: 2 texts before registration, duplicates, a malformed neighbour",
        b: "REGULAR, 4 essays: 3 texts + 1 validation failure, then a conflicting re-registration",
        c: "GUEST, 2 essays: a third file arrives (excess)",
        d: "REGULAR, 3 essays: only 1 text so far (still waiting)",
    }
    return steps, stories


# ---------------------------------------------------------------------------
# worker process
# ---------------------------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_previous_worker() -> None:
    if not PID_FILE.exists():
        return
    try:
        pid = int(PID_FILE.read_text().strip())
    except (ValueError, IndexError):
        PID_FILE.unlink(missing_ok=True)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        PID_FILE.unlink(missing_ok=True)
        return
    say(f"{DIM}stopping the previous demo worker (pid {pid}){RESET}")
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    PID_FILE.unlink(missing_ok=True)


def start_worker(port: int) -> int:
    env = dict(os.environ)
    env.update(
        {
            "ELS_METRICS_PORT": str(port),
            "ELS_METRICS_HOST": "127.0.0.1",
            "ELS_STUCK_AFTER_SECONDS": env.get("ELS_STUCK_AFTER_SECONDS", "30"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = open(LOG_FILE, "ab")  # handed to the detached child
    proc = spawn(env, log, new_session=True)  # survives `make`
    PID_FILE.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited at start (code {proc.returncode}); see {LOG_FILE}")
        if http_status(port, "/healthz")[0] == 200:
            return proc.pid
        time.sleep(0.25)
    raise SystemExit(f"worker not healthy within 60 s; see {LOG_FILE}")


class Collect:
    """Delivery callback collecting the delivered messages."""

    def __init__(self, into: list[Message]) -> None:
        self.into = into

    def __call__(self, _err: KafkaError | None, msg: Message) -> None:
        self.into.append(msg)


SHORT = {T_REGISTERED: "register", T_CONTENT: "content", T_FAILED: "failure"}


class LogTail:
    """Follows the worker's JSON log to show what became of each event sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = path.stat().st_size if path.exists() else 0
        self.seen: dict[tuple[str, int, int], str] = {}

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.pos += end
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == "event applied":
                text = str(rec.get("outcome"))
                if rec.get("complete") and text not in ("duplicate", "excess"):
                    text += ": batch complete"
            elif rec.get("msg") == "event dead-lettered":
                text = f"dead-lettered ({rec.get('sqlstate')})"
            else:
                continue
            self.seen[(rec.get("topic"), rec.get("partition"), rec.get("offset"))] = text

    def outcome(self, topic: str, partition: int, offset: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read()
            if (topic, partition, offset) in self.seen:
                return self.seen[(topic, partition, offset)]
            time.sleep(0.05)
        return "not handled yet"


def events_handled(port: int) -> float:
    """Sum of els_events_total from the worker's /metrics (this worker's lifetime)."""
    status, body = http_status(port, "/metrics")
    if status != 200:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("els_events_total{")
    )


# ---------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def launch_worker() -> tuple[int, int]:
    """Starts the demo worker on a free port, scraped by the stack's Prometheus as
    target "demo": (pid, port)."""
    stop_previous_worker()
    port = int(os.environ.get("ELS_METRICS_PORT", "9095"))
    if not port_free(port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    pid = start_worker(port)
    say(
        f"worker started: pid {pid}, http://127.0.0.1:{port}/metrics, "
        f"log {LOG_FILE.relative_to(ROOT)}"
    )
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack.sh"), "prom-target", "add", "demo",
         f"127.0.0.1:{port}"],
        check=False,
    )
    return pid, port


def send(steps: list[Step], bootstrap: str) -> None:
    """Produces each event and prints what the worker did with it (from its log)."""
    say(f"\n{BOLD}-- sending {len(steps)} events --{RESET}")
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    log_tail = LogTail(LOG_FILE)
    for i, (label, topic, key, value) in enumerate(steps, 1):
        delivered: list[Message] = []
        producer.produce(topic, key=key.encode(), value=value, on_delivery=Collect(delivered))
        producer.flush(30)
        where = delivered[0] if delivered else None
        outcome = "?"
        if where is not None and where.error() is None:
            outcome = log_tail.outcome(topic, where.partition() or 0, where.offset() or 0, 15.0)
        colour = RED if outcome.startswith("dead") else GREEN
        say(
            f"  [{i:2}/{len(steps)}] {label:<62} {DIM}{SHORT[topic]:<8} "
            f"{key.split('-', 2)[2]:<10}{RESET} -> {colour}{outcome}{RESET}"
        )


def wait_handled(port: int, base: float, expected: int, db_url: str) -> bool:
    """Until the worker has handled ``expected`` events and published its outbox."""
    say(f"\n{BOLD}-- waiting for the worker --{RESET}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = events_handled(port) - base
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute("SELECT unpublished FROM els.outbox_backlog()").fetchone()
        backlog = int(row[0]) if row else 0
        say(f"  handled {int(done)}/{expected} events, outbox backlog {backlog}")
        if done >= expected and backlog == 0:
            time.sleep(0.5)  # let the last relay round's messages settle on the broker
            return True
        time.sleep(0.5)
    say(f"{RED}the worker did not handle every event within 60 s; see {LOG_FILE}{RESET}")
    return False


def show_batches(db_url: str, stories: dict[str, str]) -> None:
    say(f"\n{BOLD}== Summary =={RESET}\n")
    say(f"{BOLD}Batches{RESET}")
    say(
        f"  {'batch':<24} {'class':<8} {'status':<12} {'exp':>3} {'ready':>5} {'failed':>6} "
        f"{'empty':>5} {'excess':>6} {'pending':>7}"
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        for bid in stories:
            row = conn.execute("SELECT els.batch_report(%(b)s::text)", {"b": bid}).fetchone()
            rep: dict[str, Any] = row[0] if row else {}
            counts = rep.get("slot_counts") or {}
            status = f"{GREEN}complete{RESET}" if rep.get("complete") else f"{YELLOW}waiting{RESET}"
            pad = (
                12
                + len(status)
                - len(status.replace(GREEN, "").replace(YELLOW, "").replace(RESET, ""))
            )
            tracker = rep.get("tracker") or {}
            say(
                f"  {bid.split('-', 2)[2]:<24} {tracker.get('class_type', '?'):<8} {status:<{pad}} "
                f"{tracker.get('expected_count', 0):>3} {counts.get('ready_for_processing', 0):>5} "
                f"{counts.get('content_ingestion_failed', 0):>6} {counts.get('uploaded', 0):>5} "
                f"{len(rep.get('excess_content') or []):>6} "
                f"{len(rep.get('pending_content') or []):>7}"
            )
            say(f"  {DIM}  {stories[bid]}{RESET}")


def show_completions(bootstrap: str, stories: dict[str, str]) -> None:
    say(f"\n{BOLD}Completion events read back from {T_COMPLETED}{RESET}")
    completions = [
        json.loads(m.value() or b"{}")
        for m in read_topic(bootstrap, T_COMPLETED, timeout=15.0)
        if (m.key() or b"").decode() in stories
    ]
    distinct = {c["event_id"]: c for c in completions}
    for ev in distinct.values():
        data = ev["data"]
        essays = ", ".join(e["essay_id"].rsplit("-", 1)[-1] for e in data["essays_for_processing"])
        say(
            f"  {data['batch_id'].split('-', 2)[2]:<12} event_id {ev['event_id']}  "
            f"{data['provisioned_count']}/{data['expected_count']} provisioned, "
            f"{data['class_type']}, essays [{essays}]"
        )
    say(f"  {len(completions)} message(s), {len(distinct)} distinct event id(s)")


def show_dead_letters(bootstrap: str, stories: dict[str, str]) -> None:
    say(f"\n{BOLD}Dead letters{RESET}")
    n_dead = 0
    for src in (T_REGISTERED, T_CONTENT, T_FAILED):
        for m in read_topic(bootstrap, contract.dlq_topic(src), timeout=15.0):
            if (m.key() or b"").decode() not in stories:
                continue
            n_dead += 1
            h = headers_of(m)
            say(
                f"  {RED}{h.get('els.error.sqlstate')}{RESET} {src}.dlq "
                f"(from partition {h.get('els.source.partition')} "
                f"offset {h.get('els.source.offset')}, "
                f"attempts {h.get('els.attempts')})"
            )
            say(f"      {h.get('els.error.message')}")
            say(f"      {DIM}detail: {h.get('els.error.detail')}{RESET}")
    say(f"  {n_dead} dead letter(s)")


def prometheus_up(prom: str) -> str:
    try:
        q = urllib.parse.quote('up{worker="demo"}')
        with urllib.request.urlopen(f"{prom}/api/v1/query?query={q}", timeout=5) as resp:
            found = json.loads(resp.read())["data"]["result"]
    except (OSError, ValueError, KeyError):
        return "not answering"
    if not found:
        return "not scraped yet"
    return "up" if found[0]["value"][1] == "1" else "down"


def show_next_steps(pid: int, port: int, example: str) -> None:
    hb_status, body = http_status(port, "/health/batches")
    stuck = json.loads(body).get("count", "?") if hb_status == 200 else "?"
    say(f"\n{BOLD}The stack and the worker are still running. Explore:{RESET}")
    say('  eval "$(scripts/stack.sh env)"')
    say('  psql "$ELS_DATABASE_URL"    # or: make psql; then SELECT * FROM els.stuck_batches;')
    say(f"  .venv/bin/python worker.py inspect {example}")
    say(f"  curl -s http://127.0.0.1:{port}/metrics | grep ^els_")
    say(f"  curl -s http://127.0.0.1:{port}/healthz")
    say(
        f"  curl -s http://127.0.0.1:{port}/health/batches     # batch D shows up after "
        f"ELS_STUCK_AFTER_SECONDS (30 s here); now: {stuck}"
    )
    say("  .venv/bin/python worker.py dlq-replay --dry-run")
    say(f"  tail -f {LOG_FILE.relative_to(ROOT)}    # one JSON line per event")
    prom = os.environ.get("ELS_PROMETHEUS_URL")
    if prom:
        say(f"{BOLD}Prometheus{RESET} {prom}  (this worker, target demo: {prometheus_up(prom)}; "
            f"alerts: {prom}/alerts; docs/monitoring.md)")
        for expr in ('sum by (topic, outcome) (els_events_total{worker="demo"})',
                     'sum by (sqlstate) (els_dead_letters_total{worker="demo"})'):
            say(f"  {expr}")
            say(f"    {DIM}{prom}/graph?g0.expr={urllib.parse.quote(expr)}&g0.tab=1{RESET}")
            say(f"    {DIM}curl -s {prom}/api/v1/query --data-urlencode "
                f"'query={expr}'{RESET}")
    say(f"{BOLD}Stop:{RESET}")
    say(f"  kill {pid}        # the worker (SIGTERM: finishes, commits, leaves the group)")
    say("  make stack-down   # the demo worker (if still running), PostgreSQL and Kafka")


def main() -> int:
    if "ELS_DATABASE_URL" not in os.environ or "ELS_KAFKA_BOOTSTRAP" not in os.environ:
        for name, val in stack_env(start=False).items():
            os.environ.setdefault(name, val)
    db_url = os.environ["ELS_DATABASE_URL"]
    bootstrap = os.environ["ELS_KAFKA_BOOTSTRAP"]
    run = uuid.uuid4().hex[:6]
    STACK.mkdir(exist_ok=True)

    say(f"{BOLD}== Essay Lifecycle Service demo (run {run}) =={RESET}")
    pid, port = launch_worker()
    steps, stories = stream(run)
    base = events_handled(port)
    send(steps, bootstrap)
    if not wait_handled(port, base, len(steps), db_url):
        return 1
    show_batches(db_url, stories)
    show_completions(bootstrap, stories)
    show_dead_letters(bootstrap, stories)
    show_next_steps(pid, port, next(iter(stories)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
