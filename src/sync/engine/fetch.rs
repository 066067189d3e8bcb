//! Fetching messages: the one fetch-with-give-up policy shared by full and
//! incremental sync, the placeholders it leaves, and their refetch.
//!
//! A message that cannot be fetched fails the pass (so it is retried) until
//! the mailbox has failed [`GIVE_UP_AFTER_FAILURES`] passes in a row; then
//! it is stored as a placeholder so the rest of the mailbox moves on. This
//! module never moves a checkpoint: callers commit what it returns.

use futures::StreamExt;

use super::{Pass, PassError, empty_batch};
use crate::domain::{GmailMessageId, HistoryId};
use crate::google::error::{ErrorClass, GoogleError};
use crate::google::gmail::FetchedMessage;
use crate::store::{MessageUpsert, SyncBatch, SyncState};
use gmail_normalize::{self as normalize, NormalizeLimits};

/// After this many failed passes in a row, a message that still cannot be
/// fetched is stored as a placeholder row (`parse_error` starting with
/// `store::UNFETCHED_PREFIX`) so the rest of the mailbox moves on; the
/// placeholder is refetched at the start of every later pass.
const GIVE_UP_AFTER_FAILURES: i64 = 3;
/// Messages bigger than this are normalized on a blocking thread.
const BLOCKING_NORMALIZE_BYTES: usize = 1 << 20;
/// Placeholders refetched at the start of one pass, at most.
const PLACEHOLDER_RETRY_LIMIT: u32 = 500;

/// The messages of one listing that could not be fetched yet.
pub(super) struct Misses {
    /// The mailbox failed [`GIVE_UP_AFTER_FAILURES`] passes in a row: store
    /// placeholders instead of failing the pass once more.
    give_up: bool,
    failures: Vec<String>,
}

impl Misses {
    /// The policy for a pass starting from `state`.
    pub(super) fn new(state: &SyncState) -> Misses {
        Misses {
            give_up: state.consecutive_failures >= GIVE_UP_AFTER_FAILURES,
            failures: Vec::new(),
        }
    }

    /// Ok when every message was fetched (or given up on); otherwise the
    /// pass is incomplete and is retried.
    pub(super) fn check(self) -> Result<(), PassError> {
        let n = self.failures.len();
        match self.failures.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(PassError::Incomplete(format!(
                "{n} message(s) could not be fetched and will be retried (first: {first})"
            ))),
        }
    }
}

impl Pass<'_> {
    /// Fetches one chunk of new messages under the give-up policy, after one
    /// read of the subscription (a decision stops the pass first): a revoked
    /// authorization stops the pass; any other failure becomes a placeholder
    /// (in the thread and at the history position `placed` gives) once
    /// `misses` gives up, and is noted in `misses` before that. Returns the
    /// upserts and whether a message was missed.
    pub(super) async fn fetch_chunk(
        &self,
        ids: Vec<GmailMessageId>,
        misses: &mut Misses,
        placed: impl Fn(&GmailMessageId) -> (Option<String>, HistoryId),
    ) -> Result<(Vec<MessageUpsert>, bool), PassError> {
        self.check_standing().await?;
        let (mut upserts, failed) = self.fetch_many(ids).await?;
        let mut missed = false;
        for (id, e) in failed {
            if e.class == ErrorClass::AuthRevoked {
                return Err(PassError::Google(e));
            }
            if misses.give_up {
                let (thread, history_id) = placed(&id);
                upserts.push(placeholder(&id, thread, history_id, &e));
            } else {
                misses.failures.push(format!("{id}: {e}"));
                missed = true;
            }
        }
        Ok((upserts, missed))
    }

    /// Fetches and normalizes messages concurrently (bounded by the mailbox's
    /// in-flight cap, which the quota limiter also enforces). 404s are dropped:
    /// the message was deleted since it was listed. Other failures are returned
    /// beside the successes so one bad message does not stop the page.
    /// Shutdown drops the in-flight fetches (nothing was written for them yet).
    async fn fetch_many(
        &self,
        ids: Vec<GmailMessageId>,
    ) -> Result<(Vec<MessageUpsert>, Vec<(GmailMessageId, GoogleError)>), PassError> {
        let ctx = self.ctx();
        let concurrency = ctx.settings.sync.per_mailbox_concurrency.max(1);
        let limits = ctx.limits();
        let store_raw = ctx.settings.sync.store_raw;
        let gmail = &self.gmail;
        let fetches = futures::stream::iter(ids)
            .map(|id| async move {
                let r = gmail.get_message(&id).await;
                (id, r)
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<(GmailMessageId, Result<FetchedMessage, GoogleError>)>>();
        let results = tokio::select! {
            r = fetches => r,
            () = self.cancel.cancelled() => return Err(PassError::Interrupted),
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

    /// Refetches placeholder rows left by earlier passes; what still fails
    /// stays a placeholder. Runs with the current checkpoint unchanged.
    pub(super) async fn retry_placeholders(&mut self, state: &SyncState) -> Result<(), PassError> {
        let ids = self
            .ctx()
            .store
            .unfetched_message_ids(self.mailbox(), PLACEHOLDER_RETRY_LIMIT)
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        let (upserts, failed) = self.fetch_many(ids).await?;
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
            self.commit(&batch).await?;
        }
        Ok(())
    }
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
