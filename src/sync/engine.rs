//! Full sync, incremental sync and resync-on-expiry for one mailbox.
//!
//! The engine reaches Google only through [`MailboxGmail`] and the database
//! only through [`Store`](crate::store::Store)'s fenced writes, so every checkpoint it moves is
//! covered by a lease and committed in the same transaction as the rows it
//! vouches for. Invariants:
//!
//! - `sync_state.history_id` never moves ahead of committed data: the new
//!   historyId of an incremental pass is written with the pass's last batch,
//!   and a full sync stores the historyId read *before* listing only when the
//!   listing is complete.
//! - The full-sync page token only advances past a page once every message of
//!   that page is stored, so a restart resumes without refetching and without
//!   skipping.
//! - A message is fetched once: IDs already stored are never fetched again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::domain::{AuthMode, GmailMessageId, HistoryId, MailboxAddress, RunOutcome, SyncPhase};
pub use crate::domain::{SyncCounts, SyncKind};
use crate::events;
use crate::google::error::{ErrorClass, GoogleError};
use crate::google::gmail::{CallStats, FetchedMessage, MailboxGmail};
use crate::store::{
    Checkpoint, FailureRecord, LabelChange, LabelRow, Lease, MessageUpsert, StoreError, SyncBatch,
    SyncRunRow, SyncState,
};
pub use crate::sync::context::SyncContext;
use crate::sync::gate::{self, GateDecision};
use crate::sync::normalize::{self, NormalizeLimits};

/// Page size for message listings (Gmail's maximum).
const LIST_PAGE_SIZE: u32 = 500;
/// After this many failed passes in a row, a message that still cannot be
/// fetched is stored as a placeholder row (`parse_error` starting with
/// `store::UNFETCHED_PREFIX`) so the rest of the mailbox moves on; the
/// placeholder is refetched at the start of every later pass.
const GIVE_UP_AFTER_FAILURES: i64 = 3;
/// Messages bigger than this are normalized on a blocking thread.
const BLOCKING_NORMALIZE_BYTES: usize = 1 << 20;

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
}

impl ErrorType {
    /// The telemetry label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Google(class) => class.as_str(),
            ErrorType::Database => "database",
            ErrorType::Directory => "directory",
            ErrorType::Incomplete => "incomplete",
        }
    }
}

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
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
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
}

/// Progress of a long full sync, for terminals.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub listed: u64,
    pub fetched: u64,
    pub estimated_total: u64,
}

pub type ProgressFn = Arc<dyn Fn(&MailboxAddress, Progress) + Send + Sync>;

/// Options of one pass.
#[derive(Clone, Default)]
pub struct PassOptions {
    /// Start a reconciliation full sync even if history is available.
    pub force_full: bool,
    pub progress: Option<ProgressFn>,
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
}

#[derive(Default)]
struct Totals {
    stats: SyncCounts,
}

impl Totals {
    fn add(&mut self, s: &SyncCounts) {
        self.stats.add(s);
        events::BatchCommitted {
            added: s.added,
            deleted: s.deleted,
            label_changes: s.label_changes,
        }
        .emit();
    }
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
    let mailbox = lease.mailbox.clone();
    let stats = Arc::new(CallStats::default());
    let mut report = SyncReport {
        mailbox: mailbox.clone(),
        kinds: Vec::new(),
        counts: SyncCounts::default(),
        message_gets: 0,
        outcome: Outcome::Ok,
    };
    let started = Utc::now();
    let clock = Instant::now();

    // The approved-OU gate runs before any impersonation, on every pass. A
    // mailbox authorized by its owner's consent is not impersonated: the
    // gate is the consent itself (and the allowed domains, checked again).
    let checked: Result<(AuthMode, GateDecision), (ErrorType, String)> = async {
        let sub = ctx.store.get_subscription(&mailbox).await.map_err(|e| {
            (
                ErrorType::Database,
                format!("reading the subscription: {e}"),
            )
        })?;
        let mode = sub.as_ref().map_or(AuthMode::Delegated, |s| s.auth_mode);
        let decision = match mode {
            AuthMode::Delegated => gate::check_subscription(ctx, &mailbox, sub.as_ref())
                .await
                .map_err(|e| {
                    (
                        ErrorType::Directory,
                        format!("org-unit check failed: {e:#}"),
                    )
                })?,
            AuthMode::OAuth => gate::evaluate_consented(&ctx.policy, &mailbox),
        };
        Ok((mode, decision))
    }
    .await;
    let auth_mode = match checked {
        Ok((mode, GateDecision::Allowed)) => mode,
        Ok((_, GateDecision::Refused(reason))) => {
            report.outcome = Outcome::Suspended { reason };
            return report;
        }
        Err((error_type, error)) => {
            fail(
                ctx,
                lease,
                &mut report,
                SyncKind::Incremental,
                started,
                SyncPhase::Error,
                error_type,
                error,
                None,
            )
            .await;
            return report;
        }
    };

