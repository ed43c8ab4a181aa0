"""No Python code passes SQL built from data (f-string, ``%``, ``.format()``,
concatenation with non-literals) to ``execute()`` and friends or to
``psycopg.sql.SQL()``; ``psycopg.sql`` composition with ``Identifier`` is the way.
A scan of every Python file of the repository, and of snippets the scanner must flag
or accept. The database's own security checks: tests/stack/test_security.py."""

from __future__ import annotations

import ast
import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
    ("tests/stack/test_migrations.py", "empty_db_url"):
        "CREATE/DROP DATABASE of a uuid-generated name in a test fixture",
    ("tests/stack/test_security.py", "_hostile_schema"):
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
    """Every Python file of the repository, not descending into SKIP_DIRS (.stack/ changes
    under the scan while other tests run: Kafka deletes topic directories)."""
    files: list[Path] = []
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files.extend(Path(top) / n for n in names if n.endswith(".py"))
    return sorted(files)


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
