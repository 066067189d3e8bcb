//! Full sync and resync: list every message of the scope, fetch what is not
//! stored, and adopt the historyId read before the listing once the listing
//! is complete.
//!
//! Resumable from the stored page token, which never moves past a page that
//! still misses a message. This module must not move `history_id` before
//! the listing is complete.
//!
//! The scope: with no labels the listing is the whole mailbox and the stored
//! token is Gmail's own page token, as it always was. With labels, each scope
//! label is listed in turn (`labelIds=`; a message under two labels is
//! fetched once: the second listing finds it stored), and the stored token
//! is a [`Cursor`]: `scope:` followed by JSON `{"scope": [label IDs],
//! "label": index into scope, "page": Gmail's token or null}`. A stored
//! token for another scope (or a raw one when the scope now has labels)
//! restarts the listing, since the pages it vouches for were another scope's.
//! At the end, a live row the listing did not see is `deleted` if the
//! message is gone from Gmail and `left_scope` if it exists outside the
//! scope: one mailbox-wide ID listing (5 units per 500 IDs) tells them
//! apart, and it is made only when such rows exist.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use super::fetch::Misses;
use super::{Pass, PassError, Progress, SyncKind, empty_batch};
use crate::domain::{GmailMessageId, HistoryId, SyncPhase};
use crate::events;
use crate::google::daily::{BackfillVerdict, Purpose};
use crate::google::gmail::IdPage;
use crate::store::{FullSyncProgress, LabelRow, SyncBatch, SyncState};

/// Page size for message listings (Gmail's maximum).
const LIST_PAGE_SIZE: u32 = 500;

/// The prefix of a stored page token that is a scoped [`Cursor`].
const SCOPED_TOKEN_PREFIX: &str = "scope:";

/// Where a listing stands: which scope label (always 0 for the whole
/// mailbox) and Gmail's page token within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    scope: Vec<String>,
    label: usize,
    page: Option<String>,
}

impl Cursor {
    fn start(scope: &[String]) -> Cursor {
        Cursor {
            scope: scope.to_vec(),
            label: 0,
            page: None,
        }
    }

    /// The stored form: Gmail's token for the whole mailbox, else `scope:` + JSON.
    fn encode(&self) -> Option<String> {
        if self.scope.is_empty() {
            return self.page.clone();
        }
        let json = serde_json::to_string(self).unwrap_or_default();
        Some(format!("{SCOPED_TOKEN_PREFIX}{json}"))
    }

    /// The cursor a stored token holds, if it belongs to a listing of `scope`.
    fn decode(stored: Option<&str>, scope: &[String]) -> Option<Cursor> {
        let cursor = match stored {
            Some(t) if t.starts_with(SCOPED_TOKEN_PREFIX) => {
                serde_json::from_str::<Cursor>(&t[SCOPED_TOKEN_PREFIX.len()..]).ok()?
            }
            // A raw token (or none) is a whole-mailbox listing.
            page => Cursor {
                scope: Vec::new(),
                label: 0,
                page: page.map(str::to_owned),
            },
        };
        (cursor.scope == scope).then_some(cursor)
    }

    /// The label to list (`None`: the whole mailbox), or `Err` when every
    /// scope label is listed.
    fn label(&self) -> Result<Option<&str>, ()> {
        if self.scope.is_empty() {
            return Ok(None);
        }
        self.scope
            .get(self.label)
            .map(|l| Some(l.as_str()))
            .ok_or(())
    }

    /// The cursor after a page whose next token is `next`; `None` when the
    /// listing is complete.
    fn after(&self, next: Option<String>) -> Option<Cursor> {
        match next {
            Some(t) => Some(Cursor {
                page: Some(t),
                ..self.clone()
            }),
            None if self.scope.is_empty() => None,
            None => Some(Cursor {
                scope: self.scope.clone(),
                label: self.label + 1,
                page: None,
            }),
        }
    }
}

