-- The ledger of the PostgreSQL outbox (`external.outbox = postgres`): which
-- event ids were resolved (acknowledged by the receiver, or dead-lettered),
-- so `pulse verify --sink external` can tell a delivered event from one the
-- outbox lost. Idempotent; applied with search_path set to Pulse's state schema.
--
-- Compact: one row per block of 65,536 event ids (block = event_id >> 16),
-- holding that block's resolved ids as sorted disjoint ranges, flattened
-- [lo1, hi1, lo2, hi2, ...]. Ids without gaps collapse into one range, so a
-- fully delivered block is one row of two numbers. Never a row per event:
-- each delivery request updates the block row(s) its ids fall in, in the
-- same transaction that deletes the delivered outbox rows.
CREATE TABLE IF NOT EXISTS external_delivered (
    sink        TEXT        NOT NULL,
    block       BIGINT      NOT NULL,
    ranges      BIGINT[]    NOT NULL DEFAULT '{}',
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, block)
);
