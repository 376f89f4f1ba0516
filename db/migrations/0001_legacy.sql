-- The legacy schema as it stood before sessions: one project (dossier) has many turns.
-- Kept functional: the legacy POST /chat still writes here, and phase 4 imports from it.
CREATE TABLE IF NOT EXISTS dossier (
    project_id  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title       text,
    description text,
    created_at  timestamptz DEFAULT current_timestamp,
    updated_at  timestamptz DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS turns (
    turn_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id     uuid NOT NULL REFERENCES dossier (project_id) ON DELETE CASCADE,
    user_text      text NOT NULL,
    assistant_text text,
    created_at     timestamptz DEFAULT current_timestamp
);
CREATE INDEX IF NOT EXISTS turns_project_idx ON turns (project_id, created_at);
