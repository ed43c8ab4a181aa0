# shellcheck shell=bash
# Shared helpers for scripts that need a fresh, migrated database on the local stack.
# Source it; requires ROOT to be set. Defines: PSQL_ADMIN, fresh_db NAME, drop_db NAME, db_url NAME.

ELS_PG_BIN="/usr/lib/postgresql/15/bin"
eval "$("$ROOT/scripts/stack.sh" env)"
: "${ELS_PG_ADMIN_URL:?}"
PSQL_ADMIN=("$ELS_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$ELS_PG_ADMIN_URL")

db_url() { # db_url NAME -> postgresql URL of database NAME on the stack
    printf '%s/%s\n' "${ELS_PG_ADMIN_URL%/*}" "$1"
}

drop_db() {
    PGOPTIONS="-c client_min_messages=warning" "${PSQL_ADMIN[@]}" \
        -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null
}

fresh_db() { # fresh_db NAME: (re)create NAME and apply the migrations to it
    drop_db "$1"
    "${PSQL_ADMIN[@]}" -c "CREATE DATABASE \"$1\"" >/dev/null
    "$ROOT/.venv/bin/python" - "$(db_url "$1")" <<'PY'
import sys
import els_migrate
els_migrate.apply_migrations(sys.argv[1])
PY
}
