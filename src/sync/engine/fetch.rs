//! Fetching messages: the one fetch-with-give-up policy shared by full and
//! incremental sync, the batches fetched messages are stored in, the
//! placeholders it leaves, and their refetch.
//!
//! A message that cannot be fetched, or whose row the database refuses
//! (too long for it, a constraint, a trigger), fails the pass (so it is
//! retried) until the mailbox has failed [`GIVE_UP_AFTER_FAILURES`] passes in
//! a row; then it is stored as a placeholder so the rest of the mailbox moves
//! on. Fetched messages are stored as they arrive, in batches cut at
//! `sync.batch_size` messages or `sync.batch_max_bytes` bytes, whichever
//! comes first, and every message waits for its bytes from the replica's
//! budget (`sync.memory_budget_bytes`) before it joins a batch; a pass that
//! cannot get them commits what it holds first, so no pass waits while
//! holding any. This module never moves a checkpoint: every batch it
//! commits carries the checkpoint its caller holds, and the caller moves it.

use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::{Pass, PassError, empty_batch};
use crate::domain::{GmailMessageId, HistoryId};
use crate::events;
use crate::google::error::ErrorClass;
use crate::google::gmail::FetchedMessage;
use crate::store::{MessageUpsert, StoreError, SyncBatch, SyncState};
use crate::sync::context::BUDGET_UNIT_BYTES;
use gmail_normalize::{self as normalize, NormalizeLimits};

/// After this many failed passes in a row, a message that still cannot be
/// fetched (or stored) is stored as a placeholder row (`parse_error` starting
/// with `store::UNFETCHED_PREFIX`) so the rest of the mailbox moves on; the
/// placeholder is refetched at the start of every later pass.
const GIVE_UP_AFTER_FAILURES: i64 = 3;
/// Messages bigger than this are normalized on a blocking thread.
const BLOCKING_NORMALIZE_BYTES: usize = 1 << 20;
/// Placeholders refetched at the start of one pass, at most.
const PLACEHOLDER_RETRY_LIMIT: u32 = 500;

/// What to do with a message that cannot be fetched or stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnMiss {
    /// Note it: the pass is incomplete and is retried.
    Fail,
    /// The mailbox failed [`GIVE_UP_AFTER_FAILURES`] passes in a row: store
    /// a placeholder instead of failing the pass once more.
    GiveUp,
    /// It is a placeholder already (a refetch): it stays one.
    Keep,
}

/// The messages of one listing that could not be fetched (or stored) yet.
pub(super) struct Misses {
    on_miss: OnMiss,
    failures: Vec<String>,
}

impl Misses {
    /// The policy for a pass starting from `state`.
    pub(super) fn new(state: &SyncState) -> Misses {
        Misses {
            on_miss: if state.consecutive_failures >= GIVE_UP_AFTER_FAILURES {
                OnMiss::GiveUp
            } else {
                OnMiss::Fail
            },
            failures: Vec::new(),
        }
    }

    /// Ok when every message so far was stored (or given up on); otherwise
    /// the pass is incomplete and is retried.
    pub(super) fn check(&self) -> Result<(), PassError> {
        match self.failures.first() {
            None => Ok(()),
            Some(first) => Err(PassError::Incomplete(format!(
                "{} message(s) could not be fetched or stored and will be retried (first: {first})",
                self.failures.len()
            ))),
        }
    }
}

/// What [`Pass::fetch_and_store`] did.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Every message fetched (stored, or dropped by the caller's `keep`).
    pub(super) fetched: Vec<GmailMessageId>,
    /// Upserts committed, placeholders included.
    pub(super) stored: u64,
    /// A message was missed and noted in the [`Misses`]: not stored.
    pub(super) missed: bool,
}

/// Fetched messages waiting for their batch's commit, with the budget
/// permits their bytes hold.
#[derive(Default)]
struct Pending {
    upserts: Vec<MessageUpsert>,
    bytes: usize,
    permits: Vec<OwnedSemaphorePermit>,
}

