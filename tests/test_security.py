"""Security checks of SPEC section 6, on a freshly migrated database, plus a scan
of every Python file for SQL built from data.

* ``els_worker`` cannot read or write any table, view or sequence of ``els``
  directly (it works through the functions only);
* PUBLIC can execute nothing in ``els`` (and has no USAGE or CREATE on it);
* every SECURITY DEFINER function pins ``search_path`` to trusted schemas, with
  ``pg_temp`` last, never ``public`` or ``$user``, and is not owned by a superuser;
* a caller who shadows the catalog (functions, operators, tables, temp tables)
  with a hostile ``search_path`` cannot redirect any function the worker may call;
* no Python code passes SQL built from data (f-string, ``%``, ``.format()``,
  concatenation with non-literals) to ``execute()`` and friends or to
  ``psycopg.sql.SQL()``; ``psycopg.sql`` composition with ``Identifier`` is the way.
"""

from __future__ import annotations

import ast
import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from testkit import events
from testkit.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
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


# ---------------------------------------------------------------------------
# No SQL built from data in Python
# ---------------------------------------------------------------------------

EXECUTE_LIKE = {"execute", "executemany", "copy", "stream", "mogrify"}
SQL_CONSTRUCTORS = {"SQL"}  # psycopg.sql.SQL: its argument must be a literal template
SKIP_DIRS = {".venv", ".stack", ".git", "build", "__pycache__", ".mypy_cache", ".ruff_cache",
             ".pytest_cache", ".hypothesis", "node_modules"}

# Documented exceptions: (path, enclosing function, reason). Keep this short; every
# entry is a place where SQL is built from something that is not untrusted data.
ALLOWLIST: dict[tuple[str, str], str] = {
    ("tests/test_migrations.py", "empty_db_url"):
        "CREATE/DROP DATABASE of a uuid-generated name in a test fixture",
    ("tests/test_security.py", "_hostile_schema"):
        "trap functions and operators: names, argument and return types from constant lists "
        "in this test (operators and type lists cannot be passed as Identifier)",
}


def _is_sql_composition(node: ast.expr) -> bool:
    """``sql.SQL(...)``, ``SQL(...)``, ``sql.Identifier(...)``, ``sql.Composed(...)``."""
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in {"SQL", "Identifier", "Literal", "Composed", "Placeholder"}
    return False


