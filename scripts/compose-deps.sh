#!/usr/bin/env bash
# Installs what `make test-compose` needs and is missing (idempotent, as root):
#
#   1. Debian's docker.io (dockerd, containerd, runc) and debootstrap.
#   2. The `docker compose` v2 CLI plugin, built from the pinned Go module
#      github.com/docker/compose/v5 (Debian's docker-compose 1.29 rejects compose.yaml's
#      top-level `name:`, and no prebuilt binary can be downloaded here). `go install`
#      refuses the module because of its exclude directives, so it is built with
#      `go build ./cmd` inside the module's own directory. The binary is cached under
#      $ELS_COMPOSE_CACHE (default /var/cache/els-compose), outside the checkout, so a
#      fresh clone on the same machine does not rebuild it (~1.5 min cold).
#
# A no-op run takes well under a second.
set -euo pipefail

COMPOSE_MODULE=github.com/docker/compose/v5
COMPOSE_VERSION=v5.6.0
CACHE="${ELS_COMPOSE_CACHE:-/var/cache/els-compose}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
PLUGIN="$PLUGIN_DIR/docker-compose"
CACHED_PLUGIN="$CACHE/docker-compose-$COMPOSE_VERSION"

log() { printf '[compose-deps] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ "$(id -u)" -eq 0 ]] || die "run as root: it installs packages and starts dockerd"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# the Kafka stand-in's jars come through Maven (scripts/bootstrap.sh installs it too)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ((${#missing[@]})); then
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
    log "docker.io and debootstrap present"
fi

# `docker compose version --short` prints the version without the leading v.
plugin_version() { docker compose version --short 2>/dev/null || true; }

if [[ "$(plugin_version)" == "${COMPOSE_VERSION#v}" ]]; then
    log "docker compose $COMPOSE_VERSION present"
    exit 0
fi

if [[ ! -x "$CACHED_PLUGIN" ]]; then
    # The module's go.mod asks for Go 1.26.8 (this machine kind's Go); Debian's golang-go
    # (1.19) is too old to build it or to fetch a newer toolchain.
    command -v go >/dev/null 2>&1 ||
        die "go missing: the compose plugin is built from $COMPOSE_MODULE@$COMPOSE_VERSION with Go >= 1.26"
    log "building docker compose $COMPOSE_VERSION from $COMPOSE_MODULE (about 1.5 min)"
    mkdir -p "$CACHE"
    dir="$(go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))')"
    # The module cache is read-only; the build writes only to -o and Go's build cache.
    (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath \
        -ldflags "-w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
        -o "$CACHED_PLUGIN.tmp" ./cmd)
    mv "$CACHED_PLUGIN.tmp" "$CACHED_PLUGIN"
fi
mkdir -p "$PLUGIN_DIR"
install -m 0755 "$CACHED_PLUGIN" "$PLUGIN"
[[ "$(plugin_version)" == "${COMPOSE_VERSION#v}" ]] ||
    die "docker compose version says '$(plugin_version)', expected ${COMPOSE_VERSION#v}"
log "docker compose $COMPOSE_VERSION installed ($PLUGIN)"
