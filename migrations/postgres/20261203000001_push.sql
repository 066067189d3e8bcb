-- Gmail push (issue 17): each mailbox's watch (users.watch) and the newest
-- notification Pub/Sub delivered for it.

-- The live watch: when Google said it expires (NULL = no watch), when it was
-- last made or renewed, and the label scope it was made for (a JSON array of
-- label IDs, like subscriptions.label_scope), so that a scope change renews it.
ALTER TABLE sync_state ADD COLUMN watch_expires_at TIMESTAMPTZ;
ALTER TABLE sync_state ADD COLUMN watch_renewed_at TIMESTAMPTZ;
ALTER TABLE sync_state ADD COLUMN watch_label_scope TEXT;
-- Why the last users.watch or users.stop failed (NULL once one succeeds):
-- the mailbox is polled as without push meanwhile, and status says why.
ALTER TABLE sync_state ADD COLUMN watch_error TEXT;
ALTER TABLE sync_state ADD COLUMN watch_failed_at TIMESTAMPTZ;

-- The highest historyId a notification named, and when it arrived. A pass
-- that ends behind it leaves the mailbox due at once: a notification that
-- arrives mid-pass is not lost to the pass's own next poll time.
ALTER TABLE sync_state ADD COLUMN notified_history_id BIGINT;
ALTER TABLE sync_state ADD COLUMN notified_at TIMESTAMPTZ;
