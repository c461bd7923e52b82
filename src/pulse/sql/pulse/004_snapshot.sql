-- The initial snapshot is a backfill run of kind 'snapshot', created (without
-- its id bound) before the slot it belongs to, and bounded right after the
-- slot exists: every row committed before the slot is at or below max_id.
-- A destination that keeps only a window (the Redis board) is rebuilt from
-- the source instead of replayed: window_sinks names them, and
-- window_rebuilt_at records that the rebuild is done.
ALTER TABLE backfill_runs ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'backfill'
    CHECK (kind IN ('backfill', 'snapshot'));
ALTER TABLE backfill_runs ADD COLUMN IF NOT EXISTS window_sinks TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE backfill_runs ADD COLUMN IF NOT EXISTS window_rebuilt_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS backfill_runs_slot_kind ON backfill_runs (slot_name, kind, state);
