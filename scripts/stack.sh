#!/usr/bin/env bash
# Throwaway local stack for development and tests: a PostgreSQL 15 cluster, a
# single-node Kafka 4 (KRaft, broker+controller in one JVM) and a Prometheus (Debian's
# package) scraping the workers, all bound to 127.0.0.1 on ports picked once per
# checkout and persisted in .stack/ports.env.
#
# Usage: scripts/stack.sh [--ha | --partitions N] COMMAND [ARGS]
#   up              start PostgreSQL, Kafka and Prometheus (idempotent; fast when running)
#   down            stop all three; leaves no process behind (without --ha: both topologies)
#   status          print state; exit 0 only when all three are up
#   env             print `export ELS_...=...` lines (eval "$(scripts/stack.sh env)")
#   pg-up | pg-down | pg-restart | pg-kill          PostgreSQL only
#   kafka-up | kafka-down | kafka-restart | kafka-kill   Kafka only
#   (pg-kill / kafka-kill send SIGKILL: for chaos tests; the next *-up recovers)
#   prom-up | prom-down | prom-reload               Prometheus only (reload: POST /-/reload)
#   prom-target add NAME HOST:PORT   scrape a worker's /metrics (file-based discovery:
#                                    .stack/prometheus/targets/NAME.json, job els-worker)
#   prom-target remove NAME | prom-target list
#
# --ha (or ELS_STACK_TOPOLOGY=ha, the same switch) selects the production-like topology
# of docs/HA.md instead: PostgreSQL primary + synchronous standby under pg_auto_failover
# (a monitor and two keepers) and a three-node Kafka cluster, under .stack/ha/.
# It has up, down, status, env, pg-up, pg-down, kafka-up, kafka-down and:
#   pg-primary              print "<node> 127.0.0.1:<port> <state>" of the writable primary
#   pg-kill-primary         SIGKILL the primary's node, keeper and postgres (a lost machine:
#                           pg_auto_failover promotes the standby); --postmaster-only:
#                           the postmaster alone (its keeper restarts it, rarely a failover)
#   pg-wait-failover [S]    wait (S s, default 120) for the new primary; print its name
#   pg-wait-healthy [S]     (re)start dead keepers (the killed node rejoins as standby),
#                           wait for primary + synchronous standby again
#   pg-state                the monitor's view: name|port|reported|assigned|health
#   kafka-kill N            SIGKILL Kafka node N (1..3)
#   kafka-stop N            stop Kafka node N cleanly
#   kafka-start N           start Kafka node N again, wait for all three brokers
#   kafka-leader TOPIC P    print the node id leading partition P of TOPIC
#
# --partitions N (N a power of two) selects the topology of SPEC 9 and docs/SCALING.md on
# the same PostgreSQL cluster, Kafka and Prometheus: N partition databases els_part_0 ..
# els_part_<N-1> (each a full ELS database) behind the PL/Proxy database els_proxy. `up`
# creates what is missing and runs `worker.py migrate` (every partition, then the
# proxy); `env` prints ELS_DATABASE_URL (the proxy) and ELS_PARTITION_URLS; `status`
# lists them. Databases of one cluster keep the stack light; in production each
# partition is its own primary with its own standby (docs/SCALING.md).
#
# State lives in .stack/ (git-ignored):
#   .stack/ports.env             persisted ports
#   .stack/pg/data               cluster; log: .stack/pg/postgres.log
#   .stack/kafka/libs            broker jars (from scripts/kafka/pom.xml via Maven)
#   .stack/kafka/data            KRaft metadata + topic logs
#   .stack/kafka/kafka.log       JVM stdout/stderr; broker logs: .stack/kafka/logs/*.log
#   .stack/prometheus/prometheus.yml   generated on every prom-up (scrape and rule
#                                evaluation every 1 s; rules: monitoring/alerts.yml and
#                                .stack/prometheus/rules/*.yml); data: .stack/prometheus/data;
#                                log: .stack/prometheus/prometheus.log
#
# Environment: ELS_PG_PORT, ELS_KAFKA_PORT, ELS_KAFKA_CONTROLLER_PORT, ELS_PROMETHEUS_PORT
# override the persisted ports on `up` (the Kafka controller port is fixed once storage
# is formatted).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/.stack"
PORTS_FILE="$STACK/ports.env"
PGVER=15
PGBIN="/usr/lib/postgresql/${PGVER}/bin"
PGDIR="$STACK/pg"
PGDATA="$PGDIR/data"
PGLOG="$PGDIR/postgres.log"
KDIR="$STACK/kafka"
KLIBS="$KDIR/libs"
KPOM="$ROOT/scripts/kafka/pom.xml"
KLOG4J="$ROOT/scripts/kafka/log4j2.xml"
KPROPS="$KDIR/server.properties"
KPID="$KDIR/kafka.pid"
KOUT="$KDIR/kafka.log"
VENV_PY="$ROOT/.venv/bin/python"
PROMDIR="$STACK/prometheus"
PROMCONF="$PROMDIR/prometheus.yml"
PROMTARGETS="$PROMDIR/targets"
PROMRULES="$PROMDIR/rules"
PROMLOG="$PROMDIR/prometheus.log"
PROMPID="$PROMDIR/prometheus.pid"
PROMBIN="${ELS_PROMETHEUS_BIN:-/usr/bin/prometheus}"
ALERTS="$ROOT/monitoring/alerts.yml"
# ports already handed out to any checkout on this machine (avoid two clones colliding)
PORT_REGISTRY="${TMPDIR:-/tmp}/els-stack-ports.txt"

