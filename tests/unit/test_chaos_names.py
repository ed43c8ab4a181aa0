"""The chaos oracle is independent of what it judges: it imports nothing of the
worker's or the harness's (only the standard library), and the names it was written
with from the SPEC are the ones the contract and the harness use."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from chaos import names, oracle
from els_worker import contract

ORACLE = Path(oracle.__file__)


def test_the_oracle_imports_only_the_standard_library() -> None:
    imported = set()
    for node in ast.walk(ast.parse(ORACLE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported, "found no import at all: the scan is broken"
    assert imported <= sys.stdlib_module_names | {"__future__"}, imported


def test_the_oracle_names_what_the_contract_and_the_harness_name() -> None:
    kinds = {"register": contract.REGISTERED, "content": contract.CONTENT_PROVISIONED,
             "failure": contract.VALIDATION_FAILED}
    assert oracle.TOPIC_NAMES == {k: e.topic for k, e in kinds.items()} == names.TOPIC_NAMES
    assert (oracle.SHORT_NAMES == {k: e.short_name for k, e in kinds.items()}
            == names.SHORT_NAMES)
    assert oracle.COURSE_CODES == names.COURSE_CODES
    assert oracle.VALIDATION_ERROR_CODES == names.VALIDATION_ERROR_CODES
