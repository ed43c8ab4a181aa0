"""An independent oracle for the chaos run: plain Python, no SQL, written from
../shared/SPEC.md sections 2-5 only (it shares no code with sql/ or worker.py).

Given the messages produced to the three input topics, in production order, it
says what each message must become and what the database must hold afterwards:

* ``judge(kind, value)`` decides, from the bytes alone, whether a message is
  accepted or rejected and with which SQLSTATE (ELV01..ELV06: JSON and envelope,
  required fields, types/lengths/enums, count mismatch, duplicate ids, size).
* ``predict(messages)`` adds the stateful rules (ELC01 conflicting
  re-registration, ELC02 essay id owned by another batch) and folds the accepted
  events into one ``BatchExpectation`` per batch.

Kafka keeps order only within a partition, and the worker applies a partition in
order. Messages with the same topic and the same key share a partition, so the
oracle treats ``(topic, key)`` as an ordered *stream* and assumes nothing about
the order of different streams. Wherever a verdict would depend on the order of
two streams (for instance the same batch registered twice with different
identities under different keys) it raises ``Ambiguous``: the generator must not
produce such input. Final counts are order-independent where SPEC rule 3 says
they are; where they are not (more contents and failures than slots) the oracle
gives bounds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# SPEC 2's table of input events, written out here: the oracle takes nothing from the
# worker or the harness (tests/unit/test_chaos_names.py checks that they agree)
TOPIC_NAMES = {
    "register": "huleedu.batch.essays.registered.v1",
    "content": "huleedu.file.essay.content.provisioned.v1",
    "failure": "huleedu.file.essay.validation.failed.v1",
}
SHORT_NAMES = {
    "register": "batch.essays.registered",
    "content": "essay.content.provisioned",
    "failure": "essay.validation.failed",
}

COURSE_CODES = ("ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3")
VALIDATION_ERROR_CODES = (
    "EMPTY_CONTENT",
    "CONTENT_TOO_SHORT",
    "CONTENT_TOO_LONG",
    "RAW_STORAGE_FAILED",
    "TEXT_EXTRACTION_FAILED",
    "ENCRYPTED_FILE_UNSUPPORTED",
    "UNKNOWN_VALIDATION_ERROR",
)
MAX_ESSAYS = 10000

REQUIRED = {
    "register": ("entity_id", "expected_essay_count", "essay_ids", "course_code", "user_id"),
    "content": ("entity_id", "text_storage_id", "file_upload_id", "original_file_name"),
    "failure": ("entity_id", "file_upload_id", "original_file_name", "validation_error_code"),
}

# Field type rules of SPEC section 2, per event kind: (field, rule, argument).
#   text: string of 1..arg characters     enum: one of arg       int: integer >= arg
#   object: JSON object                   ids: array of 1..255-character strings
#   timestamp: ISO-8601 string
_FIELDS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "register": (
        ("entity_id", "text", 255),
        ("expected_essay_count", "int", 1),
        ("essay_ids", "ids", None),
        ("course_code", "enum", COURSE_CODES),
        ("user_id", "text", 255),
        ("org_id", "text", 255),
        ("class_id", "text", 255),
        ("student_prompt_ref", "object", None),
        ("metadata", "object", None),
    ),
    "content": (
        ("entity_id", "text", 255),
        ("text_storage_id", "text", 255),
        ("file_upload_id", "text", 255),
        ("original_file_name", "text", 1024),
        ("raw_file_storage_id", "text", 255),
        ("file_size_bytes", "int", 0),
        ("content_md5_hash", "text", 255),
        ("correlation_id", "text", 255),
        ("timestamp", "timestamp", None),
    ),
    "failure": (
        ("entity_id", "text", 255),
        ("file_upload_id", "text", 255),
        ("original_file_name", "text", 1024),
        ("validation_error_code", "enum", VALIDATION_ERROR_CODES),
        ("validation_error_detail", "object", None),
        ("raw_file_storage_id", "text", 255),
        ("file_size_bytes", "int", 0),
        ("correlation_id", "text", 255),
        ("timestamp", "timestamp", None),
    ),
}

_ISO_8601 = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$"
)
_ENVELOPE_STRINGS = (
    "event_id", "event_type", "event_timestamp", "source_service", "correlation_id")


class Ambiguous(Exception):
    """The verdict would depend on the order of two Kafka partitions."""


@dataclass(frozen=True)
class Rejection:
    sqlstate: str
    field: str | None
    reason: str


@dataclass(frozen=True)
class Accepted:
    kind: str
    payload: dict[str, Any]
    correlation_id: str | None  # envelope's, else data's; None: the database generates one
    event_id: str | None

    @property
    def batch_id(self) -> str:
        return str(self.payload["entity_id"])


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unstorable(value: Any) -> bool:
    """True if PostgreSQL's jsonb cannot hold the value: U+0000 or an unpaired
    surrogate (both only reachable through \\u escapes) in any string or key."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(ch) <= 0xDFFF for ch in item):
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def parse_value(value: bytes | None) -> Any:
    """The message value as JSON, or Rejection ELV01 (not UTF-8 JSON jsonb can take)."""
    if value is None or len(value) == 0:
        raise _Reject("ELV01", None, "empty_value")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject("ELV01", None, "invalid_utf8") from None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _Reject("ELV01", None, "invalid_json") from None
    if _unstorable(parsed):
        raise _Reject("ELV01", None, "not_storable_as_jsonb")
    return parsed