    let gmail = match auth_mode {
        AuthMode::Delegated => ctx.google.gmail(&mailbox, stats.clone()).await,
        AuthMode::OAuth => match &ctx.oauth {
            Some(o) => Ok(ctx
                .google
                .gmail_oauth(&mailbox, o.tokens().clone(), stats.clone())),
            None => Err(GoogleError::new(
                ErrorClass::Fatal,
                crate::google::auth::TOKEN_METHOD,
                "an OAuth subscription, but oauth.enabled is false",
            )),
        },
    };
    let gmail = match gmail {
        Ok(g) => g,
        Err(e) => {
            handle_google_failure(ctx, lease, &mut report, SyncKind::Incremental, started, e).await;
            return report;
        }
    };

    let mut totals = Totals::default();
    let result = drive(
        ctx,
        lease,
        &gmail,
        opts,
        cancel,
        &mut report,
        &mut totals,
        started,
    )
    .await;
    report.counts = SyncCounts {
        api_calls: stats.calls(),
        quota_units: stats.units(),
        ..totals.stats
    };
    report.message_gets = stats
        .message_gets
        .load(std::sync::atomic::Ordering::Relaxed);
    let kind = report
        .kinds
        .last()
        .copied()
        .unwrap_or(SyncKind::Incremental);
    match result {
        Ok(()) => {
            events::MailboxSyncCompleted {
                mailbox: &mailbox,
                kind,
                counts: &report.counts,
                elapsed: clock.elapsed(),
            }
            .emit();
        }
        Err(PassError::Google(e)) => {
            handle_google_failure(ctx, lease, &mut report, kind, started, e).await;
        }
        Err(PassError::Store(StoreError::LeaseLost { .. })) => {
            events::LeaseLost { mailbox: &mailbox }.emit();
            report.outcome = Outcome::LeaseLost;
        }
        Err(PassError::Store(e)) => {
            events::DbError {
                operation: "sync_commit",
                error: &e,
            }
            .emit();
            let error = format!("database: {e}");
            fail(
                ctx,
                lease,
                &mut report,
                kind,
                started,
                SyncPhase::Error,
                ErrorType::Database,
                error,
                None,
            )
            .await;
        }
        Err(PassError::Incomplete(msg)) => {
            fail(
                ctx,
                lease,
                &mut report,
                kind,
                started,
                SyncPhase::Error,
                ErrorType::Incomplete,
                msg,
                None,
            )
            .await;
        }
        Err(PassError::Interrupted) => {
            report.outcome = Outcome::Interrupted;
        }
    }
    report
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    ctx: &SyncContext,
    lease: &Lease,
    gmail: &MailboxGmail,
    opts: &PassOptions,
    cancel: &CancellationToken,
    report: &mut SyncReport,
    totals: &mut Totals,
    started: chrono::DateTime<Utc>,
) -> Result<(), PassError> {
    let state = ctx.store.sync_state(&lease.mailbox).await?;
    let state = state.unwrap_or_else(|| initial_state(lease));
    let full_in_progress = state.full_sync_history_id.is_some();
    let needs_full = opts.force_full || state.history_id.is_none() || full_in_progress;
    if needs_full {
        let kind = if state.history_id.is_some() {
            SyncKind::Resync
        } else {
            SyncKind::Full
        };
        if opts.force_full && !full_in_progress {
            events::ResyncStarted {
                mailbox: &lease.mailbox,
                reason: "scheduled",
            }
            .emit();
        }
        return full_then_incremental(
            ctx,
            lease,
            gmail,
            &state,
            kind,
            opts,
            cancel,
            totals,
            report,
            opts.force_full,
        )
        .await;
    }
    report.kinds.push(SyncKind::Incremental);
    match incremental(ctx, lease, gmail, &state, cancel, totals, started).await {
        Err(PassError::Google(e)) if e.class == ErrorClass::HistoryExpired => {
            let hid = state.history_id.map_or(0, HistoryId::get);
            events::HistoryExpired {
                mailbox: &lease.mailbox,
                history_id: hid,
            }
            .emit();
            full_then_incremental(
                ctx,
                lease,
                gmail,
                &state,
                SyncKind::Resync,
                opts,
                cancel,
                totals,
                report,
                true,
            )
            .await
        }
        other => other.map(|_| ()),
    }
}

