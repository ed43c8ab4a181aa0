"""Checks of the topics against the oracle: the stream landed where the broker said, every
malformed message is in its dead-letter topic with its SQLSTATE (and nothing else is),
and the output topics carry exactly what the outbox holds, one completion per batch."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from chaos.config import (
    DEFAULT_TOPICS,
    INPUT_KINDS,
    QUIET,
)
from chaos.generator import Generated, Message
from chaos.oracle import Ambiguous, BatchExpectation, Prediction, predict
from chaos.state import RunState
from els_worker import audit, contract
from testkit.kafka import headers_of


def arrival_order(messages: list[Message], landed: dict[tuple[str, int, int], bytes | None]
                  ) -> list[tuple[int, str, bytes | None, bytes | None]]:
    """The stream as the broker stored it, as (seq, kind, key, value) for ``predict``.

    A message sent again after a report without an offset (Stream.produce) sits after
    messages generated later; when those share its stream (a batch's contents), slot
    order follows the topic, not the generation. Each stored copy takes the seq of a
    message with its bytes (copies of one value in offset order take that value's seqs
    in order); within a topic partition a copy never goes before the one stored ahead
    of it, and the partitions are merged by seq."""
    seqs: dict[tuple[str, bytes | None], list[int]] = defaultdict(list)
    by_seq = {m.seq: m for m in messages}
    for m in messages:
        seqs[(m.kind, m.value)].append(m.seq)
    per_partition: dict[tuple[str, int], list[tuple[int, bytes | None]]] = defaultdict(list)
    for (kind, partition, offset), value in landed.items():
        per_partition[(kind, partition)].append((offset, value))
    copies: list[tuple[int, int, str, int, int]] = []  # clock, seq, kind, partition, offset
    for (kind, partition), stored in per_partition.items():
        clock = -1
        taken: Counter[tuple[str, bytes | None]] = Counter()
        for offset, value in sorted(stored, key=lambda c: c[0]):
            candidates = seqs.get((kind, value))
            if not candidates:
                continue  # not the stream's (the checks above report it)
            seq = candidates[min(taken[(kind, value)], len(candidates) - 1)]
            taken[(kind, value)] += 1
            clock = max(clock, seq)
            copies.append((clock, seq, kind, partition, offset))
    copies.sort(key=lambda c: (c[0], c[3], c[4]))
    return [(seq, kind, by_seq[seq].key, by_seq[seq].value) for _, seq, kind, _, _ in copies]


class TopicChecks:
    """Compares the input, dead-letter and output topics with the oracle; mismatches go
    to the run's state."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def verify_input(self, gen: Generated) -> dict[str, int]:
        """Every message the broker stored is in its input topic, at the offset of its
        delivery report (one reported without an offset was sent again: Stream.produce).
        A failure here is the stream's loss (Kafka or its client, upstream of the
        worker), reported apart from the worker's mismatches that follow from it."""
        landed = self.state.landed
        for kind in INPUT_KINDS:
            for msg in self.state.read_all(self.state.topics[kind]):
                landed[(kind, msg.partition() or 0, msg.offset() or 0)] = msg.value()
        lost = [m for m in gen.messages if m.seq in self.state.delivered
                and landed.get((m.kind, *self.state.delivered[m.seq]), b"\0absent") != m.value]
        never = [m for m in gen.messages if m.seq not in self.state.delivered]
        for m in lost[:5]:
            p, off = self.state.delivered[m.seq]
            self.state.mismatch(f"stream: message #{m.seq} ({m.kind}, {m.label}, batch "
                                f"{m.batch_id!r}) stored at partition {p} offset {off} by its "
                                "delivery report, which holds other bytes or nothing: lost "
                                "upstream of the worker")
        if len(lost) > 5:
            self.state.mismatch(f"stream: {len(lost) - 5} more acknowledged message(s) lost")
        for m in never[:5]:
            self.state.mismatch(f"stream: message #{m.seq} ({m.kind}, {m.label}) never got an "
                                f"offset")
        return {"acknowledged": len(self.state.delivered), "in_topics": len(landed),
                "lost": len(lost), "never_stored": len(never),
                "sent_again_without_offset": sum(self.state.unconfirmed.values())}

    def arrival_prediction(self, gen: Generated) -> Prediction:
        """The oracle over the order the broker stored the stream in (``arrival_order``):
        the generation's own unless a message was sent again. After verify_input."""
        if not self.state.unconfirmed:
            return gen.prediction
        try:
            return predict(arrival_order(gen.messages, self.state.landed))
        except Ambiguous as exc:
            self.state.mismatch(f"harness: the stream as stored is ambiguous to the oracle: {exc}")
            return gen.prediction

    def verify_dlq(self, gen: Generated) -> dict[str, Any]:
        by_source: dict[tuple[str, int, int], int] = {}
        for m in gen.messages:
            if m.seq in self.state.delivered:
                p, o = self.state.delivered[m.seq]
                by_source[(self.state.topics[m.kind], p, o)] = m.seq
        # a copy sent again after a report without an offset, or one the broker stored
        # although its report had no offset: known by its bytes
        by_value = {(m.kind, m.value): m.seq for m in gen.messages}
        for (kind, p, o), value in self.state.landed.items():
            seq = by_value.get((kind, value))
            if seq is not None:
                by_source.setdefault((self.state.topics[kind], p, o), seq)
        messages = {m.seq: m for m in gen.messages}
        expected = {m.seq for m in gen.messages if m.expect is not None}
        seen: Counter[int] = Counter()
        by_state: Counter[str] = Counter()
        for kind in INPUT_KINDS:
            dlq = contract.dlq_topic(self.state.topics[kind])
            for msg in self.state.read_all(dlq):
                headers = headers_of(msg)
                absent = [h for h in contract.DLQ_HEADERS if h not in headers]
                if absent:
                    self.state.mismatch(f"DLQ {dlq}@{msg.partition()}:{msg.offset()} lacks "
                                        f"{absent}")
                try:
                    source = (headers.get(contract.H_SOURCE_TOPIC, ""),
                              int(headers.get(contract.H_SOURCE_PARTITION, "-1")),
                              int(headers.get(contract.H_SOURCE_OFFSET, "-1")))
                except ValueError:
                    self.state.mismatch(f"DLQ {dlq}@{msg.offset()}: bad source headers {headers}")
                    continue
                seq = by_source.get(source)
                if seq is None:
                    self.state.mismatch(f"DLQ {dlq}: unknown source {source}")
                    continue
                m = messages[seq]
                seen[seq] += 1
                state = headers.get(contract.H_SQLSTATE)
                by_state[state or "?"] += 1
                if m.expect is None:
                    self.state.mismatch(f"valid message #{seq} ({m.label}, batch {m.batch_id!r}) "
                                        f"was dead-lettered with {state}: "
                                        f"{headers.get(contract.H_MESSAGE)}")
                elif state != m.expect:
                    self.state.mismatch(f"#{seq} {m.label}: dead-lettered with {state}, expected "
                                        f"{m.expect}: {headers.get(contract.H_MESSAGE)}")
                if contract.dlq_topic(source[0]) != dlq:
                    self.state.mismatch(f"#{seq}: dead-lettered to {dlq}, source {source[0]}")
                if msg.key() != m.key or msg.value() != m.value:
                    self.state.mismatch(f"#{seq} {m.label}: DLQ key/value differ from the original")
                try:
                    detail = json.loads(headers.get(contract.H_DETAIL, ""))
                    if not isinstance(detail, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self.state.mismatch(f"#{seq} {m.label}: els.error.detail is not a JSON object: "
                                        f"{headers.get(contract.H_DETAIL, '')[:200]!r}")
        for seq in sorted(expected - set(seen)):
            m = messages[seq]
            self.state.mismatch(f"malformed #{seq} {m.label} (expected {m.expect}) is not in the "
                                f"DLQ")
        copies = sum(seen.values())
        return {"distinct": len(seen), "copies": copies, "extra_copies": copies - len(seen),
                "expected": len(expected), "by_sqlstate": dict(sorted(by_state.items()))}

    def verify_delivery_proofs(self, db: dict[str, Any]) -> dict[str, int]:
        """Each published outbox row is where its delivery report said, carrying its
        event id: the check ``worker.py audit`` makes, with its reading code."""
        wanted: dict[tuple[str, int], list[int]] = defaultdict(list)
        proven = [o for o in db["outbox"] if o["kafka_offset"] is not None]
        for o in proven:
            wanted[(o["kafka_topic"], o["kafka_partition"])].append(o["kafka_offset"])
        for o in db["outbox"]:
            if o["published"] and o["kafka_offset"] is None:
                self.state.mismatch(f"outbox row {o['event_id']} published without an offset")
        consumer = Consumer({"bootstrap.servers": self.state.bootstrap, "group.id": "chaos-proofs",
                             "enable.auto.commit": False, **QUIET})
        try:
            found, expired = audit.read_offsets(
                consumer, wanted, time.monotonic() + 300,
                AdminClient({"bootstrap.servers": self.state.bootstrap, **QUIET}))
        except audit.AuditUnreachable as exc:
            self.state.mismatch(f"delivery proofs: {exc}")
            return {"proven": len(proven), "found": 0}
        finally:
            consumer.close()
        hits = 0
        for o in proven:
            where = (o["kafka_topic"], o["kafka_partition"], o["kafka_offset"])
            if found.get(where) == o["event_id"]:
                hits += 1
            elif len(self.state.mismatches) < 200:
                self.state.mismatch(f"outbox row {o['event_id']} ({o['event_type']}) is not at "
                                    f"{where[0]}[{where[1]}]@{where[2]}"
                                    f"{' (expired)' if where in expired else ''}: its delivery "
                                    "report was no proof")
        return {"proven": len(proven), "found": hits}

    def verify_outputs(self, batches: dict[str, BatchExpectation], db: dict[str, Any]
                       ) -> dict[str, Any]:
        out: dict[str, Any] = {"delivery_proofs": self.verify_delivery_proofs(db)}
        outbox_ids: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for row in db["outbox"]:
            outbox_ids[row["event_type"]][row["message_key"]].add(row["event_id"])
        for key, event_type in (("completed", "BatchContentProvisioningCompleted"),
                                ("slot_assigned", "EssaySlotAssigned"),
                                ("excess", "ExcessContentProvisioned")):
            topic = self.state.topics[key]
            ids: dict[str, set[str]] = defaultdict(set)
            envelopes: dict[str, dict[str, Any]] = {}
            total = 0
            for msg in self.state.read_all(topic):
                total += 1
                env = json.loads(msg.value() or b"null")
                bid = (msg.key() or b"").decode()
                if env.get("event_type") != DEFAULT_TOPICS[key]:
                    self.state.mismatch(f"{topic}: event_type {env.get('event_type')!r}")
                if env.get("data", {}).get("batch_id") != bid:
                    self.state.mismatch(f"{topic}: key {bid!r} but data.batch_id "
                                        f"{env.get('data', {}).get('batch_id')!r}")
                ids[bid].add(env["event_id"])
                envelopes[env["event_id"]] = env
            for bid in set(ids) | set(outbox_ids[event_type]):
                if ids.get(bid, set()) != outbox_ids[event_type].get(bid, set()):
                    self.state.mismatch(f"{topic}: batch {bid!r} event ids on the topic "
                                        f"{sorted(ids.get(bid, set()))[:3]} != outbox "
                                        f"{sorted(outbox_ids[event_type].get(bid, set()))[:3]}")
            distinct = sum(len(v) for v in ids.values())
            out[key] = {"messages": total, "distinct_event_ids": distinct,
                        "republished_copies": total - distinct}
            if key == "completed":
                for bid, exp in batches.items():
                    n = len(ids.get(bid, set()))
                    if n != int(exp.complete):
                        self.state.mismatch(f"batch {bid!r}: {n} distinct completion event id(s) "
                                            f"on {topic}, expected {int(exp.complete)}")
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
                self.state.mismatch(f"completion of {bid!r}: data.{name} = {data.get(name)!r}, "
                                    f"expected {value!r}")
        if env.get("source_service") != "essay_lifecycle_service":
            self.state.mismatch(f"completion of {bid!r}: source_service "
                                f"{env.get('source_service')!r}")
