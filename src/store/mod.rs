//! The one persistence API: [`Store`] over SQLite (embedded default) or
//! PostgreSQL (production, many replicas).
//!
//! Every caller goes through [`Store`]'s inherent methods; no SQL lives
//! outside this module. Each backend module owns its dialect (connection
//! set-up, `FOR UPDATE SKIP LOCKED` versus `BEGIN IMMEDIATE`, FTS5 versus
//! `tsvector`); statements that read the same on both are written once in
//! `shared.rs` and expanded for each backend. The decisions about *what* a
//! sync batch changes (which rows are new, which labels moved) are made in
//! one backend-neutral place, [`plan_batch`], so both backends record the
//! same `message_changes`.
//!
//! This module must not call Google, spawn tasks or print. Strings from
//! operators and mail are always bound parameters, never interpolated.
//!
//! # The lease (fencing) protocol
//!
//! A replica syncs a mailbox only while it holds that mailbox's lease, a
//! pair (`sync_state.lease_owner`, `sync_state.lease_epoch`) valid until
//! `sync_state.lease_expires_at`. Every claim increments the epoch, so a
//! replica that paused past its expiry and was overtaken holds a stale epoch.
//! Every sync write ([`Store::commit_batch`], [`Store::record_failure`])
//! begins its transaction with a conditional `UPDATE` on the mailbox's
//! `sync_state` row matching owner, epoch and an unexpired lease; when that
//! touches no row the transaction is abandoned with [`StoreError::LeaseLost`]
//! and nothing is written. The checkpoint (`history_id`, page token) is
//! written in the same transaction as the data it covers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;

use crate::domain::{
    AuthMode, ChangeKind, GmailMessageId, GmailMessageMeta, HistoryId, MailboxAddress,
    NormalizedMessage, Operator, ParseError, RunOutcome, SubscriptionStatus, SyncCounts, SyncKind,
    SyncPhase,
};

#[doc(hidden)]
pub mod conformance;
mod migrations;
mod postgres;
mod shared;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What can go wrong in the store; callers branch on the first five.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The fencing check refused the write: the lease expired or another
    /// replica claimed the mailbox since. Nothing was written.
    #[error("lease on mailbox {mailbox} was lost")]
    LeaseLost { mailbox: String },
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

/// The store: one API, two backends. Cheap to clone (the pools are shared).
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

// ---------------------------------------------------------------------------
// Public row and input types.
// ---------------------------------------------------------------------------

/// A request to ingest a mailbox (`subscriptions add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    pub mailbox: MailboxAddress,
    pub requested_by: Operator,
    /// Gmail label IDs to restrict ingestion to; empty means all mail.
    pub label_filter: Vec<String>,
    pub note: Option<String>,
    pub auth_mode: AuthMode,
}

/// A guarded status change of a subscription (compare-and-set on `expected`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionUpdate {
    pub mailbox: MailboxAddress,
    /// The status the caller saw; the update is refused with
    /// [`StoreError::Conflict`] if the row moved on since.
    pub expected: SubscriptionStatus,
    pub new_status: SubscriptionStatus,
    pub actor: Operator,
    /// Recorded verbatim in `subscription_events.action` (e.g. "approve").
    pub action: String,
    pub reason: Option<String>,
    pub approved_by: Option<Operator>,
    pub reviewed_by: Option<Operator>,
    pub org_unit_seen: Option<String>,
}

/// One row of `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub mailbox: MailboxAddress,
    pub status: SubscriptionStatus,
    /// Stored as a JSON array of label IDs; empty means all mail.
    pub label_filter: Vec<String>,
    pub requested_by: Operator,
    pub requested_at: DateTime<Utc>,
    pub approved_by: Option<Operator>,
    pub approved_at: Option<DateTime<Utc>>,
    pub last_reviewed_at: Option<DateTime<Utc>>,
    pub reviewed_by: Option<Operator>,
    pub org_unit_seen: Option<String>,
    pub org_unit_checked_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub status_reason: Option<String>,
    pub auth_mode: AuthMode,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A mailbox owner's OAuth consent to store (`oauth_tokens`).
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthConsent {
    pub mailbox: MailboxAddress,
    /// The refresh token sealed by `oauth::TokenKeys`; never the token itself.
    pub refresh_token_ciphertext: String,
    pub key_id: String,
    /// The scopes Google granted, space-separated.
    pub scopes: String,
    /// Google's stable account ID (`sub`) of the consenting account.
    pub google_subject: Option<String>,
    pub actor: Operator,
}

