-- The seed's tables, every column, default, constraint and key as the design document has
-- them, plus denormalised columns that keep the list and page queries single index walks.
CREATE TABLE users (
    user_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email        text UNIQUE,
    display_name text,
    avatar_url   text,
    created_at   timestamptz DEFAULT current_timestamp,
    updated_at   timestamptz DEFAULT current_timestamp
);

CREATE TABLE sessions (
    session_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid REFERENCES users (user_id) ON DELETE CASCADE,
    project_id      uuid REFERENCES dossier (project_id) ON DELETE CASCADE,
    title           text,
    created_at      timestamptz DEFAULT current_timestamp,
    updated_at      timestamptz DEFAULT current_timestamp,
    -- NOT NULL beyond the seed: the list's keyset order must never meet a NULL
    last_message_at timestamptz NOT NULL DEFAULT current_timestamp,
    is_active       boolean DEFAULT true,
    -- denormalised, kept by update_session_last_message()
    message_count   integer NOT NULL DEFAULT 0,
    last_message_preview text,
    last_seq        bigint NOT NULL DEFAULT 0
);
-- The session list: newest activity first, keyset on (last_message_at, session_id).
CREATE INDEX sessions_user_activity_idx
    ON sessions (user_id, last_message_at DESC, session_id DESC);
CREATE INDEX sessions_project_idx ON sessions (project_id);

CREATE TABLE chat_messages (
    message_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid REFERENCES sessions (session_id) ON DELETE CASCADE,
    turn_id    uuid REFERENCES turns (turn_id) ON DELETE SET NULL,
    role       text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content    text NOT NULL,
    metadata   jsonb,
    created_at timestamptz DEFAULT current_timestamp,
    updated_at timestamptz DEFAULT current_timestamp,
    -- denormalised: the owner (for RLS without a join) and the order within the session
    user_id    uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    seq        bigint NOT NULL CHECK (seq > 0),
    CONSTRAINT chat_messages_session_seq_key UNIQUE (session_id, seq)
);
-- Serves the RLS policy (user_id) and the page order together: with the policy's
-- user_id = (SELECT ...) condition the planner can walk this one index in seq order instead
-- of intersecting a bare user_id index with the session key and sorting.
CREATE INDEX chat_messages_user_session_seq_idx ON chat_messages (user_id, session_id, seq);
CREATE INDEX chat_messages_turn_idx ON chat_messages (turn_id);

CREATE TABLE user_projects (
    user_id    uuid REFERENCES users (user_id) ON DELETE CASCADE,
    project_id uuid REFERENCES dossier (project_id) ON DELETE CASCADE,
    created_at timestamptz DEFAULT current_timestamp,
    PRIMARY KEY (user_id, project_id)
);
CREATE INDEX user_projects_project_idx ON user_projects (project_id);

-- The seed's change to the legacy turns.
ALTER TABLE turns ADD COLUMN session_id uuid REFERENCES sessions (session_id);
ALTER TABLE turns ADD COLUMN user_id uuid REFERENCES users (user_id);
CREATE INDEX turns_session_idx ON turns (session_id);
CREATE INDEX turns_user_idx ON turns (user_id);
