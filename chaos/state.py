"""A chaos run's shared state: its actions, its workers, what the stream delivered, the
mismatches found; and the helpers every part uses."""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka import Message

from chaos.config import (
    DEFAULT_TOPICS,
    QUIET,
    ROOT,
    ChaosConfig,
)
from chaos.stack import PrivateStack, WorkerSlot
from testkit.kafka import Topics, read_topic


@dataclass
class Action:
    at: float
    kind: str  # kill | pg-restart | pg-crash | kafka-restart | pg-failover | broker-kill
    done_at: float | None = None
    struck_at: float | None = None  # wall clock (time.time()) of the blow, for recovery times
    recovery: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    in_transaction: list[str] = field(default_factory=list)


class RunState:
    """The state one run shares between its parts (stream, controller, checks, report);
    ``setup`` fills in where the services are."""

    env: dict[str, str]  # the private stack's `stack.sh env`
    bootstrap: str
    db_url: str  # what ingest goes to: the database, or the PL/Proxy proxy
    worker_db_url: str
    partition_urls: list[str]  # behind the proxy (cfg.partitions); else empty
    worker_partition_urls: list[str]

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
        # the same names as testkit's Topics: what the harness builds worker environments
        # and topics from
        self.topic_set = Topics.under(f"chaos.{self.run_id}", group_id=self.group)
        self.dbname = f"chaos_{uuid.uuid4().hex[:10]}"
        self.partition_names = [f"{self.dbname}_p{i}" for i in range(cfg.partitions)]
        self.partition_urls = []
        self.worker_partition_urls = []
        self.mismatches: list[str] = []
        self.timings: dict[str, float] = {}
        self.actions: list[Action] = []
        self.slots: list[WorkerSlot] = []
        # seq -> (partition, offset) the broker stored it at (its first proven copy)
        self.delivered: dict[int, tuple[int, int]] = {}
        self.unconfirmed: dict[int, int] = {}  # seq -> reports without an offset (re-sent)
        # every input message read back: (kind, partition, offset) -> its bytes
        self.landed: dict[tuple[str, int, int], bytes | None] = {}
        self.produce_errors: list[str] = []
        self.stream_started = 0.0
        self.stream_done = threading.Event()
        self.pause_requested = threading.Event()
        self.paused = threading.Event()
        self.stats: dict[str, Any] = {}
        self.partition_lag: dict[str, str] = {}  # input partitions behind, at the last probe
        self.rejoin_thread: threading.Thread | None = None

    def data_urls(self) -> list[str]:
        """The databases that hold the state: the partitions, or the one database."""
        return self.partition_urls or [self.db_url]

    def mismatch(self, text: str) -> None:
        self.mismatches.append(text if len(text) <= 500 else text[:497] + "...")

    def admin_url(self, dbname: str) -> str:
        """The admin URL with another database (a multi-host URL keeps its hosts and its
        target_session_attrs)."""
        return urlunsplit(urlsplit(self.env["ELS_PG_ADMIN_URL"])._replace(path="/" + dbname))

    def read_all(self, topic: str) -> list[Message]:
        try:
            return read_topic(self.bootstrap, topic, timeout=300, **QUIET)
        except AssertionError as exc:
            self.mismatch(f"could not read {topic} to its end: {exc}")
            return []
