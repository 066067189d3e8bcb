//! Full sync, incremental sync and resync-on-expiry for one mailbox.
//!
//! The engine reaches Google only through [`MailboxGmail`] and the database
//! only through [`Store`](crate::store::Store)'s fenced writes, so every
//! checkpoint it moves is covered by a lease and committed in the same
//! transaction as the rows it vouches for. It never claims, renews or
//! releases a lease: `daemon::lease::run_leased` does, with the next poll
//! time the engine computed. Invariants:
//!
//! - `sync_state.history_id` never moves ahead of committed data: an
//!   incremental pass moves it once per history chunk, to the id of the
//!   chunk's last record (the mailbox's current historyId for the last
//!   chunk), in the batch that applies the chunk's deletes and label changes
//!   after its fetched messages are committed; and a full sync stores the historyId read *before* listing only when the
//!   listing is complete.
//! - The full-sync page token only advances past a page once every message of
//!   that page is stored, so a restart resumes without refetching and without
//!   skipping.
//! - A message is fetched once: IDs already stored are never fetched again.
//!
//! Layout: this file is the entry point ([`sync_mailbox`]), the gate and the
//! choice between full and incremental; `full` lists the mailbox, `incremental`
//! replays history, `fetch` is the one fetch-with-give-up policy (and the
//! placeholders), `failure` records a failed pass and its backoff,
//! `standing` stops a pass the moment a decision no longer admits it,
//! `watch` keeps the mailbox's Gmail push watch when push is on.
//!
//! Decisions take effect during a pass: it starts only for an active
//! subscription while `integration.enabled`, pins the `auth_mode` it read on
//! its lease (so every fenced write checks it too), reads the subscription
//! again before each group of Gmail requests and once a second beside them,
//! and stops with [`Outcome::Stopped`] naming the decision, never `Ok`.

mod failure;
mod fetch;
mod full;
mod incremental;
mod standing;
mod watch;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::failure::{ErrorType, failure_backoff};
use self::failure::{Failure, Run};
use self::standing::{Stop, Watch};
pub use self::watch::WATCH_RETRY_AFTER;
use crate::domain::{AuthMode, HistoryId, MailboxAddress, StopDecision, SubscriptionStatus};
pub use crate::domain::{SyncCounts, SyncKind};
use crate::events;
use crate::google::error::{ErrorClass, GoogleError};
use crate::google::gmail::{CallStats, MailboxGmail};
use crate::store::{Checkpoint, Lease, StoreError, SyncBatch, SyncRunRow, SyncState};
pub use crate::sync::context::SyncContext;
use crate::sync::gate::{self, GateDecision};

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The mailbox failed; it is retried later. `error_type` is bounded.
    Failed {
        error_type: ErrorType,
        error: String,
    },
    /// Access refused: the mailbox is in `auth_failed` with this remedy.
    AuthFailed {
        cause: String,
    },
    /// The org-unit gate refused the mailbox; it is not impersonated.
    Suspended {
        reason: String,
    },
    /// Another replica owns the mailbox now; nothing was written.
    LeaseLost,
    /// Shutdown interrupted the pass between two committed batches.
    Interrupted,
    /// The daily budget is kept for incremental passes: the backfill stopped
    /// between two committed pages and resumes from its page token at
    /// `until` (`sync_state.quota_wait_*` say so to `status`). Not a failure.
    Paced {
        until: DateTime<Utc>,
        reason: String,
    },
    /// A decision stopped the pass: the subscription is no longer active (or
    /// no longer in the mode the pass started with), or the integration is
    /// disabled. Not a failure: the lease is released, nothing is retried,
    /// and `reason` is the one the subscription records, if any.
    Stopped {
        decision: StopDecision,
        reason: Option<String>,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// Whether the pass failed (what `sync` counts for its exit code): not
    /// when it completed, nor when a decision stopped it.
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            Outcome::Ok | Outcome::Stopped { .. } | Outcome::Paced { .. }
        )
    }
}

