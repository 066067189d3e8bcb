//! The telemetry vocabulary: one type per notable event.
//!
//! `emit()` writes one structured log line and updates its metric. Nothing
//! else in the crate touches the metrics registry. Metric names follow
//! `gmail_ingest_<noun>_<unit>_total`; labels are bounded (method ids, error
//! classes, phases) — never a mailbox on a per-message counter. Per-mailbox
//! detail lives in `sync_state`, `sync_runs` and the `status` command.
//! Levels: ERROR means an operator must act; WARN means it recovered or will.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge};

use crate::domain::{MailboxAddress, StopDecision, SyncCounts, SyncKind, SyncPhase};
use crate::google::error::{AuthCause, ErrorClass, GoogleError};

/// Every metric this crate exports, with its help text. The README lists them
/// (a tidy test checks).
pub const METRICS: &[(&str, &str)] = &[
    (
        "gmail_ingest_messages_ingested_total",
        "Messages added to the database.",
    ),
    (
        "gmail_ingest_messages_deleted_total",
        "Messages marked deleted.",
    ),
    (
        "gmail_ingest_messages_relabelled_total",
        "Label additions and removals applied.",
    ),
    (
        "gmail_ingest_api_requests_total",
        "Google API requests by method and outcome class.",
    ),
    (
        "gmail_ingest_api_quota_units_total",
        "Gmail quota units spent, by method.",
    ),
    (
        "gmail_ingest_api_retries_total",
        "Google calls retried, by method and error type.",
    ),
    (
        "gmail_ingest_quota_throttle_events_total",
        "Calls delayed by our own quota limiter, by scope.",
    ),
    (
        "gmail_ingest_history_expirations_total",
        "Incremental syncs that found their history expired.",
    ),
    (
        "gmail_ingest_resyncs_total",
        "Full resyncs started, by reason.",
    ),
    (
        "gmail_ingest_sync_runs_total",
        "Sync passes finished, by kind and outcome.",
    ),
    (
        "gmail_ingest_auth_failures_total",
        "Mailboxes put in auth_failed, by cause.",
    ),
    (
        "gmail_ingest_org_unit_suspensions_total",
        "Subscriptions suspended by the org-unit gate.",
    ),
    (
        "gmail_ingest_oauth_consents_total",
        "Per-mailbox OAuth consent callbacks, by outcome.",
    ),
    (
        "gmail_ingest_oauth_disconnects_total",
        "OAuth mailboxes disconnected, by who asked (owner or operator).",
    ),
    (
        "gmail_ingest_group_members_joined_total",
        "Group members found by a re-expansion and requested as pending subscriptions.",
    ),
    (
        "gmail_ingest_group_members_left_total",
        "Members that left a subscribed group, by action (flagged or paused).",
    ),
    ("gmail_ingest_lease_claims_total", "Mailbox leases claimed."),
    (
        "gmail_ingest_lease_losses_total",
        "Fenced writes refused because the lease was lost.",
    ),
    (
        "gmail_ingest_db_errors_total",
        "Database errors, by operation.",
    ),
    ("gmail_ingest_scheduler_ticks_total", "Scheduler ticks."),
    (
        "gmail_ingest_rows_pruned_total",
        "Rows deleted by housekeeping (sync_runs past sync.run_retention, old quota windows), by table.",
    ),
    (
        "gmail_ingest_mailboxes",
        "Subscribed mailboxes by sync phase.",
    ),
    (
        "gmail_ingest_sync_lag_seconds",
        "Age of the oldest last successful sync among active mailboxes.",
    ),
    (
        "gmail_ingest_reviews_overdue",
        "Subscriptions whose periodic review is overdue.",
    ),
    (
        "gmail_ingest_history_window_at_risk",
        "Active mailboxes whose last success approaches the history window.",
    ),
    (
        "gmail_ingest_mailboxes_in_flight",
        "Mailboxes being synced right now.",
    ),
    (
        "gmail_ingest_quota_daily_used_units",
        "Gmail quota units the project reserved today (Pacific day), all replicas.",
    ),
    (
        "gmail_ingest_quota_daily_budget_units",
        "The project's daily Gmail quota budget (sync.project_quota_units_per_day).",
    ),
    (
        "gmail_ingest_quota_daily_reserve_units",
        "Units of today's budget kept for incremental passes (backfills stop there).",
    ),
    (
        "gmail_ingest_quota_daily_exhaustion_seconds",
        "Seconds until today's budget runs out at today's rate; +Inf when not before the reset.",
    ),
    (
        "gmail_ingest_quota_daily_reset_seconds",
        "Seconds until the daily quota resets (midnight America/Los_Angeles).",
    ),
    (
        "gmail_ingest_backfills_paced_total",
        "Backfill passes that stopped to wait for the daily budget, by kind.",
    ),
    (
        "gmail_ingest_watch_calls_total",
        "Gmail push watch calls (users.watch, users.stop), by call and outcome class.",
    ),
    (
        "gmail_ingest_watches_lapsed_total",
        "Push watches found expired before they were renewed.",
    ),
    (
        "gmail_ingest_watches",
        "Subscribed mailboxes by push watch state (live, lapsed, failed, none).",
    ),
    (
        "gmail_ingest_push_notifications_total",
        "Pulled Gmail push notifications, by outcome (due, recorded, not_subscribed, malformed, store_error).",
    ),
    (
        "gmail_ingest_push_pull_errors_total",
        "Failed pulls of the Pub/Sub subscription, by error type.",
    ),
    (
        "gmail_ingest_push_acked_total",
        "Pub/Sub messages acknowledged (after their mark committed, or malformed or not subscribed).",
    ),
];

