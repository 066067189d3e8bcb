//! The public model of the store: what callers hand to [`Store`](super::Store)
//! and what they get back.
//!
//! Plain data only: these types carry no SQL, no connection and no decoding
//! from database rows (that is `rows.rs`). Nothing here may touch the
//! database or depend on which backend is in use.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{
    AuthMode, ChangeKind, GmailMessageId, GmailMessageMeta, HistoryId, MailboxAddress,
    NormalizedMessage, Operator, RunOutcome, SubscriptionStatus, SyncCounts, SyncKind, SyncPhase,
};

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
    /// [`StoreError::Conflict`](super::StoreError::Conflict) if the row moved on since.
    pub expected: SubscriptionStatus,
    pub new_status: SubscriptionStatus,
    pub actor: Operator,
    /// Recorded verbatim in `subscription_events.action` (e.g. "approve").
    pub action: String,
    pub reason: Option<String>,
    pub approved_by: Option<Operator>,
    pub reviewed_by: Option<Operator>,
    pub org_unit_seen: Option<String>,
    /// Written with the change when set: the label IDs the subscription's
    /// `label_filter` resolved to at approval (`[]` = the whole mailbox).
    pub label_scope: Option<Vec<String>>,
}

/// One row of `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub mailbox: MailboxAddress,
    pub status: SubscriptionStatus,
    /// The labels requested, as names or IDs (JSON array); empty means all
    /// mail. Resolved to IDs (`label_scope`) at approval.
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
    /// The Gmail label IDs `label_filter` resolved to at the last approval:
    /// the scope the engine enforces (`[]` = the whole mailbox). `None`: not
    /// resolved since the last request.
    pub label_scope: Option<Vec<String>>,
    /// The group subscription whose expansion requested this subscription
    /// (`subscriptions add-group`), or `None` for a mailbox added by itself.
    pub via_group: Option<String>,
    /// When the org-unit gate last admitted the mailbox from a Directory
    /// answer; `None` after a refusal and whenever the status changes. A
    /// pass within `sync.org_unit_recheck_interval` of it does not ask the
    /// Directory again (`sync::gate`).
    pub org_unit_allowed_at: Option<DateTime<Utc>>,
}

/// A group subscription (`subscriptions add-group`): its members become
/// pending subscriptions, each approved on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSubscription {
    pub group_email: String,
    /// `active` or `removed`.
    pub status: String,
    /// Passed on to each member's subscription request.
    pub label_filter: Vec<String>,
    pub note: Option<String>,
    pub requested_by: Operator,
    pub requested_at: DateTime<Utc>,
    pub removed_by: Option<Operator>,
    pub removed_at: Option<DateTime<Utc>>,
    pub last_expanded_at: Option<DateTime<Utc>>,
}

/// One mailbox a group subscription's expansion found (`group_members`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMemberRow {
    pub group_email: String,
    pub mailbox: MailboxAddress,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Set when a later expansion no longer found the mailbox.
    pub left_at: Option<DateTime<Utc>>,
}

/// What a group expansion changed in `group_members`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipChanges {
    /// Mailboxes new to the group (or back after leaving).
    pub joined: Vec<MailboxAddress>,
    /// Mailboxes the expansion no longer found.
    pub left: Vec<MailboxAddress>,
}

/// The group memberships an operator reviewed (`review_snapshots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewSnapshot {
    pub mailbox: MailboxAddress,
    pub groups: Vec<String>,
    pub org_unit: Option<String>,
    pub reviewed_by: Operator,
    pub reviewed_at: DateTime<Utc>,
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
    /// A fresh random id for this consent: the owner's disconnect link is
    /// signed over it, so it acts on this consent and no later one.
    pub consent_id: String,
    pub actor: Operator,
}

/// What [`Store::record_oauth_consent`](super::Store::record_oauth_consent) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentWrite {
    /// The consent is stored; the subscription as it is now.
    Stored(Box<Subscription>),
    /// A consent of another Google account (`google_subject` differs) is
    /// stored for this mailbox: nothing was written. An operator must
    /// forget the stored consent first.
    OtherAccount { stored_subject: String },
}

/// A governance change (`subscriptions relabel`, `subscriptions set-auth`):
/// the new label filter and auth mode, back to `pending` for approval, with
/// the actor as the new requester. Compare-and-set on the three `expected_`
/// values: if any moved on since the caller read them, nothing is written
/// ([`StoreError::Conflict`](super::StoreError::Conflict)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub mailbox: MailboxAddress,
    pub expected_status: SubscriptionStatus,
    pub expected_label_filter: Vec<String>,
    pub expected_auth_mode: AuthMode,
    pub label_filter: Vec<String>,
    pub auth_mode: AuthMode,
    /// Refuse (as a conflict) unless an OAuth consent is stored for the
    /// mailbox when the change is written.
    pub require_consent: bool,
    pub actor: Operator,
    /// Recorded verbatim in `subscription_events.action` (`relabel`, `set-auth`).
    pub action: String,
    /// Old → new, recorded as the event's reason and the `status_reason`.
    pub reason: String,
}