/// Per-mailbox result of one pass (printed by `sync`, logged by the daemon).
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub mailbox: MailboxAddress,
    pub kinds: Vec<SyncKind>,
    pub counts: SyncCounts,
    pub message_gets: u64,
    pub outcome: Outcome,
    /// When the mailbox is due again, computed once from the outcome (and
    /// already written with the failure record when the pass failed); the
    /// lease is released with it. `None` when the lease was lost: the new
    /// owner decides, and nothing is released.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// The pass's last batch released the lease already (with
    /// `next_poll_at`): a completed pass frees its mailbox in the
    /// transaction of its final checkpoint, so the caller must not release
    /// it again.
    pub lease_released: bool,
}

impl SyncReport {
    /// What the pass was, for people and logs: `full` or `resync` when it
    /// listed the mailbox (even though an incremental replay followed to
    /// catch what changed meanwhile), else `incremental`.
    pub fn kind(&self) -> SyncKind {
        pass_kind(&self.kinds)
    }
}

/// The most telling kind among a pass's segments (see [`SyncReport::kind`]).
pub fn pass_kind(kinds: &[SyncKind]) -> SyncKind {
    kinds
        .iter()
        .copied()
        .find(|k| *k != SyncKind::Incremental)
        .unwrap_or(SyncKind::Incremental)
}

/// Progress of a long full sync, for terminals.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub listed: u64,
    pub fetched: u64,
    pub estimated_total: u64,
}

pub type ProgressFn = Arc<dyn Fn(&MailboxAddress, Progress) + Send + Sync>;

/// Who runs the pass, which decides the next poll after a clean, refused or
/// interrupted pass (a failure's backoff is the same for both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// The daemon: the poll interval with ±10 % jitter, so a thousand
    /// mailboxes do not poll in the same second; an interrupted pass is due
    /// at once; a lost lease is left to its new owner.
    #[default]
    Daemon,
    /// A one-off `sync` command: exactly the poll interval; an interrupted
    /// pass (or a lost lease) keeps the time the mailbox was due at before.
    OneOff,
}

impl Schedule {
    /// After a pass that succeeded or was refused by the gate.
    fn after_success(self, poll: std::time::Duration) -> DateTime<Utc> {
        let delay = match self {
            Schedule::Daemon => poll.mul_f64(rand::rng().random_range(0.9..1.1)),
            Schedule::OneOff => poll,
        };
        Utc::now()
            + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::minutes(1))
    }

    /// After a pass stopped by shutdown (`lease_lost` false) or by another
    /// replica's claim; `before` is when the mailbox was due before the pass.
    fn after_stop(
        self,
        lease_lost: bool,
        before: Option<DateTime<Utc>>,
        poll: std::time::Duration,
    ) -> Option<DateTime<Utc>> {
        match (self, lease_lost) {
            (Schedule::Daemon, true) => None,
            (Schedule::Daemon, false) => Some(Utc::now()),
            (Schedule::OneOff, _) => Some(before.unwrap_or_else(|| {
                Utc::now()
                    + chrono::Duration::from_std(poll)
                        .unwrap_or_else(|_| chrono::Duration::minutes(1))
            })),
        }
    }
}

/// Options of one pass.
#[derive(Clone, Default)]
pub struct PassOptions {
    /// Start a reconciliation full sync even if history is available.
    pub force_full: bool,
    pub progress: Option<ProgressFn>,
    pub schedule: Schedule,
}

/// Failures inside a pass, by what the caller must do.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Google(#[from] GoogleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Incomplete(String),
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error("stopped: the subscription is {}", .0.decision)]
    Stopped(Stop),
    /// The backfill waits for the daily budget until `until`.
    #[error("{reason}")]
    Paced {
        until: DateTime<Utc>,
        reason: String,
    },
}

