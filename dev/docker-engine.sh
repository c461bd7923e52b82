#!/usr/bin/env bash
# A Docker engine for `make compose-test` on a machine that has none (docs/deploy.md, "The boot test").
#
# If `docker info` answers, nothing happens. Otherwise (as root) it apt-installs Debian's docker.io
# (dockerd, containerd, runc), debootstrap (local base images, dev/docker-images.sh) and a compose
# front end when the docker CLI has no `compose` plugin (Debian's docker-compose), then starts dockerd
# with the overlay2 driver in the background, its log in $PULSE_DOCKERD_LOG, and waits until it answers.
# It never stops an engine; the engine it starts keeps running for the next run (the image cache).
set -euo pipefail

LOG=${PULSE_DOCKERD_LOG:-/var/log/pulse-dockerd.log}
DEADLINE_S=${PULSE_DOCKERD_DEADLINE_S:-90}

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "docker-engine: $* missing and not root: install them (apt-get install $*)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker >/dev/null || missing+=(docker.io)
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then
    missing+=(docker.io)
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    missing+=(docker-compose)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "docker-engine: installing ${missing[*]} (Debian packages)"
    apt_install "${missing[@]}"
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "docker-engine: no Docker engine answers and not root: start one (dockerd) yourself" >&2
    exit 1
fi
echo "docker-engine: starting dockerd (overlay2), log in $LOG"
setsid nohup dockerd --storage-driver overlay2 >>"$LOG" 2>&1 </dev/null &
end=$((SECONDS + DEADLINE_S))
until docker info >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
        echo "docker-engine: dockerd did not answer within ${DEADLINE_S} s; last lines of $LOG:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
    sleep 1
done
echo "docker-engine: ready ($(docker info --format '{{.ServerVersion}} {{.Driver}}'))"
