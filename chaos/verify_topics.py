"""Checks of the topics against the oracle: the stream landed where the broker said, every
malformed message is in its dead-letter topic with its SQLSTATE (and nothing else is),
and the output topics carry exactly what the outbox holds, one completion per batch."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from chaos.config import (
    DEFAULT_TOPICS,
    INPUT_KINDS,
)
from chaos.generator import Generated
from chaos.oracle import BatchExpectation
from chaos.state import OFFSET_UNKNOWN, RunState
from els_worker import contract
from testkit.kafka import headers_of


class TopicChecks(RunState):
    """Compares the input, dead-letter and output topics with the oracle."""

    def verify_input(self, gen: Generated) -> dict[str, int]:
        """Every message the broker acknowledged is in its input topic, at the offset of
        its delivery report. A failure here is the stream's loss (Kafka or its client,
        upstream of the worker), reported apart from the worker's mismatches that follow
        from it."""
        landed: dict[tuple[str, int, int], bytes | None] = {}
        for kind in INPUT_KINDS:
            for msg in self.read_all(self.topics[kind]):
                landed[(kind, msg.partition() or 0, msg.offset() or 0)] = msg.value()
        self.place_unknown_offsets(gen, landed)
        lost = [m for m in gen.messages if m.seq in self.delivered
                and landed.get((m.kind, *self.delivered[m.seq]), b"\0absent") != m.value]
        for m in lost[:5]:
            p, off = self.delivered[m.seq]
            self.mismatch(f"stream: message #{m.seq} ({m.kind}, {m.label}, batch "
                          f"{m.batch_id!r}) acknowledged at partition {p} offset "
                          f"{off if off != OFFSET_UNKNOWN else 'unknown'}, "
                          "which holds other bytes or nothing: lost upstream of the worker")
        if len(lost) > 5:
            self.mismatch(f"stream: {len(lost) - 5} more acknowledged message(s) lost")
        return {"acknowledged": len(self.delivered), "in_topics": len(landed),
                "lost": len(lost)}

    def place_unknown_offsets(self, gen: Generated,
                              landed: dict[tuple[str, int, int], bytes | None]) -> None:
        """A delivery acknowledged without an offset is looked for in its partition: at
        an offset no other delivery claims, holding its bytes. Not found, it stays
        unknown and verify_input reports it lost."""
        claimed = {(m.kind, *self.delivered[m.seq]) for m in gen.messages
                   if m.seq in self.delivered}
        for m in gen.messages:
            where = self.delivered.get(m.seq)
            if where is None or where[1] != OFFSET_UNKNOWN:
                continue
            for (kind, p, off), value in sorted(landed.items(), key=lambda kv: kv[0]):
                if (kind, p) == (m.kind, where[0]) and value == m.value \
                        and (kind, p, off) not in claimed:
                    self.delivered[m.seq] = (p, off)
                    claimed.add((kind, p, off))
                    break

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
            dlq = contract.dlq_topic(self.topics[kind])
            for msg in self.read_all(dlq):
                headers = headers_of(msg)
                absent = [h for h in contract.DLQ_HEADERS if h not in headers]
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
                if contract.dlq_topic(source[0]) != dlq:
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