/// One pass over a mailbox the caller holds a lease on: gate, then full or
/// incremental sync (with resync on expiry). Never panics on bad data and
/// never returns an error: the outcome and the failure record say it all.
pub async fn sync_mailbox(
    ctx: &SyncContext,
    lease: &Lease,
    opts: &PassOptions,
    cancel: &CancellationToken,
) -> SyncReport {
    let span = tracing::info_span!("sync", mailbox = %lease.mailbox, phase = tracing::field::Empty);
    run_pass(ctx, lease, opts, cancel).instrument(span).await
}

async fn run_pass(
    ctx: &SyncContext,
    lease: &Lease,
    opts: &PassOptions,
    cancel: &CancellationToken,
) -> SyncReport {
    let clock = Instant::now();
    let pinned: Lease;
    let mut run = Run::new(ctx, lease, opts.schedule);
    if !ctx.settings.integration.enabled {
        run.stopped_by(SyncKind::Incremental, Stop::disabled())
            .await;
        return run.into_report();
    }
    let calls = Arc::new(CallStats::default());
    // The daemon's passes may use the gate's cached admission; a one-off
    // `sync` asks the Directory as it is now.
    let cached = opts.schedule == Schedule::Daemon;
    let (gmail, scope) = match open_gmail(ctx, &lease.mailbox, calls, cached).await {
        Ok((gmail, mode, scope)) => {
            // Every write of the pass is fenced with the mode it read.
            pinned = Lease {
                auth_mode: Some(mode),
                ..lease.clone()
            };
            run.lease = &pinned;
            (gmail, scope)
        }
        Err(Refused::Stopped(stop)) => {
            run.stopped_by(SyncKind::Incremental, stop).await;
            return run.into_report();
        }
        Err(Refused::Gate(reason)) => {
            run.suspended(reason);
            return run.into_report();
        }
        Err(Refused::Check(error_type, error)) => {
            run.fail(SyncKind::Incremental, Failure::error(error_type, error))
                .await;
            return run.into_report();
        }
        Err(Refused::Google(e)) => {
            run.google_failure(SyncKind::Incremental, e).await;
            return run.into_report();
        }
    };
    let watch = Watch::start(ctx.store.clone(), run.lease, cancel);
    let mut pass = Pass {
        run,
        gmail,
        scope,
        opts,
        cancel: &watch.token,
        watch: &watch,
        totals: SyncCounts::default(),
        clock,
    };
    let result = pass.drive().await;
    pass.finish(result).await
}

/// Why a pass stopped before its Gmail handle existed.
enum Refused {
    /// The subscription is not active: a decision came before the pass.
    Stopped(Stop),
    /// The gate refused the mailbox: it is suspended, not failed.
    Gate(String),
    /// The subscription or the Directory could not be read.
    Check(ErrorType, String),
    /// No Gmail handle (no token, or OAuth disabled for an OAuth subscription).
    Google(GoogleError),
}

