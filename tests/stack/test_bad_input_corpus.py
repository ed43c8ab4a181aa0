"""The bad-input corpus against the SQL functions directly (SPEC sections 2-4).

Every malformed variant of ``chaos.malformed.MALFORMED_VARIANTS`` (invalid JSON,
non-objects, broken envelopes, each required field missing, wrong types, lengths,
ranges, enums, misrouted event types, a 5 MB value, 10001 essays, conflicting
re-registrations, stolen essay ids, ...) is sent, as the role ``els_worker``, to
the function of its topic in a database that already holds a few registered
batches. Each one must raise the SQLSTATE the independent oracle
(``chaos.oracle``) predicts, with a one-line MESSAGE and a JSON object DETAIL
holding ``field`` and ``reason``, and must change nothing in any table.

Values PostgreSQL cannot take as jsonb at all (not UTF-8, not JSON, ``\\u0000``,
unpaired surrogates) never reach a function: the cast fails with a class 22 data
exception, which the worker reports as ELV01 (the chaos run checks that part).

Valid events whose every text field is an SQL-injection string must be applied
and stored verbatim.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from chaos.generator import Message, corpus
from chaos.world import INJECTIONS
from testkit import databases
from testkit.stack import Stack

CORPUS = corpus()

FUNCTIONS = {
    "register": "register_batch",
    "content": "provision_content",
    "failure": "record_validation_failure",
}
CALL = {kind: sql.SQL("SELECT els.{}(%(event)s::jsonb)").format(sql.Identifier(fn))
        for kind, fn in FUNCTIONS.items()}
CALL_BYTES = {
    kind: sql.SQL("SELECT els.{}(convert_from(%(event)s::bytea, 'UTF8')::jsonb)").format(
        sql.Identifier(fn))
    for kind, fn in FUNCTIONS.items()
}
# Reasons for which the oracle says PostgreSQL cannot even hold the value as jsonb.
NOT_JSONB = {"empty_value", "invalid_utf8", "invalid_json", "not_storable_as_jsonb"}


def _tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'els' AND c.relkind IN ('r', 'p') ORDER BY c.relname"
    ).fetchall()
    return [r[0] for r in rows]


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row of every table in schema els."""
    out: dict[str, tuple[int, str]] = {}
    for table in _tables(conn):
        query = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
            " FROM els.{} AS t"
        ).format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        out[table] = (row[0], row[1])
    return out


@pytest.fixture(scope="module")
def corpus_db(stack: Stack, template_db: str) -> Iterator[str]:
    """One database for the whole corpus, holding the registered victims of the cases."""
    with databases.clone(stack, template_db, f"test_corpus_{uuid.uuid4().hex[:12]}") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            for kind, _bid, value in CORPUS.setup:
                result = conn.execute(CALL[kind], {"event": value.decode()}).fetchone()
                assert result is not None and result[0]["outcome"] in ("registered", "assigned")
        yield url