impl std::fmt::Debug for OAuthConsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConsent")
            .field("mailbox", &self.mailbox)
            .field("key_id", &self.key_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// One row of `oauth_tokens`: the refresh token stays sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthToken {
    pub mailbox: MailboxAddress,
    pub refresh_token_ciphertext: String,
    pub key_id: String,
    pub scopes: String,
    pub google_subject: Option<String>,
    pub consented_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One row of the append-only `subscription_events` audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionEvent {
    pub id: i64,
    pub mailbox: MailboxAddress,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub old_status: Option<SubscriptionStatus>,
    pub new_status: SubscriptionStatus,
    pub reason: Option<String>,
}

/// One row of `sync_state`: where a mailbox's sync stands, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncState {
    pub mailbox: MailboxAddress,
    pub phase: SyncPhase,
    /// The checkpoint: every change up to here is committed.
    pub history_id: Option<HistoryId>,
    /// Resume point of an interrupted full-sync listing.
    pub page_token: Option<String>,
    /// The profile historyId read before the current full sync's listing.
    pub full_sync_history_id: Option<HistoryId>,
    /// Incremented by the engine for each full sync; rows not marked with
    /// the current generation at the end of the listing are soft-deleted.
    pub full_sync_generation: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub next_poll_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    /// Fencing: the replica currently allowed to write this mailbox's sync
    /// data, or `None` when free. Only meaningful with `lease_epoch` and
    /// while `lease_expires_at` lies in the future.
    pub lease_owner: Option<String>,
    /// Fencing: incremented by every claim, never reset. A writer must
    /// present the epoch it was handed; a stale epoch means another claim
    /// happened since and the write is refused with `LeaseLost`.
    pub lease_epoch: i64,
    /// Fencing: after this instant the lease is void — writes under it are
    /// refused and any replica may claim the mailbox. Renewed by
    /// [`Store::renew_lease`], cleared by [`Store::release_lease`].
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A mailbox as the `status` command shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MailboxStatus {
    pub mailbox: MailboxAddress,
    pub status: SubscriptionStatus,
    /// `None` until the mailbox was first claimed.
    pub phase: Option<SyncPhase>,
    pub history_id: Option<HistoryId>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub next_poll_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Live (not soft-deleted) messages stored.
    pub messages: i64,
}

/// One row of `sync_runs`: a sync pass and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncRunRow {
    pub mailbox: MailboxAddress,
    pub kind: SyncKind,
    pub replica: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(flatten)]
    pub counts: SyncCounts,
    /// `ok`, `error` or `auth_failed` (`lease_lost` is reserved: a fenced-out
    /// replica cannot write its run row).
    pub outcome: RunOutcome,
    pub error: Option<String>,
}

/// One row of the append-only `message_changes` log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageChange {
    pub id: i64,
    pub mailbox: MailboxAddress,
    pub gmail_id: GmailMessageId,
    pub change: ChangeKind,
    pub label_id: Option<String>,
    pub history_id: Option<HistoryId>,
    pub observed_at: DateTime<Utc>,
}

/// A live message reduced to what sync tests compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveMessage {
    pub gmail_id: GmailMessageId,
    pub thread_id: String,
    /// Sorted.
    pub label_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchHit {
    pub mailbox: MailboxAddress,
    pub gmail_id: GmailMessageId,
    pub subject: Option<String>,
}

/// Rows removed by [`Store::prune_history`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub sync_runs: u64,
    pub quota_windows: u64,
}

/// Rows deleted per table by [`Store::purge_mailbox`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgeCounts {
    pub messages: u64,
    pub message_addresses: u64,
    pub message_labels: u64,
    pub attachments: u64,
    pub labels: u64,
    pub message_changes: u64,
    pub sync_runs: u64,
    pub sync_state: u64,
}

/// The right to write one mailbox's sync data (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub mailbox: MailboxAddress,
    pub owner: String,
    /// The `sync_state.lease_epoch` this claim produced.
    pub epoch: i64,
    /// Writes under this lease are refused from this instant on.
    pub expires_at: DateTime<Utc>,
}

/// A fetched message to insert or replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUpsert {
    pub meta: GmailMessageMeta,
    pub content: NormalizedMessage,
    /// The RFC 822 bytes, only when `sync.store_raw` is on.
    pub raw: Option<Vec<u8>>,
}

/// Labels added to / removed from a message (from a history record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelChange {
    pub gmail_id: GmailMessageId,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub history_id: Option<HistoryId>,
}

/// One row of `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelRow {
    pub label_id: String,
    pub name: String,
    /// Gmail's label type: `system` or `user`.
    pub label_type: String,
}

/// The sync position written with a batch (always the full state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub phase: SyncPhase,
    pub history_id: Option<HistoryId>,
    pub page_token: Option<String>,
    pub full_sync_history_id: Option<HistoryId>,
    pub full_sync_generation: i64,
    /// True: `last_success_at` = now, `consecutive_failures` = 0, `last_error` = NULL.
    pub success: bool,
}