/// The approved-OU gate, then the Gmail handle as the mailbox and the
/// label scope the pass enforces (empty: the whole mailbox). The gate runs
/// before any impersonation, on every pass (for the daemon's passes
/// (`cached`), from its admission when that is recent: `gate::check_pass`). A mailbox authorized by its
/// owner's consent is not impersonated: the gate is the consent itself (and
/// the allowed domains, checked again). Returns the handle and the mode it
/// was opened in; only an active subscription gets one.
async fn open_gmail(
    ctx: &SyncContext,
    mailbox: &MailboxAddress,
    calls: Arc<CallStats>,
    cached: bool,
) -> Result<(MailboxGmail, AuthMode, Vec<String>), Refused> {
    let sub = ctx.store.get_subscription(mailbox).await.map_err(|e| {
        Refused::Check(
            ErrorType::Database,
            format!("reading the subscription: {e}"),
        )
    })?;
    // Suspended is the gate's to judge (it may reinstate the mailbox).
    if sub
        .as_ref()
        .is_none_or(|s| s.status != SubscriptionStatus::Suspended)
        && let Some(stop) = Stop::of(sub.as_ref(), None)
    {
        return Err(Refused::Stopped(stop));
    }
    // The scope resolved at approval; a subscription that requests labels
    // but has none resolved is never read whole.
    let scope = match sub.as_ref() {
        Some(s) => match (&s.label_scope, s.label_filter.is_empty()) {
            (Some(scope), _) => scope.clone(),
            (None, true) => Vec::new(),
            (None, false) => {
                return Err(Refused::Check(
                    ErrorType::Config,
                    "its --labels are not resolved: approve it again".to_owned(),
                ));
            }
        },
        None => Vec::new(),
    };
    let mode = sub.as_ref().map_or(AuthMode::Delegated, |s| s.auth_mode);
    let decision = match mode {
        AuthMode::Delegated => gate::check_pass(ctx, mailbox, sub.as_ref(), cached)
            .await
            .map_err(|e| {
                Refused::Check(
                    ErrorType::Directory,
                    format!("org-unit check failed: {e:#}"),
                )
            })?,
        AuthMode::OAuth => gate::evaluate_consented(&ctx.policy, mailbox),
    };
    if let GateDecision::Refused(reason) = decision {
        return Err(Refused::Gate(reason));
    }
    let gmail = match mode {
        AuthMode::Delegated => ctx.google.gmail(mailbox, calls).await,
        AuthMode::OAuth => match &ctx.oauth {
            Some(o) => Ok(ctx.google.gmail_oauth(mailbox, o.tokens().clone(), calls)),
            None => Err(GoogleError::new(
                ErrorClass::Fatal,
                crate::google::auth::TOKEN_METHOD,
                "an OAuth subscription, but oauth.enabled is false",
            )),
        },
    };
    gmail.map(|g| (g, mode, scope)).map_err(Refused::Google)
}

/// A pass past the gate: the record of the run, the Gmail handle as the
/// mailbox, and what the committed batches changed so far.
struct Pass<'a> {
    run: Run<'a>,
    gmail: MailboxGmail,
    /// The subscription's label scope (IDs, resolved at approval), read once
    /// at the start of the pass; empty means the whole mailbox.
    scope: Vec<String>,
    opts: &'a PassOptions,
    /// Fires on shutdown, when the lease keeper lost the lease, or when the
    /// watcher found a decision: the pass stops at the next batch boundary,
    /// after a commit, never inside one (in-flight fetches are dropped).
    cancel: &'a CancellationToken,
    /// The watcher behind `cancel`, which says what decision fired it.
    watch: &'a Watch,
    /// Sum of every committed batch's counts (no API counters: see `counts`).
    totals: SyncCounts,
    /// Since the pass began (the gate included), for the completion event.
    clock: Instant,
}

