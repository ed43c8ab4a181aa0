# shellcheck shell=bash
# The production-like ("ha") topology of scripts/stack.sh, sourced by it; see docs/HA.md.
#
#   PostgreSQL: pg_auto_failover (Debian package postgresql-15-auto-failover): one
#     monitor and two keepers, node1 and node2, each a PostgreSQL 15 cluster run by its
#     own `pg_autoctl run` supervisor. The standby is in the replication quorum, so the
#     primary runs with synchronous_standby_names = 'ANY 1 (<standby>)' and every commit
#     waits for the standby. SIGKILL of the primary's postmaster, or of its whole node,
#     makes the monitor promote the standby; the old primary's keeper pg_rewinds it and
#     it rejoins as the standby.
#   Kafka: three KRaft nodes, each broker+controller in one JVM (node ids 1..3, a static
#     three-voter controller quorum), from the same jars as the single-node stack;
#     default.replication.factor=3, min.insync.replicas=2.
#
# State (all under .stack/ha/, git-ignored):
#   .stack/ha/pg/{monitor,node1,node2}        PGDATA of each pg_auto_failover node
#   .stack/ha/pg/{monitor,node1,node2}.log    pg_autoctl (supervisor + postgres) output
#   .stack/ha/pg/{monitor,node1,node2}.pid    pid of the node's `pg_autoctl run`
#   .stack/ha/pg/xdg/                         pg_autoctl's config and state files
#   .stack/ha/pg/last-kill                    what pg-kill-primary killed, and when
#   .stack/ha/kafka/node{1,2,3}/              server.properties, data/, logs/, kafka.log, kafka.pid
# Ports are persisted in .stack/ports.env (ELS_HA_*_SAVED) and in the machine-wide registry.

HA="$STACK/ha"
HAPG="$HA/pg"
HAK="$HA/kafka"
PGCTL="$PGBIN/pg_ctl"
PG_AUTOCTL="${PG_AUTOCTL:-/usr/bin/pg_autoctl}"
HA_PG_NODES=(node1 node2)
HA_KAFKA_NODES=(1 2 3)
# how fast the monitor declares a primary dead (the defaults add up to ~30 s)
HA_MONITOR_CONF="pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 1000
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 4000
pgautofailover.startup_grace_period = 5000
pgautofailover.primary_demote_timeout = 10000"
# A primary's keeper that can reach neither the monitor nor its standby demotes its
# postgres after this many seconds; the monitor waits primary_demote_timeout (10 s,
# longer) before promoting when the old primary cannot confirm its demotion (its
# keeper died with it): no moment with two writable primaries. Defaults: 20 s / 30 s.
HA_KEEPER_PARTITION_TIMEOUT=5

# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------
HA_PORT_KEYS=(ELS_HA_PG_MONITOR_PORT ELS_HA_PG_NODE1_PORT ELS_HA_PG_NODE2_PORT
    ELS_HA_KAFKA1_PORT ELS_HA_KAFKA2_PORT ELS_HA_KAFKA3_PORT
    ELS_HA_KAFKA1_CONTROLLER_PORT ELS_HA_KAFKA2_CONTROLLER_PORT ELS_HA_KAFKA3_CONTROLLER_PORT)

ha_load_ports() {
    local k
    for k in "${HA_PORT_KEYS[@]}"; do
        printf -v "$k" '%s' ""
    done
    if [[ -f "$PORTS_FILE" ]]; then
        # shellcheck disable=SC1090
        source "$PORTS_FILE"
        for k in "${HA_PORT_KEYS[@]}"; do
            local saved="${k}_SAVED"
            printf -v "$k" '%s' "${!saved:-}"
        done
    fi
}

ha_ensure_ports() { # picks the missing HA ports (never one already taken) and persists them
    mkdir -p "$STACK"
    ha_load_ports
    load_ports
    local k taken=() changed=0
    for k in "${HA_PORT_KEYS[@]}"; do
        [[ -n "${!k}" ]] && taken+=("${!k}")
    done
    [[ -n "$PG_PORT" ]] && taken+=("$PG_PORT")
    [[ -n "$KAFKA_PORT" ]] && taken+=("$KAFKA_PORT")
    [[ -n "$KAFKA_CONTROLLER_PORT" ]] && taken+=("$KAFKA_CONTROLLER_PORT")
    for k in "${HA_PORT_KEYS[@]}"; do
        if [[ -z "${!k}" ]]; then
            local p
            p="$(pick_port "${taken[@]}")"
            printf -v "$k" '%s' "$p"
            taken+=("$p")
            register_port "$p"
            changed=1
        fi
    done
    if ((changed)); then
        local tmp="$PORTS_FILE.tmp"
        { [[ -f "$PORTS_FILE" ]] && grep -v '^ELS_HA_' "$PORTS_FILE"; } >"$tmp" || true
        [[ -s "$tmp" ]] || echo "# ports of this checkout's local stack (scripts/stack.sh); delete to re-pick" >"$tmp"
        for k in "${HA_PORT_KEYS[@]}"; do
            printf '%s_SAVED=%s\n' "$k" "${!k}" >>"$tmp"
        done
        mv "$tmp" "$PORTS_FILE"
        log "ha ports: pg monitor=$ELS_HA_PG_MONITOR_PORT node1=$ELS_HA_PG_NODE1_PORT" \
            "node2=$ELS_HA_PG_NODE2_PORT kafka=$ELS_HA_KAFKA1_PORT,$ELS_HA_KAFKA2_PORT,$ELS_HA_KAFKA3_PORT"
    fi
}