/// Registers the help texts (called once when the recorder is installed).
pub fn describe_all() {
    for (name, help) in METRICS {
        if name.ends_with("_total") {
            describe_counter!(*name, *help);
        } else {
            describe_gauge!(*name, *help);
        }
    }
}

pub struct GoogleRequest {
    pub method: &'static str,
    /// `ok` or an [`ErrorClass`] label.
    pub outcome: &'static str,
}

impl GoogleRequest {
    pub fn emit(&self) {
        counter!("gmail_ingest_api_requests_total", "method" => self.method, "outcome" => self.outcome)
            .increment(1);
    }
}

pub struct GoogleRetry<'a> {
    pub method: &'static str,
    pub class: ErrorClass,
    pub attempt: u32,
    pub delay: Duration,
    pub error: &'a GoogleError,
}

impl GoogleRetry<'_> {
    pub fn emit(&self) {
        tracing::debug!(
            method = self.method,
            error_type = self.class.as_str(),
            attempt = self.attempt,
            delay_ms = self.delay.as_millis() as u64,
            error = %self.error,
            "Retrying Google call."
        );
        counter!("gmail_ingest_api_retries_total", "method" => self.method, "error_type" => self.class.as_str())
            .increment(1);
    }
}

pub struct QuotaThrottled {
    pub scope: &'static str,
    pub wait: Duration,
}

impl QuotaThrottled {
    pub fn emit(&self) {
        tracing::trace!(
            scope = self.scope,
            wait_ms = self.wait.as_millis() as u64,
            "Waiting for quota."
        );
        counter!("gmail_ingest_quota_throttle_events_total", "scope" => self.scope).increment(1);
    }
}

pub struct QuotaUnitsSpent {
    pub method: &'static str,
    pub units: u32,
}

impl QuotaUnitsSpent {
    pub fn emit(&self) {
        counter!("gmail_ingest_api_quota_units_total", "method" => self.method)
            .increment(u64::from(self.units));
    }
}

pub struct MailboxSyncCompleted<'a> {
    pub mailbox: &'a MailboxAddress,
    pub kind: SyncKind,
    pub counts: &'a SyncCounts,
    pub elapsed: Duration,
}

impl MailboxSyncCompleted<'_> {
    pub fn emit(&self) {
        let c = self.counts;
        tracing::info!(
            mailbox = %self.mailbox,
            kind = self.kind.as_str(),
            added = c.added,
            updated = c.updated,
            deleted = c.deleted,
            label_changes = c.label_changes,
            api_calls = c.api_calls,
            quota_units = c.quota_units,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Mailbox sync completed."
        );
        counter!("gmail_ingest_sync_runs_total", "kind" => self.kind.as_str(), "outcome" => "ok")
            .increment(1);
    }
}

/// Rows written by one committed batch.
pub struct BatchCommitted {
    pub added: u64,
    pub deleted: u64,
    pub label_changes: u64,
}

