#!/usr/bin/env bash
# Idempotent installer for the local development / CI stack.
#
#   1. Debian packages (PostgreSQL 15 + pgTAP + plpgsql_check + pg_cron + PL/Proxy, Java 17, Maven,
#      Prometheus with promtool),
#      installed with apt only when something is missing (and only as root;
#      otherwise it prints what to install and fails).
#   2. A Python virtualenv in .venv with the project installed editable ('.[dev,bench]').
#      Skipped when the stamp (hash of pyproject.toml + python version) matches.
#
# Safe to run any number of times; a no-op run takes well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PGVER=15
PGBIN="/usr/lib/postgresql/${PGVER}/bin"
PGEXT="/usr/share/postgresql/${PGVER}/extension"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# 1. system packages
# ---------------------------------------------------------------------------
missing=()
[[ -x "$PGBIN/initdb" && -x "$PGBIN/pg_ctl" ]] || missing+=("postgresql-${PGVER}")
[[ -x "$PGBIN/psql" ]] || missing+=("postgresql-client-${PGVER}")
[[ -f "$PGEXT/pgtap.control" ]] || missing+=("postgresql-${PGVER}-pgtap")
[[ -f "$PGEXT/plpgsql_check.control" ]] || missing+=("postgresql-${PGVER}-plpgsql-check")
[[ -f "$PGEXT/pg_cron.control" ]] || missing+=("postgresql-${PGVER}-cron")
# partitions past one primary (scripts/stack.sh --partitions N, docs/SCALING.md)
[[ -f "$PGEXT/plproxy.control" ]] || missing+=("postgresql-${PGVER}-plproxy")
# the HA topology (scripts/stack.sh --ha, docs/HA.md): pg_auto_failover's monitor + keepers
[[ -x /usr/bin/pg_autoctl && -f "$PGEXT/pgautofailover.control" ]] ||
    missing+=("postgresql-${PGVER}-auto-failover")
command -v pg_prove >/dev/null 2>&1 || missing+=("libtap-parser-sourcehandler-pgtap-perl")
command -v java >/dev/null 2>&1 || missing+=("openjdk-17-jre-headless")
command -v mvn >/dev/null 2>&1 || missing+=("maven")
command -v make >/dev/null 2>&1 || missing+=("make")
# local stack's Prometheus + promtool (alert rule tests); curl drives its HTTP API
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=("prometheus")
command -v curl >/dev/null 2>&1 || missing+=("curl")
"${PYTHON:-python3}" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("python3-venv")

if ((${#missing[@]})); then
    if [[ "$(id -u)" -eq 0 ]]; then
        log "installing missing packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    else
        log "missing system packages: ${missing[*]}"
        log "install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
else
    log "system packages present"
fi

# ---------------------------------------------------------------------------
# 2. python virtualenv
# ---------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.els-bootstrap-stamp"
want="$(
    {
        sha256sum pyproject.toml
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "venv up to date ($VENV)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
log "installing project into venv: pip install -e '.[dev,bench]'"
"$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev,bench]'
printf '%s\n' "$want" >"$STAMP"
log "venv ready"
