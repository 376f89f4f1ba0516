-- A user signed in through OpenID Connect is (issuer, subject); the first sign-in registers
-- the user and links the pair here. Not an event: it is a credential, like a password.
CREATE TABLE user_identities (
    issuer     text NOT NULL,
    subject    text NOT NULL,
    user_id    uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX user_identities_user ON user_identities (user_id);
-- both services' credential check maps a provider's bearer token to the user
GRANT SELECT ON user_identities TO chat_auth;
