#!/usr/bin/env bash
# Static analysis of every PL/pgSQL function in schema els with the plpgsql_check
# extension (fatal_errors off, extra_warnings on), in a fresh migrated database.
# Trigger functions are checked against each table that uses them. Any reported
# row fails the script; the rows are printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/_db.sh
source "$ROOT/scripts/_db.sh"

DB="els_plpgsql_check_$$"
trap 'drop_db "$DB" || true' EXIT

echo "plpgsql_check: migrating fresh database $DB" >&2
fresh_db "$DB"

out="$("$ELS_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -tA -F ' | ' "$(db_url "$DB")" <<'SQL'
CREATE EXTENSION IF NOT EXISTS plpgsql_check;
CREATE TEMP TABLE targets AS
SELECT p.oid AS fn, coalesce(t.tgrelid, 0)::regclass AS rel
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
LEFT JOIN pg_catalog.pg_trigger t
       ON t.tgfoid = p.oid AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
WHERE n.nspname = 'els' AND l.lanname = 'plpgsql'
  -- trigger functions that no trigger uses cannot be checked without a relation
  AND (p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype OR t.tgrelid IS NOT NULL);
SELECT 'checked ' || count(DISTINCT fn) || ' function(s)' FROM targets;
SELECT tg.fn::regprocedure::text, c.msg
FROM targets tg
CROSS JOIN LATERAL plpgsql_check_function(
    tg.fn, relid => tg.rel, fatal_errors => false, extra_warnings => true) AS c(msg)
ORDER BY 1;
SQL
)"
summary="$(head -n1 <<<"$out")"
problems="$(tail -n +2 <<<"$out")"
echo "plpgsql_check: $summary" >&2
if [[ -n "$problems" ]]; then
    echo "plpgsql_check: problems found:" >&2
    printf '%s\n' "$problems" >&2
    exit 1
fi
echo "plpgsql_check: no problems" >&2
