-- gmail-ingest schema, SQLite dialect. Keep in step with migrations/postgres.
-- Timestamps are ISO-8601 UTC text (e.g. 2026-11-23T10:15:00.123456+00:00),
-- booleans are 0/1 integers, JSON arrays are text.

CREATE TABLE subscriptions (
    mailbox             TEXT PRIMARY KEY NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'active', 'paused', 'suspended', 'removed')),
    label_filter        TEXT NOT NULL DEFAULT '[]',
    requested_by        TEXT NOT NULL,
    requested_at        TEXT NOT NULL,
    approved_by         TEXT,
    approved_at         TEXT,
    last_reviewed_at    TEXT,
    reviewed_by         TEXT,
    org_unit_seen       TEXT,
    org_unit_checked_at TEXT,
    note                TEXT,
    status_reason       TEXT,
    auth_mode           TEXT NOT NULL DEFAULT 'delegated',
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX subscriptions_status_idx ON subscriptions (status);

CREATE TABLE subscription_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox    TEXT NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    old_status TEXT,
    new_status TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX subscription_events_mailbox_idx ON subscription_events (mailbox, id);

CREATE TABLE sync_state (
    mailbox              TEXT PRIMARY KEY NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    phase                TEXT NOT NULL CHECK (phase IN ('initial', 'full_sync', 'incremental', 'error', 'auth_failed')),
    history_id           INTEGER,
    page_token           TEXT,
    full_sync_history_id INTEGER,
    full_sync_generation INTEGER NOT NULL DEFAULT 0,
    last_success_at      TEXT,
    next_poll_at         TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    lease_owner          TEXT,
    lease_epoch          INTEGER NOT NULL DEFAULT 0,
    lease_expires_at     TEXT,
    updated_at           TEXT NOT NULL
);
CREATE INDEX sync_state_next_poll_idx ON sync_state (next_poll_at);

-- SQLite only: `id` is an explicit rowid alias so the FTS5 index (which is
-- keyed by rowid) survives VACUUM; (mailbox, gmail_id) is the logical key.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    mailbox         TEXT NOT NULL REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    gmail_id        TEXT NOT NULL,
    thread_id       TEXT NOT NULL,
    history_id      INTEGER NOT NULL,
    internal_date   TEXT NOT NULL,
    message_id      TEXT,
    in_reply_to     TEXT,
    references_ids  TEXT NOT NULL DEFAULT '[]',
    subject         TEXT,
    snippet         TEXT,
    body_text       TEXT,
    body_html       TEXT,
    size_estimate   INTEGER NOT NULL CHECK (size_estimate >= 0),
    has_attachments INTEGER NOT NULL DEFAULT 0,
    label_ids       TEXT NOT NULL DEFAULT '[]',
    parse_error     TEXT,
    truncated       INTEGER NOT NULL DEFAULT 0,
    date_header     TEXT,
    raw             BLOB,
    sync_generation INTEGER NOT NULL DEFAULT 0,
    fts_addresses   TEXT,
    deleted_at      TEXT,
    ingested_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (mailbox, gmail_id)
);
CREATE INDEX messages_mailbox_date_idx ON messages (mailbox, internal_date);
CREATE INDEX messages_thread_idx ON messages (mailbox, thread_id);
CREATE INDEX messages_message_id_idx ON messages (message_id);
CREATE INDEX messages_in_reply_to_idx ON messages (in_reply_to);
CREATE INDEX messages_generation_idx ON messages (mailbox, sync_generation) WHERE deleted_at IS NULL;

CREATE TABLE message_addresses (
    mailbox  TEXT NOT NULL,
    gmail_id TEXT NOT NULL,
    role     TEXT NOT NULL CHECK (role IN ('from', 'sender', 'reply_to', 'to', 'cc', 'bcc')),
    position INTEGER NOT NULL,
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
    size_bytes          INTEGER NOT NULL CHECK (size_bytes >= 0),
    sha256              TEXT NOT NULL,
    is_inline           INTEGER NOT NULL DEFAULT 0,
    content_id          TEXT,
    gmail_attachment_id TEXT,
    PRIMARY KEY (mailbox, gmail_id, part_id),
    FOREIGN KEY (mailbox, gmail_id) REFERENCES messages (mailbox, gmail_id) ON DELETE CASCADE
);
CREATE INDEX attachments_mime_idx ON attachments (mime_type);
CREATE INDEX attachments_sha256_idx ON attachments (sha256);

CREATE TABLE message_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox     TEXT NOT NULL,
    gmail_id    TEXT NOT NULL,
    change      TEXT NOT NULL CHECK (change IN ('added', 'deleted', 'label_added', 'label_removed')),
    label_id    TEXT,
    history_id  INTEGER,
    observed_at TEXT NOT NULL
);
CREATE INDEX message_changes_mailbox_idx ON message_changes (mailbox, observed_at);
CREATE INDEX message_changes_message_idx ON message_changes (mailbox, gmail_id);

CREATE TABLE sync_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    replica       TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    added         INTEGER NOT NULL DEFAULT 0,
    updated       INTEGER NOT NULL DEFAULT 0,
    deleted       INTEGER NOT NULL DEFAULT 0,
    label_changes INTEGER NOT NULL DEFAULT 0,
    api_calls     INTEGER NOT NULL DEFAULT 0,
    quota_units   INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT NOT NULL,
    error         TEXT
);
CREATE INDEX sync_runs_mailbox_idx ON sync_runs (mailbox, started_at);

CREATE TABLE quota_usage (
    bucket       TEXT NOT NULL,
    window_start TEXT NOT NULL,
    units        INTEGER NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

-- Full-text index over subject, body and addresses of live messages.
-- External content: the text lives in `messages`; the triggers below keep
-- the index in step and drop soft-deleted messages from it.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    subject, body_text, fts_addresses,
    content = 'messages', content_rowid = 'id'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
WHEN new.deleted_at IS NULL BEGIN
    INSERT INTO messages_fts (rowid, subject, body_text, fts_addresses)
    VALUES (new.id, new.subject, new.body_text, new.fts_addresses);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.deleted_at IS NULL BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, body_text, fts_addresses)
    VALUES ('delete', old.id, old.subject, old.body_text, old.fts_addresses);
END;

-- One trigger, two statements in order: the old text leaves the index
-- before the new text enters it (separate triggers would fire in an
-- unspecified order and corrupt the index on an unchanged replay).
CREATE TRIGGER messages_fts_update AFTER UPDATE OF subject, body_text, fts_addresses, deleted_at ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, subject, body_text, fts_addresses)
    SELECT 'delete', old.id, old.subject, old.body_text, old.fts_addresses
    WHERE old.deleted_at IS NULL;
    INSERT INTO messages_fts (rowid, subject, body_text, fts_addresses)
    SELECT new.id, new.subject, new.body_text, new.fts_addresses
    WHERE new.deleted_at IS NULL;
END;