class _Reject(Exception):
    def __init__(self, sqlstate: str, field_name: str | None, reason: str) -> None:
        super().__init__(sqlstate, field_name, reason)
        self.rejection = Rejection(sqlstate, field_name, reason)


def _check_field(payload: dict[str, Any], name: str, rule: str, arg: Any) -> None:
    if name not in payload or payload[name] is None:
        return
    value = payload[name]
    jt = json_type(value)
    if rule in ("text", "enum", "timestamp"):
        if jt != "string":
            raise _Reject("ELV03", name, "wrong_type")
        limit = arg if rule == "text" else 255
        if not 1 <= len(value) <= limit:
            raise _Reject("ELV03", name, "bad_length")
        if rule == "enum" and value not in arg:
            raise _Reject("ELV03", name, "not_in_enum")
        if rule == "timestamp" and not _ISO_8601.match(value):
            raise _Reject("ELV03", name, "bad_format")
    elif rule == "int":
        # JSON has one number type; an integer is written without fraction or exponent
        if jt != "number" or not isinstance(value, int):
            raise _Reject("ELV03", name, "not_an_integer")
        if value < arg:
            raise _Reject("ELV03", name, "out_of_range")
    elif rule == "object":
        if jt != "object":
            raise _Reject("ELV03", name, "wrong_type")
    elif rule == "ids":
        if jt != "array":
            raise _Reject("ELV03", name, "wrong_type")
        for item in value:
            if json_type(item) != "string" or not 1 <= len(item) <= 255:
                raise _Reject("ELV03", name, "bad_item")


def judge(kind: str, value: bytes | None) -> Accepted | Rejection:
    """The stateless verdict on one message value for the topic of ``kind``."""
    try:
        return _judge(kind, value)
    except _Reject as exc:
        return exc.rejection