impl Pass<'_> {
    fn ctx(&self) -> &SyncContext {
        self.run.ctx
    }

    fn lease(&self) -> &Lease {
        self.run.lease
    }

    fn mailbox(&self) -> &MailboxAddress {
        &self.run.lease.mailbox
    }

    /// What the pass changed so far plus the API calls it made.
    fn counts(&self, changes: &SyncCounts) -> SyncCounts {
        SyncCounts {
            api_calls: self.gmail.stats().calls(),
            quota_units: self.gmail.stats().units(),
            ..*changes
        }
    }

    fn check_cancel(&self) -> Result<(), PassError> {
        if self.cancel.is_cancelled() {
            return Err(PassError::Interrupted);
        }
        Ok(())
    }

    /// Commits one fenced batch and adds what it changed to the totals.
    async fn commit(&mut self, batch: &SyncBatch) -> Result<(), PassError> {
        let s = self
            .run
            .ctx
            .store
            .commit_batch(self.run.lease, batch)
            .await?;
        self.totals.add(&s);
        events::BatchCommitted {
            added: s.added,
            deleted: s.deleted,
            label_changes: s.label_changes,
        }
        .emit();
        if batch.checkpoint.success {
            self.run.succeeded();
        }
        Ok(())
    }

    /// The `sync_runs` row of a pass that succeeded, counting `changes`.
    fn run_row(&self, kind: SyncKind, started: DateTime<Utc>, changes: &SyncCounts) -> SyncRunRow {
        self.run.row(
            kind,
            started,
            self.counts(changes),
            crate::domain::RunOutcome::Ok,
            None,
        )
    }

    /// Reads where the mailbox stands, then runs a full sync (first pass, a
    /// resumed listing, a requested resync) or an incremental one, falling
    /// back to a resync when the history expired.
    async fn drive(&mut self) -> Result<(), PassError> {
        let state = self.ctx().store.sync_state(self.mailbox()).await?;
        let state = state.unwrap_or_else(|| initial_state(self.lease()));
        self.run.saw(&state);
        let force_full = self.opts.force_full;
        let full_in_progress = state.full_sync_history_id.is_some();
        // The live rows reflect another scope (re-approved with new labels,
        // or never completed a listing): a scoped resync brings them to this
        // one, and commits it as applied with its final checkpoint.
        let scope_changed = state.history_id.is_some()
            && state.applied_label_scope.as_deref() != Some(self.scope.as_slice());
        let wants_full =
            force_full || state.history_id.is_none() || full_in_progress || scope_changed;
        // A requested resync of a synced mailbox that has not begun yields
        // to the budget: the mailbox keeps its incremental passes instead.
        let force_full = force_full
            && !(wants_full
                && state.history_id.is_some()
                && !full_in_progress
                && !scope_changed
                && self.postpone_resync().await);
        if force_full || state.history_id.is_none() || full_in_progress || scope_changed {
            let kind = if state.history_id.is_some() {
                SyncKind::Resync
            } else {
                SyncKind::Full
            };
            if (force_full || scope_changed) && !full_in_progress {
                events::ResyncStarted {
                    mailbox: self.mailbox(),
                    reason: if force_full {
                        "scheduled"
                    } else {
                        "label_scope_changed"
                    },
                }
                .emit();
            }
            let fresh = force_full || (scope_changed && !full_in_progress);
            // Recorded once: the span's `phase` says what the pass set out
            // to do (a second `record` would print the field twice).
            tracing::Span::current().record("phase", kind.as_str());
            return self.full_then_incremental(&state, kind, fresh).await;
        }
        tracing::Span::current().record("phase", SyncKind::Incremental.as_str());
        self.run.report.kinds.push(SyncKind::Incremental);
        let started = self.run.started;
        self.keep_watch(&state).await?;
        match self.incremental(&state, started).await {
            Err(PassError::Google(e)) if e.class == ErrorClass::HistoryExpired => {
                events::HistoryExpired {
                    mailbox: self.mailbox(),
                    history_id: state.history_id.map_or(0, HistoryId::get),
                }
                .emit();
                // Earlier chunks of this pass may have moved the checkpoint.
                let state = self
                    .ctx()
                    .store
                    .sync_state(self.mailbox())
                    .await?
                    .unwrap_or(state);
                let span = tracing::info_span!("resync", reason = "history_expired");
                self.full_then_incremental(&state, SyncKind::Resync, true)
                    .instrument(span)
                    .await
            }
            other => other.map(|_| ()),
        }
    }

    /// A full sync (or resync) followed at once by the incremental pass that
    /// catches what changed during the listing.
    async fn full_then_incremental(
        &mut self,
        state: &SyncState,
        kind: SyncKind,
        fresh: bool,
    ) -> Result<(), PassError> {
        self.run.report.kinds.push(kind);
        let state = self.full_sync(state, kind, Utc::now(), fresh).await?;
        self.run.report.kinds.push(SyncKind::Incremental);
        self.keep_watch(&state).await?;
        self.incremental(&state, Utc::now()).await.map(|_| ())
    }

    /// Turns the result of [`Pass::drive`] into the outcome: the completion
    /// event, or the failure recorded under the lease.
    async fn finish(mut self, result: Result<(), PassError>) -> SyncReport {
        let counts = self.counts(&self.totals);
        let message_gets = self
            .gmail
            .stats()
            .message_gets
            .load(std::sync::atomic::Ordering::Relaxed);
        self.run.settle(counts, message_gets);
        // A failure or a stop is recorded for the segment it ended (the
        // full listing, or the incremental replay after it); the completion
        // says what the whole pass was.
        let kind = self
            .run
            .report
            .kinds
            .last()
            .copied()
            .unwrap_or(SyncKind::Incremental);
        // A decision cancelled the pass (or came while it failed): that is
        // how it ended.
        if result.is_err()
            && let Some(stop) = self.watch.found().cloned()
        {
            self.run.stopped_by(kind, stop).await;
            return self.run.into_report();
        }
        match result {
            Ok(()) => {
                events::MailboxSyncCompleted {
                    mailbox: self.mailbox(),
                    kind: self.run.report.kind(),
                    counts: &self.run.report.counts,
                    elapsed: self.clock.elapsed(),
                }
                .emit();
                self.run.completed();
            }
            Err(PassError::Stopped(stop)) => self.run.stopped_by(kind, stop).await,
            Err(PassError::Store(StoreError::NotActive { decision, .. })) => {
                let stop = Stop {
                    decision,
                    reason: None,
                };
                self.run.stopped_by(kind, stop).await;
            }
            Err(PassError::Google(e)) => self.run.google_failure(kind, e).await,
            Err(PassError::Store(StoreError::LeaseLost { .. })) => {
                events::LeaseLost {
                    mailbox: self.mailbox(),
                }
                .emit();
                self.run.stopped(true);
            }
            Err(PassError::Store(e)) => {
                events::DbError {
                    operation: "sync_commit",
                    error: &e,
                }
                .emit();
                let error = format!("database: {e}");
                self.run
                    .fail(kind, Failure::error(ErrorType::Database, error))
                    .await;
            }
            Err(PassError::Incomplete(msg)) => {
                self.run
                    .fail(kind, Failure::error(ErrorType::Incomplete, msg))
                    .await;
            }
            Err(PassError::Interrupted) => self.run.stopped(false),
            Err(PassError::Paced { until, reason }) => {
                self.run.paced(kind, until, reason).await;
            }
        }
        self.run.into_report()
    }
}

