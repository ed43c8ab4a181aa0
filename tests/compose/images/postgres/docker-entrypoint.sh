#!/bin/bash
# The official postgres image's entrypoint contract, in short: as root, fix the data
# directory's owner and drop to postgres; on an empty data directory run initdb with
# POSTGRES_USER / POSTGRES_PASSWORD, create POSTGRES_DB, run
# /docker-entrypoint-initdb.d/*.sql and *.sh against it on a server that listens on
# the socket only, stop it; then exec the command (postgres as PID 1, for signals).
set -Eeuo pipefail

if [[ "${1:0:1}" == "-" ]]; then
    set -- postgres "$@"
fi

if [[ "$1" == postgres && "$(id -u)" == 0 ]]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [[ "$1" == postgres && ! -s "$PGDATA/PG_VERSION" ]]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (as for the official image)}"
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
    # remote clients with a password, as the official image's pg_hba.conf
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
    psql=(psql -v ON_ERROR_STOP=1 --username "$user" --no-password --no-psqlrc)
    if [[ "$db" != postgres ]]; then
        "${psql[@]}" --dbname postgres -c "CREATE DATABASE \"$db\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
        *.sh) echo "running $f" && . "$f" ;;
        *.sql) echo "running $f" && "${psql[@]}" --dbname "$db" -f "$f" ;;
        *) [[ -e "$f" ]] && echo "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
