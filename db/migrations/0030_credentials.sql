-- Credentials: passwords, browser sessions and API tokens. They live in these tables only,
-- never in event data, so nothing here reaches a replay or the analytics stream.
-- Only hashes are stored: argon2id for passwords, SHA-256 for random 256-bit tokens (a
-- token is high-entropy, so a fast hash is enough and lets a lookup be one index probe).
CREATE TABLE user_passwords (
    user_id       uuid PRIMARY KEY,
    password_hash text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A browser session (the cookie) or an API token (Authorization: Bearer): one row each.
CREATE TABLE user_credentials (
    credential_id uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('session', 'api_token')),
    token_hash    bytea NOT NULL UNIQUE,
    name          text,                     -- an API token's label
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,              -- NULL: until revoked (API tokens)
    revoked_at    timestamptz
);
CREATE INDEX user_credentials_user ON user_credentials (user_id) WHERE revoked_at IS NULL;

-- chat_auth: what both services' credential check reads as (services/http/credentials.py),
-- on its own small pool. It sees live credentials' hashes and owners, nothing else.
DO $$
BEGIN
    BEGIN
        CREATE ROLE chat_auth NOLOGIN NOSUPERUSER NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    EXECUTE format('GRANT chat_auth TO %I', current_user);
END;
$$;
GRANT USAGE ON SCHEMA public TO chat_auth;
GRANT SELECT (credential_id, user_id, kind, token_hash, expires_at, revoked_at)
    ON user_credentials TO chat_auth;
