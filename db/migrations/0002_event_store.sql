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

-- How far followers may read: every event with txid below this is committed (or rolled
-- back) and visible. It is the oldest transaction still running in THIS database, not the
-- server-wide pg_snapshot_xmin: a long transaction in another database on the same server
-- can never write our events, so it must not hold our projections back. Transactions whose
-- database we cannot tell count as ours (the safe side). SECURITY DEFINER only to read other
-- backends' transaction ids in pg_stat_activity; it reads no table.
CREATE FUNCTION event_read_horizon() RETURNS xid8
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
               (SELECT min(running.xid)
                  FROM pg_snapshot_xip(snap.s) AS running(xid)
                 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                    WHERE a.backend_xid = running.xid::xid
                                      AND a.datname IS DISTINCT FROM current_database())),
               pg_snapshot_xmax(snap.s))
      FROM (SELECT pg_current_snapshot() AS s) snap
$$;

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
