"""compose.yaml run for real (``make test-compose``): PostgreSQL, Kafka, the migrations,
the worker and Prometheus in containers, on the offline stand-in images, driven from
the host through the ports compose.yaml publishes on 127.0.0.1.

The tests share one stack (the ``compose`` fixture) and run in file order; each one
sends its own batches (ids unique to the run), so none depends on another's events.
The last one takes the stack down and checks that nothing is left."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from els_worker import contract
from testkit import events as ev
from testkit.db import all_complete, outbox_unpublished, query
from testkit.kafka import event_bytes, headers_of, produce, read_topic
from testkit.worker import wait_until

from .conftest import ROOT, Compose, compose_config, http_json, published, standins_config

pytestmark = pytest.mark.compose

RUN = uuid.uuid4().hex[:6]
SERVICES = compose_config()["services"]
WORKER_ENV: dict[str, str] = {k: str(v) for k, v in SERVICES["worker"]["environment"].items()}
PG_URL = (f"postgresql://postgres:{SERVICES['postgres']['environment']['POSTGRES_PASSWORD']}"
          f"@{published('postgres', 5432)}/els")
KAFKA = published("kafka", 29092)
WORKER_HTTP = f"http://{published('worker', 9095)}"
PROMETHEUS = f"http://{published('prometheus', 9090)}"
INPUTS = {
    "register": WORKER_ENV["ELS_TOPIC_BATCH_REGISTERED"],
    "content": WORKER_ENV["ELS_TOPIC_CONTENT_PROVISIONED"],
    "failure": WORKER_ENV["ELS_TOPIC_VALIDATION_FAILED"],
}
DLQS = [contract.dlq_topic(t) for t in INPUTS.values()]
COMPLETED = WORKER_ENV.get("ELS_TOPIC_OUT_COMPLETED") or contract.COMPLETED.topic
GROUP = WORKER_ENV["ELS_GROUP_ID"]
CORE = ["postgres", "kafka", "worker", "prometheus"]  # the long-running services


Message = tuple[str, bytes, bytes]


def batch(batch_id: str, n: int, *, class_id: str | None = None,
          content_first: int = 0, failures: int = 0) -> list[Message]:
    """One batch's events as a client sends them: ``content_first`` contents arrive
    before the registration, the last ``failures`` essays fail validation."""
    key = batch_id.encode()
    essays = [f"{batch_id}-e{i}" for i in range(n)]
    reg = (INPUTS["register"], key, event_bytes(ev.registration(batch_id, essays,
                                                                 class_id=class_id)))
    contents = [(INPUTS["content"], key, event_bytes(ev.content(batch_id, f"{batch_id}-t{i}")))
                for i in range(n - failures)]
    fails = [(INPUTS["failure"], key, event_bytes(ev.failure(batch_id, f"{batch_id}-f{i}")))
             for i in range(failures)]
    return [*contents[:content_first], reg, *contents[content_first:], *fails]


def completions(batch_ids: list[str]) -> Counter[str]:
    """``batch_id/event_id`` of the completion events of these batches on the output
    topic, counted (an idempotent duplicate carries the same event id)."""
    wanted = set(batch_ids)
    ids: Counter[str] = Counter()
    for msg in read_topic(KAFKA, COMPLETED, timeout=30):
        envelope = json.loads(msg.value() or b"{}")
        assert headers_of(msg)["event_id"] == envelope["event_id"]
        if envelope["data"]["batch_id"] in wanted:
            ids[envelope["data"]["batch_id"] + "/" + envelope["event_id"]] += 1
    return ids


def dead_letters(prefix: str) -> list[str]:
    """Keys of the dead letters of batches whose ids start with ``prefix``."""
    return [key for topic in DLQS for msg in read_topic(KAFKA, topic, timeout=30)
            if (key := (msg.key() or b"").decode()).startswith(prefix)]


def applied(records: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("msg") == "event applied"
            and str(r.get("batch_id", "")).startswith(prefix)]


def wait_complete(compose: Compose, batch_ids: list[str], timeout: float = 180) -> None:
    wait_until(lambda: all_complete(PG_URL, batch_ids), timeout, "every batch complete",
               lambda: compose.tail("worker"), interval=0.5)
    wait_until(lambda: outbox_unpublished(PG_URL) == 0, 60, "the outbox drained",
               lambda: compose.tail("worker"), interval=0.5)


def wait_healthy(compose: Compose, service: str, timeout: float = 120) -> None:
    wait_until(lambda: compose.health(service) == "healthy", timeout, f"{service} healthy",
               lambda: compose.tail(service), interval=1)


class Producing:
    """Sends messages from a thread, in slices with pauses, so that something can
    happen to the stack while the stream is still arriving."""

    def __init__(self, messages: list[Message], pause_every: int, pause: float) -> None:
        self.error: BaseException | None = None

        def send() -> None:
            try:
                produce(KAFKA, messages, timeout=120, pause_every=pause_every, pause=pause)
            except BaseException as exc:  # handed to the test's thread in join()
                self.error = exc

        self.thread = threading.Thread(target=send, daemon=True)

    def __enter__(self) -> Producing:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(300)

    def join(self) -> None:
        self.thread.join(300)
        assert not self.thread.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ up, roles, health


def test_up_wait_every_healthcheck_healthy(compose: Compose) -> None:
    for service in CORE:
        info = compose.container(service)
        assert info["State"]["Status"] == "running", (service, info["State"])
        assert info["State"]["Health"]["Status"] == "healthy", (service, info["State"])
        # every published port is on loopback only
        for bindings in (info["HostConfig"]["PortBindings"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings), (service, bindings)
    # grafana is in its own profile: not started here (no image can be had offline)
    grafana = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                              f"label=com.docker.compose.project={compose.project}",
                              "--filter", "label=com.docker.compose.service=grafana"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert grafana == []
    status = http_json(WORKER_HTTP + "/healthz")
    assert status["status"] == "ok", status


def test_compose_yaml_as_users_get_it_is_valid_with_and_without_grafana() -> None:
    """compose.yaml alone (official images, no override): compose v2 accepts it; the
    core is five services, and --profile grafana adds Grafana (which cannot run here:
    its provisioning is checked by tests/unit/test_compose.py)."""
    def services(*profile: str) -> list[str]:
        res = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"),
                              *profile, "config", "--services"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return sorted(res.stdout.split())

    core = sorted(["postgres", "kafka", "migrate", "worker", "prometheus"])
    assert services() == core
    assert services("--profile", "grafana") == sorted([*core, "grafana"])


def test_migrations_ran_as_els_migrator_and_exited_0(compose: Compose) -> None:
    state = compose.container("migrate")["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    assert "applied:" in compose.tail("migrate"), compose.tail("migrate")
    # yoyo's own tables are created by the role that connected; the schema's objects
    # belong to els_owner (the migrations SET ROLE to it), not to the login role
    owners = dict(query(PG_URL, "SELECT tablename::text, tableowner::text FROM pg_tables"
                                " WHERE tablename LIKE '\\_yoyo%%' OR schemaname = 'els'"))
    assert owners.pop("_yoyo_migration") == "els_migrator", owners
    assert set(owners.values()) - {"els_migrator"} == {"els_owner"}, owners
    assert query(PG_URL, "SELECT pg_get_userbyid(datdba)::text FROM pg_database"
                         " WHERE datname = 'els'") == [("els_migrator",)]


def test_worker_runs_as_els_app_a_member_of_els_worker_only(compose: Compose) -> None:
    worker_ip = next(iter(compose.container("worker")["NetworkSettings"]["Networks"].values()))[
        "IPAddress"]
    sessions = query(PG_URL, "SELECT DISTINCT usename::text FROM pg_stat_activity"
                             " WHERE client_addr = %(ip)s::inet", {"ip": worker_ip})
    assert sessions == [("els_app",)], sessions
    role = query(PG_URL, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls,"
                         " rolreplication, rolinherit FROM pg_roles WHERE rolname = 'els_app'")
    assert role == [(False, False, False, False, False, True)], role
    member_of = query(PG_URL, "SELECT r.rolname::text FROM pg_auth_members m"
                              " JOIN pg_roles r ON r.oid = m.roleid"
                              " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'els_app'")
    assert member_of == [("els_worker",)], member_of
    # and it may touch no table itself (els_worker only EXECUTEs functions)
    tables = query(PG_URL, "SELECT c.relname::text FROM pg_class c"
                           " JOIN pg_namespace n ON n.oid = c.relnamespace"
                           " WHERE n.nspname = 'els' AND c.relkind IN ('r', 'p')"
                           " AND has_table_privilege('els_app', c.oid,"
                           " 'SELECT,INSERT,UPDATE,DELETE')")
    assert tables == [], tables


def test_worker_image_runs_as_non_root_with_a_working_healthcheck(compose: Compose) -> None:
    name = standins_config()["services"]["worker"]["image"]
    image = json.loads(subprocess.run(["docker", "image", "inspect", name],
                                      capture_output=True, text=True, check=True).stdout)[0]
    user = image["Config"]["User"]
    assert user not in ("", "0", "root"), f"the image runs as {user!r}"
    uid = compose.run("exec", "-T", "worker", "id", "-u").stdout.strip()
    assert uid not in ("", "0"), uid
    # the image's own HEALTHCHECK (for `docker run`), run in the live worker container
    test = image["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    assert compose.run("exec", "-T", "worker", *test[1:], check=False).returncode == 0
    # and it can fail: the same check in a container of the image where no worker runs
    alone = subprocess.run(["docker", "run", "--rm", "--network", "none", name, *test[1:]],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode != 0, alone


def test_build_context_is_only_what_the_image_needs(compose: Compose) -> None:
    """.dockerignore keeps the local stack, the venv and the tests out of the build."""
    probe = f"els-context-probe:{RUN}"
    dockerfile = "FROM els-standin/debian:bookworm\nCOPY . /context\n"
    subprocess.run(["docker", "build", "-q", "-t", probe, "-f", "-", "."], cwd=ROOT,
                   input=dockerfile, capture_output=True, text=True, check=True)
    try:
        listing = subprocess.run(["docker", "run", "--rm", probe, "ls", "-A", "/context"],
                                 capture_output=True, text=True, check=True).stdout.split()
    finally:
        subprocess.run(["docker", "rmi", "-f", probe], capture_output=True, check=False)
    for absent in (".stack", ".venv", ".git", "tests", "testkit", "chaos", "bench"):
        assert absent not in listing, f"{absent} is in the build context: {listing}"
    for needed in ("pyproject.toml", "worker.py", "els_migrate.py", "els_worker",
                   "migrations", "sql"):
        assert needed in listing, f"{needed} is missing from the build context: {listing}"


# ------------------------------------------------------------------ the stream


def test_realistic_stream_completes_each_batch_once_no_dead_letter(compose: Compose) -> None:
    prefix = f"cs-{RUN}-"
    ids = [f"{prefix}{i}" for i in range(24)]
    messages: list[Message] = []
    for i, batch_id in enumerate(ids):
        messages += batch(batch_id, 3 + i % 4, class_id=f"class-{i}" if i % 2 else None,
                          content_first=i % 3, failures=1 if i % 5 == 0 else 0)
    # redelivered events (the stream is at-least-once): the same bytes a second time
    duplicates = messages[::7]
    produce(KAFKA, messages + duplicates)
    wait_complete(compose, ids)
    ids_on_topic = wait_until(lambda: completions(ids), 60, "the completions on the topic")
    per_batch = Counter(k.split("/")[0] for k in ids_on_topic)
    assert per_batch == dict.fromkeys(ids, 1), per_batch  # one event id per batch
    assert dead_letters(prefix) == []
    outcomes = Counter(r["outcome"] for r in applied(compose.log_records("worker"), prefix))
    assert outcomes["duplicate"] >= 1, outcomes  # the redeliveries were recognised
    rows = query(PG_URL, "SELECT count(*) FILTER (WHERE class_type = 'REGULAR'),"
                         " count(*) FILTER (WHERE class_type = 'GUEST') FROM els.batch_tracker"
                         " WHERE batch_id LIKE %(p)s", {"p": prefix + "%"})
    assert rows == [(12, 12)], rows


# ------------------------------------------------------------------ stop / restart


def committed_offsets() -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": GROUP,
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for topic in INPUTS.values()
                 for p in consumer.list_topics(topic, timeout=30).topics[topic].partitions]
        return {(tp.topic, tp.partition): tp.offset
                for tp in consumer.committed(parts, timeout=30)}
    finally:
        consumer.close()


def test_stop_worker_is_a_clean_sigterm_restart_redelivers_nothing(compose: Compose) -> None:
    prefix = f"st-{RUN}-"
    ids = [f"{prefix}{i}" for i in range(150)]
    messages = [m for b in ids for m in batch(b, 4)]  # 750 events, no deliberate duplicate
    before = len(compose.log_lines("worker"))
    with Producing(messages, pause_every=25, pause=0.1) as producing:
        wait_until(lambda: len(applied(compose.log_records("worker"), prefix)) >= 50, 60,
                   "the first events applied", lambda: compose.tail("worker"))
        start = time.monotonic()
        compose.run("stop", "worker")
        stop_seconds = time.monotonic() - start
        producing.join()
    state = compose.container("worker")["State"]
    # SIGTERM, not the SIGKILL that ends the 30 s stop_grace_period: exit code 0
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False), state
    assert stop_seconds < 25, f"docker compose stop worker took {stop_seconds:.1f}s"
    first_run = compose.log_records("worker", since_line=before)
    signals = [r.get("signal") for r in first_run if "signal" in r]
    assert signals == ["SIGTERM"], (signals, compose.tail("worker"))  # one, handled
    assert any(r.get("msg") == "worker stopped" for r in first_run), compose.tail("worker")
    applied_first = applied(first_run, prefix)
    assert 0 < len(applied_first) < len(messages), "the stop should land mid-stream"
    # every event applied before the stop has its offset committed
    committed = committed_offsets()
    for r in applied_first:
        assert committed[(r["topic"], r["partition"])] > r["offset"], (r, committed)

    compose.run("start", "worker")
    wait_healthy(compose, "worker")
    wait_complete(compose, ids)
    applied_all = applied(compose.log_records("worker", since_line=before), prefix)  # both runs
    applied_second = applied_all[len(applied_first):]
    # nothing lost, nothing applied twice: the restart starts where the stop committed
    seen = Counter((r["topic"], r["partition"], r["offset"]) for r in applied_all)
    assert len(seen) == len(messages), (len(seen), len(messages))
    assert max(seen.values()) == 1, [k for k, v in seen.items() if v > 1][:5]
    assert not [r for r in applied_second if r["outcome"] == "duplicate"]
    ids_on_topic = wait_until(lambda: completions(ids), 60, "the completions on the topic")
    assert Counter(k.split("/")[0] for k in ids_on_topic) == dict.fromkeys(ids, 1)
    assert dead_letters(prefix) == []


def test_restart_postgres_heals_without_a_dead_letter(compose: Compose) -> None:
    prefix = f"pg-{RUN}-"
    ids = [f"{prefix}{i}" for i in range(150)]
    messages = [m for b in ids for m in batch(b, 3, content_first=1)]  # 600, over ~12 s
    worker_before = compose.container("worker")["State"]["StartedAt"]
    log_before = len(compose.log_lines("worker"))
    with Producing(messages, pause_every=10, pause=0.2) as producing:
        wait_until(lambda: len(applied(compose.log_records("worker"), prefix)) >= 30, 60,
                   "the first events applied", lambda: compose.tail("worker"))
        compose.run("restart", "postgres")
        producing.join()
    wait_healthy(compose, "postgres")
    wait_complete(compose, ids, timeout=240)
    wait_healthy(compose, "worker")
    # the worker healed in place: same container run, no restart by the engine
    assert compose.container("worker")["State"]["StartedAt"] == worker_before
    records = compose.log_records("worker", since_line=log_before)
    assert any(r.get("retry_kind") == "operational" for r in records), (
        "the outage was never noticed:\n" + compose.tail("worker"))
    assert not [r for r in records if r.get("msg") == "event dead-lettered"]
    assert dead_letters(prefix) == []
    ids_on_topic = wait_until(lambda: completions(ids), 60, "the completions on the topic")
    assert Counter(k.split("/")[0] for k in ids_on_topic) == dict.fromkeys(ids, 1)


# ------------------------------------------------------------------ Prometheus


def test_prometheus_scrapes_the_worker_and_loads_the_alert_rules(compose: Compose) -> None:
    def worker_target() -> dict[str, Any] | None:
        targets = http_json(PROMETHEUS + "/api/v1/targets")["data"]["activeTargets"]
        up = [t for t in targets if t["labels"]["job"] == "els-worker" and t["health"] == "up"]
        return up[0] if up else None

    target = wait_until(worker_target, 60, "the worker's target up", interval=1)
    assert target is not None
    assert target["scrapeUrl"].startswith("http://worker:"), target

    # the events of the tests above, counted by the worker, read through Prometheus
    def events_seen() -> float:
        result = http_json(PROMETHEUS + "/api/v1/query?query=sum(els_events_total)")
        return float(result["data"]["result"][0]["value"][1]) if result["data"]["result"] else 0

    assert wait_until(events_seen, 60, "els_events_total scraped", interval=1) > 0
    shipped = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text(encoding="utf-8"))
    want = {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    groups = http_json(PROMETHEUS + "/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == want, (sorted(want - loaded), sorted(loaded - want))
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups


# ------------------------------------------------------------------ down


def leftovers(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    found = {}
    for kind, argv in (("containers", ["ps", "-a", "-q"]), ("volumes", ["volume", "ls", "-q"]),
                       ("networks", ["network", "ls", "-q"])):
        out = subprocess.run(["docker", *argv, "--filter", label], capture_output=True,
                             text=True, check=True).stdout.split()
        found[kind] = out
    return found


def test_down_v_leaves_nothing_behind(compose: Compose) -> None:
    before = leftovers(compose.project)
    assert all(before.values()), f"the stack should have all three before down: {before}"
    compose.down()
    assert leftovers(compose.project) == {"containers": [], "volumes": [], "networks": []}
