-- The project's daily Gmail quota, counted once for the project (issue 14).
-- One row per Pacific day (`day` = 'YYYY-MM-DD' in America/Los_Angeles, the
-- day Google resets the quota at midnight of). Replicas reserve units in
-- chunks with one conditional upsert each; `units` is what was reserved,
-- an upper bound on what was spent. `backfill_units` is the part reserved
-- for full syncs and resyncs, so the rest measures the fleet's incremental rate.
CREATE TABLE quota_daily (
    day            TEXT PRIMARY KEY,
    units          INTEGER NOT NULL CHECK (units >= 0),
    backfill_units INTEGER NOT NULL DEFAULT 0 CHECK (backfill_units >= 0),
    updated_at     TEXT NOT NULL
);

-- Progress of the full sync (or resync) in progress, for `status`: since
-- when it runs, how many IDs were listed and messages fetched, and the
-- profile's messagesTotal. NULL started_at: no listing in progress.
ALTER TABLE sync_state ADD COLUMN full_sync_started_at TEXT;
ALTER TABLE sync_state ADD COLUMN full_sync_listed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN full_sync_fetched INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN full_sync_estimated_total INTEGER NOT NULL DEFAULT 0;

-- A backfill paced by the daily budget: why it waits and until when
-- (next_poll_at is set to the same time). Cleared when the backfill goes on.
ALTER TABLE sync_state ADD COLUMN quota_wait_until TEXT;
ALTER TABLE sync_state ADD COLUMN quota_wait_reason TEXT;
