#!/usr/bin/env bash
# Builds the offline stand-ins for the public images compose.yaml names (no registry
# can be reached here): els-standin/python:3.11-slim, els-standin/postgres:15,
# els-standin/kafka:4.1.1 and els-standin/prometheus:2.42, all from one Debian bookworm
# base made by debootstrap. tests/compose/compose.standins.yaml points compose at them.
#
# Cached: the debootstrap tarball under $ELS_COMPOSE_CACHE (default
# /var/cache/els-compose, outside the checkout), the base image and the stand-ins'
# layers in the engine; a second run takes seconds. Needs a running engine
# (scripts/dockerd.sh up) and debootstrap (scripts/compose-deps.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
CACHE="${ELS_COMPOSE_CACHE:-/var/cache/els-compose}"
MIRROR="${ELS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
BASE_IMAGE=els-standin/debian:$SUITE
BASE_TARBALL="$CACHE/debian-$SUITE-minbase.tar"
WORK="$ROOT/.stack/compose-images"

log() { printf '[standins] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------
# the base: debootstrap --variant=minbase, imported as an image
# ---------------------------------------------------------------------------
make_base_tarball() {
    local rootfs
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing: run scripts/compose-deps.sh"
    mkdir -p "$CACHE"
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    log "debootstrap --variant=minbase $SUITE from $MIRROR (about 1 min)"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || {
        tail -n 30 "$CACHE/debootstrap.log" >&2
        rm -rf "$rootfs"
        die "debootstrap failed (see $CACHE/debootstrap.log)"
    }
    # As Debian's official images do: no service starts during a package install
    # (there is no init in a build container), and no apt caches in the layers.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$rootfs/etc/apt/apt.conf.d/90els-no-recommends"
    # The builds install from PyPI over TLS: trust what this machine trusts (a machine
    # behind a TLS-inspecting egress proxy has its CA in /usr/local/share/ca-certificates).
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TARBALL.tmp" .
    mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
    rm -rf "$rootfs"
}

ensure_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    [[ -f "$BASE_TARBALL" ]] || make_base_tarball
    log "importing $BASE_TARBALL as $BASE_IMAGE"
    docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
        "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null
}

# ---------------------------------------------------------------------------
# the stand-ins
# ---------------------------------------------------------------------------
build() { # build IMAGE CONTEXT
    local image="$1" context="$2" start
    start="$(date +%s)"
    docker build -q --build-arg "BASE=$BASE_IMAGE" -t "$image" "$context" >"$WORK/build.log" 2>&1 || {
        tail -n 40 "$WORK/build.log" >&2
        die "building $image failed"
    }
    log "$image ready ($(($(date +%s) - start)) s)"
}

kafka_context() {
    # The jars: those of the local stack's pom (this pom's parent) plus kafka-tools,
    # resolved by Maven (its ~/.m2 cache makes a second resolution fast).
    local context="$WORK/kafka" stamp want
    stamp="$WORK/kafka-libs.stamp"
    want="$(cat "$HERE/kafka/pom.xml" "$ROOT/scripts/kafka/pom.xml" | sha256sum | cut -d' ' -f1)"
    if [[ ! -d "$WORK/kafka-libs" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        command -v mvn >/dev/null 2>&1 || die "maven missing: run scripts/bootstrap.sh"
        log "resolving the Kafka jars with maven"
        rm -rf "$WORK/kafka-libs"
        (cd "$HERE/kafka" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
            -DoutputDirectory="$WORK/kafka-libs" -DincludeScope=runtime </dev/null) \
            >"$WORK/maven.log" 2>&1 || {
            tail -n 40 "$WORK/maven.log" >&2
            die "maven could not resolve the Kafka jars (see $WORK/maven.log)"
        }
        printf '%s\n' "$want" >"$stamp"
    fi
    rm -rf "$context"
    cp -a "$HERE/kafka" "$context"
    cp -a "$WORK/kafka-libs" "$context/libs"
    printf '%s\n' "$context"
}

mkdir -p "$WORK"
docker info >/dev/null 2>&1 || die "no Docker engine answers: run scripts/dockerd.sh up"
ensure_base
build els-standin/python:3.11-slim "$HERE/python"
build els-standin/postgres:15 "$HERE/postgres"
build els-standin/prometheus:2.42 "$HERE/prometheus"
build els-standin/kafka:4.1.1 "$(kafka_context)"