/// A full sync (or resync) followed at once by the incremental pass that
/// catches what changed during the listing.
#[allow(clippy::too_many_arguments)]
async fn full_then_incremental(
    ctx: &SyncContext,
    lease: &Lease,
    gmail: &MailboxGmail,
    state: &SyncState,
    kind: SyncKind,
    opts: &PassOptions,
    cancel: &CancellationToken,
    totals: &mut Totals,
    report: &mut SyncReport,
    fresh: bool,
) -> Result<(), PassError> {
    report.kinds.push(kind);
    let state = full_sync(
        ctx,
        lease,
        gmail,
        state,
        kind,
        opts,
        cancel,
        totals,
        Utc::now(),
        fresh,
    )
    .await?;
    report.kinds.push(SyncKind::Incremental);
    incremental(ctx, lease, gmail, &state, cancel, totals, Utc::now())
        .await
        .map(|_| ())
}

#[allow(clippy::too_many_arguments)]
fn run_row(
    ctx: &SyncContext,
    lease: &Lease,
    kind: SyncKind,
    started: chrono::DateTime<Utc>,
    stats: &SyncCounts,
    gmail: &MailboxGmail,
    outcome: RunOutcome,
    error: Option<String>,
) -> SyncRunRow {
    SyncRunRow {
        mailbox: lease.mailbox.clone(),
        kind,
        replica: ctx.replica.clone(),
        started_at: started,
        finished_at: Utc::now(),
        counts: SyncCounts {
            api_calls: gmail.stats().calls(),
            quota_units: gmail.stats().units(),
            ..*stats
        },
        outcome,
        error,
    }
}

