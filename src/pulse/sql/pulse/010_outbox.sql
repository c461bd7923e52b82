-- The external HTTP sink's durable outbox, its position and its dead-letter store.
-- Idempotent (IF NOT EXISTS); applied with search_path set to Pulse's state schema.
--
-- `sink` is "<slot>/<sink name>", so two Pulse deployments sharing a state
-- schema never see each other's rows.

-- Events accepted from the slot and not yet acknowledged by the receiver.
-- Written in the same transaction as external_position, so the outbox and
-- the position always agree; rows are deleted once delivered.
CREATE TABLE IF NOT EXISTS external_outbox (
    sink         TEXT        NOT NULL,
    lsn          BIGINT      NOT NULL,
    seq          INTEGER     NOT NULL,
    lane_key     INTEGER     NOT NULL,          -- stable hash of content_id (order is kept per key)
    content_id   TEXT,
    event_id     BIGINT      NOT NULL,
    ce_id        TEXT        NOT NULL,          -- the CloudEvent id: the same on every retry and replay
    attrs        TEXT        NOT NULL,          -- CloudEvent attributes, JSON object without `data`
    data         TEXT        NOT NULL,          -- the enriched event, JSON (exact bytes re-sent on retry)
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT,
    PRIMARY KEY (sink, lsn, seq)
);

-- The highest source position the sink holds durably (in the outbox or beyond).
CREATE TABLE IF NOT EXISTS external_position (
    sink        TEXT        PRIMARY KEY,
    lsn         BIGINT      NOT NULL,
    seq         INTEGER     NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events the receiver refused for good (terminal 4xx) or that ran out of
-- attempts / age; `pulse dlq list | replay | purge` manage them.
CREATE TABLE IF NOT EXISTS external_dead_letter (
    id           BIGSERIAL   PRIMARY KEY,
    sink         TEXT        NOT NULL,
    lsn          BIGINT      NOT NULL,
    seq          INTEGER     NOT NULL,
    lane_key     INTEGER     NOT NULL,
    content_id   TEXT,
    event_id     BIGINT      NOT NULL,
    ce_id        TEXT        NOT NULL,
    attrs        TEXT        NOT NULL,
    data         TEXT        NOT NULL,
    enqueued_at  TIMESTAMPTZ NOT NULL,
    dead_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL,
    last_status  INTEGER,
    last_error   TEXT        NOT NULL,
    replays      INTEGER     NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS external_dead_letter_sink_pos ON external_dead_letter (sink, lsn, seq);