/// The state of a mailbox never synced (the row is normally created by the claim).
fn initial_state(lease: &Lease) -> SyncState {
    SyncState {
        lease_owner: Some(lease.owner.clone()),
        lease_epoch: lease.epoch,
        lease_expires_at: Some(lease.expires_at),
        ..SyncState::never_synced(lease.mailbox.clone(), Utc::now())
    }
}

/// An empty batch carrying `state` as its checkpoint.
fn empty_batch(state: &SyncState, success: bool) -> SyncBatch {
    SyncBatch::new(checkpoint(state, success))
}

fn checkpoint(state: &SyncState, success: bool) -> Checkpoint {
    Checkpoint {
        phase: state.phase,
        history_id: state.history_id,
        page_token: state.page_token.clone(),
        full_sync_history_id: state.full_sync_history_id,
        full_sync_generation: state.full_sync_generation,
        applied_label_scope: state.applied_label_scope.clone(),
        success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_named_by_its_listing_not_by_the_replay_after_it() {
        use SyncKind::{Full, Incremental, Resync};
        assert_eq!(pass_kind(&[Full, Incremental]), Full);
        assert_eq!(pass_kind(&[Incremental, Resync, Incremental]), Resync);
        assert_eq!(pass_kind(&[Incremental]), Incremental);
        assert_eq!(pass_kind(&[]), Incremental);
    }
}