/// Fetches and normalizes messages concurrently (bounded by the mailbox's
/// in-flight cap, which the quota limiter also enforces). 404s are dropped:
/// the message was deleted since it was listed. Other failures are returned
/// beside the successes so one bad message does not stop the page.
/// Shutdown drops the in-flight fetches (nothing was written for them yet).
async fn fetch_many(
    ctx: &SyncContext,
    gmail: &MailboxGmail,
    ids: Vec<GmailMessageId>,
    cancel: &CancellationToken,
) -> Result<(Vec<MessageUpsert>, Vec<(GmailMessageId, GoogleError)>), PassError> {
    let concurrency = ctx.settings.sync.per_mailbox_concurrency.max(1);
    let limits = ctx.limits();
    let store_raw = ctx.settings.sync.store_raw;
    let fetches = futures::stream::iter(ids)
        .map(|id| async move {
            let r = gmail.get_message(&id).await;
            (id, r)
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<(GmailMessageId, Result<FetchedMessage, GoogleError>)>>();
    let results = tokio::select! {
        r = fetches => r,
        () = cancel.cancelled() => return Err(PassError::Interrupted),
    };
    let mut ok = Vec::with_capacity(results.len());
    let mut failed = Vec::new();
    for (id, r) in results {
        match r {
            Ok(m) => ok.push(to_upsert(m, &limits, store_raw).await),
            Err(e) if e.class == ErrorClass::NotFound => {}
            Err(e) => failed.push((id, e)),
        }
    }
    Ok((ok, failed))
}

/// The placeholder row of a message that could not be fetched.
fn placeholder(
    id: &GmailMessageId,
    thread_id: Option<String>,
    history_id: HistoryId,
    e: &GoogleError,
) -> MessageUpsert {
    MessageUpsert {
        meta: crate::domain::GmailMessageMeta {
            gmail_id: id.clone(),
            thread_id: thread_id.unwrap_or_default(),
            history_id,
            internal_date_ms: 0,
            size_estimate: 0,
            snippet: None,
            label_ids: Vec::new(),
        },
        content: crate::domain::NormalizedMessage {
            parse_error: Some(format!("{}{e}", crate::store::UNFETCHED_PREFIX)),
            ..Default::default()
        },
        raw: None,
    }
}

/// Refetches placeholder rows left by earlier passes; what still fails stays
/// a placeholder. Runs with the current checkpoint unchanged.
async fn retry_placeholders(
    ctx: &SyncContext,
    lease: &Lease,
    gmail: &MailboxGmail,
    state: &SyncState,
    totals: &mut Totals,
    cancel: &CancellationToken,
) -> Result<(), PassError> {
    let ids = ctx.store.unfetched_message_ids(&lease.mailbox, 500).await?;
    if ids.is_empty() {
        return Ok(());
    }
    let (upserts, failed) = fetch_many(ctx, gmail, ids, cancel).await?;
    if let Some((_, e)) = failed
        .iter()
        .find(|(_, e)| e.class == ErrorClass::AuthRevoked)
    {
        return Err(PassError::Google(e.clone()));
    }
    if !upserts.is_empty() {
        let batch = SyncBatch {
            upserts,
            ..empty_batch(state, false)
        };
        totals.add(&ctx.store.commit_batch(lease, &batch).await?);
    }
    Ok(())
}

async fn to_upsert(m: FetchedMessage, limits: &NormalizeLimits, store_raw: bool) -> MessageUpsert {
    let FetchedMessage { meta, raw, payload } = m;
    let content = match (&raw, payload) {
        (Some(bytes), _) if bytes.len() > BLOCKING_NORMALIZE_BYTES => {
            let bytes = bytes.clone();
            let limits = *limits;
            tokio::task::spawn_blocking(move || normalize::normalize(&bytes, &limits))
                .await
                .unwrap_or_else(|e| crate::domain::NormalizedMessage {
                    parse_error: Some(format!("normalizer task failed: {e}")),
                    ..Default::default()
                })
        }
        (Some(bytes), _) => normalize::normalize(bytes, limits),
        (None, Some(part)) => normalize::normalize_payload(&part, limits),
        (None, None) => crate::domain::NormalizedMessage {
            parse_error: Some("Gmail returned no content for the message".to_owned()),
            ..Default::default()
        },
    };
    MessageUpsert {
        meta,
        content,
        raw: if store_raw { raw } else { None },
    }
}

/// Full sync (or resync): resumable from the stored page token.
#[allow(clippy::too_many_arguments)]
async fn full_sync(
    ctx: &SyncContext,
    lease: &Lease,
    gmail: &MailboxGmail,
    state: &SyncState,
    kind: SyncKind,
    opts: &PassOptions,
    cancel: &CancellationToken,
    totals: &mut Totals,
    started: chrono::DateTime<Utc>,
    fresh: bool,
) -> Result<SyncState, PassError> {
    tracing::Span::current().record("phase", kind.as_str());
    let mut state = state.clone();
    let batch_size = ctx.settings.sync.batch_size;
    let give_up = state.consecutive_failures >= GIVE_UP_AFTER_FAILURES;

    // Start (or restart) the full sync: read the historyId first so whatever
    // changes during the listing is caught by the incremental pass after it.
    let mut estimated_total = None;
    if state.full_sync_history_id.is_none() || fresh {
        let profile = gmail.get_profile().await?;
        estimated_total = Some(profile.messages_total.max(0) as u64);
        let labels = gmail.list_labels().await?;
        state.full_sync_history_id = Some(profile.history_id);
        state.full_sync_generation += 1;
        state.page_token = None;
        state.phase = SyncPhase::FullSync;
        let batch = SyncBatch {
            labels: Some(
                labels
                    .into_iter()
                    .map(|l| LabelRow {
                        label_id: l.id,
                        name: l.name,
                        label_type: l.label_type,
                    })
                    .collect(),
            ),
            ..empty_batch(&state, false)
        };
        totals.add(&ctx.store.commit_batch(lease, &batch).await?);
    }
    // A resumed full sync asks for the size only when someone shows progress.
    if estimated_total.is_none() && opts.progress.is_some() {
        estimated_total = gmail
            .get_profile()
            .await
            .ok()
            .map(|p| p.messages_total.max(0) as u64);
    }
    let mut progress = Progress {
        listed: 0,
        fetched: 0,
        estimated_total: estimated_total.unwrap_or(0),
    };
    // The token of the first page that still misses a message: the resume point.
    let mut resume_from: Option<Option<String>> = None;
    let mut failures: Vec<String> = Vec::new();
    let mut page_token = state.page_token.clone();

    loop {
        if cancel.is_cancelled() {
            return Err(PassError::Interrupted);
        }
        let page = gmail
            .list_message_ids(page_token.as_deref(), None, LIST_PAGE_SIZE)
            .await?;
        progress.listed += page.messages.len() as u64;
        let ids: Vec<GmailMessageId> = page.messages.iter().map(|m| m.id.clone()).collect();
        let known = ctx.store.known_message_ids(&lease.mailbox, &ids).await?;
        let new: Vec<GmailMessageId> = ids
            .iter()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();

        let mut page_failed = false;
        let chunks: Vec<Vec<GmailMessageId>> =
            new.chunks(batch_size.max(1)).map(<[_]>::to_vec).collect();
        let n_chunks = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let (mut upserts, failed) = fetch_many(ctx, gmail, chunk, cancel).await?;
            for (id, e) in failed {
                if e.class == ErrorClass::AuthRevoked {
                    return Err(PassError::Google(e));
                }
                if give_up {
                    let thread = page
                        .messages
                        .iter()
                        .find(|m| m.id == id)
                        .map(|m| m.thread_id.clone());
                    let hid = state.full_sync_history_id.unwrap_or(HistoryId::ZERO);
                    upserts.push(placeholder(&id, thread, hid, &e));
                } else {
                    failures.push(format!("{id}: {e}"));
                    page_failed = true;
                }
            }
            progress.fetched += upserts.len() as u64;
            let last_chunk = i + 1 == n_chunks;
            let mut batch = SyncBatch {
                upserts,
                ..empty_batch(&state, false)
            };
            if last_chunk {
                batch.mark_seen = ids.clone();
            }
            // The page token moves past this page only with its last chunk,
            // and never past a page that still misses a message.
            if last_chunk {
                if page_failed && resume_from.is_none() {
                    resume_from = Some(page_token.clone());
                }
                state.page_token = match &resume_from {
                    Some(t) => t.clone(),
                    None => page.next_page_token.clone(),
                };
            }
            batch.checkpoint = checkpoint(&state, false);
            totals.add(&ctx.store.commit_batch(lease, &batch).await?);
            if let Some(p) = &opts.progress {
                p(&lease.mailbox, progress);
            }
            if cancel.is_cancelled() {
                return Err(PassError::Interrupted);
            }
        }
        if n_chunks == 0 {
            // Nothing new on this page: mark it seen and advance.
            if resume_from.is_none() {
                state.page_token = page.next_page_token.clone();
            }
            let batch = SyncBatch {
                mark_seen: ids,
                ..empty_batch(&state, false)
            };
            totals.add(&ctx.store.commit_batch(lease, &batch).await?);
            if let Some(p) = &opts.progress {
                p(&lease.mailbox, progress);
            }
        }
        match page.next_page_token {
            Some(t) => page_token = Some(t),
            None => break,
        }
    }

    if !failures.is_empty() {
        let n = failures.len();
        let first = failures.into_iter().next().unwrap_or_default();
        return Err(PassError::Incomplete(format!(
            "{n} message(s) could not be fetched and will be retried (first: {first})"
        )));
    }

    // Label membership of messages we already had: one listing per label
    // (5 units per 500 IDs) instead of a messages.get per message.
    if kind == SyncKind::Resync {
        let labels = gmail.list_labels().await?;
        for label in labels {
            if cancel.is_cancelled() {
                return Err(PassError::Interrupted);
            }
            let mut members = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = gmail
                    .list_message_ids(token.as_deref(), Some(&label.id), LIST_PAGE_SIZE)
                    .await?;
                members.extend(page.messages.into_iter().map(|m| m.id));
                match page.next_page_token {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            let batch = SyncBatch {
                label_reconcile: Some((label.id.clone(), members)),
                ..empty_batch(&state, false)
            };
            totals.add(&ctx.store.commit_batch(lease, &batch).await?);
        }
    }

    // Listing complete: what was not seen is gone; adopt the starting historyId.
    state.history_id = state.full_sync_history_id.take();
    state.page_token = None;
    state.phase = SyncPhase::Incremental;
    let batch = SyncBatch {
        delete_unseen: true,
        run: Some(run_row(
            ctx,
            lease,
            kind,
            started,
            &totals.stats,
            gmail,
            RunOutcome::Ok,
            None,
        )),
        ..empty_batch(&state, true)
    };
    totals.add(&ctx.store.commit_batch(lease, &batch).await?);
    Ok(state)
}

/// The state of a mailbox never synced (the row is normally created by the claim).
fn initial_state(lease: &Lease) -> SyncState {
    SyncState {
        mailbox: lease.mailbox.clone(),
        phase: SyncPhase::Initial,
        history_id: None,
        page_token: None,
        full_sync_history_id: None,
        full_sync_generation: 0,
        last_success_at: None,
        next_poll_at: None,
        consecutive_failures: 0,
        last_error: None,
        lease_owner: Some(lease.owner.clone()),
        lease_epoch: lease.epoch,
        lease_expires_at: Some(lease.expires_at),
        updated_at: Utc::now(),
    }
}

/// An empty batch carrying `state` as its checkpoint.
fn empty_batch(state: &SyncState, success: bool) -> SyncBatch {
    SyncBatch {
        upserts: Vec::new(),
        deletes: Vec::new(),
        label_changes: Vec::new(),
        label_reconcile: None,
        mark_seen: Vec::new(),
        delete_unseen: false,
        labels: None,
        checkpoint: checkpoint(state, success),
        run: None,
    }
}

fn checkpoint(state: &SyncState, success: bool) -> Checkpoint {
    Checkpoint {
        phase: state.phase,
        history_id: state.history_id,
        page_token: state.page_token.clone(),
        full_sync_history_id: state.full_sync_history_id,
        full_sync_generation: state.full_sync_generation,
        success,
    }
}

/// The net effect of a run of history records.
#[derive(Default, Debug)]
struct Collapsed {
    /// Messages to fetch, in first-seen order.
    added: Vec<GmailMessageId>,
    deleted: BTreeSet<GmailMessageId>,
    /// Net label delta per message: label -> true (present at the end) / false (absent).
    labels: HashMap<GmailMessageId, BTreeMap<String, bool>>,
}

impl Collapsed {
    fn apply(&mut self, rec: crate::google::gmail::HistoryRecord) {
        for (id, _) in rec.added {
            if !self.deleted.contains(&id) && !self.added.contains(&id) {
                self.added.push(id);
            }
        }
        for (id, labels) in rec.labels_added {
            let e = self.labels.entry(id).or_default();
            for l in labels {
                e.insert(l, true);
            }
        }
        for (id, labels) in rec.labels_removed {
            let e = self.labels.entry(id).or_default();
            for l in labels {
                e.insert(l, false);
            }
        }
        for id in rec.deleted {
            self.deleted.insert(id);
        }
    }
}

/// Incremental pass from the stored historyId over all history pages.
#[allow(clippy::too_many_arguments)]
async fn incremental(
    ctx: &SyncContext,
    lease: &Lease,
    gmail: &MailboxGmail,
    state: &SyncState,
    cancel: &CancellationToken,
    totals: &mut Totals,
    started: chrono::DateTime<Utc>,
) -> Result<SyncState, PassError> {
    tracing::Span::current().record("phase", "incremental");
    let Some(start) = state.history_id else {
        return Err(PassError::Incomplete(
            "no history position to continue from".to_owned(),
        ));
    };
    retry_placeholders(ctx, lease, gmail, state, totals, cancel).await?;
    let mut collapsed = Collapsed::default();
    let mut token: Option<String> = None;
    let mut newest = start;
    loop {
        if cancel.is_cancelled() {
            return Err(PassError::Interrupted);
        }
        let page = gmail.list_history(start, token.as_deref()).await?;
        for rec in page.records {
            if let Some(id) = rec.id {
                newest = newest.max(id);
            }
            collapsed.apply(rec);
        }
        if let Some(h) = page.history_id {
            newest = newest.max(h);
        }
        // An empty page that carries a token is not the end.
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }

    // Fetch what was added and is not deleted since and not stored already.
    let candidates: Vec<GmailMessageId> = collapsed
        .added
        .iter()
        .filter(|id| !collapsed.deleted.contains(*id))
        .cloned()
        .collect();
    let known = ctx
        .store
        .known_message_ids(&lease.mailbox, &candidates)
        .await?;
    let to_fetch: Vec<GmailMessageId> = candidates
        .into_iter()
        .filter(|id| !known.contains(id))
        .collect();

    let mut state = state.clone();
    let batch_size = ctx.settings.sync.batch_size.max(1);
    let give_up = state.consecutive_failures >= GIVE_UP_AFTER_FAILURES;
    let chunks: Vec<Vec<GmailMessageId>> = to_fetch.chunks(batch_size).map(<[_]>::to_vec).collect();
    let mut failures = Vec::new();
    let mut fetched: BTreeSet<GmailMessageId> = BTreeSet::new();
    for chunk in chunks {
        let (mut upserts, failed) = fetch_many(ctx, gmail, chunk, cancel).await?;
        for (id, e) in failed {
            if e.class == ErrorClass::AuthRevoked {
                return Err(PassError::Google(e));
            }
            if give_up {
                upserts.push(placeholder(&id, None, newest, &e));
            } else {
                failures.push(format!("{id}: {e}"));
            }
        }
        for u in &mut upserts {
            fetched.insert(u.meta.gmail_id.clone());
            // The fetched labels already reflect the history's net delta up to
            // the fetch; apply it anyway (idempotent) for what came between.
            if let Some(delta) = collapsed.labels.get(&u.meta.gmail_id) {
                apply_delta(&mut u.meta.label_ids, delta);
            }
        }
        // Intermediate batches keep the old checkpoint: upserts are idempotent
        // and already-stored IDs are skipped on a retry.
        let batch = SyncBatch {
            upserts,
            ..empty_batch(&state, false)
        };
        totals.add(&ctx.store.commit_batch(lease, &batch).await?);
        if cancel.is_cancelled() {
            return Err(PassError::Interrupted);
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        let first = failures.into_iter().next().unwrap_or_default();
        return Err(PassError::Incomplete(format!(
            "{n} message(s) could not be fetched and will be retried (first: {first})"
        )));
    }

    let label_changes: Vec<LabelChange> = collapsed
        .labels
        .iter()
        .filter(|(id, _)| !fetched.contains(*id) && !collapsed.deleted.contains(*id))
        .map(|(id, delta)| LabelChange {
            gmail_id: id.clone(),
            added: delta
                .iter()
                .filter(|(_, on)| **on)
                .map(|(l, _)| l.clone())
                .collect(),
            removed: delta
                .iter()
                .filter(|(_, on)| !**on)
                .map(|(l, _)| l.clone())
                .collect(),
            history_id: Some(newest),
        })
        .collect();
    let deletes: Vec<(GmailMessageId, Option<HistoryId>)> = collapsed
        .deleted
        .iter()
        .map(|id| (id.clone(), Some(newest)))
        .collect();

    state.history_id = Some(newest);
    state.phase = SyncPhase::Incremental;
    let mut batch = SyncBatch {
        deletes,
        label_changes,
        ..empty_batch(&state, true)
    };
    // The run row counts this batch too; it is written in the same transaction.
    let pending = SyncCounts {
        deleted: totals.stats.deleted + batch.deletes.len() as u64,
        ..totals.stats
    };
    batch.run = Some(run_row(
        ctx,
        lease,
        SyncKind::Incremental,
        started,
        &pending,
        gmail,
        RunOutcome::Ok,
        None,
    ));
    totals.add(&ctx.store.commit_batch(lease, &batch).await?);
    Ok(state)
}

fn apply_delta(labels: &mut Vec<String>, delta: &BTreeMap<String, bool>) {
    for (label, present) in delta {
        let has = labels.iter().any(|l| l == label);
        match (present, has) {
            (true, false) => labels.push(label.clone()),
            (false, true) => labels.retain(|l| l != label),
            _ => {}
        }
    }
}

async fn handle_google_failure(
    ctx: &SyncContext,
    lease: &Lease,
    report: &mut SyncReport,
    kind: SyncKind,
    started: chrono::DateTime<Utc>,
    e: GoogleError,
) {
    if e.class == ErrorClass::AuthRevoked {
        events::AuthRevoked {
            mailbox: &lease.mailbox,
            cause: e.auth_cause,
            error: &e,
        }
        .emit();
        let cause = match e.auth_cause {
            Some(c) => format!("{} ({})", c.remedy(), e),
            None => e.to_string(),
        };
        fail(
            ctx,
            lease,
            report,
            kind,
            started,
            SyncPhase::AuthFailed,
            ErrorType::Google(ErrorClass::AuthRevoked),
            cause.clone(),
            Some(ctx.settings.sync.auth_failed_retry),
        )
        .await;
        report.outcome = Outcome::AuthFailed { cause };
        ctx.google.forget(&lease.mailbox);
        return;
    }
    let error_type = ErrorType::Google(e.class);
    fail(
        ctx,
        lease,
        report,
        kind,
        started,
        SyncPhase::Error,
        error_type,
        e.to_string(),
        None,
    )
    .await;
}

/// Records a failed pass (fenced) and sets the outcome.
#[allow(clippy::too_many_arguments)]
async fn fail(
    ctx: &SyncContext,
    lease: &Lease,
    report: &mut SyncReport,
    kind: SyncKind,
    started: chrono::DateTime<Utc>,
    phase: SyncPhase,
    error_type: ErrorType,
    error: String,
    retry_after: Option<Duration>,
) {
    let failures = ctx
        .store
        .sync_state(&lease.mailbox)
        .await
        .ok()
        .flatten()
        .map_or(0, |s| s.consecutive_failures);
    let delay =
        retry_after.unwrap_or_else(|| failure_backoff(ctx.settings.sync.poll_interval, failures));
    let record = FailureRecord {
        phase,
        error: error.clone(),
        next_poll_at: Utc::now()
            + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::minutes(30)),
        run: Some(SyncRunRow {
            mailbox: lease.mailbox.clone(),
            kind,
            replica: ctx.replica.clone(),
            started_at: started,
            finished_at: Utc::now(),
            counts: report.counts,
            outcome: if phase == SyncPhase::AuthFailed {
                RunOutcome::AuthFailed
            } else {
                RunOutcome::Error
            },
            error: Some(error.clone()),
        }),
    };
    let anyhow_err = anyhow::anyhow!(error.clone());
    events::MailboxSyncFailed {
        mailbox: &lease.mailbox,
        kind,
        error_type: error_type.as_str(),
        error: &anyhow_err,
    }
    .emit();
    match ctx.store.record_failure(lease, &record).await {
        Ok(()) => {}
        Err(StoreError::LeaseLost { .. }) => {
            events::LeaseLost {
                mailbox: &lease.mailbox,
            }
            .emit();
            report.outcome = Outcome::LeaseLost;
            return;
        }
        Err(e) => events::DbError {
            operation: "record_failure",
            error: &e,
        }
        .emit(),
    }
    report.outcome = Outcome::Failed { error_type, error };
}

/// Retry delay after `failures` consecutive failures: the poll interval
/// doubled per failure, capped at one hour.
pub fn failure_backoff(poll: Duration, failures: i64) -> Duration {
    let factor = 1u32 << failures.clamp(0, 6) as u32;
    (poll * factor).min(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::gmail::HistoryRecord;

    fn id(s: &str) -> GmailMessageId {
        GmailMessageId::parse(s).unwrap()
    }

    #[test]
    fn collapsing_keeps_the_net_effect() {
        let mut c = Collapsed::default();
        c.apply(HistoryRecord {
            added: vec![(id("a1"), vec![])],
            ..Default::default()
        });
        c.apply(HistoryRecord {
            added: vec![(id("b2"), vec![])],
            ..Default::default()
        });
        c.apply(HistoryRecord {
            labels_added: vec![(id("c3"), vec!["STARRED".into()])],
            ..Default::default()
        });
        c.apply(HistoryRecord {
            labels_removed: vec![(id("c3"), vec!["STARRED".into(), "INBOX".into()])],
            ..Default::default()
        });
        c.apply(HistoryRecord {
            deleted: vec![id("b2")],
            ..Default::default()
        });
        assert_eq!(c.added, vec![id("a1"), id("b2")]);
        assert!(c.deleted.contains(&id("b2")));
        let delta = &c.labels[&id("c3")];
        assert_eq!(delta.get("STARRED"), Some(&false));
        assert_eq!(delta.get("INBOX"), Some(&false));
    }

    #[test]
    fn label_deltas_are_idempotent() {
        let mut labels = vec!["INBOX".to_owned(), "UNREAD".to_owned()];
        let delta: BTreeMap<String, bool> =
            [("UNREAD".to_owned(), false), ("STARRED".to_owned(), true)]
                .into_iter()
                .collect();
        apply_delta(&mut labels, &delta);
        let once = labels.clone();
        apply_delta(&mut labels, &delta);
        assert_eq!(labels, once);
        assert_eq!(labels, vec!["INBOX".to_owned(), "STARRED".to_owned()]);
    }

    #[test]
    fn failure_backoff_doubles_and_caps() {
        let p = Duration::from_secs(60);
        assert_eq!(failure_backoff(p, 0), p);
        assert_eq!(failure_backoff(p, 2), p * 4);
        assert_eq!(failure_backoff(p, 50), Duration::from_secs(3600));
    }
}
