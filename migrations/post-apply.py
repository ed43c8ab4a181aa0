"""Post-apply hook: (re)load every function and view file of sql/ whole.

Runs as els_owner so that SECURITY DEFINER functions execute with the schema
owner's rights, not a superuser's. Each file is sent as one batch, so no
client-side statement splitting can cut a dollar-quoted body. Files load in
name order; their numeric prefixes encode dependencies.
"""

from pathlib import Path

from yoyo import step

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def load_functions(conn: object) -> None:
    cursor = conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("SET LOCAL ROLE els_owner")
    for path in sorted(SQL_DIR.glob("*.sql")):
        cursor.execute(path.read_text(encoding="utf-8"))
    cursor.execute("RESET ROLE")


steps = [step(load_functions)]