/// Where a full-sync listing stands between two pages.
struct Listing {
    progress: Progress,
    /// When the listing began (kept across resumed passes, for the rate).
    started_at: DateTime<Utc>,
    /// The stored token of the first page that still misses a message: the resume point.
    resume_from: Option<Option<String>>,
    misses: Misses,
    /// The page being listed.
    cursor: Cursor,
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
        self.gmail.stats().set_purpose(Purpose::Backfill);
        let mut state = state.clone();
        let misses = Misses::new(&state);
        let mut estimated_total = None;
        let mut stored = None;
        // Nothing of the listing is asked for while the budget is kept for
        // incremental passes.
        self.pace_backfill().await?;
        let resumed = Cursor::decode(state.page_token.as_deref(), &self.scope);
        let cursor = match resumed {
            Some(c) if state.full_sync_history_id.is_some() && !fresh => {
                stored = self.ctx().store.full_sync_progress(self.mailbox()).await?;
                c
            }
            _ => {
                estimated_total = Some(self.start_listing(&mut state).await?);
                Cursor::start(&self.scope)
            }
        };
        // A resumed listing with no recorded progress (begun before the
        // progress was kept) asks for the size once.
        if estimated_total.is_none() && stored.is_none() {
            estimated_total = self
                .gmail
                .get_profile()
                .await
                .ok()
                .map(|p| p.messages_total.max(0) as u64);
        }
        let (started_at, progress) = match stored {
            Some(p) => (
                p.started_at,
                Progress {
                    listed: p.listed.max(0) as u64,
                    fetched: p.fetched.max(0) as u64,
                    estimated_total: p.estimated_total.max(0) as u64,
                },
            ),
            None => (
                Utc::now(),
                Progress {
                    listed: 0,
                    fetched: 0,
                    estimated_total: estimated_total.unwrap_or(0),
                },
            ),
        };
        let mut listing = Listing {
            progress,
            started_at,
            resume_from: None,
            misses,
            cursor,
        };
        loop {
            self.check_standing().await?;
            self.pace_backfill().await?;
            let Ok(label) = listing.cursor.label() else {
                break;
            };
            let label = label.map(str::to_owned);
            let page = self
                .gmail
                .list_message_ids(
                    listing.cursor.page.as_deref(),
                    label.as_deref(),
                    LIST_PAGE_SIZE,
                )
                .await?;
            let next = listing.cursor.after(page.next_page_token.clone());
            let next_token = next.as_ref().and_then(Cursor::encode);
            self.sync_page(&mut state, &mut listing, page, next_token)
                .await?;
            match next {
                Some(c) => listing.cursor = c,
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
        // A restart over an earlier attempt of the listing (a resync requested
        // or a new scope in the middle of it) keeps the older position: the
        // rows that attempt stored were fetched after it, not after this
        // profile, so the incremental pass that follows the listing must
        // replay history from there (adopting the newer one lost the label
        // changes made between the two; seed 18075680759950574580).
        let start = match state.full_sync_history_id {
            Some(earlier) => earlier.min(profile.history_id),
            None => profile.history_id,
        };
        state.full_sync_history_id = Some(start);
        state.full_sync_generation += 1;
        state.page_token = Cursor::start(&self.scope).encode();
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
    /// in batches bounded by count and bytes that keep the page token where
    /// it was; then one batch marks the page seen and moves the token past
    /// the page (to `next_token`, the stored form of the next cursor), never
    /// past a page that still misses a message.
    async fn sync_page(
        &mut self,
        state: &mut SyncState,
        listing: &mut Listing,
        page: IdPage,
        next_token: Option<String>,
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
        let history_id = state.full_sync_history_id.unwrap_or(HistoryId::ZERO);
        let threads: HashMap<&GmailMessageId, &str> = page
            .messages
            .iter()
            .map(|m| (&m.id, m.thread_id.as_str()))
            .collect();
        let stored = self
            .fetch_and_store(
                new,
                state,
                &mut listing.misses,
                |id| (threads.get(id).map(|t| (*t).to_owned()), history_id),
                |_| true,
            )
            .await?;
        listing.progress.fetched += stored.stored;
        if stored.missed && listing.resume_from.is_none() {
            listing.resume_from = Some(listing.cursor.encode());
        }
        state.page_token = match &listing.resume_from {
            Some(t) => t.clone(),
            None => next_token,
        };
        let batch = SyncBatch {
            mark_seen: ids,
            ..empty_batch(state, false)
        };
        self.commit(&batch).await?;
        self.show_progress(listing).await?;
        self.check_cancel()
    }

    /// Shows the listing's progress on a terminal, if someone watches, and
    /// records it for `status` (which also clears any quota wait).
    async fn show_progress(&self, listing: &Listing) -> Result<(), PassError> {
        if let Some(p) = &self.opts.progress {
            p(self.mailbox(), listing.progress);
        }
        let p = FullSyncProgress {
            started_at: listing.started_at,
            listed: i64::try_from(listing.progress.listed).unwrap_or(i64::MAX),
            fetched: i64::try_from(listing.progress.fetched).unwrap_or(i64::MAX),
            estimated_total: i64::try_from(listing.progress.estimated_total).unwrap_or(i64::MAX),
        };
        self.ctx()
            .store
            .record_full_sync_progress(self.lease(), Some(&p))
            .await?;
        Ok(())
    }

    /// The daily budget's verdict for a backfill now. A plan that cannot be
    /// read lets it go: the database's own errors surface where it writes.
    async fn backfill_verdict(&self) -> BackfillVerdict {
        match self.ctx().google.quota_limiter().daily().plan().await {
            Ok(plan) => plan.backfill(),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Could not read the daily quota budget; the backfill goes on.");
                BackfillVerdict::Go
            }
        }
    }

    /// Stops the backfill (between pages) while the daily budget is kept
    /// for incremental passes.
    async fn pace_backfill(&self) -> Result<(), PassError> {
        match self.backfill_verdict().await {
            BackfillVerdict::Go => Ok(()),
            BackfillVerdict::Wait { until, reason } => Err(PassError::Paced { until, reason }),
        }
    }

    /// Whether a requested resync that has not begun waits for a day with
    /// budget to spare (the mailbox's incremental passes go on meanwhile).
    pub(super) async fn postpone_resync(&self) -> bool {
        match self.backfill_verdict().await {
            BackfillVerdict::Go => false,
            BackfillVerdict::Wait { reason, .. } => {
                events::ResyncPostponed {
                    mailbox: self.mailbox(),
                    reason: &reason,
                }
                .emit();
                true
            }
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

    /// The live rows a scoped listing did not see that still exist in Gmail
    /// (outside the scope): they leave the live rows as `left_scope`, the
    /// rest as `deleted`. Costs one mailbox-wide ID listing, and only when a
    /// scoped listing left rows unseen; nothing for the whole mailbox.
    async fn unseen_outside_scope(
        &mut self,
        state: &SyncState,
    ) -> Result<Vec<GmailMessageId>, PassError> {
        if self.scope.is_empty() {
            return Ok(Vec::new());
        }
        let unseen = self
            .ctx()
            .store
            .unseen_message_ids(self.mailbox(), state.full_sync_generation)
            .await?;
        if unseen.is_empty() {
            return Ok(Vec::new());
        }
        let mut exists: HashSet<GmailMessageId> = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            self.check_standing().await?;
            let page = self
                .gmail
                .list_message_ids(token.as_deref(), None, LIST_PAGE_SIZE)
                .await?;
            exists.extend(page.messages.into_iter().map(|m| m.id));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(unseen
            .into_iter()
            .filter(|id| exists.contains(id))
            .collect())
    }

    /// Listing complete: what was not seen is gone; adopt the starting
    /// historyId, with the run row, in one batch.
    async fn complete_listing(
        &mut self,
        mut state: SyncState,
        kind: SyncKind,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<SyncState, PassError> {
        let leave_scope = self.unseen_outside_scope(&state).await?;
        state.history_id = state.full_sync_history_id.take();
        state.page_token = None;
        state.phase = SyncPhase::Incremental;
        state.applied_label_scope = Some(self.scope.clone());
        let batch = SyncBatch {
            delete_unseen: true,
            leave_scope,
            run: Some(self.run_row(kind, started, &self.totals)),
            ..empty_batch(&state, true)
        };
        self.commit(&batch).await?;
        self.ctx()
            .store
            .record_full_sync_progress(self.lease(), None)
            .await?;
        Ok(state)
    }
}
