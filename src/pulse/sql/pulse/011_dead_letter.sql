-- Pulse's general dead-letter store: the full enriched event of anything a
-- destination could not take whole (today: an event larger than its limit,
-- delivered with a marker in place of its payload). Idempotent (IF NOT EXISTS);
-- applied with search_path set to Pulse's state schema.
--
-- `sink` is "<slot>/<sink name>", as for the external outbox. The external
-- sink's delivery failures keep their own store (external_dead_letter: the exact
-- CloudEvent bytes a replay re-sends); `pulse dlq --sink NAME` reads either.
CREATE TABLE IF NOT EXISTS dead_letter (
    id           BIGSERIAL   PRIMARY KEY,
    sink         TEXT        NOT NULL,
    reason       TEXT        NOT NULL,          -- e.g. payload_too_large
    lsn          BIGINT      NOT NULL,
    seq          INTEGER     NOT NULL,
    event_id     BIGINT      NOT NULL,
    content_id   TEXT,
    bytes        BIGINT      NOT NULL,          -- size of the full event as the sink would send it
    event        TEXT        NOT NULL,          -- the full enriched event, JSON (with `before`)
    detail       TEXT        NOT NULL,          -- the limit that refused it
    dead_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    replays      INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT,
    UNIQUE (sink, lsn, seq)                     -- a retried batch stores each event once
);
