//! The one persistence API: [`Store`] over SQLite (embedded default) or
//! PostgreSQL (production, many replicas).
//!
//! Every caller goes through [`Store`]'s inherent methods; no SQL lives
//! outside this module. Each backend module owns its dialect (connection
//! set-up, `FOR UPDATE SKIP LOCKED` versus `BEGIN IMMEDIATE`, FTS5 versus
//! `tsvector`); statements that read the same on both are written once in
//! `sql/` and expanded for each backend. The decisions about *what* a
//! sync batch changes (which rows are new, which labels moved) are made in
//! one backend-neutral place, `batch::plan_batch`, so both backends record
//! the same `message_changes`.
//!
//! This module must not call Google, spawn tasks or print. Strings from
//! operators and mail are always bound parameters, never interpolated.
//!
//! # Layout
//!
//! - `mod.rs` (here): [`Store`], the dispatch facade whose methods document
//!   the API, and [`StoreError`].
//! - `model.rs`: the public types callers pass and get back (re-exported
//!   here).
//! - `rows.rs`: the `FromRow` row structs and their decoding into the model.
//! - `batch.rs`: the batch planner and the JSON payloads of its bulk
//!   statements.
//! - `text.rs`: NUL stripping, JSON string arrays, full-text search words.
//! - `sql/`: the statements both backends share, one file per concern
//!   (`subscriptions`, `oauth`, `leases`, `batches`, `runs`, `messages`,
//!   `quota`, `housekeeping`, `watches`, `push`), each a macro the backends expand.
//! - `sqlite.rs`, `postgres.rs`: the backends and their dialect SQL; neither
//!   imports the other.
//! - `migrations.rs`: sqlx's `Migrator` for each dialect.
//! - `conformance.rs`: the behavioural suite both backends pass; compiled
//!   only for tests (`cfg(test)` or the `test-support` feature).
//!
//! # The lease (fencing) protocol
//!
//! A replica syncs a mailbox only while it holds that mailbox's lease, a
//! pair (`sync_state.lease_owner`, `sync_state.lease_epoch`) valid until
//! `sync_state.lease_expires_at`. Every claim increments the epoch, so a
//! replica that paused past its expiry and was overtaken holds a stale epoch.
//! Every sync write ([`Store::commit_batch`], [`Store::record_failure`])
//! begins its transaction by reading the subscription (under a share lock on
//! PostgreSQL, so a pause or removal waits for the batch or is seen by it):
//! unless it is `active` (and in the lease's `auth_mode`, when the lease
//! names one) the transaction is abandoned with [`StoreError::NotActive`].
//! Then a conditional `UPDATE` on the mailbox's `sync_state` row matches
//! owner, epoch and an unexpired lease; when that touches no row the
//! transaction is abandoned with [`StoreError::LeaseLost`]. Either way
//! nothing is written. Only [`Store::record_stop`] (the run row of a pass
//! stopped by such a decision) and [`Store::release_lease`] check the lease
//! alone. The checkpoint (`history_id`, page token) is written in the same
//! transaction as the data it covers.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{GmailMessageId, MailboxAddress, Operator, StopDecision, SyncCounts};

mod batch;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod conformance;
mod migrations;
mod model;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod text;