impl BatchCommitted {
    pub fn emit(&self) {
        counter!("gmail_ingest_messages_ingested_total").increment(self.added);
        counter!("gmail_ingest_messages_deleted_total").increment(self.deleted);
        counter!("gmail_ingest_messages_relabelled_total").increment(self.label_changes);
    }
}

pub struct MailboxSyncFailed<'a> {
    pub mailbox: &'a MailboxAddress,
    pub kind: SyncKind,
    pub error_type: &'static str,
    pub error: &'a anyhow::Error,
}

impl MailboxSyncFailed<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            mailbox = %self.mailbox,
            kind = self.kind.as_str(),
            error_type = self.error_type,
            error = %self.error,
            "Mailbox sync failed; it will be retried."
        );
        counter!("gmail_ingest_sync_runs_total", "kind" => self.kind.as_str(), "outcome" => self.error_type)
            .increment(1);
    }
}

/// A decision stopped a pass before its end (paused, removed, suspended,
/// returned to pending, another auth mode, the integration disabled).
pub struct PassStopped<'a> {
    pub mailbox: &'a MailboxAddress,
    pub kind: SyncKind,
    pub decision: StopDecision,
}

impl PassStopped<'_> {
    pub fn emit(&self) {
        tracing::info!(
            mailbox = %self.mailbox,
            kind = self.kind.as_str(),
            decision = self.decision.as_str(),
            "Mailbox sync stopped by a decision; no further request is sent for it."
        );
        counter!("gmail_ingest_sync_runs_total", "kind" => self.kind.as_str(), "outcome" => self.decision.as_str())
            .increment(1);
    }
}

/// A backfill stopped between two pages to leave the rest of today's
/// budget to incremental passes; it resumes from its page token at `until`.
pub struct BackfillPaced<'a> {
    pub mailbox: &'a MailboxAddress,
    pub kind: SyncKind,
    pub until: chrono::DateTime<chrono::Utc>,
    pub reason: &'a str,
}

impl BackfillPaced<'_> {
    pub fn emit(&self) {
        tracing::info!(
            mailbox = %self.mailbox,
            kind = self.kind.as_str(),
            until = %self.until,
            reason = self.reason,
            "Backfill waits for the daily quota budget; incremental passes go first."
        );
        counter!("gmail_ingest_backfills_paced_total", "kind" => self.kind.as_str()).increment(1);
        counter!("gmail_ingest_sync_runs_total", "kind" => self.kind.as_str(), "outcome" => "quota_wait")
            .increment(1);
    }
}

/// A requested resync of a synced mailbox did not start: the daily budget
/// is kept for incremental passes, so the pass is an incremental one.
pub struct ResyncPostponed<'a> {
    pub mailbox: &'a MailboxAddress,
    pub reason: &'a str,
}

impl ResyncPostponed<'_> {
    pub fn emit(&self) {
        tracing::info!(
            mailbox = %self.mailbox,
            reason = self.reason,
            "Requested resync postponed to the next one; the daily quota budget is kept for incremental passes."
        );
    }
}

/// The project's daily budget as the database counts it (the fleet tick).
pub struct DailyQuota {
    pub used_units: i64,
    pub budget_units: i64,
    pub reserve_units: i64,
    /// `None`: the budget does not run out before the reset.
    pub exhaustion: Option<Duration>,
    pub reset: Duration,
}

impl DailyQuota {
    pub fn emit(&self) {
        gauge!("gmail_ingest_quota_daily_used_units").set(self.used_units as f64);
        gauge!("gmail_ingest_quota_daily_budget_units").set(self.budget_units as f64);
        gauge!("gmail_ingest_quota_daily_reserve_units").set(self.reserve_units as f64);
        gauge!("gmail_ingest_quota_daily_exhaustion_seconds")
            .set(self.exhaustion.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        gauge!("gmail_ingest_quota_daily_reset_seconds").set(self.reset.as_secs_f64());
    }
}

pub struct HistoryExpired<'a> {
    pub mailbox: &'a MailboxAddress,
    pub history_id: u64,
}

impl HistoryExpired<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            mailbox = %self.mailbox,
            history_id = self.history_id,
            "History expired; resyncing the mailbox."
        );
        counter!("gmail_ingest_history_expirations_total").increment(1);
        counter!("gmail_ingest_resyncs_total", "reason" => "history_expired").increment(1);
    }
}