ha_require_ports() {
    ha_load_ports
    [[ -n "$ELS_HA_PG_NODE1_PORT" ]] || die "no HA ports in $PORTS_FILE yet: run 'scripts/stack.sh --ha up' first"
}

ha_pg_port() { # ha_pg_port NODE
    case "$1" in
    monitor) echo "$ELS_HA_PG_MONITOR_PORT" ;;
    node1) echo "$ELS_HA_PG_NODE1_PORT" ;;
    node2) echo "$ELS_HA_PG_NODE2_PORT" ;;
    *) die "unknown PostgreSQL node '$1' (monitor, node1, node2)" ;;
    esac
}

ha_kafka_port() { # ha_kafka_port N [controller]
    local k="ELS_HA_KAFKA${1}_PORT"
    [[ "${2:-}" == controller ]] && k="ELS_HA_KAFKA${1}_CONTROLLER_PORT"
    [[ -n "${!k:-}" ]] || die "unknown Kafka node '$1' (1, 2, 3)"
    echo "${!k}"
}

ha_bootstrap() {
    local n out=""
    for n in "${HA_KAFKA_NODES[@]}"; do
        out+="${out:+,}127.0.0.1:$(ha_kafka_port "$n")"
    done
    echo "$out"
}

ha_pg_hosts() {
    echo "127.0.0.1:$ELS_HA_PG_NODE1_PORT,127.0.0.1:$ELS_HA_PG_NODE2_PORT"
}

# ---------------------------------------------------------------------------
# PostgreSQL: pg_auto_failover
# ---------------------------------------------------------------------------
ha_pg_resolve_dir() { # .stack/ha/pg may be a symlink (see pg_prepare_dir)
    if [[ -L "$HA/pg" ]]; then
        HAPG="$(readlink -f "$HA/pg")"
    fi
}

ha_pg_prepare_dir() {
    [[ -e "$HAPG" ]] && return 0
    mkdir -p "$HA"
    if ((IS_ROOT)); then
        install -d -o postgres -g postgres -m 700 "$HAPG"
        if ! runuser -u postgres -- test -w "$HAPG"; then
            rmdir "$HAPG"
            local alt
            alt="/var/tmp/els-stack-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)/ha-pg"
            install -d -o postgres -g postgres -m 700 "$alt"
            ln -s "$alt" "$HA/pg"
            log "postgres cannot reach $HA; HA clusters live in $alt"
            ha_pg_resolve_dir
        fi
    else
        install -d -m 700 "$HAPG"
    fi
}

# pg_autoctl keeps its config and state under XDG dirs: keep them inside .stack/ha/pg
ha_autoctl() { # ha_autoctl ARGS... (foreground, as the cluster owner)
    as_pg env XDG_CONFIG_HOME="$HAPG/xdg/config" XDG_DATA_HOME="$HAPG/xdg/data" \
        XDG_RUNTIME_DIR="$HAPG/xdg/run" "$PG_AUTOCTL" "$@"
}

re_quote() { printf '%s' "$1" | sed -e 's/[]\/$*.^[]/\\&/g'; }

# pid of the `pg_autoctl run --pgdata <dir>` supervisor of NODE (exact command line)
ha_pg_supervisor_pid() {
    pgrep -f -x -- "(/usr/bin/)?pg_autoctl run --pgdata $(re_quote "$HAPG/$1")" || true
}

# every process of NODE's session (supervisor, its services, postgres and its children)
ha_pg_session_pids() {
    local sid
    sid="$(ha_pg_supervisor_pid "$1" | head -n1)"
    [[ -n "$sid" ]] || return 0
    pgrep -s "$sid" || true
}

ha_pg_postmaster_pid() { # ha_pg_postmaster_pid NODE (empty if not running)
    local f="$HAPG/$1/postmaster.pid" pid
    [[ -f "$f" ]] || return 0
    pid="$(head -n1 "$f" 2>/dev/null || true)"
    [[ -n "$pid" ]] && pid_alive "$pid" && echo "$pid"
    return 0
}

ha_pg_running() { [[ -n "$(ha_pg_supervisor_pid "$1")" ]]; }

ha_pg_start() { # ha_pg_start NODE: `pg_autoctl run` in its own session, in the background
    local node="$1" logf="$HAPG/$1.log"
    if ha_pg_running "$node"; then
        return 0
    fi
    local env=(XDG_CONFIG_HOME="$HAPG/xdg/config" XDG_DATA_HOME="$HAPG/xdg/data"
        XDG_RUNTIME_DIR="$HAPG/xdg/run")
    log "starting pg_autoctl $node (log: $logf)"
    if ((IS_ROOT)); then
        # setpriv execs (no lingering runuser parent); setsid: outlives the caller
        (cd / && exec setsid nohup setpriv --reuid=postgres --regid=postgres --init-groups \
            env HOME=/var/lib/postgresql "${env[@]}" "$PG_AUTOCTL" run --pgdata "$HAPG/$node" \
            >>"$logf" 2>&1 </dev/null &)
    else
        (exec setsid nohup env "${env[@]}" "$PG_AUTOCTL" run --pgdata "$HAPG/$node" \
            >>"$logf" 2>&1 </dev/null &)
    fi
    local i pid=""
    for ((i = 0; i < 50; i++)); do
        pid="$(ha_pg_supervisor_pid "$node" | head -n1)"
        [[ -n "$pid" ]] && break
        sleep 0.1
    done
    [[ -n "$pid" ]] || {
        tail -n 30 "$logf" >&2
        die "pg_autoctl $node did not start"
    }
    echo "$pid" >"$HA/pg-$node.pid"
}

