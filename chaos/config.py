"""What a chaos run is given: ``ChaosConfig`` and its profiles, the contract's names under
the run's short names, the harness's client settings, and the log line."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.names import TOPIC_NAMES
from els_worker import contract

ROOT = Path(__file__).resolve().parent.parent


DEFAULT_TOPICS = {  # the contract's topics, under the run's short names
    **TOPIC_NAMES,
    "completed": contract.COMPLETED.topic,
    "slot_assigned": contract.SLOT_ASSIGNED.topic,
    "excess": contract.EXCESS.topic,
}
INPUT_KINDS = tuple(TOPIC_NAMES)  # register, content, failure
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # topics and our producer: room for the 5 MB value
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
    # partitions behind PL/Proxy (SPEC 9, docs/SCALING.md); 0: one database
    partitions: int = 0
    partition_blackouts: int = 0  # partitions: one partition refusing connections a while
    produce_seconds: float = 150.0
    chaos_start: float = 6.0  # first action at the earliest this long after the stream starts
    chaos_tail: float = 10.0  # actions may happen until this long after the stream ends
    kafka: str = "private"  # private | shared (then kafka_bootstrap is required)
    kafka_bootstrap: str | None = None
    quiesce_timeout: float = 600.0
    keep: bool = False  # keep database, topics and the private stack running
    # librdkafka settings for the workers' consumers (ELS_KAFKA_CONSUMER_CONFIG): a
    # shorter session timeout lets the group notice a SIGKILLed member in seconds
    # instead of 45 s. Nothing else: the workers run with their defaults.
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
    "sharded": {"name": "sharded", "partitions": 2, "batches": 300, "malformed": 150,
                "kills": 12, "pg_restarts": 1, "kafka_restarts": 0, "partition_blackouts": 2,
                "produce_seconds": 100.0},
    "sharded-short": {"name": "sharded-short", "partitions": 2, "batches": 40, "malformed": 60,
                      "kills": 2, "pg_restarts": 0, "kafka_restarts": 0,
                      "partition_blackouts": 1, "produce_seconds": 25.0, "chaos_start": 4.0,
                      "chaos_tail": 5.0, "kafka": "shared", "quiesce_timeout": 240.0},
    "ha-short": {"name": "ha-short", "topology": "ha", "batches": 30, "malformed": 40,
                 "kills": 1, "pg_restarts": 0, "kafka_restarts": 0, "pg_failovers": 1,
                 "broker_kills": 1, "produce_seconds": 40.0, "chaos_start": 5.0,
                 "chaos_tail": 5.0, "quiesce_timeout": 240.0},
}


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)
