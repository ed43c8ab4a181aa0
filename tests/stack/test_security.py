"""Security checks of SPEC section 6, on a freshly migrated database (the scan of every
Python file for SQL built from data: tests/unit/test_sql_from_data.py).

* ``els_worker`` cannot read or write any table, view or sequence of ``els``
  directly (it works through the functions only);
* PUBLIC can execute nothing in ``els`` (and has no USAGE or CREATE on it);
* every SECURITY DEFINER function pins ``search_path`` to trusted schemas, with
  ``pg_temp`` last, never ``public`` or ``$user``, and is not owned by a superuser;
* a caller who shadows the catalog (functions, operators, tables, temp tables)
  with a hostile ``search_path`` cannot redirect any function the worker may call;
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from testkit import events
from testkit.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
TRUSTED_SCHEMAS = {"pg_catalog", "pg_temp", "els"}


# ---------------------------------------------------------------------------
# Roles and privileges
# ---------------------------------------------------------------------------


def _els_relations(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT c.relname, c.relkind::text FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'els' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
            " ORDER BY c.relname"
        ).fetchall()
    ]


def test_worker_role_has_no_privilege_on_any_relation(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        "SELECT c.oid::regclass::text, p.priv FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',"
        "                         'REFERENCES', 'TRIGGER']) AS p(priv)"
        " WHERE n.nspname = 'els' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        "   AND (pg_catalog.has_table_privilege('els_worker', c.oid, p.priv)"
        "        OR pg_catalog.has_any_column_privilege('els_worker', c.oid,"
        "               CASE WHEN p.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')"
        "                    THEN p.priv ELSE 'SELECT' END))"
    ).fetchall()
    assert rows == []
    sequences = db.execute(
        "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'els' AND c.relkind = 'S'"
        "   AND (pg_catalog.has_sequence_privilege('els_worker', c.oid, 'USAGE')"
        "        OR pg_catalog.has_sequence_privilege('els_worker', c.oid, 'SELECT')"
        "        OR pg_catalog.has_sequence_privilege('els_worker', c.oid, 'UPDATE'))"
    ).fetchall()
    assert sequences == []
    create = db.execute(
        "SELECT pg_catalog.has_schema_privilege('els_worker', 'els', 'CREATE')").fetchone()
    assert create == (False,)


def test_worker_role_cannot_read_or_write_tables_directly(db: psycopg.Connection[Any]) -> None:
    """Tries every statement for real, as els_worker; each must be refused. The
    worker's one way in, the functions, must still work (else the test is vacuous)."""
    db.execute("SELECT els.register_batch(%(e)s::jsonb)",
               {"e": json.dumps(events.registration("sec-1", ["sec-1-e1"]))})
    relations = _els_relations(db)
    assert {name for name, _ in relations} >= {"batch_tracker", "essay_slot", "essay_content",
                                               "validation_failure", "event_outbox"}
    columns = {r[0]: r[1] for r in db.execute(
        "SELECT DISTINCT ON (c.relname) c.relname, a.attname FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
        "  AND NOT a.attisdropped AND a.attidentity = '' AND a.attgenerated = ''"
        " WHERE n.nspname = 'els' ORDER BY c.relname, a.attnum").fetchall()}
    refused: list[str] = []
    allowed: list[str] = []
    db.execute("SET ROLE els_worker")
    try:
        for name, relkind in relations:
            table = sql.Identifier("els", name)
            statements = [sql.SQL("SELECT * FROM {} LIMIT 1").format(table)]
            if relkind == "S":
                statements.append(sql.SQL("SELECT nextval({})").format(
                    sql.Literal(f"els.{name}")))
            elif relkind in ("r", "p"):
                column = sql.Identifier(columns[name])
                statements += [
                    sql.SQL("INSERT INTO {} DEFAULT VALUES").format(table),
                    sql.SQL("UPDATE {} SET {} = {} WHERE false").format(table, column, column),
                    sql.SQL("DELETE FROM {} WHERE false").format(table),
                ]
            if relkind in ("r", "p"):
                statements += [sql.SQL("TRUNCATE {}").format(table),
                               sql.SQL("COPY {} TO STDOUT").format(table)]
            for statement in statements:
                text = statement.as_string(db)
                try:
                    with db.transaction():
                        if text.startswith("COPY"):
                            with db.cursor().copy(statement) as copy:
                                for _ in copy:
                                    pass
                        else:
                            db.execute(statement)
                    allowed.append(text)
                except psycopg.errors.InsufficientPrivilege:
                    refused.append(text)
                except psycopg.Error as exc:  # anything but "permission denied" is a leak
                    allowed.append(f"{text} -> {exc.sqlstate} {exc}")
        result = db.execute("SELECT els.provision_content(%(e)s::jsonb)",
                            {"e": json.dumps(events.content("sec-1", "t1"))}).fetchone()
        assert result is not None and result[0]["outcome"] == "assigned"
    finally:
        db.execute("RESET ROLE")
    assert allowed == []
    assert len(refused) >= 5 * 6  # five tables, six statements each, and more