ha_pg_stop() { # ha_pg_stop NODE: SIGTERM to the supervisor (stops postgres), then wait
    local node="$1" pids pm sup
    pm="$(ha_pg_postmaster_pid "$node")"
    sup="$(ha_pg_supervisor_pid "$node" | head -n1)"
    pids="$(
        ha_pg_session_pids "$node"
        if [[ -n "$pm" ]]; then
            echo "$pm"
            pgrep -P "$pm" || true
        fi
    )"
    pids="$(echo "$pids" | sort -u | xargs)"
    if [[ -z "$pids" ]]; then
        rm -f "$HA/pg-$node.pid"
        return 0
    fi
    log "stopping pg_autoctl $node"
    if [[ -n "$sup" ]]; then
        kill -TERM "$sup" 2>/dev/null || true
    else # a postmaster without its supervisor
        as_pg "$PGCTL" -D "$HAPG/$node" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
    # shellcheck disable=SC2086
    if ! wait_pids_gone 60 $pids; then
        log "pg_autoctl $node did not stop within 60 s: SIGKILL"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_pids_gone 10 $pids || log "warning: processes of $node still present"
    fi
    rm -f "$HA/pg-$node.pid"
}

ha_psql() { # ha_psql PORT DB [USER] -- SQL: one value, unaligned
    local port="$1" db="$2" user="${3:-postgres}" sql="$4"
    "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$port" -U "$user" -d "$db" \
        -v ON_ERROR_STOP=1 -c "$sql" 2>/dev/null
}

ha_monitor_uri() {
    echo "postgres://autoctl_node@127.0.0.1:$ELS_HA_PG_MONITOR_PORT/pg_auto_failover?sslmode=disable"
}

# lines "name|port|reported state|assigned state|health" from the monitor
ha_pg_states() {
    "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$ELS_HA_PG_MONITOR_PORT" -U autoctl_node \
        -d pg_auto_failover -c "SELECT nodename, nodeport, current_group_state,
            assigned_group_state, health FROM pgautofailover.current_state('default')
            ORDER BY nodename" 2>/dev/null
}

ha_pg_write_conf() { # ha_pg_write_conf NODE: our settings, included by postgresql.conf
    local node="$1" dir="$HAPG/$1" file tmp
    tmp="$(mktemp)"
    if [[ "$node" == monitor ]]; then
        file=els_stack_monitor.conf
        {
            echo "# written by scripts/stack.sh --ha on every start; edits are overwritten"
            echo "$HA_MONITOR_CONF"
            echo "log_timezone = 'UTC'"
        } >"$tmp"
    else
        file=els_stack.conf
        cat >"$tmp" <<EOF
# written by scripts/stack.sh --ha on every start; edits are overwritten.
# pg_auto_failover owns port, listen_addresses, replication and synchronous_standby_names
# (postgresql-auto-failover*.conf); this file only adds the stack's own settings.
max_connections = 200
shared_buffers = 128MB
fsync = on
synchronous_commit = on
full_page_writes = on
max_locks_per_transaction = 128
deadlock_timeout = 1s
log_lock_waits = on
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
log_min_error_statement = error
log_timezone = 'UTC'
timezone = 'UTC'
EOF
    fi
    if ((IS_ROOT)); then
        install -o postgres -g postgres -m 600 "$tmp" "$dir/$file"
    else
        install -m 600 "$tmp" "$dir/$file"
    fi
    rm -f "$tmp"
    if ! as_pg grep -q "^include_if_exists = '$file'" "$dir/postgresql.conf"; then
        as_pg sh -c "printf '%s\n' \"include_if_exists = '$file'\" >>'$dir/postgresql.conf'"
    fi
}

ha_wait_for() { # ha_wait_for TIMEOUT DESCRIPTION COMMAND...: polls COMMAND every 0.2 s
    local timeout="$1" what="$2" i
    shift 2
    for ((i = 0; i < timeout * 5; i++)); do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}

ha_monitor_ready() {
    [[ "$(ha_psql "$ELS_HA_PG_MONITOR_PORT" pg_auto_failover autoctl_node 'SELECT 1')" == 1 ]]
}

ha_node_state() { # ha_node_state NODE -> reported state of NODE on the monitor
    ha_pg_states | awk -F'|' -v n="$1" '$1 == n {print $3}'
}

ha_node_is() { # ha_node_is NODE STATE...
    local s
    s="$(ha_node_state "$1")"
    shift
    local want
    for want in "$@"; do
        [[ "$s" == "$want" ]] && return 0
    done
    return 1
}

# the formation is whole again: one primary and one secondary, as assigned, and the
# primary's commits wait for the standby (a synchronous standby is streaming)
ha_pg_healthy() {
    local states
    states="$(ha_pg_states)" || return 1
    [[ "$(echo "$states" | awk -F'|' '$3 == $4 && $5 == 1 {print $3}' | sort | tr '\n' ' ')" == "primary secondary " ]] || return 1
    local pport
    pport="$(echo "$states" | awk -F'|' '$3 == "primary" {print $2}')"
    [[ "$(ha_psql "$pport" postgres postgres "SELECT count(*) FROM pg_stat_replication
        WHERE sync_state IN ('sync', 'quorum') AND state = 'streaming'")" -ge 1 ]] 2>/dev/null
}

