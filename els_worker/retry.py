"""Backoff and the one retry helper: every loop that waits for a fault to pass (the
micro-batch, the relay, dead-letter delivery, the systemic-fault backoff of the consume
loop) waits here, so the policy (capped exponential backoff with jitter, counted,
logged, interruptible by shutdown) changes in one place. The maintenance loop retries
nothing: a task that fails is logged and counted, and runs again in its next round."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from els_worker.observability import Metrics, log


class Stopping(Exception):
    """Raised inside a wait when shutdown was requested."""


class Backoff:
    """Capped exponential backoff with jitter (each delay 50-100% of its step)."""

    def __init__(self, base_ms: int, max_ms: int) -> None:
        self.base = base_ms / 1000.0
        self.cap = max_ms / 1000.0
        self.attempt = 0

    def next_delay(self) -> float:
        step = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return step * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class Retry:
    """One retry policy for a loop: ``wait`` counts the retry by kind, logs why, and
    sleeps the next backoff delay; ``Stopping`` when shutdown interrupts the sleep."""

    def __init__(
        self, base_ms: int, max_ms: int, metrics: Metrics, stop: threading.Event
    ) -> None:
        self.backoff = Backoff(base_ms, max_ms)
        self.metrics = metrics
        self.stop = stop

    def wait(self, kind: str, message: str, level: int = logging.WARNING, /,
             **fields: Any) -> None:
        self.metrics.retry_counter(kind).inc()
        delay = self.backoff.next_delay()
        log(level, message, retry_kind=kind, retry_in_s=round(delay, 3),
            attempt=self.backoff.attempt, **fields)
        if self.stop.wait(delay):
            raise Stopping()

    def succeeded(self) -> None:
        self.backoff.reset()
