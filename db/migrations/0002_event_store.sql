-- The event store: the source of truth. Append-only; see 0005 for the one purge path.
CREATE TABLE event_streams (
    stream_id   text PRIMARY KEY,
    stream_type text NOT NULL,
    owner_id    uuid,
    version     bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    deleted     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX event_streams_owner_idx ON event_streams (owner_id, stream_type);

CREATE TABLE events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id   text NOT NULL REFERENCES event_streams (stream_id),
    version     bigint NOT NULL CHECK (version > 0),
    type        text NOT NULL,
    data        jsonb NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The writing transaction. Followers read in (txid, position) order and only below the
    -- oldest running transaction, so an event committed late with a low position is never
    -- skipped (see services/core/eventstore.py).
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
CREATE INDEX events_txid_position_idx ON events (txid, position);

-- Command-side uniqueness that events alone cannot enforce: one account per e-mail address.
CREATE TABLE user_emails (
    email   text PRIMARY KEY,   -- lower-cased
    user_id uuid NOT NULL UNIQUE
);

-- Where each follower of the global order has got to, written in the same transaction as
-- its output (exactly-once effect). Also holds the row lock that lets one projector run.
CREATE TABLE projection_checkpoints (
    name          text PRIMARY KEY,
    last_txid     xid8 NOT NULL DEFAULT '0'::xid8,
    last_position bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Events a projection could not apply after bounded retries: parked for an operator.
CREATE TABLE parked_events (
    projection text NOT NULL,
    position   bigint NOT NULL,
    attempts   integer NOT NULL DEFAULT 1,
    error      text NOT NULL,
    parked     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (projection, position)
);
