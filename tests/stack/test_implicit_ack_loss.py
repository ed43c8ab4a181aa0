"""librdkafka's implicit ack, reproduced against the real broker through our relay.

With an idempotent producer, when a first request to a partition fails with "Not leader
for partition" while a later request to the same partition succeeds, librdkafka reports
the first message delivered, no error, offset None, although the broker never stored it
(confluent-kafka-go #921). The window is widened as the reproduction found it widest on
this machine: the output topic (40 partitions) is created in the same CreateTopics call
as 8 topics of 10 partitions, while a relay whose producer sends each message in a
request of its own (``batch.num.messages`` 1, ``linger.ms`` 0, five requests in
flight: a test configuration; the worker's producers keep one in flight) publishes the
outbox in small rounds. Trials repeat, a bounded number, until the relay has seen a
report of success without an offset. Every trial then asserts what the relay promises:
every outbox row is in its topic at the partition and offset it recorded, carrying its
event id. A row whose offset-less report was for a copy the broker never stored is a
row the previous relay would have lost: it marked every error-free report published.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from testkit.implicit_ack import trial

pytestmark = pytest.mark.kafka

MAX_TRIALS = 40
MAX_SECONDS = 150.0


def test_implicit_acks_of_unstored_messages_lose_no_outbox_row(
    db: psycopg.Connection[Any], db_url: str, kafka_bootstrap: str, kafka_admin: AdminClient,
) -> None:
    started = time.monotonic()
    trials = offsetless = would_lose = 0
    while trials < MAX_TRIALS and time.monotonic() - started < MAX_SECONDS:
        trials += 1
        n, lost = trial(db, db_url, kafka_bootstrap, kafka_admin)
        offsetless += n
        would_lose += lost
        if n:
            break
    print(f"implicit-ack reproduction: {trials} trial(s) in {time.monotonic() - started:.0f} s,"
          f" {offsetless} report(s) of success without an offset, {would_lose} of them for a"
          " copy the broker never stored (rows the previous relay would have lost); every row"
          " at its recorded offset")
    assert offsetless > 0, (
        f"no report without an offset in {trials} trials: the window did not open")