ha_pg_create_monitor() {
    [[ -f "$HAPG/monitor/PG_VERSION" ]] && return 0
    log "creating the pg_auto_failover monitor ($HAPG/monitor, port $ELS_HA_PG_MONITOR_PORT)"
    as_pg rm -rf "$HAPG/monitor" "$HAPG/xdg/config/pg_autoctl$HAPG/monitor" "$HAPG/xdg/data/pg_autoctl$HAPG/monitor"
    ha_autoctl create monitor --pgdata "$HAPG/monitor" --pgport "$ELS_HA_PG_MONITOR_PORT" \
        --pgctl "$PGCTL" --hostname 127.0.0.1 --auth trust --no-ssl \
        >>"$HAPG/monitor.log" 2>&1 </dev/null || {
        tail -n 30 "$HAPG/monitor.log" >&2
        die "pg_autoctl create monitor failed"
    }
    ha_autoctl config set --pgdata "$HAPG/monitor" postgresql.listen_addresses 127.0.0.1 >/dev/null
}

ha_pg_create_node() { # ha_pg_create_node NODE (the first becomes primary, the next its standby)
    local node="$1"
    [[ -f "$HAPG/$node/PG_VERSION" && -f "$HAPG/xdg/config/pg_autoctl$HAPG/$node/pg_autoctl.cfg" ]] && return 0
    log "creating pg_auto_failover node $node (port $(ha_pg_port "$node"))"
    as_pg rm -rf "$HAPG/$node" "$HAPG/xdg/config/pg_autoctl$HAPG/$node" "$HAPG/xdg/data/pg_autoctl$HAPG/$node"
    # --auth trust: loopback only, like the single-node stack; --no-ssl: loopback
    ha_autoctl create postgres --pgdata "$HAPG/$node" --pgport "$(ha_pg_port "$node")" \
        --pgctl "$PGCTL" --hostname 127.0.0.1 --listen 127.0.0.1 --name "$node" \
        --dbname els --username postgres --auth trust --no-ssl \
        --replication-quorum true --candidate-priority 50 \
        --monitor "$(ha_monitor_uri)" >>"$HAPG/$node.log" 2>&1 </dev/null || {
        tail -n 30 "$HAPG/$node.log" >&2
        die "pg_autoctl create postgres $node failed"
    }
}

ha_pg_keeper_conf() { # ha_pg_keeper_conf NODE: our keeper settings in its pg_autoctl.cfg
    local cur
    cur="$(ha_autoctl config get --pgdata "$HAPG/$1" timeout.network_partition_timeout 2>/dev/null || true)"
    if [[ "$cur" != "$HA_KEEPER_PARTITION_TIMEOUT" ]]; then
        ha_autoctl config set --pgdata "$HAPG/$1" timeout.network_partition_timeout \
            "$HA_KEEPER_PARTITION_TIMEOUT" >/dev/null
        # a running keeper rereads its configuration on SIGHUP
        local sup
        sup="$(ha_pg_supervisor_pid "$1" | head -n1)"
        [[ -n "$sup" ]] && kill -HUP "$sup" 2>/dev/null
    fi
    return 0
}

ha_pg_up() {
    ha_ensure_ports
    [[ -x "$PG_AUTOCTL" ]] || die "pg_autoctl not installed: run scripts/bootstrap.sh"
    ha_pg_prepare_dir
    ha_pg_create_monitor
    ha_pg_write_conf monitor
    if ha_pg_running monitor; then
        as_pg "$PGCTL" -D "$HAPG/monitor" reload >/dev/null 2>&1 || true
    fi
    ha_pg_start monitor
    ha_wait_for 60 monitor ha_monitor_ready || {
        tail -n 30 "$HAPG/monitor.log" >&2
        die "the monitor does not answer on $ELS_HA_PG_MONITOR_PORT"
    }
    local node first=1
    for node in "${HA_PG_NODES[@]}"; do
        if [[ ! -f "$HAPG/$node/PG_VERSION" ]]; then
            ha_pg_create_node "$node"
            ha_pg_write_conf "$node"
            ha_pg_keeper_conf "$node"
            ha_pg_start "$node"
            # the next node clones this one: wait until it is primary (or single)
            if ((first)); then
                ha_wait_for 120 "$node primary" ha_node_is "$node" single primary wait_primary ||
                    die "$node did not become primary (log: $HAPG/$node.log)"
            fi
        else
            ha_pg_write_conf "$node"
            ha_pg_keeper_conf "$node"
            ha_pg_start "$node"
        fi
        first=0
    done
    if ! ha_wait_for 180 "formation healthy" ha_pg_healthy; then
        ha_pg_states >&2 || true
        die "the PostgreSQL formation did not reach primary + synchronous secondary in 180 s"
    fi
    local p
    p="$(ha_pg_primary_port)"
    if [[ "$(ha_psql "$p" postgres postgres "SELECT 1 FROM pg_database WHERE datname = 'els'")" != 1 ]]; then
        ha_psql "$p" postgres postgres 'CREATE DATABASE els' >/dev/null
    fi
    log "postgres HA: primary $(ha_pg_primary_name) (monitor 127.0.0.1:$ELS_HA_PG_MONITOR_PORT)"
}

