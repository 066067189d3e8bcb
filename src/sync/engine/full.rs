//! Full sync and resync: list every message, fetch what is not stored, and
//! adopt the historyId read before the listing once the listing is complete.
//!
//! Resumable from the stored page token, which never moves past a page that
//! still misses a message. This module must not move `history_id` before
//! the listing is complete.

use super::fetch::Misses;
use super::{Pass, PassError, Progress, SyncKind, checkpoint, empty_batch};
use crate::domain::{GmailMessageId, HistoryId, SyncPhase};
use crate::google::gmail::IdPage;
use crate::store::{LabelRow, SyncBatch, SyncState};

/// Page size for message listings (Gmail's maximum).
const LIST_PAGE_SIZE: u32 = 500;

/// Where a full-sync listing stands between two pages.
struct Listing {
    progress: Progress,
    /// The token of the first page that still misses a message: the resume point.
    resume_from: Option<Option<String>>,
    misses: Misses,
    /// The token of the page being listed.
    page_token: Option<String>,
}

impl Pass<'_> {
    /// Full sync (or resync) from `state`; `fresh` restarts the listing even
    /// when one is in progress. Returns the state after the listing.
    pub(super) async fn full_sync(
        &mut self,
        state: &SyncState,
        kind: SyncKind,
        started: chrono::DateTime<chrono::Utc>,
        fresh: bool,
    ) -> Result<SyncState, PassError> {
        tracing::Span::current().record("phase", kind.as_str());
        let mut state = state.clone();
        let misses = Misses::new(&state);
        let mut estimated_total = None;
        if state.full_sync_history_id.is_none() || fresh {
            estimated_total = Some(self.start_listing(&mut state).await?);
        }
        // A resumed full sync asks for the size only when someone shows progress.
        if estimated_total.is_none() && self.opts.progress.is_some() {
            estimated_total = self
                .gmail
                .get_profile()
                .await
                .ok()
                .map(|p| p.messages_total.max(0) as u64);
        }
        let mut listing = Listing {
            progress: Progress {
                listed: 0,
                fetched: 0,
                estimated_total: estimated_total.unwrap_or(0),
            },
            resume_from: None,
            misses,
            page_token: state.page_token.clone(),
        };
        loop {
            self.check_standing().await?;
            let page = self
                .gmail
                .list_message_ids(listing.page_token.as_deref(), None, LIST_PAGE_SIZE)
                .await?;
            let next = page.next_page_token.clone();
            self.sync_page(&mut state, &mut listing, page).await?;
            match next {
                Some(t) => listing.page_token = Some(t),
                None => break,
            }
        }
        listing.misses.check()?;
        if kind == SyncKind::Resync {
            self.reconcile_labels(&state).await?;
        }
        self.complete_listing(state, kind, started).await
    }

    /// Starts (or restarts) the listing: reads the historyId first so
    /// whatever changes during the listing is caught by the incremental pass
    /// after it, and stores the labels. Returns the mailbox's size estimate.
    async fn start_listing(&mut self, state: &mut SyncState) -> Result<u64, PassError> {
        let profile = self.gmail.get_profile().await?;
        let estimated_total = profile.messages_total.max(0) as u64;
        let labels = self.gmail.list_labels().await?;
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
            ..empty_batch(state, false)
        };
        self.commit(&batch).await?;
        Ok(estimated_total)
    }

    /// Fetches and stores what one listed page holds that is not stored yet,
    /// in batches; the page token moves past the page only with its last
    /// batch, and never past a page that still misses a message.
    async fn sync_page(
        &mut self,
        state: &mut SyncState,
        listing: &mut Listing,
        page: IdPage,
    ) -> Result<(), PassError> {
        listing.progress.listed += page.messages.len() as u64;
        let ids: Vec<GmailMessageId> = page.messages.iter().map(|m| m.id.clone()).collect();
        let known = self
            .ctx()
            .store
            .known_message_ids(self.mailbox(), &ids)
            .await?;
        let new: Vec<GmailMessageId> = ids
            .iter()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        let batch_size = self.ctx().settings.sync.batch_size.max(1);
        let chunks: Vec<Vec<GmailMessageId>> = new.chunks(batch_size).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            // Nothing new on this page: mark it seen and advance.
            if listing.resume_from.is_none() {
                state.page_token = page.next_page_token.clone();
            }
            let batch = SyncBatch {
                mark_seen: ids,
                ..empty_batch(state, false)
            };
            self.commit(&batch).await?;
            self.show_progress(listing.progress);
            return Ok(());
        }
        let n_chunks = chunks.len();
        let mut page_failed = false;
        let history_id = state.full_sync_history_id.unwrap_or(HistoryId::ZERO);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let (upserts, missed) = self
                .fetch_chunk(chunk, &mut listing.misses, |id| {
                    let thread = page
                        .messages
                        .iter()
                        .find(|m| &m.id == id)
                        .map(|m| m.thread_id.clone());
                    (thread, history_id)
                })
                .await?;
            page_failed |= missed;
            listing.progress.fetched += upserts.len() as u64;
            let mut batch = SyncBatch {
                upserts,
                ..empty_batch(state, false)
            };
            if i + 1 == n_chunks {
                batch.mark_seen = ids.clone();
                if page_failed && listing.resume_from.is_none() {
                    listing.resume_from = Some(listing.page_token.clone());
                }
                state.page_token = match &listing.resume_from {
                    Some(t) => t.clone(),
                    None => page.next_page_token.clone(),
                };
            }
            batch.checkpoint = checkpoint(state, false);
            self.commit(&batch).await?;
            self.show_progress(listing.progress);
            self.check_cancel()?;
        }
        Ok(())
    }

    fn show_progress(&self, progress: Progress) {
        if let Some(p) = &self.opts.progress {
            p(self.mailbox(), progress);
        }
    }

    /// Label membership of messages we already had: one listing per label
    /// (5 units per 500 IDs) instead of a messages.get per message.
    async fn reconcile_labels(&mut self, state: &SyncState) -> Result<(), PassError> {
        let labels = self.gmail.list_labels().await?;
        for label in labels {
            self.check_cancel()?;
            let mut members = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page = self
                    .gmail
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
                ..empty_batch(state, false)
            };
            self.commit(&batch).await?;
        }
        Ok(())
    }

    /// Listing complete: what was not seen is gone; adopt the starting
    /// historyId, with the run row, in one batch.
    async fn complete_listing(
        &mut self,
        mut state: SyncState,
        kind: SyncKind,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<SyncState, PassError> {
        state.history_id = state.full_sync_history_id.take();
        state.page_token = None;
        state.phase = SyncPhase::Incremental;
        let batch = SyncBatch {
            delete_unseen: true,
            run: Some(self.run_row(kind, started, &self.totals)),
            ..empty_batch(&state, true)
        };
        self.commit(&batch).await?;
        Ok(state)
    }
}