log() { printf '[stack] %s\n' "$*" >&2; }
die() {
    printf '[stack] ERROR: %s\n' "$*" >&2
    exit 1
}

IS_ROOT=0
[[ "$(id -u)" -eq 0 ]] && IS_ROOT=1

# Run a PostgreSQL server binary as the cluster owner (initdb/postgres refuse root).
as_pg() {
    if ((IS_ROOT)); then
        # cwd may be unreadable for postgres (checkout under /root): run from /
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# .stack/pg may be a symlink (see pg_prepare_dir): the postgres user must be given
# the real path, as it cannot traverse the checkout in that case.
pg_resolve_dir() {
    if [[ -L "$STACK/pg" ]]; then
        PGDIR="$(readlink -f "$STACK/pg")"
        PGDATA="$PGDIR/data"
        PGLOG="$PGDIR/postgres.log"
    fi
}

# process helpers: pid 1 here may reap orphans late, so a killed process can linger
# as a zombie (kill -0 still succeeds on it): treat zombies as dead, then wait them out.
pid_alive() {
    local st
    st="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

wait_pids_gone() { # wait_pids_gone TIMEOUT_SECONDS PID... (until not even a zombie is left)
    local timeout="$1" i p left
    shift
    for ((i = 0; i < timeout * 10; i++)); do
        left=0
        for p in "$@"; do
            [[ -e "/proc/$p" ]] && left=1
        done
        ((left)) || return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------
# ports
# ---------------------------------------------------------------------------
pick_port() { # pick_port EXCLUDED... -> prints a free port in 20000-29999
    python3 - "$PORT_REGISTRY" "$@" <<'EOF'
import os, random, socket, sys
registry, *excl = sys.argv[1:]
taken = {int(x) for x in excl} | {5432}
try:
    with open(registry) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0].isdigit():
                taken.add(int(parts[0]))
except FileNotFoundError:
    pass
rnd = random.SystemRandom()
for _ in range(500):
    port = rnd.randint(20000, 29999)
    if port in taken:
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit("no free port found")
EOF
}

register_port() {
    printf '%s %s\n' "$1" "$ROOT" >>"$PORT_REGISTRY" 2>/dev/null || true
}

load_ports() { # reads .stack/ports.env if present (no env overrides)
    PG_PORT="" KAFKA_PORT="" KAFKA_CONTROLLER_PORT="" PROM_PORT=""
    if [[ -f "$PORTS_FILE" ]]; then
        # shellcheck disable=SC1090
        source "$PORTS_FILE"
        PG_PORT="${ELS_PG_PORT_SAVED:-}"
        KAFKA_PORT="${ELS_KAFKA_PORT_SAVED:-}"
        KAFKA_CONTROLLER_PORT="${ELS_KAFKA_CONTROLLER_PORT_SAVED:-}"
        PROM_PORT="${ELS_PROMETHEUS_PORT_SAVED:-}"
    fi
}

ensure_ports() { # picks/persists ports, honouring ELS_*_PORT overrides
    mkdir -p "$STACK"
    load_ports
    local changed=0
    if [[ -n "${ELS_PG_PORT:-}" && "${ELS_PG_PORT}" != "$PG_PORT" ]]; then
        PG_PORT="$ELS_PG_PORT" changed=1
    fi
    if [[ -n "${ELS_KAFKA_PORT:-}" && "${ELS_KAFKA_PORT}" != "$KAFKA_PORT" ]]; then
        KAFKA_PORT="$ELS_KAFKA_PORT" changed=1
    fi
    if [[ -n "${ELS_KAFKA_CONTROLLER_PORT:-}" && "${ELS_KAFKA_CONTROLLER_PORT}" != "$KAFKA_CONTROLLER_PORT" ]]; then
        KAFKA_CONTROLLER_PORT="$ELS_KAFKA_CONTROLLER_PORT" changed=1
    fi
    if [[ -n "${ELS_PROMETHEUS_PORT:-}" && "${ELS_PROMETHEUS_PORT}" != "$PROM_PORT" ]]; then
        PROM_PORT="$ELS_PROMETHEUS_PORT" changed=1
    fi
    if [[ -z "$PG_PORT" ]]; then
        PG_PORT="$(pick_port)" changed=1
        register_port "$PG_PORT"
    fi
    if [[ -z "$KAFKA_PORT" ]]; then
        KAFKA_PORT="$(pick_port "$PG_PORT")" changed=1
        register_port "$KAFKA_PORT"
    fi
    if [[ -z "$KAFKA_CONTROLLER_PORT" ]]; then
        KAFKA_CONTROLLER_PORT="$(pick_port "$PG_PORT" "$KAFKA_PORT")" changed=1
        register_port "$KAFKA_CONTROLLER_PORT"
    fi
    if [[ -z "$PROM_PORT" ]]; then
        PROM_PORT="$(pick_port "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT")" changed=1
        register_port "$PROM_PORT"
    fi
    if ((changed)); then
        local ha_lines=""
        [[ -f "$PORTS_FILE" ]] && ha_lines="$(grep '^ELS_HA_' "$PORTS_FILE" || true)"
        cat >"$PORTS_FILE.tmp" <<EOF
# ports of this checkout's local stack (scripts/stack.sh); delete to re-pick
ELS_PG_PORT_SAVED=$PG_PORT
ELS_KAFKA_PORT_SAVED=$KAFKA_PORT
ELS_KAFKA_CONTROLLER_PORT_SAVED=$KAFKA_CONTROLLER_PORT
ELS_PROMETHEUS_PORT_SAVED=$PROM_PORT
EOF
        [[ -n "$ha_lines" ]] && printf '%s\n' "$ha_lines" >>"$PORTS_FILE.tmp"
        mv "$PORTS_FILE.tmp" "$PORTS_FILE"
        log "ports: postgres=$PG_PORT kafka=$KAFKA_PORT controller=$KAFKA_CONTROLLER_PORT prometheus=$PROM_PORT"
    fi
}

require_ports() {
    load_ports
    [[ -n "$PG_PORT" && -n "$KAFKA_PORT" ]] || die "no $PORTS_FILE yet: run 'scripts/stack.sh up' first"
}

ensure_venv() {
    if [[ ! -x "$VENV_PY" ]] || ! "$VENV_PY" -c 'import confluent_kafka, psycopg' 2>/dev/null; then
        log "venv missing or incomplete: running scripts/bootstrap.sh"
        "$ROOT/scripts/bootstrap.sh"
    fi
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
pg_postmaster_pid() {
    [[ -f "$PGDATA/postmaster.pid" ]] || return 0
    head -n1 "$PGDATA/postmaster.pid" 2>/dev/null || true
}

pg_running() {
    local pid
    pid="$(pg_postmaster_pid)"
    [[ -n "$pid" ]] && pid_alive "$pid"
}

pg_prepare_dir() {
    if [[ -e "$PGDIR" ]]; then
        return 0
    fi
    mkdir -p "$STACK"
    if ((IS_ROOT)); then
        mkdir -p "$PGDIR"
        chown postgres: "$PGDIR"
        chmod 700 "$PGDIR"
        if ! runuser -u postgres -- test -w "$PGDIR"; then
            # the checkout is not reachable by the postgres user (e.g. under /root):
            # keep the cluster elsewhere and link it in.
            rmdir "$PGDIR"
            local alt
            alt="/var/tmp/els-stack-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)/pg"
            mkdir -p "$alt"
            chown postgres: "$alt"
            chmod 700 "$alt"
            ln -s "$alt" "$PGDIR"
            log "postgres cannot reach $STACK; cluster lives in $alt"
            pg_resolve_dir
        fi
    else
        mkdir -p "$PGDIR"
        chmod 700 "$PGDIR"
    fi
}

# pg_cron (postgresql-15-cron, installed by scripts/bootstrap.sh) is preloaded when
# present, so that a DBA can schedule els.close_overdue_batches / els.purge_history
# in the database (docs/operations.md); its jobs run in database els (the one
# ELS_DATABASE_URL names), as background workers (no connection, no password).
PG_CRON_LIB="/usr/lib/postgresql/${PGVER}/lib/pg_cron.so"
pg_preload_libraries() {
    # pg_stat_statements: per-statement figures, nested ones too (bench/profile.py)
    if [[ -f "$PG_CRON_LIB" ]]; then
        printf 'pg_cron,'
    fi
    printf 'pg_stat_statements'
}

pg_write_conf() {
    local conf="$PGDATA/els_stack.conf"
    local tmp preload
    preload="$(pg_preload_libraries)"
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# written by scripts/stack.sh on every start; edits are overwritten
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
# durability stays on: chaos tests restart / kill the server
fsync = on
synchronous_commit = on
full_page_writes = on
# auto_explain is loadable per session (LOAD 'auto_explain'); pg_cron is preloaded
# when installed (it must be: it starts a background worker)
shared_preload_libraries = '$preload'
cron.database_name = 'els'
cron.use_background_workers = on
max_worker_processes = 16
max_locks_per_transaction = 128
deadlock_timeout = 1s
log_lock_waits = on
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
log_min_error_statement = error
log_timezone = 'UTC'
timezone = 'UTC'
EOF
    if ((IS_ROOT)); then
        install -o postgres -g postgres -m 600 "$tmp" "$conf"
    else
        install -m 600 "$tmp" "$conf"
    fi
    rm -f "$tmp"
    if ! as_pg grep -q "^include_if_exists = 'els_stack.conf'" "$PGDATA/postgresql.conf"; then
        as_pg sh -c "printf '%s\n' \"include_if_exists = 'els_stack.conf'\" >>'$PGDATA/postgresql.conf'"
    fi
}

pg_up() {
    ensure_ports
    [[ -x "$PGBIN/pg_ctl" ]] || die "PostgreSQL $PGVER not installed: run scripts/bootstrap.sh"
    if pg_running; then
        log "postgres already running on 127.0.0.1:$PG_PORT"
        pg_apply_conf
    else
        pg_prepare_dir
        if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
            log "initdb $PGDATA"
            as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust \
                --encoding=UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log" 2>&1 ||
                {
                    cat "$PGDIR/initdb.log" >&2
                    die "initdb failed"
                }
        fi
        pg_write_conf
        local old
        old="$(pg_postmaster_pid)"
        if [[ -n "$old" ]] && ! wait_pids_gone 30 "$old"; then
            die "old postmaster $old (zombie) still present after 30s"
        fi
        log "starting postgres on 127.0.0.1:$PG_PORT (log: $PGLOG)"
        if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 120 start >/dev/null; then
            tail -n 30 "$PGLOG" >&2 || true
            die "postgres did not start"
        fi
    fi
    local i
    for ((i = 0; i < 120; i++)); do
        "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres && break
        sleep 0.5
    done
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres ||
        {
            tail -n 30 "$PGLOG" >&2 || true
            die "postgres not accepting connections on $PG_PORT"
        }
    if [[ "$("$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "select 1 from pg_database where datname = 'els'")" != "1" ]]; then
        log "creating database els"
        "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
            -d postgres -c 'CREATE DATABASE els'
    fi
}

# A running cluster gets the current els_stack.conf too: reloaded, and restarted when
# a setting needs it (e.g. a cluster started before pg_cron was preloaded).
pg_apply_conf() {
    local psql=("$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres)
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres || return 0
    pg_write_conf
    "${psql[@]}" -c 'SELECT pg_reload_conf()' >/dev/null
    sleep 0.2 # the postmaster rereads the files asynchronously
    local pending
    pending="$("${psql[@]}" -c "SELECT string_agg(name, ' ') FROM pg_settings WHERE pending_restart")"
    if [[ -n "$pending" ]]; then
        log "restarting postgres for: $pending"
        if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -m fast -w -t 120 restart >/dev/null; then
            tail -n 30 "$PGLOG" >&2 || true
            die "postgres did not restart"
        fi
    fi
}

pg_down() {
    load_ports
    if pg_running; then
        local pid
        pid="$(pg_postmaster_pid)"
        log "stopping postgres"
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null ||
            as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 30 stop >/dev/null
        wait_pids_gone 10 "$pid" || true
    fi
}

pg_restart() {
    pg_down
    pg_up
}

pg_kill() {
    local pid children
    pid="$(pg_postmaster_pid)"
    if [[ -n "$pid" ]] && pid_alive "$pid"; then
        children="$(pgrep -P "$pid" | tr '\n' ' ' || true)"
        log "SIGKILL postmaster $pid"
        kill -KILL "$pid"
        # the children notice the dead postmaster and exit on their own; wait for all
        # shellcheck disable=SC2086
        wait_pids_gone 30 "$pid" $children || log "warning: postgres processes still present"
    fi
}

# ---------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------
# pids of JVMs started from *this* checkout's server.properties (exact path match)
# A KRaft cluster id (N of them with an argument): a random UUID in URL-safe base64,
# never starting with "-" (the storage tool would read it as an option; Kafka's own
# Uuid.randomUuid avoids it too).
kafka_cluster_id() {
    python3 - "${1:-1}" <<'PY'
import base64, sys, uuid
for _ in range(int(sys.argv[1])):
    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    print(cid)
PY
}

kafka_pids() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd="$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)" || continue
        case "$cmd" in
        *java*kafka.Kafka\ "$KPROPS"*) printf '%s\n' "${p#/proc/}" ;;
        esac
    done
}

kafka_running() {
    [[ -n "$(kafka_pids)" ]]
}

kafka_libs() {
    local want stamp="$KDIR/libs.stamp"
    want="$(sha256sum "$KPOM" | cut -d' ' -f1)"
    if [[ -d "$KLIBS" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "maven not installed: run scripts/bootstrap.sh"
    log "resolving Kafka jars with maven into $KLIBS"
    rm -rf "$KLIBS" "$KLIBS.tmp"
    mkdir -p "$KDIR"
    if ! (cd "$ROOT/scripts/kafka" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory="$KLIBS.tmp" -DincludeScope=runtime </dev/null) >"$KDIR/maven.log" 2>&1; then
        tail -n 40 "$KDIR/maven.log" >&2
        die "maven could not resolve the Kafka jars (see $KDIR/maven.log)"
    fi
    mv "$KLIBS.tmp" "$KLIBS"
    printf '%s\n' "$want" >"$stamp"
}

kafka_write_props() {
    mkdir -p "$KDIR/data" "$KDIR/logs"
    cat >"$KPROPS.tmp" <<EOF
# written by scripts/stack.sh; single combined broker+controller, KRaft mode
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KDIR/data
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
    mv "$KPROPS.tmp" "$KPROPS"
}

kafka_wait_ready() { # kafka_wait_ready TIMEOUT_SECONDS
    local timeout="$1"
    if ! "$VENV_PY" - "127.0.0.1:$KAFKA_PORT" "$timeout" "$KPID" <<'EOF'; then
import os, sys, time
from confluent_kafka.admin import AdminClient
bootstrap, timeout, pidfile = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + timeout
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                     "socket.connection.setup.timeout.ms": 2000})
last = None
while time.monotonic() < deadline:
    try:
        pid = int(open(pidfile).read().strip())
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError) as exc:
        sys.exit(f"kafka process is gone ({exc})")
    if state in ("Z", "X"):
        sys.exit("kafka process exited")
    try:
        md = admin.list_topics(timeout=3)
        if md.brokers:
            sys.exit(0)
    except Exception as exc:  # noqa: BLE001
        last = exc
    time.sleep(0.5)
sys.exit(f"kafka at {bootstrap} did not answer metadata within {timeout:.0f}s: {last}")
EOF
        log "---- tail $KOUT"
        tail -n 40 "$KOUT" >&2 || true
        log "---- tail $KDIR/logs/server.log"
        tail -n 40 "$KDIR/logs/server.log" >&2 || true
        die "kafka did not come up"
    fi
}

kafka_up() {
    ensure_ports
    ensure_venv
    command -v java >/dev/null 2>&1 || die "java not installed: run scripts/bootstrap.sh"
    if kafka_running; then
        kafka_wait_ready 60
        log "kafka already running on 127.0.0.1:$KAFKA_PORT"
        return 0
    fi
    kafka_libs
    kafka_write_props
    if [[ ! -f "$KDIR/data/meta.properties" ]]; then
        local cid
        cid="$(kafka_cluster_id)"
        log "formatting KRaft storage (cluster id $cid)"
        java -cp "$KLIBS/*" -Dlog4j2.configurationFile="$KLOG4J" -Dkafka.logs.dir="$KDIR/logs" \
            kafka.tools.StorageTool format -t "$cid" -c "$KPROPS" --standalone \
            >"$KDIR/format.log" 2>&1 </dev/null ||
            {
                cat "$KDIR/format.log" >&2
                die "kafka storage format failed"
            }
        printf '%s\n' "$cid" >"$KDIR/cluster.id"
    fi
    log "starting kafka on 127.0.0.1:$KAFKA_PORT (log: $KOUT, $KDIR/logs/)"
    # setsid + nohup: the broker outlives the calling shell / make process group
    setsid nohup java -Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KLOG4J" -Dkafka.logs.dir="$KDIR/logs" \
        -cp "$KLIBS/*" kafka.Kafka "$KPROPS" >>"$KOUT" 2>&1 </dev/null &
    echo $! >"$KPID"
    kafka_wait_ready 90
    log "kafka ready"
}

# The worker `make demo` leaves running (scripts/demo.py writes its pid): stopped
# first, with SIGTERM so it commits and leaves its group, so that `down` leaves
# no process of this checkout behind.
demo_worker_down() {
    local pidfile="$STACK/worker.pid" pid
    prom_target remove demo # its scrape target (scripts/demo.py added it)
    [[ -f "$pidfile" ]] || return 0
    pid="$(head -c 32 "$pidfile" | tr -dc '0-9')"
    if [[ -n "$pid" ]] && pid_alive "$pid" && grep -qa worker.py "/proc/$pid/cmdline"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        log "demo worker (pid $pid) stopped"
    fi
    rm -f "$pidfile"
}

kafka_down() {
    local pids
    pids="$(kafka_pids)"
    if [[ -z "$pids" ]]; then
        rm -f "$KPID"
        return 0
    fi
    log "stopping kafka (pid $(echo "$pids" | tr '\n' ' '))"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do
        [[ -z "$(kafka_pids)" ]] && break
        sleep 0.1
    done
    local left
    left="$(kafka_pids)"
    if [[ -n "$left" ]]; then
        log "kafka did not stop within 30s: SIGKILL"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
    fi
    # shellcheck disable=SC2086
    wait_pids_gone 10 $pids || log "warning: kafka process still present"
    rm -f "$KPID"
}

kafka_kill() {
    local pids
    pids="$(kafka_pids)"
    if [[ -n "$pids" ]]; then
        log "SIGKILL kafka $pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_pids_gone 10 $pids || log "warning: kafka process still present"
    fi
    rm -f "$KPID"
}

kafka_restart() {
    kafka_down
    kafka_up
}

# ---------------------------------------------------------------------------
# Prometheus (Debian's package): scrapes every worker registered as a target
# ---------------------------------------------------------------------------
# pids of Prometheus processes started from *this* checkout's config (exact path match)
prom_pids() {
    local p cmd
    for p in /proc/[0-9]*; do
        # { } 2>/dev/null: a process may exit between the glob and the read
        cmd="$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)" || continue
        case "$cmd" in
        *prometheus\ --config.file="$PROMCONF"\ *) printf '%s\n' "${p#/proc/}" ;;
        esac
    done
}

prom_running() {
    local p
    for p in $(prom_pids); do
        pid_alive "$p" && return 0
    done
    return 1
}

prom_url() { printf 'http://127.0.0.1:%s' "$PROM_PORT"; }

# The config is generated from this checkout's paths: 1 s scrape and evaluation (a
# local stack: alerts and tests react within seconds), the shipped rules plus any rule
# file a test drops into .stack/prometheus/rules/, and file-based discovery of workers.
prom_write_conf() {
    mkdir -p "$PROMDIR/data" "$PROMTARGETS" "$PROMRULES"
    cat >"$PROMCONF.tmp" <<EOF
# written by scripts/stack.sh on every prom-up; edits are overwritten
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
  external_labels:
    stack: local
rule_files:
  - $ALERTS
  - $PROMRULES/*.yml
scrape_configs:
  - job_name: els-worker
    metrics_path: /metrics
    file_sd_configs:
      - files: ["$PROMTARGETS/*.json"]
        refresh_interval: 1s
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:$PROM_PORT"]
EOF
    if [[ -f "$PROMCONF" ]] && cmp -s "$PROMCONF.tmp" "$PROMCONF"; then
        rm -f "$PROMCONF.tmp"
        return 1 # unchanged
    fi
    mv "$PROMCONF.tmp" "$PROMCONF"
    return 0
}

prom_wait_ready() { # prom_wait_ready TIMEOUT_SECONDS
    local timeout="$1" i pid
    for ((i = 0; i < timeout * 4; i++)); do
        if curl -sf -o /dev/null --max-time 2 "$(prom_url)/-/ready"; then
            return 0
        fi
        pid="$(cat "$PROMPID" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
            break
        fi
        sleep 0.25
    done
    tail -n 30 "$PROMLOG" >&2 || true
    die "prometheus did not become ready on $(prom_url) (log: $PROMLOG)"
}

prom_reload() {
    load_ports
    prom_running || die "prometheus is not running: scripts/stack.sh prom-up"
    curl -sf -o /dev/null --max-time 10 -X POST "$(prom_url)/-/reload" ||
        die "prometheus refused the reload (see $PROMLOG; promtool check config $PROMCONF)"
    log "prometheus reloaded"
}

prom_up() {
    ensure_ports
    [[ -x "$PROMBIN" ]] || die "prometheus not installed: run scripts/bootstrap.sh"
    [[ -f "$ALERTS" ]] || die "missing $ALERTS"
    local changed=0
    prom_write_conf && changed=1
    if command -v promtool >/dev/null 2>&1; then
        promtool check config "$PROMCONF" >"$PROMDIR/check.log" 2>&1 ||
            {
                cat "$PROMDIR/check.log" >&2
                die "promtool check config $PROMCONF failed"
            }
    fi
    if prom_running; then
        if ((changed)); then
            prom_reload
        fi
        prom_wait_ready 30
        log "prometheus already running on $(prom_url)"
        return 0
    fi
    # targets removed earlier (emptied files): gone for good now that nothing runs
    find "$PROMTARGETS" -maxdepth 1 -name '*.json' -size -8c -delete 2>/dev/null || true
    log "starting prometheus on $(prom_url) (log: $PROMLOG)"
    # setsid + nohup: outlives the calling shell / make process group
    setsid nohup "$PROMBIN" --config.file="$PROMCONF" \
        --storage.tsdb.path="$PROMDIR/data" --storage.tsdb.retention.time=2d \
        --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle \
        --log.level=info >>"$PROMLOG" 2>&1 </dev/null &
    echo $! >"$PROMPID"
    prom_wait_ready 60
    log "prometheus ready"
}

prom_down() {
    local pids
    pids="$(prom_pids)"
    if [[ -z "$pids" ]]; then
        rm -f "$PROMPID"
        return 0
    fi
    log "stopping prometheus (pid $(echo "$pids" | tr '\n' ' '))"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    if ! wait_pids_gone 30 $pids; then
        log "prometheus did not stop within 30s: SIGKILL"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_pids_gone 10 $pids || log "warning: prometheus process still present"
    fi
    rm -f "$PROMPID"
}

# prom-target add NAME HOST:PORT | remove NAME | list
# One JSON file per target (file_sd format), written atomically; Prometheus picks it
# up within a second, running or not. `remove` empties the file (`[]`) rather than
# deleting it: a deletion that coincides with a reload can leave the target scraped
# (observed with 2.42); emptied files are deleted a minute later (next prom-target
# call) or by the next prom-up that starts Prometheus.
prom_target() {
    local action="${1:-}" name="${2:-}" addr="${3:-}"
    mkdir -p "$PROMTARGETS"
    # emptied a minute ago or more: Prometheus has dropped their targets, files can go
    find "$PROMTARGETS" -maxdepth 1 -name '*.json' -size -8c -mmin +1 -delete 2>/dev/null || true
    case "$action" in
    add)
        [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "prom-target add NAME HOST:PORT: bad NAME '$name'"
        [[ "$addr" =~ ^[A-Za-z0-9_.-]+:[0-9]+$ ]] || die "prom-target add NAME HOST:PORT: bad address '$addr'"
        printf '[{"targets": ["%s"], "labels": {"worker": "%s"}}]\n' "$addr" "$name" \
            >"$PROMTARGETS/$name.json.tmp"
        mv "$PROMTARGETS/$name.json.tmp" "$PROMTARGETS/$name.json"
        log "prometheus target $name -> $addr"
        ;;
    remove)
        [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "prom-target remove NAME: bad NAME '$name'"
        if [[ -f "$PROMTARGETS/$name.json" ]]; then
            printf '[]\n' >"$PROMTARGETS/$name.json.tmp"
            mv "$PROMTARGETS/$name.json.tmp" "$PROMTARGETS/$name.json"
        fi
        ;;
    list)
        local f
        for f in "$PROMTARGETS"/*.json; do
            [[ -e "$f" ]] || continue
            grep -q '"targets"' "$f" || continue
            printf '%s %s\n' "$(basename "$f" .json)" "$(tr -d '\n' <"$f")"
        done
        ;;
    *) die "usage: scripts/stack.sh prom-target add NAME HOST:PORT | remove NAME | list" ;;
    esac
}

# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
cmd_status() {
    load_ports
    local rc=0
    if pg_running; then
        echo "postgres: running  127.0.0.1:${PG_PORT}  data=$PGDATA"
    else
        echo "postgres: stopped"
        rc=1
    fi
    if kafka_running; then
        echo "kafka:    running  127.0.0.1:${KAFKA_PORT}  pid=$(kafka_pids | tr '\n' ' ')"
    else
        echo "kafka:    stopped"
        rc=1
    fi
    if [[ -n "$PROM_PORT" ]] && prom_running; then
        local n
        n="$(prom_target list | wc -l)"
        echo "prometheus: running  $(prom_url)  pid=$(prom_pids | tr '\n' ' ') targets=$n"
    else
        echo "prometheus: stopped"
        rc=1
    fi
    return "$rc"
}

cmd_env() {
    require_ports
    cat <<EOF
export ELS_DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/els
export ELS_PG_ADMIN_URL=postgresql://postgres@127.0.0.1:$PG_PORT/postgres
export ELS_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
EOF
    if [[ -n "$PROM_PORT" ]]; then
        echo "export ELS_PROMETHEUS_URL=$(prom_url)"
    fi
}

# --partitions N: the partition databases and the proxy (SPEC 9)
partition_urls() {
    local urls="" i
    for ((i = 0; i < PARTITIONS; i++)); do
        urls+="${urls:+,}postgresql://postgres@127.0.0.1:$PG_PORT/els_part_$i"
    done
    printf '%s\n' "$urls"
}

partitions_up() {
    local i db
    for ((i = 0; i <= PARTITIONS; i++)); do
        db="els_part_$i"
        ((i < PARTITIONS)) || db=els_proxy
        if [[ -z "$(as_pg "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
            -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
            as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db"
        fi
    done
    ensure_venv
    ELS_DATABASE_URL="postgresql://postgres@127.0.0.1:$PG_PORT/els_proxy" \
        ELS_PARTITION_URLS="$(partition_urls)" "$VENV_PY" "$ROOT/worker.py" migrate >&2
    log "$PARTITIONS partition(s) behind els_proxy migrated"
}

partitions_env() {
    cmd_env | grep -v '^export ELS_DATABASE_URL='
    echo "export ELS_DATABASE_URL=postgresql://postgres@127.0.0.1:$PG_PORT/els_proxy"
    echo "export ELS_PARTITION_URLS=$(partition_urls)"
}

partitions_status() {
    local rc=0
    cmd_status || rc=$?
    echo "proxy:    postgresql://postgres@127.0.0.1:$PG_PORT/els_proxy"
    echo "partitions: $(partition_urls)"
    return "$rc"
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# shellcheck source=scripts/_stack_ha.sh
source "$ROOT/scripts/_stack_ha.sh"

main() {
    local topology="${ELS_STACK_TOPOLOGY:-single}"
    if [[ "${1:-}" == --ha ]]; then
        topology=ha
        shift
    elif [[ "${1:-}" == --partitions ]]; then
        PARTITIONS="${2:-}"
        [[ "$PARTITIONS" =~ ^[0-9]+$ ]] && ((PARTITIONS > 0 && (PARTITIONS & (PARTITIONS - 1)) == 0)) ||
            die "--partitions takes a power of two (1, 2, 4, ...), not '${PARTITIONS}'"
        shift 2
        case "${1:-}" in
        up)
            pg_up
            kafka_up
            prom_up
            partitions_up
            partitions_status
            return
            ;;
        env)
            require_ports
            partitions_env
            return
            ;;
        status)
            load_ports
            partitions_status
            return
            ;;
        down) ;; # the same processes as the single topology
        *) die "--partitions N takes up, down, status or env" ;;
        esac
    fi
    local cmd="${1:-}"
    pg_resolve_dir
    case "$topology" in
    ha)
        shift || true
        ha_main "$cmd" "$@"
        return
        ;;
    single | "") ;;
    *) die "ELS_STACK_TOPOLOGY must be 'single' or 'ha', not '$topology'" ;;
    esac
    case "$cmd" in
    up)
        pg_up
        kafka_up
        prom_up
        cmd_status
        ;;
    down)
        demo_worker_down
        prom_down
        kafka_down
        pg_down
        # and the HA topology, if this checkout ever started it
        if [[ -d "$STACK/ha" ]]; then
            ha_pg_resolve_dir
            ha_kafka_down
            ha_pg_down
        fi
        log "stack stopped"
        ;;
    status) cmd_status ;;
    env) cmd_env ;;
    pg-up) pg_up ;;
    pg-down) pg_down ;;
    pg-restart) pg_restart ;;
    pg-kill) pg_kill ;;
    kafka-up) kafka_up ;;
    kafka-down) kafka_down ;;
    kafka-restart) kafka_restart ;;
    kafka-kill) kafka_kill ;;
    prom-up) prom_up ;;
    prom-down) prom_down ;;
    prom-reload) prom_reload ;;
    prom-target)
        shift
        prom_target "$@"
        ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