def _judge(kind: str, value: bytes | None) -> Accepted:
    event = parse_value(value)
    if not isinstance(event, dict):
        raise _Reject("ELV01", None, "not_an_object")
    correlation_id: str | None = None
    event_id: str | None = None
    if "data" in event:
        # an envelope: data is the payload; the envelope's own fields must be well-formed
        if not isinstance(event["data"], dict):
            raise _Reject("ELV01", "data", "not_an_object")
        for name in _ENVELOPE_STRINGS:
            if json_type(event.get(name)) not in ("string", "null"):
                raise _Reject("ELV01", name, "wrong_type")
        if json_type(event.get("metadata")) not in ("object", "null"):
            raise _Reject("ELV01", "metadata", "wrong_type")
        if json_type(event.get("schema_version")) not in ("number", "null"):
            raise _Reject("ELV01", "schema_version", "wrong_type")
        correlation_id = event.get("correlation_id")
        if correlation_id is not None and not 1 <= len(correlation_id) <= 255:
            raise _Reject("ELV01", "correlation_id", "bad_length")
        event_id = event.get("event_id")
        payload: dict[str, Any] = event["data"]
    else:
        payload = event
    event_type = event.get("event_type")
    if event_type is not None:
        if not isinstance(event_type, str):
            raise _Reject("ELV01", "event_type", "wrong_type")
        if event_type not in (TOPIC_NAMES[kind], SHORT_NAMES[kind]):
            raise _Reject("ELV03", "event_type", "misrouted")
    for name in REQUIRED[kind]:
        if payload.get(name) is None:
            raise _Reject("ELV02", name, "missing")
    for name, rule, arg in _FIELDS[kind]:
        _check_field(payload, name, rule, arg)
    if kind == "register":
        ids = payload["essay_ids"]
        if len(ids) != payload["expected_essay_count"]:
            raise _Reject("ELV04", "expected_essay_count", "count_mismatch")
        if len(set(ids)) != len(ids):
            raise _Reject("ELV05", "essay_ids", "duplicate_item")
        if payload["expected_essay_count"] > MAX_ESSAYS:
            raise _Reject("ELV06", "expected_essay_count", "too_large")
    if correlation_id is None and isinstance(payload.get("correlation_id"), str):
        correlation_id = payload["correlation_id"]  # else the database generates one
    return Accepted(kind, payload, correlation_id, event_id)


# ---------------------------------------------------------------------------
# Stateful prediction
# ---------------------------------------------------------------------------

Stream = tuple[str, bytes | None, int]  # (kind, key, tie-breaker for unkeyed messages)