pub use model::{
    Checkpoint, ConnectOptions, ConsentRemoval, ConsentWrite, DailyQuotaUsage, FailureRecord,
    FullSyncProgress, GroupMemberRow, GroupSubscription, LabelChange, LabelRow, Lease, LiveMessage,
    MailboxStatus, MembershipChanges, MessageChange, MessageUpsert, NewSubscription, NotifyOutcome,
    OAuthConsent, OAuthToken, Pruned, PurgeCounts, QuotaWait, ReviewSnapshot, SearchHit,
    Subscription, SubscriptionChange, SubscriptionEvent, SubscriptionUpdate, SyncBatch, SyncRunRow,
    SyncState, UNFETCHED_PREFIX, WatchState, WatchToStop,
};
#[doc(hidden)]
pub use postgres::CLAIM_DUE_SQL as PG_CLAIM_DUE_SQL;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What can go wrong in the store; callers branch on the first six.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The fencing check refused the write: the lease expired or another
    /// replica claimed the mailbox since. Nothing was written.
    #[error("lease on mailbox {mailbox} was lost")]
    LeaseLost { mailbox: String },
    /// The fencing check refused the write: the subscription is no longer
    /// active (an operator paused or removed it, the org-unit gate suspended
    /// it, it returned to pending), or its `auth_mode` is not the lease's.
    /// Nothing was written.
    #[error("subscription {mailbox} is {decision}: sync writes are refused")]
    NotActive {
        mailbox: String,
        decision: StopDecision,
    },
    /// The row changed under us or already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The database URL is malformed or names an unsupported backend.
    #[error("{0}")]
    InvalidUrl(String),
    /// The database cannot be reached or opened (never includes a password).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Other(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the database refused the data of the write itself (a row too
    /// long for SQLite's `SQLITE_MAX_LENGTH`, a constraint or trigger, a
    /// value PostgreSQL will not take), so that the same write would be
    /// refused again, while writes of other rows go through. Not when the
    /// database is unreachable, busy, out of resources or in a serialization
    /// conflict: those say nothing about the rows.
    pub fn is_data_refusal(&self) -> bool {
        match self {
            StoreError::Other(sqlx::Error::Encode(_)) => true,
            StoreError::Other(sqlx::Error::Database(e)) => {
                let code = e.code();
                let code = code.as_deref().unwrap_or("");
                if let Ok(n) = code.parse::<u32>() {
                    // SQLite's (extended) result code: BUSY 5, LOCKED 6,
                    // NOMEM 7, READONLY 8, INTERRUPT 9, IOERR 10, CORRUPT 11,
                    // FULL 13, CANTOPEN 14, PROTOCOL 15 are about the database.
                    !matches!(n & 0xff, 5..=11 | 13..=15)
                } else {
                    // PostgreSQL's SQLSTATE: connection (08), transaction
                    // rollback (40), insufficient resources (53), operator
                    // intervention (57), system (58) and internal (XX) errors
                    // are about the server, anything else about the data.
                    !["08", "40", "53", "57", "58", "XX"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }
            }
            _ => false,
        }
    }
}