pub struct ResyncStarted<'a> {
    pub mailbox: &'a MailboxAddress,
    pub reason: &'static str,
}

impl ResyncStarted<'_> {
    pub fn emit(&self) {
        tracing::info!(mailbox = %self.mailbox, reason = self.reason, "Full resync started.");
        counter!("gmail_ingest_resyncs_total", "reason" => self.reason).increment(1);
    }
}

pub struct AuthRevoked<'a> {
    pub mailbox: &'a MailboxAddress,
    pub cause: Option<AuthCause>,
    pub error: &'a GoogleError,
}

impl AuthRevoked<'_> {
    pub fn emit(&self) {
        let cause = self.cause.map_or("unknown", AuthCause::as_str);
        tracing::error!(
            mailbox = %self.mailbox,
            cause,
            error = %self.error,
            "Access to the mailbox was refused; an administrator must act."
        );
        counter!("gmail_ingest_auth_failures_total", "cause" => cause).increment(1);
    }
}

/// The end of one consent callback. `outcome` is a bounded label
/// (`stored`, `refused`, `wrong_account`, `invalid_state`, …).
pub struct OAuthConsent<'a> {
    pub mailbox: Option<&'a MailboxAddress>,
    pub outcome: &'static str,
    pub detail: &'a str,
}

impl OAuthConsent<'_> {
    pub fn emit(&self) {
        let mailbox = self.mailbox.map(|m| m.as_str()).unwrap_or("-");
        if self.outcome == "stored" {
            tracing::info!(mailbox, "OAuth consent stored.");
        } else {
            tracing::warn!(
                mailbox,
                outcome = self.outcome,
                detail = self.detail,
                "OAuth consent not stored."
            );
        }
        counter!("gmail_ingest_oauth_consents_total", "outcome" => self.outcome).increment(1);
    }
}

pub struct OAuthDisconnected<'a> {
    pub mailbox: &'a MailboxAddress,
    /// `owner` or `operator`.
    pub by: &'static str,
    pub purged: bool,
}

impl OAuthDisconnected<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            mailbox = %self.mailbox,
            by = self.by,
            purged = self.purged,
            "OAuth mailbox disconnected: token revoked and deleted, subscription paused."
        );
        counter!("gmail_ingest_oauth_disconnects_total", "by" => self.by).increment(1);
    }
}

pub struct OrgUnitSuspended<'a> {
    pub mailbox: &'a MailboxAddress,
    pub reason: &'a str,
}

impl OrgUnitSuspended<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            mailbox = %self.mailbox,
            reason = self.reason,
            "Subscription suspended by the org-unit gate; the mailbox is not impersonated."
        );
        counter!("gmail_ingest_org_unit_suspensions_total").increment(1);
    }
}

pub struct OrgUnitReinstated<'a> {
    pub mailbox: &'a MailboxAddress,
}

impl OrgUnitReinstated<'_> {
    pub fn emit(&self) {
        tracing::info!(mailbox = %self.mailbox, "Subscription reinstated: the mailbox is back in an approved org unit.");
    }
}

pub struct GroupMemberJoined<'a> {
    pub group: &'a str,
    pub mailbox: &'a MailboxAddress,
}

impl GroupMemberJoined<'_> {
    pub fn emit(&self) {
        tracing::info!(
            group = self.group,
            mailbox = %self.mailbox,
            "A new member of a subscribed group is pending approval."
        );
        counter!("gmail_ingest_group_members_joined_total").increment(1);
    }
}

pub struct GroupMemberLeft<'a> {
    pub group: &'a str,
    pub mailbox: &'a MailboxAddress,
    /// Its subscription was paused (`policy.on_group_leave = "pause"`).
    pub paused: bool,
}

impl GroupMemberLeft<'_> {
    pub fn emit(&self) {
        let action = if self.paused { "paused" } else { "flagged" };
        tracing::warn!(
            group = self.group,
            mailbox = %self.mailbox,
            action,
            "A mailbox left a subscribed group; see subscriptions review."
        );
        counter!("gmail_ingest_group_members_left_total", "action" => action).increment(1);
    }
}

pub struct LeasesClaimed {
    pub count: usize,
}

