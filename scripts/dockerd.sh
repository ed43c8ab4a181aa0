#!/usr/bin/env bash
# A Docker engine for `make test-compose`: started only when none answers, and stopped
# only if this script started it.
#
#   scripts/dockerd.sh up      start dockerd unless one answers on /var/run/docker.sock;
#                              prints "started" or "running" (which one it found)
#   scripts/dockerd.sh down    stop the dockerd that an `up` of this checkout started
#                              (no-op otherwise; a caller that found one running skips it)
#   scripts/dockerd.sh status
#
# State: .stack/dockerd/ (pid of the dockerd we started, its log). The engine's data root
# stays /var/lib/docker, so the images built by tests/compose/images/build.sh survive
# between runs and a second run does not rebuild them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.stack/dockerd"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"

log() { printf '[dockerd] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

engine_answers() { docker info >/dev/null 2>&1; }

our_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n "$pid" && -d "/proc/$pid" ]] && grep -qa dockerd "/proc/$pid/cmdline" || return 1
    printf '%s\n' "$pid"
}

up() {
    if engine_answers; then
        log "a Docker engine is running ($(docker version --format '{{.Server.Version}}'))"
        echo running
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd missing: run scripts/compose-deps.sh"
    mkdir -p "$STATE"
    log "starting dockerd (log: $LOG)"
    # setsid: the engine outlives make's process group until `down` stops it
    setsid nohup dockerd >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local i
    for ((i = 0; i < 120; i++)); do
        engine_answers && {
            log "dockerd ready ($(docker version --format '{{.Server.Version}}'), pid $(cat "$PIDFILE"))"
            echo started
            return 0
        }
        our_pid >/dev/null || break
        sleep 0.5
    done
    tail -n 30 "$LOG" >&2 || true
    die "dockerd did not come up"
}

down() {
    local pid i
    if ! pid="$(our_pid)"; then
        rm -f "$PIDFILE"
        log "no dockerd of ours running"
        return 0
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    # dockerd stops its containers (10 s each at most) and its containerd first
    for ((i = 0; i < 600; i++)); do
        [[ -d "/proc/$pid" ]] || break
        sleep 0.1
    done
    [[ -d "/proc/$pid" ]] && die "dockerd (pid $pid) still running after 60 s"
    rm -f "$PIDFILE"
    log "dockerd stopped"
}

case "${1:-}" in
up) up ;;
down) down ;;
status)
    if engine_answers; then
        if pid="$(our_pid)"; then log "running (started here, pid $pid)"; else log "running (not ours)"; fi
    else
        log "not running"
        exit 1
    fi
    ;;
*) die "usage: $0 up|down|status" ;;
esac