/// The store: one API, two backends. Cheap to clone (the pools are shared).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend `$self` is.
macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Opens a pool of at most `max_connections`. See [`Store::connect_with`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_with(url, ConnectOptions::pool(max_connections)).await
    }

    /// Opens a pool. `sqlite://path` (created if missing; WAL, busy_timeout
    /// 5 s, foreign keys on, synchronous=NORMAL), `sqlite::memory:`, or
    /// `postgres://` / `postgresql://`. Does not migrate.
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Store, StoreError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Store::Sqlite(
                SqliteStore::connect(url, options.max_connections).await?,
            )),
            "postgres" | "postgresql" => Ok(Store::Postgres(PgStore::connect(url, options).await?)),
            "" => Err(StoreError::InvalidUrl(
                "database url has no scheme (expected sqlite:// or postgres://)".to_owned(),
            )),
            other => Err(StoreError::InvalidUrl(format!(
                "unsupported database url scheme '{}' (expected sqlite:// or postgres://)",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The database file, for a file-backed SQLite store.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self {
            Store::Sqlite(s) => s.path(),
            Store::Postgres(_) => None,
        }
    }

    /// Applies pending migrations (embedded in the binary).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.migrate().await)
    }

    /// How many embedded migrations are not applied yet.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        dispatch!(self, s => s.pending_migrations().await)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    // -- subscriptions ------------------------------------------------------

    /// Adds a pending subscription (event `add`). A removed row is re-added
    /// as pending, keeping its event history; any other existing row is a
    /// [`StoreError::Conflict`].
    pub async fn insert_subscription(
        &self,
        s: &NewSubscription,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, st => st.insert_subscription(s, None).await)
    }

    /// [`Store::insert_subscription`] for a member of a group subscription:
    /// records `via_group` with it, and `reason` in the `add` event.
    pub async fn insert_subscription_via_group(
        &self,
        s: &NewSubscription,
        group: &str,
        reason: &str,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, st => st.insert_subscription(s, Some((group, reason))).await)
    }

    pub async fn get_subscription(
        &self,
        m: &MailboxAddress,
    ) -> Result<Option<Subscription>, StoreError> {
        dispatch!(self, s => s.get_subscription(m).await)
    }

    /// Every subscription (removed ones included), ordered by mailbox.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        dispatch!(self, s => s.list_subscriptions().await)
    }

    /// Compare-and-set of the status plus an audit event, in one transaction.
    ///
    /// `approved_by`/`reviewed_by`/`org_unit_seen` are written (with their
    /// timestamps) when `Some`. `status_reason` becomes `reason` when that is
    /// `Some`, is cleared when the status changes without a reason, and is
    /// kept otherwise.
    pub async fn update_subscription(
        &self,
        u: &SubscriptionUpdate,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, s => s.update_subscription(u).await)
    }

    /// A governance change (`relabel`, `set-auth`): new label filter and auth
    /// mode, status `pending`, the actor as requester (so four-eyes compares
    /// with who asked for the change), the previous approval cleared, and the
    /// event, in one compare-and-set transaction (see [`SubscriptionChange`]).
    pub async fn request_subscription_change(
        &self,
        c: &SubscriptionChange,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, s => s.request_subscription_change(c).await)
    }

    /// Records the org unit found by a Directory look-up (no event), and
    /// whether the gate admitted the mailbox on it: `allowed` sets
    /// `org_unit_allowed_at` to now (the gate's cached verdict), otherwise it
    /// is cleared.
    pub async fn record_org_unit(
        &self,
        m: &MailboxAddress,
        org_unit: Option<&str>,
        allowed: bool,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_org_unit(m, org_unit, allowed).await)
    }

    /// The mailbox's audit events, oldest first.
    pub async fn subscription_events(
        &self,
        m: &MailboxAddress,
    ) -> Result<Vec<SubscriptionEvent>, StoreError> {
        dispatch!(self, s => s.subscription_events(m).await)
    }

    // -- groups -------------------------------------------------------------

    /// Records a group subscription (`active`); a removed one is re-activated
    /// with the new request; an active one is a [`StoreError::Conflict`].
    pub async fn insert_group_subscription(
        &self,
        group: &str,
        by: &Operator,
        label_filter: &[String],
        note: Option<&str>,
    ) -> Result<GroupSubscription, StoreError> {
        dispatch!(self, s => s.insert_group_subscription(group, by, label_filter, note).await)
    }

    pub async fn get_group_subscription(
        &self,
        group: &str,
    ) -> Result<Option<GroupSubscription>, StoreError> {
        dispatch!(self, s => s.get_group_subscription(group).await)
    }

    /// Every group subscription (removed ones included), ordered by group.
    pub async fn list_group_subscriptions(&self) -> Result<Vec<GroupSubscription>, StoreError> {
        dispatch!(self, s => s.list_group_subscriptions().await)
    }

    /// Ends an active group subscription; [`StoreError::NotFound`] when there
    /// is none. Member subscriptions are not touched.
    pub async fn remove_group_subscription(
        &self,
        group: &str,
        by: &Operator,
    ) -> Result<GroupSubscription, StoreError> {
        dispatch!(self, s => s.remove_group_subscription(group, by).await)
    }

    /// Records one expansion of `group` (its complete member list) in one
    /// transaction, and says who joined (new, or back after leaving) and who
    /// left since the previous expansion.
    pub async fn record_group_expansion(
        &self,
        group: &str,
        members: &[MailboxAddress],
    ) -> Result<MembershipChanges, StoreError> {
        dispatch!(self, s => s.record_group_expansion(group, members).await)
    }

    /// Every `group_members` row, by group then mailbox.
    pub async fn list_group_members(&self) -> Result<Vec<GroupMemberRow>, StoreError> {
        dispatch!(self, s => s.list_group_members().await)
    }

    /// The group memberships recorded at each mailbox's last review.
    pub async fn list_review_snapshots(&self) -> Result<Vec<ReviewSnapshot>, StoreError> {
        dispatch!(self, s => s.list_review_snapshots().await)
    }

    /// Replaces the mailbox's review snapshot.
    pub async fn record_review_snapshot(
        &self,
        m: &MailboxAddress,
        groups: &[String],
        org_unit: Option<&str>,
        by: &Operator,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_review_snapshot(m, groups, org_unit, by).await)
    }

    // -- OAuth consent ------------------------------------------------------

    /// Stores a mailbox owner's consent (the sealed refresh token) and, in the
    /// same transaction: creates a pending `oauth` subscription when there is
    /// none (or it was removed) — consent never activates one, an operator
    /// approves it; otherwise leaves the subscription's status and `auth_mode`
    /// alone (a consent for a delegated mailbox is kept, not used); re-arms an
    /// OAuth mailbox waiting in `auth_failed`; and records a `consent` event.
    /// A stored consent of another Google account (a different
    /// `google_subject`) is never replaced: [`ConsentWrite::OtherAccount`],
    /// nothing written.
    pub async fn record_oauth_consent(&self, c: &OAuthConsent) -> Result<ConsentWrite, StoreError> {
        dispatch!(self, s => s.record_oauth_consent(c).await)
    }

    pub async fn oauth_token(&self, m: &MailboxAddress) -> Result<Option<OAuthToken>, StoreError> {
        dispatch!(self, s => s.oauth_token(m).await)
    }

    pub async fn list_oauth_tokens(&self) -> Result<Vec<OAuthToken>, StoreError> {
        dispatch!(self, s => s.list_oauth_tokens().await)
    }

    /// Re-seals a token under another key (compare-and-set on the old
    /// ciphertext, so a consent stored meanwhile is not overwritten).
    pub async fn replace_oauth_ciphertext(
        &self,
        m: &MailboxAddress,
        old_ciphertext: &str,
        new_ciphertext: &str,
        key_id: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.replace_oauth_ciphertext(m, old_ciphertext, new_ciphertext, key_id).await)
    }

    /// Deletes the mailbox's stored consent (only the one named, when
    /// `consent_id` is given) and, in the same transaction, pauses an active
    /// or suspended subscription when `pause` (a pending one stays pending)
    /// and records the event. [`StoreError::NotFound`] without a subscription
    /// or a stored consent; [`StoreError::Conflict`] when another consent was
    /// stored since.
    pub async fn remove_oauth_consent(
        &self,
        r: &ConsentRemoval,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, s => s.remove_oauth_consent(r).await)
    }

    /// Deletes everything ingested for the mailbox (messages and their
    /// children, labels, changes, runs, sync state) in one transaction.
    /// The subscription row and its events are kept.
    pub async fn purge_mailbox(&self, m: &MailboxAddress) -> Result<PurgeCounts, StoreError> {
        dispatch!(self, s => s.purge_mailbox(m).await)
    }

    // -- sync state ---------------------------------------------------------

    pub async fn sync_state(&self, m: &MailboxAddress) -> Result<Option<SyncState>, StoreError> {
        dispatch!(self, s => s.sync_state(m).await)
    }

    pub async fn list_sync_states(&self) -> Result<Vec<SyncState>, StoreError> {
        dispatch!(self, s => s.list_sync_states().await)
    }

    /// Every non-removed subscription with its sync state and live message count.
    pub async fn mailbox_statuses(&self) -> Result<Vec<MailboxStatus>, StoreError> {
        dispatch!(self, s => s.mailbox_statuses().await)
    }

    // -- leases -------------------------------------------------------------

    /// Claims up to `limit` due mailboxes (active, `next_poll_at` past, lease
    /// free or expired), earliest `next_poll_at` first. Each claim increments
    /// the mailbox's `lease_epoch`. It reads one range of the
    /// `(next_poll_at, mailbox)` index, not every subscription: a
    /// subscription's `sync_state` row is created, and made due, when the
    /// subscription becomes active, and `next_poll_at` is NULL (not
    /// scheduled) while it is not active, so its cost does not grow with the
    /// fleet.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        dispatch!(self, s => s.claim_due(owner, now, lease_for, limit).await)
    }

    /// Claims one active mailbox regardless of `next_poll_at`; `None` when
    /// another owner holds a live lease or the subscription is not active;
    /// [`StoreError::NotFound`] when there is no subscription.
    pub async fn claim_mailbox(
        &self,
        m: &MailboxAddress,
        owner: &str,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        dispatch!(self, s => s.claim_mailbox(m, owner, now, lease_for).await)
    }

    /// Extends a live lease; [`StoreError::LeaseLost`] unless owner and epoch
    /// match and it has not expired.
    pub async fn renew_lease(
        &self,
        l: &Lease,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> Result<Lease, StoreError> {
        dispatch!(self, s => s.renew_lease(l, now, lease_for).await)
    }

    /// Frees the lease and schedules the next poll (none when the
    /// subscription is no longer active), if the lease is still ours; does
    /// nothing (and no error) otherwise.
    pub async fn release_lease(
        &self,
        l: &Lease,
        next_poll_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_lease(l, next_poll_at).await)
    }

    /// Records a Gmail push notification for `m` (one transaction; the
    /// caller acknowledges the Pub/Sub message only after this returned
    /// `Ok`). For an active subscription: `notified_history_id` becomes the
    /// larger of itself and `history_id`, `notified_at` becomes `now`, and
    /// when the mailbox is in phase `incremental`, not leased (or its lease
    /// expired), not in a failure backoff (`consecutive_failures = 0`) and
    /// its stored `history_id` is behind `history_id`, it is due at once
    /// (`next_poll_at = min(next_poll_at, now)`): [`NotifyOutcome::Due`].
    /// Otherwise nothing else changes ([`NotifyOutcome::Recorded`]); a pass
    /// in flight ends due at once if it leaves `history_id` behind the
    /// notified one (the end-of-pass rule of [`Store::commit_batch`] and
    /// [`Store::release_lease`]). An unknown or not-active subscription
    /// changes nothing: [`NotifyOutcome::NotActive`].
    pub async fn mark_notified(
        &self,
        m: &MailboxAddress,
        history_id: crate::domain::HistoryId,
        now: DateTime<Utc>,
    ) -> Result<NotifyOutcome, StoreError> {
        dispatch!(self, s => s.mark_notified(m, history_id, now).await)
    }

    // -- fenced sync writes -------------------------------------------------

    /// Writes a batch and its checkpoint in one fenced transaction, and says
    /// what the batch changed (derived from actual changes; `api_calls` and
    /// `quota_units` stay zero). A `quiet` batch counts a pass that changed
    /// nothing (`sync_state.quiet_passes`) instead of a run row; one with
    /// `release_at` frees the lease in the same transaction.
    pub async fn commit_batch(&self, l: &Lease, b: &SyncBatch) -> Result<SyncCounts, StoreError> {
        dispatch!(self, s => s.commit_batch(l, b).await)
    }

    /// Records a failed step under the lease: phase, last_error,
    /// consecutive_failures + 1, next_poll_at, and the run row if given.
    pub async fn record_failure(&self, l: &Lease, f: &FailureRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_failure(l, f).await)
    }

    /// Records the run row of a pass stopped by a decision
    /// ([`StoreError::NotActive`]), fenced by the lease only: the refusal's
    /// own record. Changes nothing else ([`StoreError::LeaseLost`] otherwise).
    pub async fn record_stop(&self, l: &Lease, run: &SyncRunRow) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_stop(l, run).await)
    }

    /// The subset of `ids` stored and not deleted.
    pub async fn known_message_ids(
        &self,
        m: &MailboxAddress,
        ids: &[GmailMessageId],
    ) -> Result<HashSet<GmailMessageId>, StoreError> {
        dispatch!(self, s => s.known_message_ids(m, ids).await)
    }

    // -- reads --------------------------------------------------------------

    /// Live messages ordered by gmail_id.
    pub async fn live_messages(&self, m: &MailboxAddress) -> Result<Vec<LiveMessage>, StoreError> {
        dispatch!(self, s => s.live_messages(m).await)
    }

    /// The mailbox's change log, oldest first.
    pub async fn message_changes(
        &self,
        m: &MailboxAddress,
    ) -> Result<Vec<MessageChange>, StoreError> {
        dispatch!(self, s => s.message_changes(m).await)
    }

    /// Full-text search over live messages: every word of `query` must
    /// match (subject, body or addresses). The input is plain words; FTS
    /// operators in it are treated as text.
    pub async fn search(
        &self,
        mailbox: Option<&MailboxAddress>,
        query: &str,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StoreError> {
        dispatch!(self, s => s.search(mailbox, query, limit).await)
    }

    /// Live messages not marked with full-sync `generation`: what a
    /// completed listing of that generation did not see.
    pub async fn unseen_message_ids(
        &self,
        mailbox: &MailboxAddress,
        generation: i64,
    ) -> Result<Vec<GmailMessageId>, StoreError> {
        dispatch!(self, s => s.unseen_message_ids(mailbox, generation).await)
    }

    /// Placeholder rows (see [`UNFETCHED_PREFIX`]) still waiting for a successful fetch.
    pub async fn unfetched_message_ids(
        &self,
        mailbox: &MailboxAddress,
        limit: u32,
    ) -> Result<Vec<GmailMessageId>, StoreError> {
        let hits = dispatch!(self, s => s.unfetched_messages(mailbox, limit).await)?;
        Ok(hits.into_iter().map(|h| h.gmail_id).collect())
    }

    /// The newest live messages of a mailbox (by Gmail internalDate).
    pub async fn recent_messages(
        &self,
        mailbox: &MailboxAddress,
        limit: u32,
    ) -> Result<Vec<SearchHit>, StoreError> {
        dispatch!(self, s => s.recent_messages(mailbox, limit).await)
    }

    /// Live messages stored for the mailbox.
    pub async fn count_messages(&self, m: &MailboxAddress) -> Result<i64, StoreError> {
        dispatch!(self, s => s.count_messages(m).await)
    }

    /// The mailbox's sync runs, oldest first.
    pub async fn sync_runs(&self, m: &MailboxAddress) -> Result<Vec<SyncRunRow>, StoreError> {
        dispatch!(self, s => s.sync_runs(m).await)
    }

    // -- housekeeping -------------------------------------------------------

    /// Deletes `sync_runs` rows started before `runs_before` (none if `None`)
    /// and `quota_usage` windows that began before `quota_before`, in
    /// statements of at most `batch` rows. Mail and its change log are never
    /// pruned.
    pub async fn prune_history(
        &self,
        runs_before: Option<DateTime<Utc>>,
        quota_before: DateTime<Utc>,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        dispatch!(self, s => s.prune_history(runs_before, quota_before, batch).await)
    }

    // -- quota --------------------------------------------------------------

    /// Atomically adds `units` to (bucket, window_start) if the total stays
    /// within `limit`; returns whether it did.
    pub async fn reserve_quota(
        &self,
        bucket: &str,
        window_start: DateTime<Utc>,
        units: i64,
        limit: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.reserve_quota(bucket, window_start, units, limit).await)
    }

    // -- the daily budget and backfill progress ------------------------------

    /// Atomically adds `units` to the Pacific day `day` ('YYYY-MM-DD') of
    /// `quota_daily` if the day's total stays within `limit`, counting them
    /// as backfill units too when `backfill`; returns whether it did.
    pub async fn reserve_daily_quota(
        &self,
        day: &str,
        units: i64,
        limit: i64,
        backfill: bool,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.reserve_daily_quota(day, units, limit, backfill).await)
    }

    /// Units reserved on the Pacific day `day` (zero for a day not started).
    pub async fn daily_quota_usage(&self, day: &str) -> Result<DailyQuotaUsage, StoreError> {
        dispatch!(self, s => s.daily_quota_usage(day).await)
    }

    /// Records the progress of the listing in progress (`None`: no listing
    /// any more) and clears any quota wait; fenced by the lease alone.
    pub async fn record_full_sync_progress(
        &self,
        l: &Lease,
        p: Option<&FullSyncProgress>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_full_sync_progress(l, p).await)
    }

    /// The progress of the mailbox's listing in progress, if any.
    pub async fn full_sync_progress(
        &self,
        m: &MailboxAddress,
    ) -> Result<Option<FullSyncProgress>, StoreError> {
        dispatch!(self, s => s.full_sync_progress(m).await)
    }

    /// Records that the mailbox's backfill waits for the daily budget until
    /// `until` (also its next poll), and why, with the pass's run row;
    /// fenced by the lease alone, like a stop.
    pub async fn record_quota_wait(
        &self,
        l: &Lease,
        until: DateTime<Utc>,
        reason: &str,
        run: &SyncRunRow,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_quota_wait(l, until, reason, run).await)
    }

    // -- push watches -------------------------------------------------------

    /// Records the watch a pass made (`users.watch`): its expiry, `now` as
    /// its renewal, the label scope it was made for, and no error. Fenced by
    /// the lease alone, like [`Store::record_stop`]: not a checkpoint
    /// ([`StoreError::LeaseLost`] otherwise).
    pub async fn record_watch(
        &self,
        l: &Lease,
        expires_at: DateTime<Utc>,
        label_scope: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_watch(l, expires_at, label_scope, now).await)
    }

    /// Records why the pass's `users.watch` failed, at `now` (the watch
    /// columns are kept: a watch made before may still be live). Fenced by
    /// the lease alone.
    pub async fn record_watch_failure(
        &self,
        l: &Lease,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_watch_failure(l, error, now).await)
    }

    /// Up to `limit` watches to end with `users.stop`: mailboxes whose
    /// subscription is pending, paused, suspended or removed and whose
    /// watch expires after `now`, by mailbox. (A mailbox in `auth_failed`
    /// is still active and keeps its watch.) Reads from the subscriptions
    /// that are not active, never the active fleet.
    pub async fn watches_to_stop(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WatchToStop>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        dispatch!(self, s => s.watches_to_stop(now, limit).await)
    }

    /// Claims the stop of `w`: clears the watch columns if the stored expiry
    /// is still `w.expires_at` and the subscription still not active.
    /// Returns whether this caller won (then it, and only it, calls
    /// `users.stop`).
    pub async fn take_watch_to_stop(
        &self,
        w: &WatchToStop,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.take_watch_to_stop(w, now).await)
    }

    /// Records why a `users.stop` taken with [`Store::take_watch_to_stop`]
    /// failed; not when a new watch was recorded since.
    pub async fn record_watch_stop_failure(
        &self,
        m: &MailboxAddress,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_watch_stop_failure(m, error, now).await)
    }

    /// Runs a read-only analyst query and returns how many rows it produced
    /// (used by the schema-docs test; not for production paths).
    #[doc(hidden)]
    pub async fn count_query_rows(&self, sql: &str) -> Result<usize, StoreError> {
        dispatch!(self, s => s.count_query_rows(sql).await)
    }

    /// Runs a query and returns its first column of every row as text.
    #[doc(hidden)]
    pub async fn query_first_column(&self, sql: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.query_first_column(sql).await)
    }
}
