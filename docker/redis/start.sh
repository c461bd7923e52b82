#!/bin/sh
# The compose Redis with a password that never appears on a command line (`ps`, /proc/*/cmdline):
# `requirepass` reaches redis-server on stdin (`redis-server -` reads its configuration from there),
# the remaining arguments are passed through. The image's docker-entrypoint.sh still drops to the
# `redis` user. REDIS_PASSWORD comes from the environment (docker-compose.yml: PULSE_REDIS_PASSWORD).
set -eu

: "${REDIS_PASSWORD:?set PULSE_REDIS_PASSWORD: run make compose-env (writes .env with random secrets)}"
case "$REDIS_PASSWORD" in
  *'"'* | *'\'* | *"
"*)
    echo "REDIS_PASSWORD must not contain a double quote, a backslash or a newline" >&2
    exit 1 ;;
esac

exec docker-entrypoint.sh redis-server "$@" - <<CONF
requirepass "$REDIS_PASSWORD"
CONF
