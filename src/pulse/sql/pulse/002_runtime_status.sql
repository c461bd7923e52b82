-- What a running `pulse run` reports about itself every few seconds (queue
-- fill, sink positions, lag), read by `pulse status` from another process.
CREATE TABLE IF NOT EXISTS runtime_status (
    slot_name   TEXT PRIMARY KEY,
    updated_at  TIMESTAMPTZ NOT NULL,
    doc         JSONB NOT NULL
);