impl Pass<'_> {
    /// Fetches `ids` and stores them as they arrive, in batches bounded by
    /// count and bytes, each committed with the checkpoint of `hold`
    /// (never moved here), after one read of the subscription per batch (a
    /// decision stops the pass first). `keep` sees each fetched upsert and
    /// may adjust it; false drops it. A revoked authorization stops the pass;
    /// a message that cannot be fetched, or whose row the database refuses,
    /// becomes a placeholder (in the thread and at the history position
    /// `placed` gives) once `misses` gives up, and is noted in `misses`
    /// before that. 404s are dropped: the message was deleted since it was
    /// listed. Shutdown drops the in-flight fetches (nothing was written for
    /// them yet); the pass stops after a batch boundary.
    pub(super) async fn fetch_and_store(
        &mut self,
        ids: Vec<GmailMessageId>,
        hold: &SyncState,
        misses: &mut Misses,
        placed: impl Fn(&GmailMessageId) -> (Option<String>, HistoryId),
        mut keep: impl FnMut(&mut MessageUpsert) -> bool,
    ) -> Result<Stored, PassError> {
        let mut out = Stored::default();
        if ids.is_empty() {
            return Ok(out);
        }
        self.check_standing().await?;
        let ctx = self.ctx();
        let concurrency = ctx.settings.sync.per_mailbox_concurrency.max(1);
        let batch_size = ctx.settings.sync.batch_size.max(1);
        let max_bytes = ctx.settings.sync.batch_max_bytes.max(1);
        let limits = ctx.limits();
        let store_raw = ctx.settings.sync.store_raw;
        let budget = ctx.memory_budget.clone();
        let cancel = self.cancel;
        let gmail = self.gmail.clone();
        let mut fetches = futures::stream::iter(ids)
            .map(|id| {
                let gmail = gmail.clone();
                async move {
                    let r = gmail.get_message(&id).await;
                    (id, r)
                }
            })
            .buffer_unordered(concurrency);
        let mut pending = Pending::default();
        loop {
            let next = tokio::select! {
                n = fetches.next() => n,
                () = cancel.cancelled() => return Err(PassError::Interrupted),
            };
            let Some((id, r)) = next else { break };
            let upsert = match r {
                Ok(m) => {
                    out.fetched.push(id);
                    let mut u = to_upsert(m, &limits, store_raw).await;
                    if !keep(&mut u) {
                        continue;
                    }
                    u
                }
                Err(e) if e.class == ErrorClass::NotFound => continue,
                Err(e) if e.class == ErrorClass::AuthRevoked => return Err(PassError::Google(e)),
                Err(e) => match misses.on_miss {
                    OnMiss::GiveUp => {
                        let (thread, history_id) = placed(&id);
                        placeholder(&id, thread, history_id, &e.to_string())
                    }
                    OnMiss::Fail => {
                        misses.failures.push(format!("{id}: {e}"));
                        out.missed = true;
                        continue;
                    }
                    OnMiss::Keep => continue,
                },
            };
            let bytes = upsert_bytes(&upsert);
            if !pending.upserts.is_empty()
                && (pending.upserts.len() >= batch_size || pending.bytes + bytes > max_bytes)
            {
                self.flush(&mut pending, hold, misses, &mut out).await?;
                // The next group of requests waits for the subscription's read.
                self.check_standing().await?;
            }
            // A message larger than the whole budget takes all of it.
            let units = bytes
                .div_ceil(BUDGET_UNIT_BYTES)
                .clamp(1, ctx_budget_units(self));
            let units = u32::try_from(units).unwrap_or(u32::MAX);
            let permit = match budget.clone().try_acquire_many_owned(units) {
                Ok(p) => p,
                Err(_) => {
                    // Never wait while holding any: commit what this pass holds first.
                    self.flush(&mut pending, hold, misses, &mut out).await?;
                    tokio::select! {
                        p = budget.clone().acquire_many_owned(units) => p.map_err(|_| PassError::Interrupted)?,
                        () = cancel.cancelled() => return Err(PassError::Interrupted),
                    }
                }
            };
            pending.bytes += bytes;
            pending.permits.push(permit);
            pending.upserts.push(upsert);
        }
        self.flush(&mut pending, hold, misses, &mut out).await?;
        Ok(out)
    }

    /// Commits the pending upserts as one batch with `hold`'s checkpoint and
    /// releases their bytes. When the database refuses the batch for its
    /// data, each row is committed on its own, and a row refused alone
    /// follows the give-up policy (a placeholder naming the refusal, or a
    /// miss), so one message never wedges the mailbox.
    async fn flush(
        &mut self,
        pending: &mut Pending,
        hold: &SyncState,
        misses: &mut Misses,
        out: &mut Stored,
    ) -> Result<(), PassError> {
        if pending.upserts.is_empty() {
            return Ok(());
        }
        let batch = SyncBatch {
            upserts: std::mem::take(&mut pending.upserts),
            ..empty_batch(hold, false)
        };
        match self.commit(&batch).await {
            Ok(()) => out.stored += batch.upserts.len() as u64,
            Err(PassError::Store(e)) if e.is_data_refusal() && batch.upserts.len() > 1 => {
                tracing::warn!(error = %e, rows = batch.upserts.len(), "The database refused a batch; committing its rows one by one.");
                for u in batch.upserts {
                    self.commit_one(u, hold, misses, out).await?;
                }
            }
            Err(PassError::Store(e)) if e.is_data_refusal() => {
                let u = batch.upserts.into_iter().next();
                if let Some(u) = u {
                    self.refused(u, e, hold, misses, out).await?;
                }
            }
            Err(e) => return Err(e),
        }
        pending.bytes = 0;
        pending.permits.clear();
        self.check_cancel()
    }

    /// Commits one upsert alone; a refusal follows the give-up policy.
    async fn commit_one(
        &mut self,
        u: MessageUpsert,
        hold: &SyncState,
        misses: &mut Misses,
        out: &mut Stored,
    ) -> Result<(), PassError> {
        let batch = SyncBatch {
            upserts: vec![u],
            ..empty_batch(hold, false)
        };
        match self.commit(&batch).await {
            Ok(()) => {
                out.stored += 1;
                Ok(())
            }
            Err(PassError::Store(e)) if e.is_data_refusal() => {
                let u = batch.upserts.into_iter().next();
                match u {
                    Some(u) => self.refused(u, e, hold, misses, out).await,
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A row the database refused alone: a placeholder naming the refusal
    /// once the policy gives up, a miss before that; a placeholder being
    /// refetched stays one.
    async fn refused(
        &mut self,
        u: MessageUpsert,
        e: StoreError,
        hold: &SyncState,
        misses: &mut Misses,
        out: &mut Stored,
    ) -> Result<(), PassError> {
        events::DbError {
            operation: "sync_commit_row_refused",
            error: &e,
        }
        .emit();
        let id = u.meta.gmail_id.clone();
        let cause = format!("the database refused the row: {e}");
        match misses.on_miss {
            OnMiss::Fail => {
                misses.failures.push(format!("{id}: {cause}"));
                out.missed = true;
                Ok(())
            }
            OnMiss::Keep => Ok(()),
            OnMiss::GiveUp => {
                let p = placeholder(&id, Some(u.meta.thread_id), u.meta.history_id, &cause);
                let batch = SyncBatch {
                    upserts: vec![p],
                    ..empty_batch(hold, false)
                };
                self.commit(&batch).await?;
                out.stored += 1;
                Ok(())
            }
        }
    }

    /// Refetches placeholder rows left by earlier passes, stored like any
    /// fetch; what still fails (to fetch or to store) stays a placeholder.
    /// Runs with the current checkpoint unchanged.
    pub(super) async fn retry_placeholders(&mut self, state: &SyncState) -> Result<(), PassError> {
        let ids = self
            .ctx()
            .store
            .unfetched_message_ids(self.mailbox(), PLACEHOLDER_RETRY_LIMIT)
            .await?;
        let mut keep = Misses {
            on_miss: OnMiss::Keep,
            failures: Vec::new(),
        };
        self.fetch_and_store(ids, state, &mut keep, |_| (None, HistoryId::ZERO), |_| true)
            .await?;
        Ok(())
    }
}

/// The budget's size in permits (a message never asks for more).
fn ctx_budget_units(pass: &Pass<'_>) -> usize {
    (pass.ctx().settings.sync.memory_budget_bytes / BUDGET_UNIT_BYTES)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

/// The bytes an upsert holds in memory: its raw message (when kept) and
/// its decoded bodies.
fn upsert_bytes(u: &MessageUpsert) -> usize {
    u.raw.as_ref().map_or(0, Vec::len)
        + u.content.body_text.as_ref().map_or(0, String::len)
        + u.content.body_html.as_ref().map_or(0, String::len)
        + 1024
}

/// The placeholder row of a message that could not be fetched.
fn placeholder(
    id: &GmailMessageId,
    thread_id: Option<String>,
    history_id: HistoryId,
    cause: &str,
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
            parse_error: Some(format!("{}{cause}", crate::store::UNFETCHED_PREFIX)),
            ..Default::default()
        },
        raw: None,
    }
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
