"""The function files of sql/ as migrations/post-apply.py loads them: in the order of
their names, which must say where each file sits among the others."""

from __future__ import annotations

import re

import els_migrate


def test_function_files_sort_in_dependency_order() -> None:
    names = [p.name for p in sorted((els_migrate.MIGRATIONS_DIR.parent / "sql").glob("*.sql"))]
    assert names and all(re.match(r"^\d{3}_[a-z_]+\.sql$", n) for n in names), names