/// Everything one sync step writes, committed in one transaction.
///
/// Applied in this order: `upserts`, `label_changes`, `label_reconcile`,
/// `deletes`, `mark_seen`, `delete_unseen`, `labels`, then the checkpoint
/// and `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncBatch {
    pub upserts: Vec<MessageUpsert>,
    /// Soft deletes (`deleted_at` = now); idempotent.
    pub deletes: Vec<(GmailMessageId, Option<HistoryId>)>,
    /// Applied to known, live messages only; unknown ids are ignored.
    pub label_changes: Vec<LabelChange>,
    /// (label_id, complete member list): known live members lacking the label
    /// get it, known live messages outside the list lose it.
    pub label_reconcile: Option<(String, Vec<GmailMessageId>)>,
    /// Set `sync_generation` to the checkpoint's generation on these rows.
    pub mark_seen: Vec<GmailMessageId>,
    /// Soft-delete every live message of an older generation.
    pub delete_unseen: bool,
    /// Replace this mailbox's `labels` rows.
    pub labels: Option<Vec<LabelRow>>,
    pub checkpoint: Checkpoint,
    pub run: Option<SyncRunRow>,
}

impl SyncBatch {
    /// A batch that only writes `checkpoint`.
    pub fn new(checkpoint: Checkpoint) -> Self {
        Self {
            upserts: Vec::new(),
            deletes: Vec::new(),
            label_changes: Vec::new(),
            label_reconcile: None,
            mark_seen: Vec::new(),
            delete_unseen: false,
            labels: None,
            checkpoint,
            run: None,
        }
    }
}

/// A failed sync step, written under the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    pub phase: SyncPhase,
    pub error: String,
    pub next_poll_at: DateTime<Utc>,
    pub run: Option<SyncRunRow>,
}

// ---------------------------------------------------------------------------
// Dispatch.
// ---------------------------------------------------------------------------

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

/// `parse_error` prefix of a placeholder row for a message that could not
/// be fetched; such rows are refetched at the start of every pass.
pub const UNFETCHED_PREFIX: &str = "not fetched: ";

/// How a pool is opened, beyond its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// PostgreSQL only: set as `idle_in_transaction_session_timeout` on every
    /// connection, so the server aborts a transaction whose client stopped
    /// mid-way (SIGSTOP, VM pause, partition) and its row locks (the lease
    /// fence) are released instead of pinning mailboxes until TCP gives up.
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// `max_connections` and nothing else set.
    pub fn pool(max_connections: u32) -> Self {
        Self {
            max_connections,
            idle_in_transaction_timeout: None,
        }
    }
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
        dispatch!(self, st => st.insert_subscription(s).await)
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

    /// Records the org unit found by a Directory look-up (no event).
    pub async fn record_org_unit(
        &self,
        m: &MailboxAddress,
        org_unit: Option<&str>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_org_unit(m, org_unit).await)
    }

    /// The mailbox's audit events, oldest first.
    pub async fn subscription_events(
        &self,
        m: &MailboxAddress,
    ) -> Result<Vec<SubscriptionEvent>, StoreError> {
        dispatch!(self, s => s.subscription_events(m).await)
    }

    // -- OAuth consent ------------------------------------------------------

    /// Stores a mailbox owner's consent (the sealed refresh token) and, in the
    /// same transaction: creates a pending `oauth` subscription when there is
    /// none (or it was removed) — consent never activates one, an operator
    /// approves it; otherwise switches `auth_mode` to `oauth`; re-arms a mailbox
    /// waiting in `auth_failed`; and records a `consent` event.
    pub async fn record_oauth_consent(&self, c: &OAuthConsent) -> Result<Subscription, StoreError> {
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

    /// Deletes the mailbox's stored consent and, in the same transaction,
    /// pauses an active or suspended subscription (a pending one stays
    /// pending) and records a `disconnect` event.
    pub async fn disconnect_oauth(
        &self,
        m: &MailboxAddress,
        actor: &Operator,
        reason: &str,
    ) -> Result<Subscription, StoreError> {
        dispatch!(self, s => s.disconnect_oauth(m, actor, reason).await)
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

    /// Claims up to `limit` due mailboxes (active, `next_poll_at` NULL or
    /// past, lease free or expired), earliest `next_poll_at` first, creating
    /// missing `sync_state` rows for active subscriptions first. Each claim
    /// increments the mailbox's `lease_epoch`.
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

    /// Frees the lease and schedules the next poll, if the lease is still
    /// ours; does nothing (and no error) otherwise.
    pub async fn release_lease(
        &self,
        l: &Lease,
        next_poll_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_lease(l, next_poll_at).await)
    }

    // -- fenced sync writes -------------------------------------------------

    /// Writes a batch and its checkpoint in one fenced transaction.
    /// What the batch changed (derived from actual changes; `api_calls` and
    /// `quota_units` stay zero).
    pub async fn commit_batch(&self, l: &Lease, b: &SyncBatch) -> Result<SyncCounts, StoreError> {
        dispatch!(self, s => s.commit_batch(l, b).await)
    }

    /// Records a failed step under the lease: phase, last_error,
    /// consecutive_failures + 1, next_poll_at, and the run row if given.
    pub async fn record_failure(&self, l: &Lease, f: &FailureRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_failure(l, f).await)
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

// ---------------------------------------------------------------------------
// Helpers shared by both backends.
// ---------------------------------------------------------------------------

/// Timestamps are kept at microsecond precision (PostgreSQL's), so a value
/// read back equals the value written on both backends.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

pub(crate) fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let d = TimeDelta::from_std(d).unwrap_or(TimeDelta::days(3650));
    micros(t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC))
}