ha_pg_down() {
    ha_load_ports
    # the monitor first: no failover is started while the keepers stop; then the
    # standby, then the primary
    ha_pg_stop monitor
    local node
    for node in $(ha_pg_order_standby_first); do
        ha_pg_stop "$node"
    done
}

ha_pg_order_standby_first() {
    local node prim=""
    for node in "${HA_PG_NODES[@]}"; do
        local pid port
        pid="$(ha_pg_postmaster_pid "$node")"
        port="$(ha_pg_port "$node")"
        if [[ -n "$pid" && "$(ha_psql "$port" postgres postgres 'SELECT pg_is_in_recovery()')" == f ]]; then
            prim="$node"
        fi
    done
    for node in "${HA_PG_NODES[@]}"; do
        [[ "$node" != "$prim" ]] && echo "$node"
    done
    [[ -n "$prim" ]] && echo "$prim"
    return 0
}

ha_pg_primary_line() { # the monitor's primary: name|port|state (writable states only)
    ha_pg_states | awk -F'|' '($3 == "primary" || $3 == "wait_primary" || $3 == "single") &&
        ($4 == "primary" || $4 == "wait_primary" || $4 == "single") {print $1 "|" $2 "|" $3; exit}'
}
ha_pg_primary_name() { ha_pg_primary_line | cut -d'|' -f1; }
ha_pg_primary_port() { ha_pg_primary_line | cut -d'|' -f2; }

cmd_pg_primary() { # prints "<node> 127.0.0.1:<port> <state>" of the writable primary
    ha_require_ports
    local line port
    line="$(ha_pg_primary_line)"
    [[ -n "$line" ]] || die "no primary (monitor: $(ha_pg_states | tr '\n' ' '))"
    port="$(echo "$line" | cut -d'|' -f2)"
    [[ "$(ha_psql "$port" postgres postgres 'SELECT pg_is_in_recovery()')" == f ]] ||
        die "the monitor's primary $(echo "$line" | cut -d'|' -f1) is not accepting writes yet"
    echo "$line" | awk -F'|' '{print $1 " 127.0.0.1:" $2 " " $3}'
}

cmd_pg_kill_primary() { # [--postmaster-only]
    # Default: the primary's node dies whole (SIGKILL to its pg_autoctl supervisor, its
    # services and postgres), like a lost machine; the monitor promotes the standby.
    # The node stays down until `pg-wait-healthy` (or `up`) starts its keeper again,
    # which rewinds it and makes it the standby.
    # --postmaster-only: SIGKILL the postmaster alone. The keeper, still alive, restarts
    # it at once (crash recovery), usually before the monitor sees it gone: a local
    # restart of the same primary, or a failover when the monitor is quicker.
    ha_require_ports
    local node pid only=0
    [[ "${1:-}" == --postmaster-only ]] && only=1
    node="$(ha_pg_primary_name)"
    [[ -n "$node" ]] || die "no primary to kill"
    pid="$(ha_pg_postmaster_pid "$node")"
    [[ -n "$pid" ]] || die "$node has no running postmaster"
    local victims
    victims="$(
        echo "$pid"
        pgrep -P "$pid" || true
        ((only)) || ha_pg_session_pids "$node"
    )"
    victims="$(echo "$victims" | sort -u | xargs)"
    printf '%s %s\n' "$node" "$(date +%s.%N)" >"$HA/last-kill"
    if ((only)); then
        kill -KILL "$pid"
        log "SIGKILL postmaster $pid of primary $node"
    else
        # shellcheck disable=SC2086
        kill -KILL $victims 2>/dev/null || true
        log "SIGKILL primary $node: pg_autoctl and postgres (pids $victims)"
    fi
    # shellcheck disable=SC2086
    wait_pids_gone 30 $victims || log "warning: processes of $node still present"
    echo "$node"
}

ha_new_primary_ready() { # a primary other than $HA_OLD_PRIMARY, accepting writes
    local line name port
    line="$(ha_pg_primary_line)"
    [[ -n "$line" ]] || return 1
    name="$(echo "$line" | cut -d'|' -f1)"
    port="$(echo "$line" | cut -d'|' -f2)"
    [[ -z "$HA_OLD_PRIMARY" || "$name" != "$HA_OLD_PRIMARY" ]] || return 1
    [[ "$(ha_psql "$port" postgres postgres 'SELECT pg_is_in_recovery()')" == f ]]
}

cmd_pg_wait_failover() { # [TIMEOUT]: waits for a new writable primary after pg-kill-primary
    ha_require_ports
    local timeout="${1:-120}" killed_at=""
    HA_OLD_PRIMARY=""
    if [[ -f "$HA/last-kill" ]]; then
        read -r HA_OLD_PRIMARY killed_at <"$HA/last-kill"
    fi
    ha_wait_for "$timeout" failover ha_new_primary_ready || {
        ha_pg_states >&2 || true
        die "no new primary within ${timeout}s (killed: ${HA_OLD_PRIMARY:-nothing})"
    }
    local now
    now="$(date +%s.%N)"
    if [[ -n "$killed_at" ]]; then
        log "new primary $(ha_pg_primary_name) $(python3 -c "print(f'{$now - $killed_at:.1f}')") s after the kill of $HA_OLD_PRIMARY"
    fi
    rm -f "$HA/last-kill"
    ha_pg_primary_name
}

