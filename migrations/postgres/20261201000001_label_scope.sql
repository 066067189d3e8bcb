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

-- `message_changes.change` gains 'left_scope' (the inline CHECK of the init
-- migration got PostgreSQL's default name).
ALTER TABLE message_changes DROP CONSTRAINT message_changes_change_check;
ALTER TABLE message_changes ADD CONSTRAINT message_changes_change_check
    CHECK (change IN ('added', 'deleted', 'label_added', 'label_removed', 'left_scope'));
