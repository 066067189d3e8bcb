-- Per-mailbox OAuth consent: one refresh token a mailbox, encrypted at rest
-- (AES-256-GCM; the key never enters the database, `key_id` names it).
CREATE TABLE oauth_tokens (
    mailbox                  TEXT PRIMARY KEY NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    refresh_token_ciphertext TEXT NOT NULL,
    key_id                   TEXT NOT NULL,
    scopes                   TEXT NOT NULL,
    google_subject           TEXT,
    consented_at             TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL
);
