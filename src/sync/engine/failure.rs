//! The record of one pass and how it ends: the failure record (fenced, with
//! its run row and its backoff), the outcome, and the next poll time.
//!
//! The next poll time is computed here, once, from the outcome; nothing
//! after the engine recomputes it. `sync_state` is read at most once per
//! pass for it: by the pass itself, or here when the pass failed before
//! reading it. This module never decides what to sync and never releases
//! the lease.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::standing::Stop;
use super::{Outcome, Schedule, SyncCounts, SyncKind, SyncReport};
use crate::domain::{RunOutcome, SyncPhase};
use crate::events;
use crate::google::error::{ErrorClass, GoogleError};
use crate::store::{FailureRecord, Lease, StoreError, SyncRunRow, SyncState};
use crate::sync::context::SyncContext;

/// Why a pass failed, as the bounded `error_type` of its metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// Google refused or failed, by class.
    Google(ErrorClass),
    /// The database failed (not a lost lease).
    Database,
    /// The Directory look-up of the org-unit gate failed.
    Directory,
    /// Some messages could not be fetched; the pass is retried.
    Incomplete,
    /// The subscription cannot be read as configured (an unresolved label scope).
    Config,
}

impl ErrorType {
    /// The telemetry label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Google(class) => class.as_str(),
            ErrorType::Database => "database",
            ErrorType::Directory => "directory",
            ErrorType::Incomplete => "incomplete",
            ErrorType::Config => "config",
        }
    }
}

/// Retry delay after `failures` consecutive failures: the poll interval
/// doubled per failure, capped at one hour.
pub fn failure_backoff(poll: Duration, failures: i64) -> Duration {
    let factor = 1u32 << failures.clamp(0, 6) as u32;
    (poll * factor).min(Duration::from_secs(3600))
}

/// A failure to record.
pub(super) struct Failure {
    phase: SyncPhase,
    error_type: ErrorType,
    error: String,
    /// A fixed retry delay instead of the backoff.
    retry_after: Option<Duration>,
}

impl Failure {
    /// A failure retried with the backoff, in phase `error`.
    pub(super) fn error(error_type: ErrorType, error: String) -> Failure {
        Failure {
            phase: SyncPhase::Error,
            error_type,
            error,
            retry_after: None,
        }
    }
}

/// What the pass learnt from `sync_state` for its ending.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Failed passes in a row before this one; zero once this pass
    /// committed a success checkpoint.
    failures: i64,
    /// When the mailbox was due before this pass.
    due_before: Option<DateTime<Utc>>,
}

/// The record of one pass over a leased mailbox: who, since when, the
/// report being built, and how it ends.
pub(super) struct Run<'a> {
    pub(super) ctx: &'a SyncContext,
    /// The lease every write of the pass is fenced with.
    pub(super) lease: &'a Lease,
    schedule: Schedule,
    pub(super) started: DateTime<Utc>,
    pub(super) report: SyncReport,
    seen: Option<Seen>,
    /// The next poll time the pass's last batch released the lease with.
    released_at: Option<DateTime<Utc>>,
    /// The mailbox has a live push watch (set by the pass's watch step):
    /// a completed pass is due again after `push.fallback_poll_interval`.
    pub(super) watch_live: bool,
}

