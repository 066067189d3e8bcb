-- Idle cost (issue 14): a quiet pass (one that changed nothing) writes no
-- `sync_runs` row; it is counted on its mailbox's `sync_state` instead.
-- The org-unit gate's last admission is kept so that a pass within
-- `sync.org_unit_recheck_interval` of it need not ask the Directory again,
-- and the scheduler's due query reads one index range instead of every
-- subscription.

-- Quiet passes since the mailbox's row was created, and when the last ended.
ALTER TABLE sync_state ADD COLUMN quiet_passes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN last_quiet_at TEXT;

-- When the org-unit gate last admitted the mailbox from a Directory answer;
-- NULL after a refusal and whenever the status changes.
ALTER TABLE subscriptions ADD COLUMN org_unit_allowed_at TEXT;

-- `next_poll_at` NULL now means "not scheduled" (the subscription is not
-- active); a mailbox becomes due when its subscription becomes active, which
-- also creates its row. Existing rows are brought to that rule.
INSERT INTO sync_state (mailbox, phase, updated_at)
SELECT s.mailbox, 'initial', strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') FROM subscriptions s
WHERE s.status = 'active'
AND NOT EXISTS (SELECT 1 FROM sync_state t WHERE t.mailbox = s.mailbox);
UPDATE sync_state SET next_poll_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')
WHERE next_poll_at IS NULL
AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.mailbox = sync_state.mailbox AND s.status = 'active');
UPDATE sync_state SET next_poll_at = NULL
WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.mailbox = sync_state.mailbox AND s.status = 'active');

-- The due query walks this index in order (due first, ties by mailbox).
DROP INDEX sync_state_next_poll_idx;
CREATE INDEX sync_state_due_idx ON sync_state (next_poll_at, mailbox);
