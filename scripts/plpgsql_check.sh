#!/usr/bin/env bash
# Static analysis of every PL/pgSQL function in schema els with the plpgsql_check
# extension (fatal_errors off, extra_warnings on), in a fresh migrated database, and of
# those of a partition (els, els_cluster) and of the proxy (els, els_proxy) of SPEC 9.
# Trigger functions are checked against each table that uses them. Any reported
# row fails the script; the rows are printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/_db.sh
source "$ROOT/scripts/_db.sh"

DB="els_plpgsql_check_$$"
# the topology of SPEC 9 too: two partitions behind a proxy, built by worker.py migrate,
# so that the proxy's builder (els_proxy), the claims' bridges and the PL/Proxy cluster
# (els_cluster) are checked where they run
PARTS=("${DB}_p0" "${DB}_p1")
PROXY="${DB}_proxy"
trap 'for d in "$DB" "${PARTS[@]}" "$PROXY"; do drop_db "$d" || true; done' EXIT

echo "plpgsql_check: migrating fresh database $DB" >&2
fresh_db "$DB"
echo "plpgsql_check: building ${PARTS[*]} behind $PROXY" >&2
for d in "${PARTS[@]}" "$PROXY"; do
    drop_db "$d"
    "${PSQL_ADMIN[@]}" -c "CREATE DATABASE \"$d\"" >/dev/null
done
if ! built="$(ELS_DATABASE_URL="$(db_url "$PROXY")" \
             ELS_PARTITION_URLS="$(db_url "${PARTS[0]}"),$(db_url "${PARTS[1]}")" \
             "$ROOT/.venv/bin/python" "$ROOT/worker.py" migrate 2>&1)"; then
    printf '%s\n' "$built" >&2
    exit 1
fi

check() { # check DB SCHEMA...: every PL/pgSQL function of the schemas, one problem a row
    local db="$1"; shift
    local schemas
    schemas="$(printf "'%s'," "$@")"
    "$ELS_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -tA -F ' | ' "$(db_url "$db")" \
        <<SQL | sed "s/^/$db: /"
CREATE EXTENSION IF NOT EXISTS plpgsql_check;
CREATE TEMP TABLE targets AS
SELECT p.oid AS fn, coalesce(t.tgrelid, 0)::regclass AS rel
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
LEFT JOIN pg_catalog.pg_trigger t
       ON t.tgfoid = p.oid AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
WHERE n.nspname IN (${schemas%,}) AND l.lanname = 'plpgsql'
  -- trigger functions that no trigger uses cannot be checked without a relation
  AND (p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype OR t.tgrelid IS NOT NULL);
SELECT 'checked ' || count(DISTINCT fn) || ' function(s)' FROM targets;
SELECT tg.fn::regprocedure::text, c.msg
FROM targets tg
CROSS JOIN LATERAL plpgsql_check_function(
    tg.fn, relid => tg.rel, fatal_errors => false, extra_warnings => true) AS c(msg)
ORDER BY 1;
SQL
}

out="$(check "$DB" els; check "${PARTS[0]}" els els_cluster; check "$PROXY" els els_proxy)"
summary="$(grep ': checked ' <<<"$out" | paste -sd ';' -)"
problems="$(grep -v ': checked ' <<<"$out" || true)"
echo "plpgsql_check: $summary" >&2
if [[ -n "$problems" ]]; then
    echo "plpgsql_check: problems found:" >&2
    printf '%s\n' "$problems" >&2
    exit 1
fi
echo "plpgsql_check: no problems" >&2
