"""One worker process: its threads (consumer loop, outbox relay, maintenance, audit, HTTP),
how they start, and how they stop on SIGTERM/SIGINT (finish the micro-batch in hand,
commit, leave the group)."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
import threading
from typing import Any

from confluent_kafka import KafkaException

from els_worker import kafka
from els_worker.apply import BatchProcessor
from els_worker.audit import Auditor
from els_worker.config import Config
from els_worker.consumer import ConsumerLoop
from els_worker.dead_letters import DeadLetterWriter
from els_worker.health import PATHS, Health, make_http_server
from els_worker.maintenance import Maintenance
from els_worker.observability import Metrics, log
from els_worker.relay import Relay


class Worker:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.health = Health(self.metrics, cfg.health_max_age_seconds)
        self.processor = BatchProcessor(cfg, self.metrics, self.stop, self.health)
        # one relay and one auditor per outbox: the database's, or each partition's
        databases = cfg.database_partitions()
        self.relays = ([Relay(part_cfg, self.metrics, self.stop, self.health, db_partition=label)
                        for label, part_cfg in databases] if cfg.relay_enabled else [])
        self.maintenance = Maintenance(cfg, self.metrics, self.health, self.stop)
        self.auditors = ([Auditor(part_cfg, self.metrics, self.stop, db_partition=label)
                          for label, part_cfg in databases] if cfg.audit_interval_seconds else [])
        self._signals = 0

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                log(logging.WARNING, "second signal: exiting now", signal=signum)
                raise SystemExit(128 + signum)
            log(logging.INFO, "shutdown requested: finishing the micro-batch in hand",
                signal=signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        # `kill -USR1 <pid>`: every thread's stack to stderr, for a worker that looks stuck
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)

    def run(self) -> int:
        cfg = self.cfg
        if cfg.create_topics:
            kafka.ensure_topics(cfg, kafka.worker_topics(cfg))
        http = make_http_server(cfg.metrics_host, cfg.metrics_port, self.metrics, self.health)
        threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
        log(logging.INFO, "http listening", host=cfg.metrics_host, port=http.server_address[1],
            paths=PATHS)
        dead_letters = DeadLetterWriter(cfg, self.metrics, self.stop)
        loop = ConsumerLoop(cfg, self.processor, dead_letters, self.metrics, self.health,
                            self.stop)
        loop.subscribe()
        for relay in self.relays:
            relay.start()
        self.maintenance.start()
        for auditor in self.auditors:
            auditor.start()
        log(logging.INFO, "worker started", topics=cfg.input_topics, group_id=cfg.group_id,
            relay=bool(self.relays), outboxes=len(self.relays) or None,
            batch_max_messages=cfg.batch_max_messages)
        self.processor.ping()
        self.health.loop_running = True
        try:
            loop.run()
        finally:
            self.health.loop_running = False
            log(logging.INFO, "shutting down")
            self.stop.set()
            for relay in self.relays:
                relay.join(60)
            self.maintenance.join(30)
            for auditor in self.auditors:
                auditor.join(30)
            dead_letters.close()
            loop.commit_unconfirmed()
            try:
                loop.consumer.close()  # leaves the group
            except KafkaException as exc:
                log(logging.WARNING, "consumer close failed", error=str(exc))
            self.processor.close()
            http.shutdown()
            http.server_close()
            log(logging.INFO, "worker stopped")
        return 0
