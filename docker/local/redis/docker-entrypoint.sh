#!/bin/sh
# As the official redis image: the server runs as `redis`, in /data; stdin is passed on
# (docker/redis/start.sh hands `requirepass` to `redis-server -` there).
set -eu
if [ "$(id -u)" = 0 ] && [ "${1:-}" = redis-server ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