def _call_as_worker(url: str, case: Message) -> psycopg.Error | dict[str, Any]:
    """Calls the function of the case's topic as els_worker; the error or the result."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE els_worker")
        value = case.value
        try:
            if value is None:
                row = conn.execute(CALL[case.kind], {"event": None}).fetchone()
            else:
                try:
                    text = value.decode("utf-8")
                except UnicodeDecodeError:
                    row = conn.execute(CALL_BYTES[case.kind], {"event": value}).fetchone()
                else:
                    row = conn.execute(CALL[case.kind], {"event": text}).fetchone()
        except psycopg.Error as exc:
            return exc
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


@pytest.mark.parametrize("case", [pytest.param(c, id=c.label) for c in CORPUS.cases])
def test_malformed_event_is_rejected_and_changes_nothing(corpus_db: str, case: Message) -> None:
    verdict = CORPUS.verdicts[case.seq]  # stateful: ELC01/ELC02 need the victims
    assert verdict.sqlstate == case.expect, f"the oracle says {verdict} for {case.label}"
    with psycopg.connect(corpus_db, autocommit=True) as conn:
        before = snapshot(conn)

    outcome = _call_as_worker(corpus_db, case)

    assert isinstance(outcome, psycopg.Error), (
        f"{case.label}: expected {case.expect}, but the event was applied: {outcome}")
    if case.value is not None and verdict.reason in NOT_JSONB:
        # the value never becomes jsonb: a data exception of the cast (class 22); the
        # worker dead-letters it as ELV01 with the original error in the detail
        assert (outcome.sqlstate or "").startswith("22"), (outcome.sqlstate, str(outcome))
    else:
        assert outcome.sqlstate == case.expect, (
            f"{case.label}: expected {case.expect}, got {outcome.sqlstate}: "
            f"{outcome.diag.message_primary} {outcome.diag.message_detail}")
        message = outcome.diag.message_primary or ""
        assert message and "\n" not in message, message
        detail = json.loads(outcome.diag.message_detail or "null")
        assert isinstance(detail, dict), outcome.diag.message_detail
        assert {"field", "reason"} <= detail.keys(), detail
        if verdict.field is not None and case.expect not in ("ELC01", "ELV01"):
            assert detail["field"] == verdict.field, (detail, verdict)
    with psycopg.connect(corpus_db, autocommit=True) as conn:
        assert snapshot(conn) == before, f"{case.label} changed a table"


def _stored(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> dict[str, Any]:
    cur = conn.execute(query, params)
    row = cur.fetchone()
    assert row is not None, (query, params)
    return dict(zip([c.name for c in cur.description or []], row, strict=True))


def test_injection_strings_are_applied_and_stored_verbatim(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET ROLE els_worker")
        for kind, event in CORPUS.injection:
            result = conn.execute(CALL[kind], {"event": json.dumps(event)}).fetchone()
            assert result is not None
            assert result[0]["outcome"] in ("registered", "assigned", "recorded"), result

    with psycopg.connect(db_url, autocommit=True) as conn:
        for kind, event in CORPUS.injection:
            data = event.get("data", event)
            bid = data["entity_id"]
            if kind == "register":
                row = _stored(conn, "SELECT batch_id, user_id, org_id, class_id, essay_ids,"
                              " metadata, student_prompt_ref, correlation_id,"
                              " registration_event_id, completed_at IS NOT NULL AS complete"
                              " FROM els.batch_tracker WHERE batch_id = %(b)s", {"b": bid})
                assert row["batch_id"] == bid
                assert row["user_id"] == data["user_id"]
                assert row["org_id"] == data["org_id"]
                assert row["class_id"] == data["class_id"]
                assert row["essay_ids"] == data["essay_ids"]
                assert row["metadata"] == data["metadata"]
                assert row["student_prompt_ref"] == data["student_prompt_ref"]
                assert row["correlation_id"] == event["correlation_id"]
                assert row["registration_event_id"] == event["event_id"]
                assert row["complete"]
                slots = conn.execute("SELECT essay_id FROM els.essay_slot WHERE batch_id = %(b)s"
                                     " ORDER BY slot_no", {"b": bid}).fetchall()
                assert [s[0] for s in slots] == data["essay_ids"]
                completion = _stored(conn, "SELECT envelope FROM els.event_outbox"
                                     " WHERE message_key = %(b)s AND event_type ="
                                     " 'BatchContentProvisioningCompleted'", {"b": bid})
                assert completion["envelope"]["data"]["user_id"] == data["user_id"]
                assert completion["envelope"]["correlation_id"] == event["correlation_id"]
            elif kind == "content":
                row = _stored(conn, "SELECT * FROM els.essay_content WHERE batch_id = %(b)s"
                              " AND text_storage_id = %(t)s",
                              {"b": bid, "t": data["text_storage_id"]})
                for name in ("file_upload_id", "original_file_name", "raw_file_storage_id",
                             "content_md5_hash", "correlation_id", "file_size_bytes"):
                    assert row[name] == data.get(name), (name, row[name], data.get(name))
                assert row["disposition"] == "assigned"
                assigned = _stored(conn, "SELECT envelope FROM els.event_outbox"
                                   " WHERE message_key = %(b)s AND event_type ="
                                   " 'EssaySlotAssigned'", {"b": bid})
                out = assigned["envelope"]["data"]
                assert out["text_storage_id"] == data["text_storage_id"]
                assert out["original_file_name"] == data["original_file_name"]
                assert out["file_upload_id"] == data["file_upload_id"]
            else:
                row = _stored(conn, "SELECT * FROM els.validation_failure WHERE batch_id = %(b)s"
                              " AND file_upload_id = %(f)s",
                              {"b": bid, "f": data["file_upload_id"]})
                for name in ("original_file_name", "validation_error_code",
                             "validation_error_detail", "raw_file_storage_id"):
                    assert row[name] == data.get(name), (name, row[name], data.get(name))
                assert row["correlation_id"] == event["correlation_id"]
                assert row["disposition"] == "assigned"
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM els.batch_tracker),"
            " (SELECT count(*) FROM els.essay_slot),"
            " (SELECT count(*) FROM els.event_outbox)").fetchone()
        # per batch: 2 slots (one filled, one failed), a slot-assigned and a completion event
        assert counts == (len(INJECTIONS), 2 * len(INJECTIONS), 2 * len(INJECTIONS))


# The screen of each kind (els._registration_ok, _content_ok, _failure_ok: the inlined
# test that lets a well-formed event skip its fault function) must never pass an event
# that has a fault, and should pass every well-formed one (or it is only slower).
SCREEN = sql.SQL("""
    SELECT CASE %(kind)s
               WHEN 'register' THEN
                   els._registration_ok(x.e, x.p, i.bad_ord, i.item_count, i.duplicate_id)
               WHEN 'content' THEN els._content_ok(x.e, x.p)
               ELSE els._failure_ok(x.e, x.p) END,
           CASE %(kind)s
               WHEN 'register' THEN
                   els._registration_fault(x.e, x.p, i.bad_ord, i.item_count, i.duplicate_id)
               WHEN 'content' THEN els._content_fault(x.e, x.p)
               ELSE els._failure_fault(x.e, x.p) END
      FROM (SELECT %(event)s::jsonb AS e, els._payload(%(event)s::jsonb) AS p) AS x
      CROSS JOIN LATERAL els._essay_id_items(x.p -> 'essay_ids') AS i
""")


def _screened(conn: psycopg.Connection[Any], kind: str, text: str) -> tuple[bool, Any]:
    row = conn.execute(SCREEN, {"kind": kind, "event": text}).fetchone()
    assert row is not None
    return bool(row[0]), row[1]


def test_screens_pass_no_event_with_a_fault_and_every_well_formed_one(db_url: str) -> None:
    checked = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        for case in CORPUS.cases:
            verdict = CORPUS.verdicts[case.seq]
            if case.value is None or verdict.reason in NOT_JSONB:
                continue  # never jsonb: the cast refuses it before any screen
            text = case.value.decode("utf-8")
            ok, fault = _screened(conn, case.kind, text)
            assert not (ok and fault is not None), f"{case.label}: screen passed {fault}"
            if case.expect in ("ELC01", "ELC02"):  # well-formed: refused for what it claims
                assert ok and fault is None, (case.label, fault)
            checked += 1
        for kind, event in CORPUS.injection:
            ok, fault = _screened(conn, kind, json.dumps(event))
            assert ok and fault is None, (kind, fault, event)
            checked += 1
    assert checked > 100