class _Scanner:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.setdefault(node.name, []).append(node)

    def scope_of(self, node: ast.AST) -> ast.AST:
        cur = self.parents.get(node)
        while cur is not None and not isinstance(
            cur, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.Module
        ):
            cur = self.parents.get(cur)
        return cur or self.tree

    def function_name(self, node: ast.AST) -> str:
        scope = self.scope_of(node)
        while isinstance(scope, ast.Lambda):
            scope = self.scope_of(scope)
        return getattr(scope, "name", "<module>")

    def dynamic(self, node: ast.expr, scope: ast.AST, depth: int = 0) -> str | None:
        """Why ``node`` (an SQL argument) is built from data, or None."""
        if depth > 6:
            return None
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                # a constant spliced in (a name only ever bound to a literal) is no data
                if isinstance(part, ast.FormattedValue) and not self._static_name(
                        part.value, scope, depth):
                    return "f-string"
            return None
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Mod) and not _is_sql_composition(node.left):
                return "%-formatting"
            if isinstance(node.op, ast.Add):
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant):
                        continue
                    if isinstance(side, ast.Name | ast.BinOp | ast.JoinedStr | ast.Call):
                        reason = self.dynamic(side, scope, depth + 1)
                        if reason or not self._static_name(side, scope, depth):
                            return reason or "concatenation with a non-literal"
                    else:
                        return "concatenation with a non-literal"
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if node.func.attr == "format" and not _is_sql_composition(target):
                if isinstance(target, ast.Constant | ast.JoinedStr):
                    return ".format()"
                if isinstance(target, ast.Name) and self._static_name(target, scope, depth):
                    return ".format()"
            if node.func.attr == "join" and isinstance(target, ast.Constant):
                return "str.join()"
            return None
        if isinstance(node, ast.Name):
            return self._name_dynamic(node, scope, depth)
        if isinstance(node, ast.IfExp):
            return self.dynamic(node.body, scope, depth + 1) or self.dynamic(
                node.orelse, scope, depth + 1)
        return None

    def _assignments(self, name: str, scope: ast.AST) -> list[ast.expr]:
        out: list[ast.expr] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    out.append(node.value)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                if isinstance(node.target, ast.Name) and node.target.id == name and node.value:
                    if isinstance(node, ast.AugAssign):
                        out.append(ast.BinOp(left=ast.Name(id=name), op=node.op, right=node.value))
                    else:
                        out.append(node.value)
        return out

    def _static_name(self, node: ast.expr, scope: ast.AST, depth: int) -> bool:
        """True if ``node`` is a string literal or a name only ever bound to literals."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.Name):
            values = self._assignments(node.id, scope) or self._assignments(node.id, self.tree)
            return bool(values) and all(
                isinstance(v, ast.Constant) or (
                    isinstance(v, ast.BinOp) and self.dynamic(v, scope, depth + 1) is None)
                for v in values)
        return False

    def _name_dynamic(self, node: ast.Name, scope: ast.AST, depth: int) -> str | None:
        for value in self._assignments(node.id, scope):
            reason = self.dynamic(value, scope, depth + 1)
            if reason:
                return f"{reason} (via {node.id})"
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [a.arg for a in scope.args.posonlyargs + scope.args.args
                      + scope.args.kwonlyargs]
            if node.id in params:
                # a parameter: check what the callers in this module pass
                index = params.index(node.id)
                for call in ast.walk(self.tree):
                    if not isinstance(call, ast.Call):
                        continue
                    callee = call.func
                    callee_name = callee.attr if isinstance(callee, ast.Attribute) else getattr(
                        callee, "id", None)
                    if callee_name != scope.name:
                        continue
                    offset = 1 if params and params[0] in ("self", "cls") else 0
                    arg: ast.expr | None = None
                    if index - offset < len(call.args) and index - offset >= 0:
                        arg = call.args[index - offset]
                    for kw in call.keywords:
                        if kw.arg == node.id:
                            arg = kw.value
                    if arg is not None:
                        reason = self.dynamic(arg, self.scope_of(call), depth + 1)
                        if reason:
                            return f"{reason} (passed to {scope.name}({node.id}))"
        return None

    def findings(self) -> list[tuple[int, str, str]]:
        out: list[tuple[int, str, str]] = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in EXECUTE_LIKE and isinstance(func, ast.Attribute):
                query = node.args[0] if node.args else next(
                    (k.value for k in node.keywords if k.arg in ("query", "statement")), None)
            elif name in SQL_CONSTRUCTORS:
                query = node.args[0] if node.args else None
                if query is not None and not isinstance(query, ast.Constant):
                    if not (isinstance(query, ast.Name) and self._static_name(
                            query, self.scope_of(node), 0)):
                        out.append((node.lineno, self.function_name(node),
                                    f"{name}() of a non-literal"))
                        continue
            else:
                continue
            if query is None:
                continue
            reason = self.dynamic(query, self.scope_of(node))
            if reason:
                out.append((node.lineno, self.function_name(node), f"{name}(): {reason}"))
        return out


def scan_source(source: str) -> list[tuple[int, str, str]]:
    """(line, enclosing function, reason) for each SQL built from data in ``source``."""
    return _Scanner(ast.parse(source)).findings()


def python_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        files.append(path)
    return files


def test_no_python_code_builds_sql_from_data() -> None:
    files = python_files()
    assert any(p.name == "conftest.py" for p in files)
    findings: list[str] = []
    used_allowances: set[tuple[str, str]] = set()
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for line, function, reason in scan_source(path.read_text(encoding="utf-8")):
            if (rel, function) in ALLOWLIST:
                used_allowances.add((rel, function))
                continue
            findings.append(f"{rel}:{line} in {function}: {reason}")
    assert findings == [], "SQL built from data (use parameters or psycopg.sql):\n" + "\n".join(
        findings)
    stale = set(ALLOWLIST) - used_allowances
    assert not stale, f"allowlist entries that no longer match anything: {stale}"


BAD_SNIPPETS = {
    "f-string": 'cur.execute(f"SELECT * FROM t WHERE id = {user_id}")',
    "percent": 'conn.execute("SELECT * FROM t WHERE id = %s" % user_id)',
    "format": 'conn.execute("SELECT * FROM t WHERE id = {}".format(user_id))',
    "concat": 'conn.execute("SELECT * FROM t WHERE id = " + user_id)',
    "via variable": 'q = f"DELETE FROM t WHERE id = {x}"\nconn.execute(q)',
    "augmented": 'q = "SELECT 1"\nq += name\nconn.execute(q)',
    "sql.SQL of f-string": 'conn.execute(sql.SQL(f"SELECT {col} FROM t"))',
    "join": 'conn.execute(" AND ".join(conditions))',
    "executemany": 'cur.executemany("INSERT INTO %s VALUES (1)" % table, rows)',
    "through a helper": textwrap.dedent("""
        def run(conn, query):
            return conn.execute(query)
        def caller(conn, name):
            run(conn, f"SELECT * FROM {name}")
        """),
    "copy": 'cur.copy(f"COPY {table} TO STDOUT")',
}
GOOD_SNIPPETS = {
    "parameters": 'conn.execute("SELECT * FROM t WHERE id = %(id)s", {"id": user_id})',
    "identifier": 'conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))',
    "constant": 'QUERY = "SELECT 1"\nconn.execute(QUERY)',
    "literal concat": 'conn.execute("SELECT 1" " + 1")',
    "constants concat": 'A = "SELECT "\nB = "1"\nconn.execute(A + B)',
    "constant in f-string": 'COLS = "a, b"\nconn.execute(f"SELECT {COLS} FROM t")',
    "file": "cursor.execute(path.read_text())",
    "route table": 'conn.execute(self.routes[topic], {"event": text})',
}


@pytest.mark.parametrize("snippet", BAD_SNIPPETS.values(), ids=BAD_SNIPPETS.keys())
def test_scanner_flags_sql_built_from_data(snippet: str) -> None:
    assert scan_source(snippet), snippet


@pytest.mark.parametrize("snippet", GOOD_SNIPPETS.values(), ids=GOOD_SNIPPETS.keys())
def test_scanner_accepts_parameters_and_composition(snippet: str) -> None:
    assert scan_source(snippet) == [], snippet


def test_stack_fixture_is_available(stack: Stack) -> None:
    """The scanner tests need no database; this keeps the module's DB tests honest
    about which stack they ran against."""
    assert stack.database_url.startswith("postgresql://")
