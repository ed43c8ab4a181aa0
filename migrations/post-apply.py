"""Post-apply hook: make the functions and views of schema els exactly those of sql/.

Every function and view in els is dropped, then every file of sql/ is loaded whole, in
one transaction (other sessions see the old set until the commit, then the new one).
So a function removed or renamed in sql/ disappears from every upgraded database, a
changed signature or return type needs no hand-written migration, and sql/ stays the
one source of truth for code (tables, types and data belong to the numbered
migrations; no table, default or trigger refers to a function, so nothing else
depends on what is dropped). Grants live beside each function in sql/ and come back
with it.

Runs as els_owner so that SECURITY DEFINER functions execute with the schema owner's
rights, not a superuser's. Each file is sent as one batch, so no client-side statement
splitting can cut a dollar-quoted body. Files load in name order; their numeric
prefixes encode dependencies.
"""

from pathlib import Path

from yoyo import step

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

DROP_CODE = """
DO $drop$
DECLARE
    v_objects text[];
    v_object text;
BEGIN
    -- names first: a CASCADE below may drop an object the list still holds
    SELECT array_agg(o.stmt ORDER BY o.stmt DESC) INTO v_objects
      FROM (SELECT 'VIEW ' || c.oid::regclass::text AS stmt
              FROM pg_catalog.pg_class AS c
             WHERE c.relnamespace = 'els'::regnamespace AND c.relkind IN ('v', 'm')
            UNION ALL
            SELECT 'FUNCTION ' || p.oid::regprocedure::text
              FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'els'::regnamespace AND p.prokind IN ('f', 'p')) AS o;
    FOREACH v_object IN ARRAY coalesce(v_objects, '{}') LOOP
        -- views first (DESC); CASCADE: BEGIN ATOMIC bodies depend on functions, and
        -- everything dropped comes back from sql/ below
        EXECUTE format('DROP %s IF EXISTS %s CASCADE', split_part(v_object, ' ', 1),
                       substr(v_object, strpos(v_object, ' ') + 1));
    END LOOP;
END
$drop$;
"""


def load_functions(conn: object) -> None:
    cursor = conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("SET LOCAL ROLE els_owner")
    cursor.execute(DROP_CODE)
    for path in sorted(SQL_DIR.glob("*.sql")):
        cursor.execute(path.read_text(encoding="utf-8"))
    cursor.execute("RESET ROLE")


steps = [step(load_functions)]
