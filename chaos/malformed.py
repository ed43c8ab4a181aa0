"""The malformed messages of the chaos stream and of the bad-input corpus: every way a
message can break the contract (SPEC 2 and 4), each as (label, input topic, builder,
the SQLSTATE it is meant to be dead-lettered with), grouped by that SQLSTATE.
``build_malformed`` picks at least one of each, aimed at registered batches
(``Victim``); the oracle, not this file, decides each message's verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos.names import COURSE_CODES, SHORT_NAMES, TOPIC_NAMES
from chaos.world import INJECTIONS, World


@dataclass
class Victim:
    """A registered batch that malformed messages can aim at."""

    bid: str
    essay_ids: list[str]
    payload: dict[str, Any]
    reg_time: float


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


Add = Callable[[str, str, Builder, str], None]  # (label, kind, builder, intended SQLSTATE)


def _not_json(add: Add) -> None:
    """Values that are not UTF-8 JSON jsonb can hold, or not an object (ELV01)."""
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


def _bad_envelopes(add: Add) -> None:
    """Objects whose envelope is malformed (ELV01)."""
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


def _missing_fields(add: Add) -> None:
    """Each required field missing, or null (ELV02)."""
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


def _misrouted_and_wrong_types(add: Add) -> None:
    """A misrouted event_type, a field of the wrong JSON type (ELV03)."""
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


def _bad_values(add: Add) -> None:
    """Lengths, ranges, enums and formats out of bounds (ELV03)."""
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


def _counts_and_conflicts(add: Add) -> None:
    """Counts and duplicates (ELV04-ELV06), conflicts with registered state (ELC01, ELC02)."""
    add("count-mismatch:more", "register", _pv("register", _count("more")), "ELV04")
    add("count-mismatch:less", "register", _pv("register", _count("less")), "ELV04")
    add("duplicate-essay-ids", "register", _pv("register", _count("dup")), "ELV05")
    add("too-many-essays:10001", "register", _too_many, "ELV06")

    # ELC01, ELC02: stateful, produced after (and keyed like) the registration they hit
    for change in ("user_id", "course_code", "class_id", "org_id", "essay_order",
                   "one_more_essay"):
        add(f"conflicting-reregistration:{change}", "register", _conflict(change), "ELC01")
    add("stolen-essay-id", "register", _steal, "ELC02")


def _variants() -> list[tuple[str, str, Builder, str]]:
    out: list[tuple[str, str, Builder, str]] = []

    def add(label: str, kind: str, build: Builder, intent: str) -> None:
        out.append((label, kind, build, intent))

    for group in (_not_json, _bad_envelopes, _missing_fields, _misrouted_and_wrong_types,
                  _bad_values, _counts_and_conflicts):
        group(add)
    return out


MALFORMED_VARIANTS = _variants()

# variants produced at most once per stream (large values)
_HEAVY = {"big-payload-5mb": 1, "too-many-essays:10001": 2}
STATEFUL = ("ELC01", "ELC02")


def build_malformed(world: World, victims: list[Victim], count: int
                    ) -> list[tuple[Victim, str, str, bytes | None, str]]:
    """At least one message of every variant, then random ones up to ``count``:
    (victim, label, kind, value, intended SQLSTATE)."""
    rng = world.rng
    variants = list(MALFORMED_VARIANTS)
    chosen = list(variants)
    light = [v for v in variants if v[0] not in _HEAVY]
    heavy_left = {k: n - 1 for k, n in _HEAVY.items()}
    stateful = [v for v in variants if v[3] in STATEFUL]
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