def identity(payload: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two registrations the same (SPEC section 3)."""
    return (
        payload["entity_id"],
        tuple(payload["essay_ids"]),
        payload["expected_essay_count"],
        payload["course_code"],
        payload["user_id"],
        payload.get("org_id"),
        payload.get("class_id"),
    )


@dataclass
class Item:
    """A content or failure as the database must store it (first accepted copy)."""

    key: str  # text_storage_id or file_upload_id
    payload: dict[str, Any]
    correlation_id: str | None
    event_id: str | None
    stream: Stream
    seq: int
    fields_certain: bool = True  # False when copies in different streams disagree


@dataclass
class BatchExpectation:
    batch_id: str
    registration: Accepted | None = None
    contents: dict[str, Item] = field(default_factory=dict)
    failures: dict[str, Item] = field(default_factory=dict)

    @property
    def registered(self) -> bool:
        return self.registration is not None

    @property
    def expected_count(self) -> int:
        return int(self.registration.payload["expected_essay_count"]) if self.registration else 0

    @property
    def essay_ids(self) -> list[str]:
        return list(self.registration.payload["essay_ids"]) if self.registration else []

    @property
    def complete(self) -> bool:
        return self.registered and len(self.contents) + len(self.failures) >= self.expected_count

    def counts(self) -> dict[str, tuple[int, int]]:
        """Each count of the final state as an inclusive range (lo, hi); lo == hi when
        SPEC rule 3 makes it independent of the order of delivery."""
        c, f = len(self.contents), len(self.failures)
        if not self.registered:
            exact = {"slots": 0, "filled": 0, "failed": 0, "empty": 0, "pending_content": c,
                     "pending_failures": f, "excess_content": 0, "excess_failures": 0,
                     "completion_events": 0}
            return {k: (v, v) for k, v in exact.items()}
        n = self.expected_count
        used = min(n, c + f)
        out = {
            "slots": (n, n),
            "empty": (n - used, n - used),
            "pending_content": (0, 0),
            "pending_failures": (0, 0),
            "completion_events": (int(self.complete), int(self.complete)),
            # what fits: filled + failed = used, filled <= c, failed <= f
            "filled": (max(0, used - f), min(c, used)),
            "failed": (max(0, used - c), min(f, used)),
        }
        out["excess_content"] = (c - out["filled"][1], c - out["filled"][0])
        out["excess_failures"] = (f - out["failed"][1], f - out["failed"][0])
        return out

    def deterministic_slots(self) -> list[str] | None:
        """Slot contents in slot order when they do not depend on delivery order: no
        failures and every content in one stream. Then slot k holds the k-th distinct
        content in stream order (pending ones are reconciled in arrival order) and the
        rest are excess: the order ``predict`` accepted them in (the ledger's). Returns
        the text_storage_ids of the filled slots, or None."""
        if not self.registered or self.failures:
            return None
        streams = {item.stream for item in self.contents.values()}
        if len(streams) > 1:
            return None
        return [i.key for i in list(self.contents.values())[: self.expected_count]]


@dataclass(frozen=True)
class Verdict:
    seq: int
    kind: str
    sqlstate: str | None  # None: applied (in effect: maybe as a duplicate)
    field: str | None = None
    reason: str = ""
    batch_id: str | None = None

    @property
    def applied(self) -> bool:
        return self.sqlstate is None


@dataclass
class Prediction:
    verdicts: list[Verdict]
    batches: dict[str, BatchExpectation]

    @property
    def rejected(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.sqlstate is not None]

    def totals(self) -> dict[str, int]:
        registered = [b for b in self.batches.values() if b.registered]
        return {
            "batches_registered": len(registered),
            "batches_complete": sum(1 for b in registered if b.complete),
            "slots": sum(b.expected_count for b in registered),
            "contents": sum(len(b.contents) for b in self.batches.values()),
            "failures": sum(len(b.failures) for b in self.batches.values()),
        }


def predict(messages: Iterable[tuple[int, str, bytes | None, bytes | None]]) -> Prediction:
    """``messages``: (seq, kind, key, value) in production order."""
    verdicts: list[Verdict] = []
    batches: dict[str, BatchExpectation] = {}
    registered: dict[str, tuple[tuple[Any, ...], Stream]] = {}
    owner: dict[str, tuple[str, Stream]] = {}

    for seq, kind, key, value in messages:
        stream: Stream = (kind, key, seq if key is None else -1)
        verdict = judge(kind, value)
        if isinstance(verdict, Rejection):
            verdicts.append(Verdict(seq, kind, verdict.sqlstate, verdict.field, verdict.reason))
            continue
        bid = verdict.batch_id
        if kind == "register":
            ident = identity(verdict.payload)
            if bid in registered:
                first_ident, first_stream = registered[bid]
                if ident != first_ident:
                    if first_stream != stream:
                        raise Ambiguous(f"seq {seq}: batch {bid!r} registered with two "
                                        "identities in different partitions")
                    verdicts.append(Verdict(seq, kind, "ELC01", "identity", "conflict", bid))
                    continue
                verdicts.append(Verdict(seq, kind, None, batch_id=bid))
                continue
            stolen = [owner[e] for e in verdict.payload["essay_ids"] if e in owner]
            if stolen:
                if any(s != stream for _, s in stolen):
                    raise Ambiguous(f"seq {seq}: batch {bid!r} claims essay ids of another "
                                    "batch registered in a different partition")
                verdicts.append(Verdict(seq, kind, "ELC02", "essay_ids", "owned", bid))
                continue
            registered[bid] = (ident, stream)
            for essay_id in verdict.payload["essay_ids"]:
                owner[essay_id] = (bid, stream)
            batch = batches.setdefault(bid, BatchExpectation(bid))
            batch.registration = verdict
            verdicts.append(Verdict(seq, kind, None, batch_id=bid))
            continue
        batch = batches.setdefault(bid, BatchExpectation(bid))
        ledger = batch.contents if kind == "content" else batch.failures
        id_field = "text_storage_id" if kind == "content" else "file_upload_id"
        item_key = str(verdict.payload[id_field])
        known = ledger.get(item_key)
        if known is None:
            ledger[item_key] = Item(item_key, verdict.payload, verdict.correlation_id,
                                    verdict.event_id, stream, seq)
        elif known.stream != stream and (known.payload != verdict.payload
                                         or known.correlation_id != verdict.correlation_id):
            known.fields_certain = False  # which copy is stored depends on partition order
        verdicts.append(Verdict(seq, kind, None, batch_id=bid))
    return Prediction(verdicts, batches)