ha_pg_stuck_node() { # a node that cannot rejoin: demoted/catchingup (or worse) next to a writable primary
    ha_pg_states | awk -F'|' '
        $3 == "primary" || $3 == "wait_primary" { prim = 1 }
        $3 != "primary" && $3 != "wait_primary" && $3 != "secondary" { stuck = $1 }
        END { if (prim && stuck != "") print stuck }'
}

ha_pg_reclone() { # ha_pg_reclone NODE: drop NODE from the formation and clone it afresh
    # pg_autoctl 2.0 can hang rejoining an old primary that crashed: its "crash recovery
    # before pg_rewind" runs postgres as a standby of the new timeline and waits for WAL
    # that never comes. Rebuilding the node with pg_auto_failover's own commands (drop
    # node, create postgres = pg_basebackup from the primary) is the operator's way out.
    local node="$1"
    log "$node cannot rejoin (state $(ha_node_state "$node")): dropping and re-cloning it"
    local pids
    pids="$(
        ha_pg_session_pids "$node"
        ha_pg_postmaster_pid "$node"
    )"
    pids="$(echo "$pids" | sort -u | xargs)"
    if [[ -n "$pids" ]]; then # a hung keeper ignores SIGTERM: its data is thrown away anyway
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_pids_gone 30 $pids || true
    fi
    ha_autoctl drop node --monitor "$(ha_monitor_uri)" --formation default --name "$node" \
        --force >>"$HAPG/$node.log" 2>&1 </dev/null || log "warning: drop node $node failed"
    as_pg rm -rf "$HAPG/$node" "$HAPG/xdg/config/pg_autoctl$HAPG/$node" "$HAPG/xdg/data/pg_autoctl$HAPG/$node"
    ha_pg_create_node "$node"
    ha_pg_write_conf "$node"
    ha_pg_keeper_conf "$node"
    ha_pg_start "$node"
}

cmd_pg_wait_healthy() { # [TIMEOUT]: waits until primary + synchronous secondary again
    ha_require_ports
    local timeout="${1:-180}"
    # a keeper killed with its node is started again (a no-op when it runs)
    local node
    for node in monitor "${HA_PG_NODES[@]}"; do
        [[ -f "$HAPG/$node/PG_VERSION" ]] && ha_pg_start "$node"
    done
    # a node still not back after HA_REJOIN_PATIENCE seconds is re-cloned (once)
    local patience="${HA_REJOIN_PATIENCE:-30}"
    ((patience < timeout)) || patience="$timeout"
    if ! ha_wait_for "$patience" healthy ha_pg_healthy; then
        local stuck
        stuck="$(ha_pg_stuck_node)"
        if [[ -n "$stuck" ]]; then
            ha_pg_reclone "$stuck"
        fi
        ha_wait_for "$((timeout - patience + 60))" healthy ha_pg_healthy || {
            ha_pg_states >&2 || true
            die "formation not back to primary + synchronous secondary within ${timeout}s"
        }
    fi
    ha_pg_states | awk -F'|' '{print $1 " 127.0.0.1:" $2 " " $3}'
}

