-- Backfill runs: one row per distinct set of arguments, so a rerun with the
-- same arguments resumes where the killed one stopped (`last_id` moves only
-- after a chunk is durable in every target sink).
CREATE TABLE IF NOT EXISTS backfill_runs (
    run_id          TEXT PRIMARY KEY,
    slot_name       TEXT NOT NULL,
    since_ts        TIMESTAMPTZ,
    until_ts        TIMESTAMPTZ,
    min_id          BIGINT,
    max_id          BIGINT,
    sinks           TEXT[] NOT NULL,
    chunk_size      INTEGER NOT NULL,
    rate_limit      DOUBLE PRECISION NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'failed')),
    last_id         BIGINT NOT NULL DEFAULT 0,
    rows_read       BIGINT NOT NULL DEFAULT 0,
    rows_emitted    BIGINT NOT NULL DEFAULT 0,
    rows_superseded BIGINT NOT NULL DEFAULT 0,
    chunks          BIGINT NOT NULL DEFAULT 0,
    total_estimate  BIGINT,
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);

-- Watermarks written around each chunk read. The table is in Pulse's
-- publication, so each update shows up in the change stream exactly between
-- the changes committed before and after it (DBLog's low / high watermarks).
CREATE TABLE IF NOT EXISTS backfill_watermarks (
    run_id      TEXT PRIMARY KEY,
    chunk       BIGINT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('low', 'high')),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