/// PostgreSQL text cannot hold NUL; both backends store text without it.
pub(crate) fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_owned()
    }
}

pub(crate) fn clean_opt(s: Option<&str>) -> Option<String> {
    s.map(clean)
}

pub(crate) fn json_strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    serde_json::Value::Array(
        items
            .into_iter()
            .map(|s| serde_json::Value::String(clean(s.as_ref())))
            .collect(),
    )
    .to_string()
}

fn parse_json_strings(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn decode_err(e: ParseError) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(Box::new(e)))
}

/// The words of a search, for backends that need them one by one.
pub(crate) fn search_words(query: &str) -> Vec<String> {
    query
        .split_whitespace()
        .map(clean)
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect()
}

/// `query` as an FTS5 expression that can never be a syntax error: each
/// word becomes a quoted string (quotes doubled), implicitly ANDed.
pub(crate) fn fts5_query(query: &str) -> Option<String> {
    let words = search_words(query);
    if words.is_empty() {
        return None;
    }
    Some(
        words
            .iter()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The address text indexed for full-text search: names, addresses, and the
/// local part and domain separately (PostgreSQL's parser keeps an address
/// as one token; FTS5 splits it).
pub(crate) fn fts_addresses(content: &NormalizedMessage) -> String {
    let mut out = String::new();
    for a in &content.addresses {
        if let Some(n) = &a.name {
            out.push_str(n);
            out.push(' ');
        }
        out.push_str(&a.address);
        out.push(' ');
        if let Some((local, _)) = a.address.rsplit_once('@') {
            out.push_str(local);
            out.push(' ');
        }
        out.push_str(&a.domain);
        out.push(' ');
    }
    clean(out.trim_end())
}

// ---------------------------------------------------------------------------
// Raw rows (one FromRow type serves both backends).
// ---------------------------------------------------------------------------

/// Declares a row struct read by column name (the column is the field's name)
/// on either backend: what sqlx's `FromRow` derive generates. sqlx's derive
/// and `migrate!` are proc macros whose crate builds the SQLite and PostgreSQL
/// drivers (and bundled SQLite's C) a second time, for the compiler: about a
/// minute of CPU on a cold build, which the first `demo` pays.
macro_rules! row_struct {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        $vis struct $name {
            $($field: $ty,)*
        }

        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $name
        where
            &'static str: sqlx::ColumnIndex<R>,
            $($ty: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)*
                })
            }
        }
    };
}

row_struct! {
    pub(crate) struct SubscriptionRow {
        mailbox: String,
        status: String,
        label_filter: String,
        requested_by: String,
        requested_at: DateTime<Utc>,
        approved_by: Option<String>,
        approved_at: Option<DateTime<Utc>>,
        last_reviewed_at: Option<DateTime<Utc>>,
        reviewed_by: Option<String>,
        org_unit_seen: Option<String>,
        org_unit_checked_at: Option<DateTime<Utc>>,
        note: Option<String>,
        status_reason: Option<String>,
        auth_mode: String,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }
}

