#!/usr/bin/env bash
# Run every pgtap_tests/*.sql file with pg_prove against a fresh database that has
# the migrations applied (and the pgtap extension). Prints pg_prove's summary and
# exits nonzero on any failure. Extra arguments are passed to pg_prove (e.g. -v).
#
# Env: ELS_PGTAP_KEEP_DB=1 keeps the database afterwards for inspection.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/_db.sh
source "$ROOT/scripts/_db.sh"

shopt -s nullglob
tests=(pgtap_tests/*.sql)
if ((${#tests[@]} == 0)); then
    echo "pgtap: no pgtap_tests/*.sql files" >&2
    exit 1
fi

DB="els_pgtap_$$"
cleanup() {
    if [[ "${ELS_PGTAP_KEEP_DB:-0}" != 1 ]]; then
        drop_db "$DB" || true
    else
        echo "pgtap: kept database $DB" >&2
    fi
}
trap cleanup EXIT

echo "pgtap: migrating fresh database $DB" >&2
fresh_db "$DB"
"$ELS_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$(db_url "$DB")" \
    -c 'CREATE EXTENSION IF NOT EXISTS pgtap' >/dev/null

# pg_prove takes libpq settings from PG* variables
url="$(db_url "$DB")"
hostport="${url#postgresql://*@}"
hostport="${hostport%%/*}"
export PGHOST="${hostport%:*}" PGPORT="${hostport##*:}" PGUSER=postgres PGDATABASE="$DB"
pg_prove --ext .sql --failures "$@" "${tests[@]}"