/// Deleting a stored consent (`disconnect`, `forget-consent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRemoval {
    pub mailbox: MailboxAddress,
    /// Only this consent (`oauth_tokens.consent_id`) is deleted; if another
    /// was stored meanwhile, nothing is ([`StoreError::Conflict`](super::StoreError::Conflict)).
    pub consent_id: Option<String>,
    pub actor: Operator,
    /// Recorded verbatim in `subscription_events.action`.
    pub action: String,
    pub reason: String,
    /// Pause an active or suspended subscription too (a pending one stays pending).
    pub pause: bool,
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
    /// The id the owner's disconnect link for this consent is signed over.
    pub consent_id: String,
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
    /// The label scope the live rows reflect (`[]` = the whole mailbox;
    /// `None` = none yet), written with the checkpoint that makes it true.
    pub applied_label_scope: Option<Vec<String>>,
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
    /// [`Store::renew_lease`](super::Store::renew_lease), cleared by
    /// [`Store::release_lease`](super::Store::release_lease).
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Passes that found nothing to change since the row was created: they
    /// write no `sync_runs` row, only this count and `last_quiet_at`.
    pub quiet_passes: i64,
    /// When the last quiet pass ended.
    pub last_quiet_at: Option<DateTime<Utc>>,
    /// When the mailbox's push watch (`users.watch`) expires, as Google
    /// said; `None` when it has none (never made, or stopped).
    pub watch_expires_at: Option<DateTime<Utc>>,
    /// When the watch was last made or renewed.
    pub watch_renewed_at: Option<DateTime<Utc>>,
    /// The label scope (IDs) the watch was made for, so that a scope change
    /// renews it.
    pub watch_label_scope: Option<Vec<String>>,
    /// Why the last `users.watch` or `users.stop` failed (`None` once one
    /// succeeds), and when.
    pub watch_error: Option<String>,
    pub watch_failed_at: Option<DateTime<Utc>>,
    /// The highest historyId a push notification named, and when it came.
    pub notified_history_id: Option<HistoryId>,
    pub notified_at: Option<DateTime<Utc>>,
}

impl SyncState {
    /// The state of `mailbox` before its first pass: nothing synced, no
    /// lease, no watch.
    pub fn never_synced(mailbox: MailboxAddress, now: DateTime<Utc>) -> SyncState {
        SyncState {
            mailbox,
            phase: SyncPhase::Initial,
            history_id: None,
            page_token: None,
            full_sync_history_id: None,
            full_sync_generation: 0,
            applied_label_scope: None,
            last_success_at: None,
            next_poll_at: None,
            consecutive_failures: 0,
            last_error: None,
            lease_owner: None,
            lease_epoch: 0,
            lease_expires_at: None,
            updated_at: now,
            quiet_passes: 0,
            last_quiet_at: None,
            watch_expires_at: None,
            watch_renewed_at: None,
            watch_label_scope: None,
            watch_error: None,
            watch_failed_at: None,
            notified_history_id: None,
            notified_at: None,
        }
    }

    /// Where the mailbox's push watch stands at `now`.
    pub fn watch_state(&self, now: DateTime<Utc>) -> WatchState {
        WatchState::of(self.watch_expires_at, self.watch_error.as_deref(), now)
    }
}

/// Where a mailbox's push watch stands (the `state` label of the watch
/// gauge, and what `status` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Google publishes its changes: it expires in the future and the last
    /// watch call succeeded. Only then is it polled at
    /// `push.fallback_poll_interval` instead of `sync.poll_interval`.
    Live,
    /// It had a watch that expired without being renewed.
    Lapsed,
    /// The last `users.watch` or `users.stop` failed (`watch_error` says why).
    Failed,
    /// It has no watch.
    None,
}

impl WatchState {
    pub const ALL: &'static [WatchState] = &[
        WatchState::Live,
        WatchState::Lapsed,
        WatchState::Failed,
        WatchState::None,
    ];

    pub fn of(expires_at: Option<DateTime<Utc>>, error: Option<&str>, now: DateTime<Utc>) -> Self {
        match (error, expires_at) {
            (Some(_), _) => WatchState::Failed,
            (None, Some(t)) if t > now => WatchState::Live,
            (None, Some(_)) => WatchState::Lapsed,
            (None, None) => WatchState::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WatchState::Live => "live",
            WatchState::Lapsed => "lapsed",
            WatchState::Failed => "failed",
            WatchState::None => "none",
        }
    }
}