impl TryFrom<SubscriptionRow> for Subscription {
    type Error = StoreError;
    fn try_from(r: SubscriptionRow) -> Result<Self, StoreError> {
        let op = |s: Option<String>| s.map(|s| Operator::parse(&s)).transpose();
        Ok(Subscription {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            status: r.status.parse().map_err(decode_err)?,
            label_filter: parse_json_strings(&r.label_filter),
            requested_by: Operator::parse(&r.requested_by).map_err(decode_err)?,
            requested_at: r.requested_at,
            approved_by: op(r.approved_by).map_err(decode_err)?,
            approved_at: r.approved_at,
            last_reviewed_at: r.last_reviewed_at,
            reviewed_by: op(r.reviewed_by).map_err(decode_err)?,
            org_unit_seen: r.org_unit_seen,
            org_unit_checked_at: r.org_unit_checked_at,
            note: r.note,
            status_reason: r.status_reason,
            auth_mode: r.auth_mode.parse().map_err(decode_err)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

row_struct! {
    pub(crate) struct OAuthTokenRow {
        mailbox: String,
        refresh_token_ciphertext: String,
        key_id: String,
        scopes: String,
        google_subject: Option<String>,
        consented_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }
}

impl TryFrom<OAuthTokenRow> for OAuthToken {
    type Error = StoreError;
    fn try_from(r: OAuthTokenRow) -> Result<Self, StoreError> {
        Ok(OAuthToken {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            refresh_token_ciphertext: r.refresh_token_ciphertext,
            key_id: r.key_id,
            scopes: r.scopes,
            google_subject: r.google_subject,
            consented_at: r.consented_at,
            updated_at: r.updated_at,
        })
    }
}

row_struct! {
    pub(crate) struct EventRow {
        id: i64,
        mailbox: String,
        at: DateTime<Utc>,
        actor: String,
        action: String,
        old_status: Option<String>,
        new_status: String,
        reason: Option<String>,
    }
}

impl TryFrom<EventRow> for SubscriptionEvent {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        Ok(SubscriptionEvent {
            id: r.id,
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            at: r.at,
            actor: r.actor,
            action: r.action,
            old_status: r
                .old_status
                .map(|s| s.parse())
                .transpose()
                .map_err(decode_err)?,
            new_status: r.new_status.parse().map_err(decode_err)?,
            reason: r.reason,
        })
    }
}

fn history(v: Option<i64>) -> Result<Option<HistoryId>, StoreError> {
    v.map(HistoryId::from_i64).transpose().map_err(decode_err)
}

row_struct! {
    pub(crate) struct SyncStateRow {
        mailbox: String,
        phase: String,
        history_id: Option<i64>,
        page_token: Option<String>,
        full_sync_history_id: Option<i64>,
        full_sync_generation: i64,
        last_success_at: Option<DateTime<Utc>>,
        next_poll_at: Option<DateTime<Utc>>,
        consecutive_failures: i64,
        last_error: Option<String>,
        lease_owner: Option<String>,
        lease_epoch: i64,
        lease_expires_at: Option<DateTime<Utc>>,
        updated_at: DateTime<Utc>,
    }
}

impl TryFrom<SyncStateRow> for SyncState {
    type Error = StoreError;
    fn try_from(r: SyncStateRow) -> Result<Self, StoreError> {
        Ok(SyncState {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            phase: r.phase.parse().map_err(decode_err)?,
            history_id: history(r.history_id)?,
            page_token: r.page_token,
            full_sync_history_id: history(r.full_sync_history_id)?,
            full_sync_generation: r.full_sync_generation,
            last_success_at: r.last_success_at,
            next_poll_at: r.next_poll_at,
            consecutive_failures: r.consecutive_failures,
            last_error: r.last_error,
            lease_owner: r.lease_owner,
            lease_epoch: r.lease_epoch,
            lease_expires_at: r.lease_expires_at,
            updated_at: r.updated_at,
        })
    }
}

row_struct! {
    pub(crate) struct StatusRow {
        mailbox: String,
        status: String,
        phase: Option<String>,
        history_id: Option<i64>,
        last_success_at: Option<DateTime<Utc>>,
        next_poll_at: Option<DateTime<Utc>>,
        consecutive_failures: i64,
        last_error: Option<String>,
        lease_owner: Option<String>,
        lease_expires_at: Option<DateTime<Utc>>,
        messages: i64,
    }
}

impl TryFrom<StatusRow> for MailboxStatus {
    type Error = StoreError;
    fn try_from(r: StatusRow) -> Result<Self, StoreError> {
        Ok(MailboxStatus {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            status: r.status.parse().map_err(decode_err)?,
            phase: r.phase.map(|p| p.parse()).transpose().map_err(decode_err)?,
            history_id: history(r.history_id)?,
            last_success_at: r.last_success_at,
            next_poll_at: r.next_poll_at,
            consecutive_failures: r.consecutive_failures,
            last_error: r.last_error,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            messages: r.messages,
        })
    }
}

row_struct! {
    pub(crate) struct RunRow {
        mailbox: String,
        kind: String,
        replica: String,
        started_at: DateTime<Utc>,
        finished_at: Option<DateTime<Utc>>,
        added: i64,
        updated: i64,
        deleted: i64,
        label_changes: i64,
        api_calls: i64,
        quota_units: i64,
        outcome: String,
        error: Option<String>,
    }
}

impl TryFrom<RunRow> for SyncRunRow {
    type Error = StoreError;
    fn try_from(r: RunRow) -> Result<Self, StoreError> {
        Ok(SyncRunRow {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            kind: r.kind.parse().map_err(decode_err)?,
            replica: r.replica,
            started_at: r.started_at,
            finished_at: r.finished_at.unwrap_or(r.started_at),
            counts: SyncCounts {
                added: r.added as u64,
                updated: r.updated as u64,
                deleted: r.deleted as u64,
                label_changes: r.label_changes as u64,
                api_calls: r.api_calls as u64,
                quota_units: r.quota_units as u64,
            },
            outcome: r.outcome.parse().map_err(decode_err)?,
            error: r.error,
        })
    }
}

row_struct! {
    pub(crate) struct ChangeRowDb {
        id: i64,
        mailbox: String,
        gmail_id: String,
        change: String,
        label_id: Option<String>,
        history_id: Option<i64>,
        observed_at: DateTime<Utc>,
    }
}

impl TryFrom<ChangeRowDb> for MessageChange {
    type Error = StoreError;
    fn try_from(r: ChangeRowDb) -> Result<Self, StoreError> {
        Ok(MessageChange {
            id: r.id,
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            gmail_id: GmailMessageId::parse(&r.gmail_id).map_err(decode_err)?,
            change: r.change.parse().map_err(decode_err)?,
            label_id: r.label_id,
            history_id: history(r.history_id)?,
            observed_at: r.observed_at,
        })
    }
}

row_struct! {
    pub(crate) struct LiveRow {
        gmail_id: String,
        thread_id: String,
        label_ids: String,
    }
}

impl TryFrom<LiveRow> for LiveMessage {
    type Error = StoreError;
    fn try_from(r: LiveRow) -> Result<Self, StoreError> {
        let mut label_ids = parse_json_strings(&r.label_ids);
        label_ids.sort();
        Ok(LiveMessage {
            gmail_id: GmailMessageId::parse(&r.gmail_id).map_err(decode_err)?,
            thread_id: r.thread_id,
            label_ids,
        })
    }
}

row_struct! {
    pub(crate) struct HitRow {
        mailbox: String,
        gmail_id: String,
        subject: Option<String>,
    }
}

impl TryFrom<HitRow> for SearchHit {
    type Error = StoreError;
    fn try_from(r: HitRow) -> Result<Self, StoreError> {
        Ok(SearchHit {
            mailbox: MailboxAddress::parse(&r.mailbox).map_err(decode_err)?,
            gmail_id: GmailMessageId::parse(&r.gmail_id).map_err(decode_err)?,
            subject: r.subject,
        })
    }
}

row_struct! {
    /// The state of a stored message that a batch plan depends on.
    pub(crate) struct ExistingRow {
        gmail_id: String,
        live: bool,
        label_ids: String,
    }
}

fn convert<R, T: TryFrom<R, Error = StoreError>>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}

// ---------------------------------------------------------------------------
// Batch planning: what a batch changes, decided once for both backends.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub(crate) live: bool,
    pub(crate) labels: BTreeSet<String>,
}

pub(crate) fn existing_map(rows: Vec<ExistingRow>) -> HashMap<String, Existing> {
    rows.into_iter()
        .map(|r| {
            let labels = parse_json_strings(&r.label_ids).into_iter().collect();
            (
                r.gmail_id,
                Existing {
                    live: r.live,
                    labels,
                },
            )
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeRow {
    pub(crate) gmail_id: String,
    pub(crate) change: ChangeKind,
    pub(crate) label_id: Option<String>,
    pub(crate) history_id: Option<i64>,
}

/// A label-only rewrite of a message that is not upserted in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelUpdate {
    pub(crate) gmail_id: String,
    pub(crate) labels: Vec<String>,
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// Each upsert with the message's final (sorted) label set.
    pub(crate) upserts: Vec<(&'a MessageUpsert, Vec<String>)>,
    pub(crate) label_updates: Vec<LabelUpdate>,
    /// Live messages to soft-delete.
    pub(crate) deletes: Vec<String>,
    pub(crate) changes: Vec<ChangeRow>,
    pub(crate) stats: SyncCounts,
}

/// The message ids whose stored state [`plan_batch`] needs (besides the
/// live holders of the reconciled label, which the backend adds).
pub(crate) fn batch_ids(b: &SyncBatch) -> Vec<String> {
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    ids.extend(b.upserts.iter().map(|u| u.meta.gmail_id.as_str()));
    ids.extend(b.deletes.iter().map(|(id, _)| id.as_str()));
    ids.extend(b.label_changes.iter().map(|c| c.gmail_id.as_str()));
    if let Some((_, members)) = &b.label_reconcile {
        ids.extend(members.iter().map(GmailMessageId::as_str));
    }
    ids.into_iter().map(str::to_owned).collect()
}

/// Decides, from the stored state of the touched messages, what `b` changes.
/// Changes are derived from actual differences, so replaying a batch yields
/// no new change rows.
pub(crate) fn plan_batch(b: &SyncBatch, original: HashMap<String, Existing>) -> Plan<'_> {
    let mut state = original.clone();
    let mut changes = Vec::new();
    let mut stats = SyncCounts::default();
    let mut upsert_at: HashMap<&str, usize> = HashMap::new();
    let mut upserts: Vec<&MessageUpsert> = Vec::new();
    let mut dirty: BTreeSet<String> = BTreeSet::new();

    for u in &b.upserts {
        let id = u.meta.gmail_id.as_str();
        let hid = Some(u.meta.history_id.as_i64());
        let new_labels: BTreeSet<String> = u.meta.label_ids.iter().map(|l| clean(l)).collect();
        match state.get(id) {
            Some(e) if e.live => {
                stats.updated += 1;
                for l in new_labels.difference(&e.labels) {
                    changes.push(change(id, ChangeKind::LabelAdded, Some(l), hid));
                    stats.label_changes += 1;
                }
                for l in e.labels.difference(&new_labels) {
                    changes.push(change(id, ChangeKind::LabelRemoved, Some(l), hid));
                    stats.label_changes += 1;
                }
            }
            _ => {
                stats.added += 1;
                changes.push(change(id, ChangeKind::Added, None, hid));
            }
        }
        state.insert(
            id.to_owned(),
            Existing {
                live: true,
                labels: new_labels,
            },
        );
        match upsert_at.get(id) {
            Some(&i) => upserts[i] = u,
            None => {
                upsert_at.insert(id, upserts.len());
                upserts.push(u);
            }
        }
    }

    for c in &b.label_changes {
        let id = c.gmail_id.as_str();
        let hid = c.history_id.map(HistoryId::as_i64);
        let Some(e) = state.get_mut(id).filter(|e| e.live) else {
            continue;
        };
        for l in &c.added {
            if e.labels.insert(clean(l)) {
                changes.push(change(id, ChangeKind::LabelAdded, Some(l), hid));
                stats.label_changes += 1;
                dirty.insert(id.to_owned());
            }
        }
        for l in &c.removed {
            if e.labels.remove(&clean(l)) {
                changes.push(change(id, ChangeKind::LabelRemoved, Some(l), hid));
                stats.label_changes += 1;
                dirty.insert(id.to_owned());
            }
        }
    }

    if let Some((label, members)) = &b.label_reconcile {
        let label = clean(label);
        let members: HashSet<&str> = members.iter().map(GmailMessageId::as_str).collect();
        let mut ids: Vec<&String> = state.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            let Some(e) = state.get_mut(&id).filter(|e| e.live) else {
                continue;
            };
            let member = members.contains(id.as_str());
            let has = e.labels.contains(&label);
            if member && !has {
                e.labels.insert(label.clone());
                changes.push(change(&id, ChangeKind::LabelAdded, Some(&label), None));
            } else if !member && has {
                e.labels.remove(&label);
                changes.push(change(&id, ChangeKind::LabelRemoved, Some(&label), None));
            } else {
                continue;
            }
            stats.label_changes += 1;
            dirty.insert(id);
        }
    }

    let mut deletes = Vec::new();
    for (id, hid) in &b.deletes {
        let id = id.as_str();
        if let Some(e) = state.get_mut(id).filter(|e| e.live) {
            e.live = false;
            deletes.push(id.to_owned());
            changes.push(change(
                id,
                ChangeKind::Deleted,
                None,
                hid.map(HistoryId::as_i64),
            ));
            stats.deleted += 1;
        }
    }

    let final_labels = |id: &str| -> Vec<String> {
        state
            .get(id)
            .map(|e| e.labels.iter().cloned().collect())
            .unwrap_or_default()
    };
    let upserts: Vec<(&MessageUpsert, Vec<String>)> = upserts
        .into_iter()
        .map(|u| (u, final_labels(u.meta.gmail_id.as_str())))
        .collect();
    let label_updates = dirty
        .into_iter()
        .filter(|id| !upsert_at.contains_key(id.as_str()))
        .filter_map(|id| {
            let before = &original.get(&id)?.labels;
            let after = &state.get(&id)?.labels;
            Some(LabelUpdate {
                labels: after.iter().cloned().collect(),
                added: after.difference(before).cloned().collect(),
                removed: before.difference(after).cloned().collect(),
                gmail_id: id,
            })
        })
        .collect();
    Plan {
        upserts,
        label_updates,
        deletes,
        changes,
        stats,
    }
}

fn change(id: &str, kind: ChangeKind, label: Option<&str>, hid: Option<i64>) -> ChangeRow {
    ChangeRow {
        gmail_id: id.to_owned(),
        change: kind,
        label_id: label.map(clean),
        history_id: hid,
    }
}

// JSON payloads for the bulk statements (one statement per table per batch).

pub(crate) fn addresses_json(plan: &Plan<'_>) -> String {
    let mut rows = Vec::new();
    for (u, _) in &plan.upserts {
        let mut position: HashMap<&str, i64> = HashMap::new();
        for a in &u.content.addresses {
            let p = position.entry(a.role.as_str()).or_insert(0);
            rows.push(serde_json::json!([
                u.meta.gmail_id.as_str(),
                a.role.as_str(),
                *p,
                clean_opt(a.name.as_deref()),
                clean(&a.address),
                clean(&a.domain),
            ]));
            *p += 1;
        }
    }
    serde_json::Value::Array(rows).to_string()
}

/// The text form both backends store timestamps in on SQLite (the same as
/// sqlx's own encoding), also parseable by PostgreSQL's `::timestamptz`.
fn ts_text(t: DateTime<Utc>) -> String {
    micros(t).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// One row per upserted message, fields in the order the bulk upsert reads
/// them (see `shared.rs`).
pub(crate) fn messages_json(plan: &Plan<'_>) -> String {
    let rows = plan
        .upserts
        .iter()
        .map(|(u, labels)| {
            let c = &u.content;
            let meta = &u.meta;
            let internal_date =
                DateTime::<Utc>::from_timestamp_millis(meta.internal_date_ms).unwrap_or_default();
            let date_header = c
                .date
                .as_deref()
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| ts_text(d.with_timezone(&Utc)));
            let raw_hex = u.raw.as_deref().map(|bytes| {
                let mut s = String::with_capacity(bytes.len() * 2);
                for b in bytes {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            });
            serde_json::json!([
                meta.gmail_id.as_str(),
                clean(&meta.thread_id),
                meta.history_id.as_i64(),
                ts_text(internal_date),
                clean_opt(c.message_id.as_deref()),
                clean_opt(c.in_reply_to.as_deref()),
                json_strings(&c.references),
                clean_opt(c.subject.as_deref()),
                clean_opt(meta.snippet.as_deref()),
                clean_opt(c.body_text.as_deref()),
                clean_opt(c.body_html.as_deref()),
                meta.size_estimate,
                c.has_attachments(),
                json_strings(labels),
                clean_opt(c.parse_error.as_deref()),
                c.truncated,
                date_header,
                raw_hex,
                fts_addresses(c),
            ])
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// `[gmail_id, label_ids JSON]` for each label-only rewrite.
pub(crate) fn label_updates_json(plan: &Plan<'_>) -> String {
    serde_json::Value::Array(
        plan.label_updates
            .iter()
            .map(|u| serde_json::json!([u.gmail_id, json_strings(&u.labels)]))
            .collect(),
    )
    .to_string()
}

pub(crate) fn attachments_json(plan: &Plan<'_>) -> String {
    let mut rows = Vec::new();
    for (u, _) in &plan.upserts {
        let mut seen = HashSet::new();
        for a in &u.content.attachments {
            // A part id appears once per message; keep the first if a
            // malformed message repeats one.
            if !seen.insert(a.part_id.as_str()) {
                continue;
            }
            rows.push(serde_json::json!([
                u.meta.gmail_id.as_str(),
                clean(&a.part_id),
                clean_opt(a.filename.as_deref()),
                clean(&a.mime_type),
                a.size_bytes,
                clean(&a.sha256),
                a.inline,
                clean_opt(a.content_id.as_deref()),
            ]));
        }
    }
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn upsert_labels_json(plan: &Plan<'_>) -> String {
    let mut rows = Vec::new();
    for (u, labels) in &plan.upserts {
        for l in labels {
            rows.push(serde_json::json!([u.meta.gmail_id.as_str(), l]));
        }
    }
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn label_pairs_json(plan: &Plan<'_>, added: bool) -> String {
    let mut rows = Vec::new();
    for u in &plan.label_updates {
        for l in if added { &u.added } else { &u.removed } {
            rows.push(serde_json::json!([u.gmail_id, l]));
        }
    }
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn changes_json(changes: &[ChangeRow]) -> String {
    serde_json::Value::Array(
        changes
            .iter()
            .map(|c| serde_json::json!([c.gmail_id, c.change.as_str(), c.label_id, c.history_id]))
            .collect(),
    )
    .to_string()
}

pub(crate) fn label_rows_json(rows: &[LabelRow]) -> String {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| serde_json::json!([clean(&r.label_id), clean(&r.name), clean(&r.label_type)]))
            .collect(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_queries_quote_every_word_and_drop_punctuation_only_words() {
        assert_eq!(
            fts5_query("hello world").as_deref(),
            Some("\"hello\" \"world\"")
        );
        assert_eq!(
            fts5_query("say \"hi\"").as_deref(),
            Some("\"say\" \"\"\"hi\"\"\"")
        );
        assert_eq!(fts5_query("* ( ) \" -"), None);
        assert_eq!(fts5_query("   "), None);
    }

    #[test]
    fn nul_is_stripped_from_stored_text() {
        assert_eq!(clean("a\0b"), "ab");
        assert_eq!(json_strings(["x\0"]), "[\"x\"]");
    }
}
