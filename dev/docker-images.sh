#!/usr/bin/env bash
# Images for the compose boot test on a machine whose Docker engine reaches no image registry
# (docs/deploy.md, "Images without a registry").
#
#   1. pulse-local/python:bookworm   Debian bookworm (debootstrap --variant=minbase from Debian's mirror)
#                                    with python3 + venv, imported with `docker import`; `python` is python3.
#   2. stand-ins for the infrastructure images docker-compose.yml names, built FROM that base
#      (docker/local/*/Dockerfile): PostgreSQL (Debian's postgresql, wal_level=logical via the compose
#      command, the same docker-entrypoint-initdb.d scripts), Redis (Debian's redis-server), Apache Kafka
#      in KRaft mode (jars from Maven Central, docker/local/kafka/pom.xml).
#   3. the Pulse image (Dockerfile) and the emulator image (docker/bigquery-emulator.Dockerfile) with
#      BASE_IMAGE=pulse-local/python:bookworm.
#
# Builds run with --network host: the build steps reach Debian's mirror, PyPI and Maven Central the way
# the host does. Cached on this machine: an existing base image is reused (delete it to refresh) and
# `docker build` reuses unchanged layers, so a warm run only rebuilds what changed.
# docker-compose.local.yml points the compose services at these images.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${PULSE_LOCAL_BASE:-pulse-local/python:bookworm}
MIRROR=${PULSE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PY:-.venv/bin/python}

have() { docker image inspect "$1" >/dev/null 2>&1; }
step() { echo "docker-images: $*"; }

if have "$BASE"; then
    step "$BASE exists (cached)"
else
    command -v debootstrap >/dev/null || { echo "debootstrap missing: run dev/docker-engine.sh" >&2; exit 1; }
    root=$(mktemp -d /var/tmp/pulse-debootstrap.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    step "debootstrap bookworm into $root"
    debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv bookworm "$root" "$MIRROR" \
        >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    ln -sf python3 "$root/usr/bin/python"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    step "$BASE imported"
fi

if [ "${1:-}" = "--base-only" ]; then exit 0; fi

# Kafka's jars, resolved on the host from Maven Central (as `pulse dev up` does), cached by the pom's hash.
libs=docker/local/kafka/libs
want=$(sha256sum docker/local/kafka/pom.xml | cut -d' ' -f1)
if [ "$(cat "$libs/.pom-sha" 2>/dev/null)" != "$want" ]; then
    command -v mvn >/dev/null || { echo "mvn missing (apt-get install maven)" >&2; exit 1; }
    step "resolving Kafka from Maven Central into $libs"
    rm -rf "$libs" && mkdir -p "$libs"
    mvn -q -B -f docker/local/kafka/pom.xml dependency:copy-dependencies \
        -DoutputDirectory="$PWD/$libs" -DincludeScope=runtime
    echo "$want" >"$libs/.pom-sha"
fi

# Python wheels for the Pulse and emulator images, built on the host (its trust store reaches PyPI;
# a build container behind a TLS-intercepting egress does not), cached by the pins' hash.
wheels=docker/wheels
want=$(cat constraints.txt "$0" | sha256sum | cut -d' ' -f1)  # the pins and the package list below
if [ "$(cat "$wheels/.pins-sha" 2>/dev/null)" != "$want" ]; then
    step "building wheels into $wheels"
    rm -f "$wheels"/*.whl "$wheels/.pins-sha"
    "$PY" -m pip wheel -q -c constraints.txt -w "$wheels" '.[all]' bqemulator duckdb==1.5.5 \
        duckdb-extension-spatial==1.5.5 numpy 'setuptools>=68' wheel \
        'async-timeout>=4.0.3'  # redis needs it on Python < 3.11.3 (Debian's 3.11.2)
    rm -f "$wheels"/pulse_cdc-*.whl  # the image builds Pulse itself, from src/
    echo "$want" >"$wheels/.pins-sha"
fi
PIP_OPTIONS="--no-index --find-links /wheels"

build() {  # build TAG CONTEXT [DOCKERFILE]
    local tag=$1 ctx=$2 file=${3:-$2/Dockerfile} t0=$SECONDS
    step "building $tag"
    if ! docker build -q --network host --build-arg "BASE_IMAGE=$BASE" --build-arg "PIP_OPTIONS=$PIP_OPTIONS" \
            -t "$tag" -f "$file" "$ctx" \
            >/tmp/pulse-docker-build.$$.log 2>&1; then
        tail -n 40 /tmp/pulse-docker-build.$$.log >&2
        rm -f /tmp/pulse-docker-build.$$.log
        exit 1
    fi
    rm -f /tmp/pulse-docker-build.$$.log
    step "built $tag in $((SECONDS - t0)) s"
}

build pulse-local/postgres:bookworm docker/local/postgres
build pulse-local/redis:bookworm docker/local/redis
build pulse-local/kafka:bookworm docker/local/kafka
build pulse-bigquery-emulator:local . docker/bigquery-emulator.Dockerfile
build pulse-cdc:local . Dockerfile
