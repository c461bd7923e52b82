-- The source schema, as the brief gives it. Pulse never alters these tables;
-- `pulse db init` applies this file only where the tables do not exist yet.

-- Content catalogue
CREATE TABLE content (
    id              UUID PRIMARY KEY,
    slug            TEXT UNIQUE NOT NULL,
    title           TEXT        NOT NULL,
    content_type    TEXT CHECK (content_type IN ('podcast', 'newsletter', 'video')),
    length_seconds  INTEGER,                -- nullable
    publish_ts      TIMESTAMPTZ NOT NULL
);

-- Raw engagement telemetry
CREATE TABLE engagement_events (
    id           BIGSERIAL PRIMARY KEY,
    content_id   UUID REFERENCES content(id),
    user_id      UUID,
    event_type   TEXT CHECK (event_type IN ('play', 'pause', 'finish', 'click')),
    event_ts     TIMESTAMPTZ NOT NULL,
    duration_ms  INTEGER,      -- nullable for events without duration
    device       TEXT,         -- e.g. "ios", "web-safari"
    raw_payload  JSONB         -- anything extra the client sends
);
