-- gmail-ingest schema, PostgreSQL dialect. Keep in step with migrations/sqlite.

CREATE TABLE subscriptions (
    mailbox             TEXT PRIMARY KEY,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'active', 'paused', 'suspended', 'removed')),
    label_filter        TEXT NOT NULL DEFAULT '[]',
    requested_by        TEXT NOT NULL,
    requested_at        TIMESTAMPTZ NOT NULL,
    approved_by         TEXT,
    approved_at         TIMESTAMPTZ,
    last_reviewed_at    TIMESTAMPTZ,
    reviewed_by         TEXT,
    org_unit_seen       TEXT,
    org_unit_checked_at TIMESTAMPTZ,
    note                TEXT,
    status_reason       TEXT,
    auth_mode           TEXT NOT NULL DEFAULT 'delegated',
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX subscriptions_status_idx ON subscriptions (status);

CREATE TABLE subscription_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox    TEXT NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    at         TIMESTAMPTZ NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX subscription_events_mailbox_idx ON subscription_events (mailbox, id);

CREATE TABLE sync_state (
    mailbox              TEXT PRIMARY KEY REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    phase                TEXT NOT NULL CHECK (phase IN ('initial', 'full_sync', 'incremental', 'error', 'auth_failed')),
    history_id           BIGINT,
    page_token           TEXT,
    full_sync_history_id BIGINT,
    full_sync_generation BIGINT NOT NULL DEFAULT 0,
    last_success_at      TIMESTAMPTZ,
    next_poll_at         TIMESTAMPTZ,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    last_error           TEXT,
    lease_owner          TEXT,
    lease_epoch          BIGINT NOT NULL DEFAULT 0,
    lease_expires_at     TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX sync_state_next_poll_idx ON sync_state (next_poll_at);

CREATE TABLE messages (
    mailbox         TEXT NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    gmail_id        TEXT NOT NULL,
    thread_id       TEXT NOT NULL,
    history_id      BIGINT NOT NULL,
    internal_date   TIMESTAMPTZ NOT NULL,
    message_id      TEXT,
    in_reply_to     TEXT,
    references_ids  TEXT NOT NULL DEFAULT '[]',
    subject         TEXT,
    snippet         TEXT,
    body_text       TEXT,
    body_html       TEXT,
    size_estimate   BIGINT NOT NULL CHECK (size_estimate >= 0),
    has_attachments BOOLEAN NOT NULL DEFAULT FALSE,
    label_ids       TEXT NOT NULL DEFAULT '[]',
    parse_error     TEXT,
    truncated       BOOLEAN NOT NULL DEFAULT FALSE,
    date_header     TIMESTAMPTZ,
    raw             BYTEA,
    sync_generation BIGINT NOT NULL DEFAULT 0,
    fts_addresses   TEXT,
    search_tsv      TSVECTOR,
    deleted_at      TIMESTAMPTZ,
    ingested_at     TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (mailbox, gmail_id)
);
CREATE INDEX messages_mailbox_date_idx ON messages (mailbox, internal_date);
CREATE INDEX messages_thread_idx ON messages (mailbox, thread_id);
CREATE INDEX messages_message_id_idx ON messages (message_id);
CREATE INDEX messages_in_reply_to_idx ON messages (in_reply_to);
CREATE INDEX messages_generation_idx ON messages (mailbox, sync_generation) WHERE deleted_at IS NULL;
CREATE INDEX messages_search_idx ON messages USING GIN (search_tsv);

-- Full-text vector of live messages: subject (weight A), the first 200,000
-- characters of body_text, and the addresses. NULL once soft-deleted, so a
-- deleted message never matches. Maintained by a trigger (rather than a
-- generated column) so that bookkeeping updates do not re-tokenize bodies.
CREATE FUNCTION messages_search_tsv() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted_at IS NULL THEN
        NEW.search_tsv :=
            setweight(to_tsvector('simple'::regconfig, coalesce(NEW.subject, '')), 'A')
            || to_tsvector('simple'::regconfig, left(coalesce(NEW.body_text, ''), 200000))
            || to_tsvector('simple'::regconfig, coalesce(NEW.fts_addresses, ''));
    ELSE
        NEW.search_tsv := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_search_tsv
BEFORE INSERT OR UPDATE OF subject, body_text, fts_addresses, deleted_at ON messages
FOR EACH ROW EXECUTE FUNCTION messages_search_tsv();

CREATE TABLE message_addresses (
    mailbox  TEXT NOT NULL,
    gmail_id TEXT NOT NULL,
    role     TEXT NOT NULL CHECK (role IN ('from', 'sender', 'reply_to', 'to', 'cc', 'bcc')),
    position BIGINT NOT NULL,
    name     TEXT,
    address  TEXT NOT NULL,
    domain   TEXT NOT NULL,
    PRIMARY KEY (mailbox, gmail_id, role, position),
    FOREIGN KEY (mailbox, gmail_id) REFERENCES messages (mailbox, gmail_id) ON DELETE CASCADE
);
CREATE INDEX message_addresses_domain_idx ON message_addresses (domain, role);
CREATE INDEX message_addresses_address_idx ON message_addresses (address, role);

CREATE TABLE message_labels (
    mailbox  TEXT NOT NULL,
    gmail_id TEXT NOT NULL,
    label_id TEXT NOT NULL,
    PRIMARY KEY (mailbox, gmail_id, label_id),
    FOREIGN KEY (mailbox, gmail_id) REFERENCES messages (mailbox, gmail_id) ON DELETE CASCADE
);
CREATE INDEX message_labels_label_idx ON message_labels (mailbox, label_id);

CREATE TABLE labels (
    mailbox  TEXT NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    label_id TEXT NOT NULL,
    name     TEXT NOT NULL,
    type     TEXT NOT NULL,
    PRIMARY KEY (mailbox, label_id)
);

CREATE TABLE attachments (
    mailbox             TEXT NOT NULL,
    gmail_id            TEXT NOT NULL,
    part_id             TEXT NOT NULL,
    filename            TEXT,
    mime_type           TEXT NOT NULL,
    size_bytes          BIGINT NOT NULL CHECK (size_bytes >= 0),
    sha256              TEXT NOT NULL,
    is_inline           BOOLEAN NOT NULL DEFAULT FALSE,
    content_id          TEXT,
    gmail_attachment_id TEXT,
    PRIMARY KEY (mailbox, gmail_id, part_id),
    FOREIGN KEY (mailbox, gmail_id) REFERENCES messages (mailbox, gmail_id) ON DELETE CASCADE
);
CREATE INDEX attachments_mime_idx ON attachments (mime_type);
CREATE INDEX attachments_sha256_idx ON attachments (sha256);

CREATE TABLE message_changes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox     TEXT NOT NULL,
    gmail_id    TEXT NOT NULL,
    change      TEXT NOT NULL CHECK (change IN ('added', 'deleted', 'label_added', 'label_removed')),
    label_id    TEXT,
    history_id  BIGINT,
    observed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX message_changes_mailbox_idx ON message_changes (mailbox, observed_at);
CREATE INDEX message_changes_message_idx ON message_changes (mailbox, gmail_id);

CREATE TABLE sync_runs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailbox       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    replica       TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    added         BIGINT NOT NULL DEFAULT 0,
    updated       BIGINT NOT NULL DEFAULT 0,
    deleted       BIGINT NOT NULL DEFAULT 0,
    label_changes BIGINT NOT NULL DEFAULT 0,
    api_calls     BIGINT NOT NULL DEFAULT 0,
    quota_units   BIGINT NOT NULL DEFAULT 0,
    outcome       TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX sync_runs_mailbox_idx ON sync_runs (mailbox, started_at);

CREATE TABLE quota_usage (
    bucket       TEXT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    units        BIGINT NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