impl LeasesClaimed {
    pub fn emit(&self) {
        counter!("gmail_ingest_lease_claims_total").increment(self.count as u64);
    }
}

pub struct LeaseLost<'a> {
    pub mailbox: &'a MailboxAddress,
}

impl LeaseLost<'_> {
    pub fn emit(&self) {
        tracing::warn!(mailbox = %self.mailbox, "Lease lost; the write was refused and another replica owns the mailbox.");
        counter!("gmail_ingest_lease_losses_total").increment(1);
    }
}

pub struct DbError<'a> {
    pub operation: &'static str,
    pub error: &'a (dyn std::error::Error + 'static),
}

impl DbError<'_> {
    pub fn emit(&self) {
        tracing::error!(operation = self.operation, error = %self.error, "Database operation failed.");
        counter!("gmail_ingest_db_errors_total", "operation" => self.operation).increment(1);
    }
}

pub struct SchedulerTick;

impl SchedulerTick {
    pub fn emit(&self) {
        counter!("gmail_ingest_scheduler_ticks_total").increment(1);
    }
}

/// Gauges computed by the scheduler from `sync_state` and `subscriptions`.
pub struct FleetSnapshot<'a> {
    pub by_phase: &'a [(SyncPhase, u64)],
    pub oldest_lag: Option<Duration>,
    pub reviews_overdue: u64,
    pub history_window_at_risk: u64,
}

impl FleetSnapshot<'_> {
    pub fn emit(&self) {
        for (phase, n) in self.by_phase {
            gauge!("gmail_ingest_mailboxes", "phase" => phase.as_str()).set(*n as f64);
        }
        gauge!("gmail_ingest_sync_lag_seconds")
            .set(self.oldest_lag.map_or(0.0, |d| d.as_secs_f64()));
        gauge!("gmail_ingest_reviews_overdue").set(self.reviews_overdue as f64);
        gauge!("gmail_ingest_history_window_at_risk").set(self.history_window_at_risk as f64);
    }
}

pub struct InFlight {
    pub count: usize,
}

impl InFlight {
    pub fn emit(&self) {
        gauge!("gmail_ingest_mailboxes_in_flight").set(self.count as f64);
    }
}

/// The hourly housekeeping removed rows.
pub struct Pruned<'a> {
    pub pruned: &'a crate::store::Pruned,
}

impl Pruned<'_> {
    pub fn emit(&self) {
        let p = self.pruned;
        counter!("gmail_ingest_rows_pruned_total", "table" => "sync_runs").increment(p.sync_runs);
        counter!("gmail_ingest_rows_pruned_total", "table" => "quota_usage")
            .increment(p.quota_windows);
        if p.sync_runs > 0 || p.quota_windows > 0 {
            tracing::info!(
                sync_runs = p.sync_runs,
                quota_windows = p.quota_windows,
                "Housekeeping deleted old sync_runs rows and quota windows."
            );
        }
    }
}

/// The periodic reminder (hourly): what the gauges say, in the log.
pub struct Reminder {
    pub reviews_overdue: u64,
    pub history_window_at_risk: u64,
}

impl Reminder {
    pub fn emit(&self) {
        if self.reviews_overdue > 0 {
            tracing::warn!(
                count = self.reviews_overdue,
                "Subscription reviews are overdue; run `subscriptions review`."
            );
        }
        if self.history_window_at_risk > 0 {
            tracing::error!(
                count = self.history_window_at_risk,
                "Mailboxes have not synced for days and approach the history window; check `status`."
            );
        }
    }
}

/// One `users.watch` or `users.stop` call answered (after its retries).
pub struct WatchCall {
    /// `watch` or `stop`.
    pub call: &'static str,
    /// `ok` or an [`ErrorClass`] label.
    pub outcome: &'static str,
}

impl WatchCall {
    pub fn emit(&self) {
        counter!("gmail_ingest_watch_calls_total", "call" => self.call, "outcome" => self.outcome)
            .increment(1);
    }
}

/// A pass made or renewed a mailbox's push watch.
pub struct WatchMade<'a> {
    pub mailbox: &'a MailboxAddress,
    /// Why: `missing`, `lapsed`, `renewal`, `scope_changed` or `retry`.
    pub reason: &'static str,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl WatchMade<'_> {
    pub fn emit(&self) {
        tracing::info!(
            mailbox = %self.mailbox,
            reason = self.reason,
            expires_at = %self.expires_at,
            "Push watch made."
        );
    }
}

