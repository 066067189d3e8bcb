-- Google Groups (issue 13): group subscriptions, the members each one
-- expanded to, the group through which a subscription was requested, and
-- the group memberships an operator saw at their last review.

ALTER TABLE subscriptions ADD COLUMN via_group TEXT;

CREATE TABLE group_subscriptions (
    group_email      TEXT PRIMARY KEY,
    status           TEXT NOT NULL CHECK (status IN ('active', 'removed')),
    label_filter     TEXT NOT NULL DEFAULT '[]',
    note             TEXT,
    requested_by     TEXT NOT NULL,
    requested_at     TIMESTAMPTZ NOT NULL,
    removed_by       TEXT,
    removed_at       TIMESTAMPTZ,
    last_expanded_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- One row per mailbox a group subscription's expansion ever found; `left_at`
-- is set when a later expansion no longer finds it (and cleared if it returns).
CREATE TABLE group_members (
    group_email   TEXT NOT NULL REFERENCES group_subscriptions (group_email) ON DELETE CASCADE,
    mailbox       TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    last_seen_at  TIMESTAMPTZ NOT NULL,
    left_at       TIMESTAMPTZ,
    PRIMARY KEY (group_email, mailbox)
);
CREATE INDEX group_members_mailbox_idx ON group_members (mailbox);

-- What `subscriptions review --mark-reviewed` recorded per mailbox: the
-- groups the Directory listed for it then (a JSON array of group emails).
CREATE TABLE review_snapshots (
    mailbox     TEXT PRIMARY KEY REFERENCES subscriptions (mailbox) ON DELETE CASCADE,
    groups      TEXT NOT NULL DEFAULT '[]',
    org_unit    TEXT,
    reviewed_by TEXT NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL
);
