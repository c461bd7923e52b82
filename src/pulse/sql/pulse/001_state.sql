-- Pulse's own objects, in a schema of its own. Idempotent: safe to re-run.
-- The schema name is bound by `pulse db init` (search_path), never spliced in.

-- One row per Pulse deployment: which slot it owns and when it was created, so
-- that a slot that disappears is recognised as lost instead of re-created.
CREATE TABLE IF NOT EXISTS slot_registry (
    slot_name    TEXT PRIMARY KEY,
    publication  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_lsn  PG_LSN
);