/// A mailbox's push watch had expired before it was renewed: its changes
/// were not notified meanwhile (the fallback poll still read them).
pub struct WatchLapsed<'a> {
    pub mailbox: &'a MailboxAddress,
}

impl WatchLapsed<'_> {
    pub fn emit(&self) {
        tracing::warn!(mailbox = %self.mailbox, "Push watch had lapsed; renewing it.");
        counter!("gmail_ingest_watches_lapsed_total").increment(1);
    }
}

/// A `users.watch` or `users.stop` failed: the mailbox is polled as
/// without push meanwhile, and `status` says why.
pub struct WatchFailed<'a> {
    pub mailbox: &'a MailboxAddress,
    /// `watch` or `stop`.
    pub call: &'static str,
    pub error: &'a str,
}

impl WatchFailed<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            mailbox = %self.mailbox,
            call = self.call,
            error = self.error,
            "Push watch call failed; the mailbox is polled meanwhile."
        );
    }
}

/// A mailbox no longer active had its push watch stopped.
pub struct WatchStopped<'a> {
    pub mailbox: &'a MailboxAddress,
    /// The subscription's status that called for it.
    pub status: &'static str,
}

impl WatchStopped<'_> {
    pub fn emit(&self) {
        tracing::info!(mailbox = %self.mailbox, status = self.status, "Push watch stopped.");
    }
}

/// Subscribed (active) mailboxes by push watch state, from the fleet snapshot.
pub struct WatchGauge<'a> {
    pub by_state: &'a [(&'static str, u64)],
}

impl WatchGauge<'_> {
    pub fn emit(&self) {
        for (state, n) in self.by_state {
            gauge!("gmail_ingest_watches", "state" => *state).set(*n as f64);
        }
    }
}

/// One pulled notification, by what became of it: `due`, `recorded`,
/// `not_subscribed`, `malformed` or `store_error` (left unacknowledged).
pub struct PushNotification<'a> {
    pub outcome: &'static str,
    /// The mailbox it named, when it named a valid one.
    pub mailbox: Option<&'a MailboxAddress>,
    /// Why it is malformed (one line, none of its data).
    pub detail: Option<&'a str>,
}

impl PushNotification<'_> {
    pub fn emit(&self) {
        tracing::debug!(
            outcome = self.outcome,
            mailbox = self.mailbox.map(|m| m.as_str()),
            detail = self.detail,
            "Push notification handled."
        );
        counter!("gmail_ingest_push_notifications_total", "outcome" => self.outcome).increment(1);
    }
}

/// A pull of the Pub/Sub subscription failed (after the retry loop); the
/// loop waits `delay` before the next. WARN once per streak of failures.
pub struct PushPullFailed<'a> {
    pub error: &'a GoogleError,
    /// Failures in a row, this one included.
    pub streak: u32,
    pub delay: Duration,
}

impl PushPullFailed<'_> {
    pub fn emit(&self) {
        if self.streak == 1 {
            tracing::warn!(
                error = %self.error,
                error_type = self.error.class.as_str(),
                delay_ms = self.delay.as_millis() as u64,
                "Pulling Gmail push notifications failed; retrying with backoff, mailboxes are still polled."
            );
        } else {
            tracing::debug!(
                error = %self.error,
                streak = self.streak,
                delay_ms = self.delay.as_millis() as u64,
                "Pulling Gmail push notifications failed again."
            );
        }
        counter!("gmail_ingest_push_pull_errors_total", "error_type" => self.error.class.as_str())
            .increment(1);
    }
}

/// A pull succeeded after `failures` failed ones.
pub struct PushPullRecovered {
    pub failures: u32,
}

impl PushPullRecovered {
    pub fn emit(&self) {
        tracing::info!(
            failures = self.failures,
            "Pulling Gmail push notifications works again."
        );
    }
}

/// Messages acknowledged to Pub/Sub.
pub struct PushAcked {
    pub count: usize,
}

impl PushAcked {
    pub fn emit(&self) {
        counter!("gmail_ingest_push_acked_total").increment(self.count as u64);
    }
}
