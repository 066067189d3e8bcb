-- Label scope, enforced (issue 13).
-- `subscriptions.label_scope`: the Gmail label IDs `label_filter` resolved to
-- when the subscription was last approved (JSON array; '[]' = the whole
-- mailbox; NULL = not resolved since the last request). Rows approved before
-- this migration kept their filter as label IDs, so they keep it as scope.
ALTER TABLE subscriptions ADD COLUMN label_scope TEXT;
UPDATE subscriptions SET label_scope = label_filter WHERE status <> 'pending';

-- `sync_state.applied_label_scope`: the scope the live rows reflect, written
-- with the checkpoint that makes it true. Existing rows were synced whole.
ALTER TABLE sync_state ADD COLUMN applied_label_scope TEXT;
UPDATE sync_state SET applied_label_scope = '[]';

-- `message_changes.change` gains 'left_scope'. SQLite cannot alter a CHECK:
-- rebuild the table, keeping its rows, ids and indexes.
CREATE TABLE message_changes_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox     TEXT NOT NULL,
    gmail_id    TEXT NOT NULL,
    change      TEXT NOT NULL CHECK (change IN ('added', 'deleted', 'label_added', 'label_removed', 'left_scope')),
    label_id    TEXT,
    history_id  INTEGER,
    observed_at TEXT NOT NULL
);
INSERT INTO message_changes_new (id, mailbox, gmail_id, change, label_id, history_id, observed_at)
    SELECT id, mailbox, gmail_id, change, label_id, history_id, observed_at FROM message_changes;
DROP TABLE message_changes;
ALTER TABLE message_changes_new RENAME TO message_changes;
CREATE INDEX message_changes_mailbox_idx ON message_changes (mailbox, observed_at);
CREATE INDEX message_changes_message_idx ON message_changes (mailbox, gmail_id);