impl<'a> Run<'a> {
    pub(super) fn new(ctx: &'a SyncContext, lease: &'a Lease, schedule: Schedule) -> Run<'a> {
        Run {
            ctx,
            lease,
            schedule,
            started: Utc::now(),
            report: SyncReport {
                mailbox: lease.mailbox.clone(),
                kinds: Vec::new(),
                counts: SyncCounts::default(),
                message_gets: 0,
                outcome: Outcome::Ok,
                next_poll_at: None,
                lease_released: false,
            },
            seen: None,
            released_at: None,
            watch_live: false,
        }
    }

    pub(super) fn into_report(self) -> SyncReport {
        self.report
    }

    /// Notes the `sync_state` read at the start of the pass.
    pub(super) fn saw(&mut self, state: &SyncState) {
        self.seen = Some(Seen {
            failures: state.consecutive_failures,
            due_before: state.next_poll_at,
        });
    }

    /// A success checkpoint committed: the failure streak is over.
    pub(super) fn succeeded(&mut self) {
        if let Some(seen) = &mut self.seen {
            seen.failures = 0;
        }
    }

    /// Fills in what the pass changed and spent.
    pub(super) fn settle(&mut self, counts: SyncCounts, message_gets: u64) {
        self.report.counts = counts;
        self.report.message_gets = message_gets;
    }

    fn poll(&self) -> Duration {
        self.ctx.settings.sync.poll_interval
    }

    /// The poll interval after a completed pass: `push.fallback_poll_interval`
    /// while the mailbox has a live push watch (its notifications make it
    /// due sooner), else `sync.poll_interval`.
    fn poll_after_success(&self) -> Duration {
        if self.watch_live {
            self.ctx.settings.push.fallback_poll_interval
        } else {
            self.poll()
        }
    }

    /// When a pass that completes now is due again: what its last batch
    /// releases the lease with.
    pub(super) fn next_after_success(&self) -> DateTime<Utc> {
        self.schedule.after_success(self.poll_after_success())
    }

    /// The last batch committed and released the lease with `at`.
    pub(super) fn released(&mut self, at: DateTime<Utc>) {
        self.released_at = Some(at);
    }

    /// The pass completed.
    pub(super) fn completed(&mut self) {
        self.report.outcome = Outcome::Ok;
        self.report.lease_released = self.released_at.is_some();
        self.report.next_poll_at = Some(
            self.released_at
                .unwrap_or_else(|| self.schedule.after_success(self.poll_after_success())),
        );
    }

    /// The gate refused the mailbox.
    pub(super) fn suspended(&mut self, reason: String) {
        self.report.outcome = Outcome::Suspended { reason };
        self.report.next_poll_at = Some(self.schedule.after_success(self.poll()));
    }

    /// A decision stopped the pass (see `standing`): its run row names the
    /// decision (written under the lease alone: the subscription check is
    /// what refused the pass), the mailbox is due again after the poll
    /// interval like after a completed pass, and no failure is counted.
    pub(super) async fn stopped_by(&mut self, kind: SyncKind, stop: Stop) {
        events::PassStopped {
            mailbox: &self.lease.mailbox,
            kind,
            decision: stop.decision,
        }
        .emit();
        let run = self.row(
            kind,
            self.started,
            self.report.counts,
            stop.decision.run_outcome(),
            stop.reason.clone(),
        );
        let mut next_poll_at = Some(self.schedule.after_success(self.poll()));
        match self.ctx.store.record_stop(self.lease, &run).await {
            Ok(()) => {}
            // Also what a removal with --purge does (the sync state is gone):
            // the decision still names the end; the lease is not ours to release.
            Err(StoreError::LeaseLost { .. }) => {
                events::LeaseLost {
                    mailbox: &self.lease.mailbox,
                }
                .emit();
                let before = self.seen.and_then(|s| s.due_before);
                next_poll_at = self.schedule.after_stop(true, before, self.poll());
            }
            Err(e) => events::DbError {
                operation: "record_stop",
                error: &e,
            }
            .emit(),
        }
        self.report.outcome = Outcome::Stopped {
            decision: stop.decision,
            reason: stop.reason,
        };
        self.report.next_poll_at = next_poll_at;
    }

    /// The daily budget paces the backfill: it waits until `until`, which
    /// `status` shows with `reason` and the lease is released with.
    pub(super) async fn paced(&mut self, kind: SyncKind, until: DateTime<Utc>, reason: String) {
        events::BackfillPaced {
            mailbox: &self.lease.mailbox,
            kind,
            until,
            reason: &reason,
        }
        .emit();
        let run = self.row(
            kind,
            self.started,
            self.report.counts,
            RunOutcome::QuotaWait,
            Some(reason.clone()),
        );
        match self
            .ctx
            .store
            .record_quota_wait(self.lease, until, &reason, &run)
            .await
        {
            Ok(()) => {}
            Err(StoreError::LeaseLost { .. }) => {
                events::LeaseLost {
                    mailbox: &self.lease.mailbox,
                }
                .emit();
                self.stopped(true);
                return;
            }
            Err(e) => events::DbError {
                operation: "record_quota_wait",
                error: &e,
            }
            .emit(),
        }
        self.report.outcome = Outcome::Paced { until, reason };
        self.report.next_poll_at = Some(until);
    }

    /// The pass stopped between two batches: shutdown, or (`lease_lost`)
    /// another replica owns the mailbox now.
    pub(super) fn stopped(&mut self, lease_lost: bool) {
        self.report.outcome = if lease_lost {
            Outcome::LeaseLost
        } else {
            Outcome::Interrupted
        };
        let before = self.seen.and_then(|s| s.due_before);
        self.report.next_poll_at = self.schedule.after_stop(lease_lost, before, self.poll());
    }

    /// A `sync_runs` row of this replica for this mailbox.
    pub(super) fn row(
        &self,
        kind: SyncKind,
        started: DateTime<Utc>,
        counts: SyncCounts,
        outcome: RunOutcome,
        error: Option<String>,
    ) -> SyncRunRow {
        SyncRunRow {
            mailbox: self.lease.mailbox.clone(),
            kind,
            replica: self.ctx.replica.clone(),
            started_at: started,
            finished_at: Utc::now(),
            counts,
            outcome,
            error,
        }
    }

    /// Failed passes in a row before this one, from the pass's own read of
    /// `sync_state`, or from one read now when the pass failed before it.
    async fn failures_so_far(&mut self) -> i64 {
        if let Some(seen) = self.seen {
            return seen.failures;
        }
        match self.ctx.store.sync_state(&self.lease.mailbox).await {
            Ok(Some(state)) => {
                self.saw(&state);
                state.consecutive_failures
            }
            Ok(None) => {
                self.seen = Some(Seen {
                    failures: 0,
                    due_before: None,
                });
                0
            }
            Err(_) => 0,
        }
    }

    /// A Google failure: auth revoked puts the mailbox in `auth_failed`
    /// until an admin acts (retried after `sync.auth_failed_retry`); any
    /// other class is retried with the backoff.
    pub(super) async fn google_failure(&mut self, kind: SyncKind, e: GoogleError) {
        if e.class != ErrorClass::AuthRevoked {
            let failure = Failure::error(ErrorType::Google(e.class), e.to_string());
            self.fail(kind, failure).await;
            return;
        }
        events::AuthRevoked {
            mailbox: &self.lease.mailbox,
            cause: e.auth_cause,
            error: &e,
        }
        .emit();
        let cause = match e.auth_cause {
            Some(c) => format!("{} ({})", c.remedy(), e),
            None => e.to_string(),
        };
        let failure = Failure {
            phase: SyncPhase::AuthFailed,
            error_type: ErrorType::Google(ErrorClass::AuthRevoked),
            error: cause.clone(),
            retry_after: Some(self.ctx.settings.sync.auth_failed_retry),
        };
        let at = self.fail(kind, failure).await;
        self.report.outcome = Outcome::AuthFailed { cause };
        self.report.next_poll_at = Some(at);
        self.ctx.google.forget(&self.lease.mailbox);
    }

    /// Records a failed pass (fenced) and sets the outcome; returns the
    /// retry time it recorded.
    pub(super) async fn fail(&mut self, kind: SyncKind, f: Failure) -> DateTime<Utc> {
        let failures = self.failures_so_far().await;
        let delay = f
            .retry_after
            .unwrap_or_else(|| failure_backoff(self.poll(), failures));
        let next_poll_at = Utc::now()
            + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::minutes(30));
        let outcome = if f.phase == SyncPhase::AuthFailed {
            RunOutcome::AuthFailed
        } else {
            RunOutcome::Error
        };
        let record = FailureRecord {
            phase: f.phase,
            error: f.error.clone(),
            next_poll_at,
            run: Some(self.row(
                kind,
                self.started,
                self.report.counts,
                outcome,
                Some(f.error.clone()),
            )),
        };
        let anyhow_err = anyhow::anyhow!(f.error.clone());
        events::MailboxSyncFailed {
            mailbox: &self.lease.mailbox,
            kind,
            error_type: f.error_type.as_str(),
            error: &anyhow_err,
        }
        .emit();
        match self.ctx.store.record_failure(self.lease, &record).await {
            Ok(()) => {}
            // Failed after a decision: the decision is how it ended.
            Err(StoreError::NotActive { decision, .. }) => {
                let stop = Stop {
                    decision,
                    reason: None,
                };
                self.stopped_by(kind, stop).await;
                return next_poll_at;
            }
            Err(StoreError::LeaseLost { .. }) => {
                events::LeaseLost {
                    mailbox: &self.lease.mailbox,
                }
                .emit();
                self.stopped(true);
                return next_poll_at;
            }
            Err(e) => events::DbError {
                operation: "record_failure",
                error: &e,
            }
            .emit(),
        }
        self.report.outcome = Outcome::Failed {
            error_type: f.error_type,
            error: f.error,
        };
        self.report.next_poll_at = Some(next_poll_at);
        next_poll_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_and_caps() {
        let p = Duration::from_secs(60);
        assert_eq!(failure_backoff(p, 0), p);
        assert_eq!(failure_backoff(p, 2), p * 4);
        assert_eq!(failure_backoff(p, 50), Duration::from_secs(3600));
    }
}
