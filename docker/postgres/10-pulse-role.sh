#!/usr/bin/env bash
# First start of the compose PostgreSQL only (docker-entrypoint-initdb.d): the role Pulse runs as.
#
# `pulse` is NOT a superuser: it can log in, open replication connections (REPLICATION) and owns the
# `pulse` database and its public schema, so `pulse db init` creates the two source tables, its own
# `pulse` schema and the publication as their owner. Against a database Pulse does not own, run
# `pulse doctor` instead: it prints the exact GRANTs.
set -euo pipefail

: "${PULSE_DB_PASSWORD:?set PULSE_DB_PASSWORD (docker-compose.yml passes it)}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pulse_password="$PULSE_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE pulse LOGIN REPLICATION PASSWORD %L', :'pulse_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pulse') \gexec
ALTER DATABASE pulse OWNER TO pulse;
ALTER SCHEMA public OWNER TO pulse;
SQL