/// A push watch to end with `users.stop`: the mailbox's subscription is no
/// longer active, and the watch has not expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchToStop {
    pub mailbox: MailboxAddress,
    /// Through whose credentials `users.stop` is called.
    pub auth_mode: AuthMode,
    pub status: SubscriptionStatus,
    /// The stored expiry: what the compare-and-set that claims the stop matches.
    pub expires_at: DateTime<Utc>,
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
    /// Quiet passes (nothing changed; no `sync_runs` row) so far.
    pub quiet_passes: i64,
    /// When the last quiet pass ended.
    pub last_quiet_at: Option<DateTime<Utc>>,
    /// The listing in progress, if any.
    pub full_sync: Option<FullSyncProgress>,
    /// Set while the mailbox's backfill waits for the daily budget.
    pub quota_wait: Option<QuotaWait>,
    /// The push watch's expiry, and why its last call failed, if it did.
    pub watch_expires_at: Option<DateTime<Utc>>,
    pub watch_error: Option<String>,
    pub watch_failed_at: Option<DateTime<Utc>>,
}

/// Where a full sync (or resync) stands, kept in `sync_state` for `status`.
/// `listed` and `fetched` count from `started_at`, across resumed passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FullSyncProgress {
    pub started_at: DateTime<Utc>,
    /// Message IDs listed so far.
    pub listed: i64,
    /// Messages fetched and stored so far.
    pub fetched: i64,
    /// The profile's `messagesTotal` when the listing started.
    pub estimated_total: i64,
}

/// What [`super::Store::mark_notified`] did with one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyOutcome {
    /// The mailbox became due now (or already was): a dispatcher may claim it.
    Due,
    /// Recorded (`notified_history_id`, `notified_at`), not made due now: a
    /// pass holds its lease (it ends due at once if it ends behind), it is in
    /// a failure backoff, its stored history is already there, or its first
    /// full sync is not done.
    Recorded,
    /// No active subscription for the address: nothing changed.
    NotActive,
}

impl NotifyOutcome {
    /// Bounded label for metrics (`outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Due => "due",
            Self::Recorded => "recorded",
            Self::NotActive => "not_subscribed",
        }
    }
}

/// Why a backfill waits for the daily budget, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaWait {
    pub until: DateTime<Utc>,
    pub reason: String,
}

/// Units reserved from one Pacific day's budget (`quota_daily`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DailyQuotaUsage {
    /// All units reserved by every replica.
    pub units: i64,
    /// The part reserved for full syncs and resyncs.
    pub backfill_units: i64,
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

/// Rows removed by [`Store::prune_history`](super::Store::prune_history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub sync_runs: u64,
    pub quota_windows: u64,
}

/// Rows deleted per table by [`Store::purge_mailbox`](super::Store::purge_mailbox).
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

/// The right to write one mailbox's sync data (see the lease protocol in the
/// [`store`](super) module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub mailbox: MailboxAddress,
    pub owner: String,
    /// The `sync_state.lease_epoch` this claim produced.
    pub epoch: i64,
    /// Writes under this lease are refused from this instant on.
    pub expires_at: DateTime<Utc>,
    /// The `auth_mode` the pass started with, once it read it (claims leave
    /// it `None`): fenced writes are then refused when the subscription's
    /// mode is another one.
    pub auth_mode: Option<AuthMode>,
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
    /// `sync_state.applied_label_scope` after this batch.
    pub applied_label_scope: Option<Vec<String>>,
    /// True: `last_success_at` = now, `consecutive_failures` = 0, `last_error` = NULL.
    pub success: bool,
}

/// Everything one sync step writes, committed in one transaction.
///
/// Applied in this order: `upserts`, `label_changes`, `label_reconcile`,
/// the scope (`enforce_scope`, `leave_scope`), `deletes`, `mark_seen`,
/// `delete_unseen`, `labels`, then `run` and the checkpoint (with the quiet
/// count and the release, if asked).
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
    /// Live messages that exist in Gmail outside the subscription's label
    /// scope: soft-deleted with a `left_scope` change (before `delete_unseen`).
    pub leave_scope: Vec<GmailMessageId>,
    /// The label scope to enforce on the messages whose labels this batch
    /// changes: one left with no scope label leaves the live rows
    /// (`left_scope`). `None` (or empty) = the whole mailbox, nothing enforced.
    pub enforce_scope: Option<Vec<String>>,
    /// Replace this mailbox's `labels` rows.
    pub labels: Option<Vec<LabelRow>>,
    pub checkpoint: Checkpoint,
    pub run: Option<SyncRunRow>,
    /// The last batch of a pass that changed nothing: no `run` row is
    /// written; `sync_state.quiet_passes` is incremented and
    /// `last_quiet_at` set instead.
    pub quiet: bool,
    /// The last batch of a pass that completed: the lease is released in
    /// the same transaction, the mailbox due again at this time (what
    /// [`Store::release_lease`](super::Store::release_lease) would do
    /// after it, without a second write).
    pub release_at: Option<DateTime<Utc>>,
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
            leave_scope: Vec::new(),
            enforce_scope: None,
            labels: None,
            checkpoint,
            run: None,
            quiet: false,
            release_at: None,
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