@pytest.fixture
def stranger(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A brand-new login role with no grant at all: what PUBLIC may do, it may do."""
    name = f"stranger_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_public_can_execute_nothing_in_els(db: psycopg.Connection[Any], stranger: str) -> None:
    public_grants = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'els' AND EXISTS ("
        "   SELECT FROM pg_catalog.aclexplode(coalesce(p.proacl,"
        "                                              pg_catalog.acldefault('f', p.proowner))) a"
        "   WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')"
    ).fetchall()
    assert public_grants == []
    executable = db.execute(
        "SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'els' AND pg_catalog.has_function_privilege(%(r)s, p.oid, 'EXECUTE')",
        {"r": stranger},
    ).fetchall()
    assert executable == []
    functions = db.execute(
        "SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n"
        " ON n.oid = p.pronamespace WHERE n.nspname = 'els'").fetchone()
    assert functions is not None and functions[0] >= 10  # the check saw the functions
    schema = db.execute(
        "SELECT pg_catalog.has_schema_privilege(%(r)s, 'els', 'USAGE'),"
        " pg_catalog.has_schema_privilege(%(r)s, 'els', 'CREATE')", {"r": stranger}).fetchone()
    assert schema == (False, False)

    # for real: even with USAGE on the schema, a role without grants cannot call anything
    db.execute(sql.SQL("GRANT USAGE ON SCHEMA els TO {}").format(sql.Identifier(stranger)))
    db.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(stranger)))
    try:
        for fn in ("register_batch", "provision_content", "record_validation_failure"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
                db.execute(sql.SQL("SELECT els.{}('{{}}'::jsonb)").format(sql.Identifier(fn)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
            db.execute("SELECT * FROM els.claim_outbox(1)")
    finally:
        db.execute("RESET ROLE")


def _search_path_items(setting: str) -> list[str]:
    return [item.strip().strip('"') for item in setting.split(",") if item.strip()]


def test_security_definer_functions_pin_a_trusted_search_path(
    db: psycopg.Connection[Any],
) -> None:
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, r.rolname, r.rolsuper"
        " FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " JOIN pg_catalog.pg_roles r ON r.oid = p.proowner"
        " WHERE n.nspname = 'els' AND p.prosecdef ORDER BY 1"
    ).fetchall()
    assert len(rows) >= 3, "no SECURITY DEFINER function found: the check would be vacuous"
    problems: list[str] = []
    for signature, config, owner, owner_is_superuser in rows:
        settings = dict(item.split("=", 1) for item in (config or []))
        if "search_path" not in settings:
            problems.append(f"{signature}: search_path not pinned")
            continue
        path = _search_path_items(settings["search_path"])
        untrusted = [s for s in path if s not in TRUSTED_SCHEMAS]
        if untrusted:
            problems.append(f"{signature}: untrusted schema(s) {untrusted} in {path}")
        if "pg_temp" not in path or path[-1] != "pg_temp":
            # an unlisted pg_temp is searched FIRST for relations
            problems.append(f"{signature}: pg_temp must be listed last, got {path}")
        if owner_is_superuser:
            problems.append(f"{signature}: owned by superuser {owner}")
    assert problems == []
    # the trusted schemas are really trusted: nobody but their owner may create in them
    creators = db.execute(
        "SELECT n.nspname, r.rolname FROM pg_catalog.pg_namespace n"
        " CROSS JOIN pg_catalog.pg_roles r"
        " WHERE n.nspname IN ('els', 'pg_catalog') AND NOT r.rolsuper"
        "   AND r.oid <> n.nspowner AND r.rolname IN ('els_worker', 'els_readonly')"
        "   AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE')"
    ).fetchall()
    assert creators == []


# ---------------------------------------------------------------------------
# A hostile search_path
# ---------------------------------------------------------------------------

# Catalog functions and operators the ingest, outbox and report functions use,
# shadowed in schema evil by traps that raise XX666. (name, arguments, return type)
SHADOWED_FUNCTIONS = [
    ("jsonb_typeof", "jsonb", "text"),
    ("length", "text", "integer"),
    ("left", "text, integer", "text"),
    ("now", "", "timestamptz"),
    ("gen_random_uuid", "", "uuid"),
    ("pg_advisory_xact_lock", "bigint", "void"),
    ("hashtextextended", "text, bigint", "bigint"),
    ("md5", "text", "text"),
    ("substr", "text, integer, integer", "text"),
    ("cardinality", "anyarray", "integer"),
    ("trunc", "numeric", "numeric"),
    ("to_char", "timestamptz, text", "text"),
    ("nextval", "regclass", "bigint"),
    ("jsonb_array_elements", "jsonb", "SETOF jsonb"),
    ("jsonb_build_array", "", "jsonb"),
    ("to_jsonb", "anyelement", "jsonb"),
    ("format", "text", "text"),
]
# (operator, left type, right type, trap function, its return type)
SHADOWED_OPERATORS = [
    ("=", "text", "text", "trap_text_eq", "boolean"),
    ("<>", "text", "text", "trap_text_ne", "boolean"),
    ("||", "text", "text", "trap_text_concat", "text"),
    ("=", "integer", "integer", "trap_int_eq", "boolean"),
    ("->>", "jsonb", "text", "trap_json_text", "text"),
    ("->", "jsonb", "text", "trap_json_get", "jsonb"),
    ("?", "jsonb", "text", "trap_json_has", "boolean"),
]
SHADOWED_TABLES = ["batch_tracker", "essay_slot", "essay_content", "validation_failure",
                   "event_outbox"]
TRAP_BODY = "BEGIN RAISE EXCEPTION USING ERRCODE = 'XX666', MESSAGE = 'hijacked'; END"


def _hostile_schema(conn: psycopg.Connection[Any]) -> None:
    """Creates, as the current role, schema evil full of traps that raise XX666.
    Names and types come from the constant lists above (see ALLOWLIST)."""
    conn.execute("CREATE SCHEMA evil")
    traps = [(name, args, returns) for name, args, returns in SHADOWED_FUNCTIONS]
    traps += [(fn, f"{left}, {right}", returns)
              for _, left, right, fn, returns in SHADOWED_OPERATORS]
    for name, args, returns in traps:
        params = ", ".join(f"a{i} {t.strip()}" for i, t in enumerate(args.split(",")) if t.strip())
        conn.execute(sql.SQL("CREATE FUNCTION evil.{}({}) RETURNS {} LANGUAGE plpgsql AS {}")
                     .format(sql.Identifier(name), sql.SQL(params), sql.SQL(returns),
                             sql.Literal(TRAP_BODY)))
    for op, left, right, fn, _ in SHADOWED_OPERATORS:
        conn.execute(sql.SQL("CREATE OPERATOR evil.{} (LEFTARG = {}, RIGHTARG = {},"
                             " FUNCTION = evil.{})").format(
            sql.SQL(op), sql.SQL(left), sql.SQL(right), sql.Identifier(fn)))
    for table in SHADOWED_TABLES:
        conn.execute(sql.SQL("CREATE TABLE evil.{} (batch_id text, essay_id text)").format(
            sql.Identifier(table)))
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (batch_id text, essay_id text)").format(
            sql.Identifier(table)))


@pytest.fixture
def attacker(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A login role that holds both els_worker and els_readonly and owns schema evil."""
    name = f"attacker_{uuid.uuid4().hex[:10]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE els_worker, els_readonly").format(
        sql.Identifier(name)))
    db.execute(sql.SQL("GRANT CREATE, TEMPORARY ON DATABASE {} TO {}").format(
        sql.Identifier(db.info.dbname), sql.Identifier(name)))
    try:
        yield name
    finally:
        db.execute("RESET ROLE")
        db.execute("RESET search_path")
        db.execute("DROP SCHEMA IF EXISTS evil CASCADE")
        db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_hostile_search_path_cannot_redirect_any_function(
    db: psycopg.Connection[Any], attacker: str
) -> None:
    db.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(attacker)))
    _hostile_schema(db)
    db.execute("SET search_path = evil, pg_catalog, public, pg_temp")
    # the traps work: an unqualified call in the caller's own session is redirected
    for probe in ("SELECT length('x'::text)", "SELECT 'a'::text = 'b'::text",
                  "SELECT '{}'::jsonb ->> 'a'::text", "SELECT now()"):
        with pytest.raises(psycopg.Error) as trapped, db.transaction():
            db.execute(probe)
        assert trapped.value.sqlstate == "XX666", (probe, trapped.value)

    ids = [f"hostile-e{i}" for i in range(2)]
    calls = [
        ("register_batch", events.registration("hostile", ids, class_id="c-1"), "registered"),
        ("provision_content", events.content("hostile", "t1"), "assigned"),
        ("record_validation_failure", events.failure("hostile", "u1"), "recorded"),
        ("provision_content", events.content("hostile", "t2"), "excess"),
        ("provision_content", events.content("pending-batch", "t3"), "pending"),
        ("register_batch", events.registration("hostile", ids, class_id="c-1"), "duplicate"),
    ]
    for fn, event, outcome in calls:
        row = db.execute(sql.SQL("SELECT els.{}(%(e)s::pg_catalog.jsonb)").format(
            sql.Identifier(fn)), {"e": json.dumps(event)}).fetchone()
        assert row is not None and row[0]["outcome"] == outcome, (fn, row)
    with pytest.raises(psycopg.Error) as conflict, db.transaction():
        db.execute("SELECT els.register_batch(%(e)s::pg_catalog.jsonb)",
                   {"e": json.dumps(events.registration("hostile", ids, user_id="other"))})
    assert conflict.value.sqlstate == "ELC01", conflict.value
    report = db.execute("SELECT els.batch_report('hostile'::pg_catalog.text)").fetchone()
    assert report is not None and report[0]["complete"] is True
    stuck = db.execute("SELECT els.stuck_batch_list()").fetchone()
    assert stuck is not None
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute("SELECT els.reconcile_batch('hostile'::pg_catalog.text)")  # a DBA's call only
    backlog = db.execute("SELECT * FROM els.outbox_backlog()").fetchone()
    assert backlog is not None and backlog[0] == 3  # slot assigned, excess, completion
    with db.transaction():
        claimed = db.execute("SELECT id FROM els.claim_outbox(10)").fetchall()
        ids = [r[0] for r in claimed]
        marked = db.execute(
            "SELECT els.mark_outbox_published(%(ids)s::pg_catalog.int8[], %(t)s::pg_catalog.text[],"
            " %(p)s::pg_catalog.int4[], %(o)s::pg_catalog.int8[])",
            {"ids": ids, "t": ["t"] * len(ids), "p": [0] * len(ids),
             "o": list(range(len(ids)))}).fetchone()
    assert marked is not None and marked[0] == 3
    eid = db.execute("SELECT els.stable_event_id('x'::pg_catalog.text, 'y'::pg_catalog.text),"
                     " els.output_topic('EssaySlotAssigned'::pg_catalog.text)").fetchone()
    assert eid is not None and eid[1] == "huleedu.els.essay.slot.assigned.v1"
    # nothing was written to the shadow tables
    for table in SHADOWED_TABLES:
        count = db.execute(sql.SQL("SELECT pg_catalog.count(*) FROM evil.{}").format(
            sql.Identifier(table))).fetchone()
        assert count == (0,)


def test_stack_fixture_is_available(stack: Stack) -> None:
    """The scanner tests need no database; this keeps the module's DB tests honest
    about which stack they ran against."""
    assert stack.database_url.startswith("postgresql://")