ha_pg_status() {
    local node rc=0
    for node in monitor "${HA_PG_NODES[@]}"; do
        if ha_pg_running "$node"; then
            echo "postgres $node: running  127.0.0.1:$(ha_pg_port "$node")  pg_autoctl pid=$(ha_pg_supervisor_pid "$node" | head -n1)"
        else
            echo "postgres $node: stopped"
            rc=1
        fi
    done
    if ((rc == 0)); then
        ha_pg_states | awk -F'|' '{printf "  %s: %s (assigned %s)\n", $1, $3, $4}'
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------
# Kafka: three KRaft nodes
# ---------------------------------------------------------------------------
ha_kafka_props() { echo "$HAK/node$1/server.properties"; }

ha_kafka_pids() { # ha_kafka_pids N: the JVM started with node N's server.properties
    pgrep -f -x -- "java .* kafka\.Kafka $(re_quote "$(ha_kafka_props "$1")")" || true
}

ha_kafka_write_props() { # ha_kafka_write_props N
    local n="$1" dir="$HAK/node$1" voters="" m
    for m in "${HA_KAFKA_NODES[@]}"; do
        voters+="${voters:+,}$m@127.0.0.1:$(ha_kafka_port "$m" controller)"
    done
    mkdir -p "$dir/data" "$dir/logs"
    cat >"$dir/server.properties.tmp" <<EOF
# written by scripts/stack.sh --ha; node $n of a three-node KRaft cluster, each node
# both broker and controller (static three-voter quorum)
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(ha_kafka_port "$n"),CONTROLLER://127.0.0.1:$(ha_kafka_port "$n" controller)
advertised.listeners=PLAINTEXT://127.0.0.1:$(ha_kafka_port "$n"),CONTROLLER://127.0.0.1:$(ha_kafka_port "$n" controller)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
log.retention.hours=24
log.segment.bytes=67108864
# a dead broker drops out of the ISR within 10 s (default 30 s)
replica.lag.time.max.ms=10000
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
EOF
    mv "$dir/server.properties.tmp" "$dir/server.properties"
}

ha_kafka_format() { # all three nodes, one cluster id, once
    local cid n
    if [[ -f "$HAK/cluster.id" ]]; then
        cid="$(cat "$HAK/cluster.id")"
    else
        cid="$(kafka_cluster_id)"
    fi
    for n in "${HA_KAFKA_NODES[@]}"; do
        [[ -f "$HAK/node$n/data/meta.properties" ]] && continue
        log "formatting KRaft storage of node $n (cluster id $cid)"
        java -cp "$KLIBS/*" -Dlog4j2.configurationFile="$KLOG4J" -Dkafka.logs.dir="$HAK/node$n/logs" \
            kafka.tools.StorageTool format -t "$cid" -c "$(ha_kafka_props "$n")" \
            >"$HAK/node$n/format.log" 2>&1 </dev/null || {
            cat "$HAK/node$n/format.log" >&2
            die "kafka storage format of node $n failed"
        }
    done
    printf '%s\n' "$cid" >"$HAK/cluster.id"
}

ha_kafka_start() { # ha_kafka_start N (no wait)
    local n="$1" dir="$HAK/node$1"
    [[ -n "$(ha_kafka_pids "$n")" ]] && return 0
    log "starting kafka node $n on 127.0.0.1:$(ha_kafka_port "$n") (log: $dir/kafka.log, $dir/logs/)"
    setsid nohup java -Xmx384m -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KLOG4J" -Dkafka.logs.dir="$dir/logs" \
        -cp "$KLIBS/*" kafka.Kafka "$(ha_kafka_props "$n")" >>"$dir/kafka.log" 2>&1 </dev/null &
    echo $! >"$dir/kafka.pid"
}

ha_kafka_wait() { # ha_kafka_wait TIMEOUT BROKERS: until the cluster's metadata lists BROKERS live brokers
    local timeout="$1" want="$2"
    "$VENV_PY" - "$(ha_bootstrap)" "$timeout" "$want" <<'EOF' || die "kafka cluster not ready"
import sys, time
from confluent_kafka.admin import AdminClient
bootstrap, timeout, want = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                     "socket.connection.setup.timeout.ms": 2000})
deadline = time.monotonic() + timeout
last = None
while time.monotonic() < deadline:
    try:
        md = admin.list_topics(timeout=3)
        last = sorted(md.brokers)
        if len(md.brokers) >= want:
            sys.exit(0)
    except Exception as exc:  # noqa: BLE001
        last = exc
    time.sleep(0.5)
sys.exit(f"kafka cluster {bootstrap}: want {want} live brokers within {timeout:.0f}s, got {last}")
EOF
}

ha_kafka_wait_node() { # ha_kafka_wait_node N present|absent TIMEOUT
    # present: node N answers on its own listener and the cluster lists it as a live
    # broker; absent: the cluster (asked through the other nodes) has fenced it
    local n="$1" want="$2" timeout="$3" m others=""
    for m in "${HA_KAFKA_NODES[@]}"; do
        [[ "$m" != "$n" ]] && others+="${others:+,}127.0.0.1:$(ha_kafka_port "$m")"
    done
    "$VENV_PY" - "$n" "$want" "$timeout" "127.0.0.1:$(ha_kafka_port "$n")" "$others" <<'EOF' || die "kafka node $n not $want"
import sys, time
from confluent_kafka.admin import AdminClient
n, want, timeout, own, others = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
conf = {"log_level": 0, "socket.connection.setup.timeout.ms": 2000}
deadline = time.monotonic() + timeout
last = None
while time.monotonic() < deadline:
    try:
        if want == "present":
            md = AdminClient({**conf, "bootstrap.servers": own}).list_topics(timeout=3)
            if n in md.brokers and md.orig_broker_id == n:
                sys.exit(0)
        else:
            md = AdminClient({**conf, "bootstrap.servers": others}).list_topics(timeout=3)
            if n not in md.brokers:
                sys.exit(0)
        last = sorted(md.brokers)
    except Exception as exc:  # noqa: BLE001
        last = exc
    time.sleep(0.5)
sys.exit(f"kafka node {n} still not {want} after {timeout:.0f}s: {last}")
EOF
}

ha_kafka_up() {
    ha_ensure_ports
    ensure_venv
    command -v java >/dev/null 2>&1 || die "java not installed: run scripts/bootstrap.sh"
    kafka_libs
    local n
    for n in "${HA_KAFKA_NODES[@]}"; do
        [[ -n "$(ha_kafka_pids "$n")" ]] || ha_kafka_write_props "$n"
    done
    ha_kafka_format
    for n in "${HA_KAFKA_NODES[@]}"; do
        ha_kafka_start "$n"
    done
    ha_kafka_wait 120 3
    log "kafka cluster ready: $(ha_bootstrap)"
}

ha_kafka_stop() { # ha_kafka_stop N [KILL]
    local n="$1" sig="${2:-TERM}" pids
    pids="$(ha_kafka_pids "$n")"
    [[ -n "$pids" ]] || {
        rm -f "$HAK/node$n/kafka.pid"
        return 0
    }
    log "$([[ "$sig" == KILL ]] && echo SIGKILL || echo stopping) kafka node $n (pid $(echo "$pids" | tr '\n' ' '))"
    # shellcheck disable=SC2086
    kill -"$sig" $pids 2>/dev/null || true
    local i
    for ((i = 0; i < 600; i++)); do
        [[ -z "$(ha_kafka_pids "$n")" ]] && break
        sleep 0.1
    done
    if [[ -n "$(ha_kafka_pids "$n")" ]]; then
        log "kafka node $n did not stop within 60 s: SIGKILL"
        # shellcheck disable=SC2046
        kill -KILL $(ha_kafka_pids "$n") 2>/dev/null || true
    fi
    # shellcheck disable=SC2086
    wait_pids_gone 10 $pids || log "warning: kafka node $n still present"
    rm -f "$HAK/node$n/kafka.pid"
}

ha_kafka_down() {
    ha_load_ports
    [[ -n "$ELS_HA_KAFKA1_PORT" ]] || return 0
    local n
    # in parallel: a lone remaining controller waits for a quorum that is gone
    for n in "${HA_KAFKA_NODES[@]}"; do
        local pids
        pids="$(ha_kafka_pids "$n")"
        # shellcheck disable=SC2086
        [[ -n "$pids" ]] && kill -TERM $pids 2>/dev/null
    done
    for n in "${HA_KAFKA_NODES[@]}"; do
        ha_kafka_stop "$n"
    done
}

ha_kafka_node_arg() {
    local n="${1:-}"
    [[ "$n" =~ ^[123]$ ]] || die "name a Kafka node: 1, 2 or 3"
    echo "$n"
}

cmd_kafka_kill_node() { # SIGKILL one broker
    ha_require_ports
    local n
    n="$(ha_kafka_node_arg "${1:-}")"
    ha_kafka_stop "$n" KILL
    # returns once the controller has fenced it (leaders moved), so that
    # kafka-leader answers for the cluster without it
    ha_kafka_wait_node "$n" absent 60
}

cmd_kafka_stop_node() {
    ha_require_ports
    local n
    n="$(ha_kafka_node_arg "${1:-}")"
    ha_kafka_stop "$n"
    ha_kafka_wait_node "$n" absent 60
}

cmd_kafka_start_node() { # start one broker again and wait until the cluster has all three
    ha_require_ports
    local n
    n="$(ha_kafka_node_arg "${1:-}")"
    ha_kafka_write_props "$n"
    ha_kafka_start "$n"
    ha_kafka_wait_node "$n" present 120
}

cmd_kafka_leader() { # TOPIC PARTITION -> node id of the partition's leader
    ha_require_ports
    [[ -n "${1:-}" && -n "${2:-}" ]] || die "usage: stack.sh --ha kafka-leader TOPIC PARTITION"
    "$VENV_PY" - "$(ha_bootstrap)" "$1" "$2" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
bootstrap, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
md = admin.list_topics(topic=topic, timeout=10)
t = md.topics.get(topic)
if t is None or t.error is not None or partition not in t.partitions:
    sys.exit(f"no topic {topic} partition {partition}: {t.error if t else 'unknown'}")
p = t.partitions[partition]
if p.leader < 0:
    sys.exit(f"{topic}[{partition}] has no leader (isr {p.isrs})")
print(p.leader)
print(f"{topic}[{partition}] leader {p.leader} replicas {p.replicas} isr {p.isrs}",
      file=sys.stderr)
EOF
}

ha_kafka_status() {
    local n rc=0 pids
    for n in "${HA_KAFKA_NODES[@]}"; do
        pids="$(ha_kafka_pids "$n")"
        if [[ -n "$pids" ]]; then
            echo "kafka node $n: running  127.0.0.1:$(ha_kafka_port "$n")  pid=$(echo "$pids" | tr '\n' ' ')"
        else
            echo "kafka node $n: stopped"
            rc=1
        fi
    done
    return "$rc"
}

# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
ha_cmd_status() {
    ha_load_ports
    [[ -n "$ELS_HA_PG_NODE1_PORT" ]] || {
        echo "ha: never started"
        return 1
    }
    local rc=0
    ha_pg_status || rc=1
    ha_kafka_status || rc=1
    return "$rc"
}

ha_cmd_env() {
    ha_require_ports
    local hosts
    hosts="$(ha_pg_hosts)"
    cat <<EOF
export ELS_STACK_TOPOLOGY=ha
export ELS_DATABASE_URL='postgresql://postgres@$hosts/els?target_session_attrs=read-write'
export ELS_PG_ADMIN_URL='postgresql://postgres@$hosts/postgres?target_session_attrs=read-write'
export ELS_PG_MONITOR_URL='$(ha_monitor_uri)'
export ELS_KAFKA_BOOTSTRAP=$(ha_bootstrap)
export ELS_TOPIC_REPLICATION_FACTOR=3
EOF
}

ha_main() {
    local cmd="${1:-}"
    shift || true
    ha_pg_resolve_dir
    case "$cmd" in
    up)
        ha_pg_up
        ha_kafka_up
        ha_cmd_status
        ;;
    down)
        demo_worker_down
        ha_kafka_down
        ha_pg_down
        log "ha stack stopped"
        ;;
    status) ha_cmd_status ;;
    env) ha_cmd_env ;;
    pg-up) ha_pg_up ;;
    pg-down) ha_pg_down ;;
    pg-primary) cmd_pg_primary ;;
    pg-kill-primary) cmd_pg_kill_primary "$@" ;;
    pg-wait-failover) cmd_pg_wait_failover "$@" ;;
    pg-wait-healthy) cmd_pg_wait_healthy "$@" ;;
    pg-state) ha_require_ports && ha_pg_states ;;
    kafka-up) ha_kafka_up ;;
    kafka-down) ha_kafka_down ;;
    kafka-kill) cmd_kafka_kill_node "$@" ;;
    kafka-stop) cmd_kafka_stop_node "$@" ;;
    kafka-start) cmd_kafka_start_node "$@" ;;
    kafka-leader) cmd_kafka_leader "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}
