//! Incremental sync: replay the mailbox's history from the stored historyId
//! in chunks, each collapsed to its net effect, fetched and committed before
//! the next is read, so memory stays flat and a failure repeats one chunk.
//!
//! A chunk is the history pages read until their records name
//! `sync.history_chunk_messages` distinct messages (never part of a page).
//! Its new messages are stored in batches that keep the chunk's starting
//! checkpoint; then one batch applies the chunk's deletes, label changes and
//! scope departures and moves `history_id` to the id of the chunk's last
//! record. That intermediate position is safe to resume from: `history.list`
//! returns the records *after* its `startHistoryId`, every record up to it
//! was on a page wholly applied in the same transaction (fetched messages
//! before it, in batches that are idempotent to repeat: stored IDs are not
//! fetched again, label deltas are set-valued), so a restart reads exactly
//! the records not yet applied. Nothing after the chunk is assumed: a
//! message fetched in it carries its labels at fetch time with the chunk's
//! delta applied, and the later chunks' deltas and deletes then apply to
//! its row like any stored one. The last chunk moves `history_id` to the
//! mailbox's current historyId (the last page's), with the run row.
//!
//! This module must not move `history_id` past a record whose chunk is not
//! wholly committed: a chunk that misses a message (not yet given up on)
//! fails the pass before its last batch.
//!
//! With a label scope, what to fetch is decided from the `labelIds` the
//! history records carry, without a fetch: a message added outside the
//! scope costs nothing; one that gains a scope label and is not live is
//! fetched and enters; a live one left with no scope label leaves the live
//! rows (`left_scope`) in the chunk's last batch (and enters again, fetched,
//! if a later chunk brings a scope label back).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::fetch::Misses;
use super::{Pass, PassError, SyncCounts, SyncKind, empty_batch};
use crate::domain::{GmailMessageId, HistoryId, SyncPhase};
use crate::google::gmail::HistoryRecord;
use crate::store::{LabelChange, SyncBatch, SyncState};

/// The net effect of a run of history records.
#[derive(Default, Debug)]
struct Collapsed {
    /// Messages to fetch, in first-seen order.
    added: Vec<GmailMessageId>,
    /// The same IDs as `added`, for a constant-time membership test.
    added_set: HashSet<GmailMessageId>,
    deleted: BTreeSet<GmailMessageId>,
    /// Net label delta per message: label -> true (present at the end) / false (absent).
    labels: HashMap<GmailMessageId, BTreeMap<String, bool>>,
    /// The latest whole label set a record carried per message (`labelIds`).
    current: HashMap<GmailMessageId, Vec<String>>,
}

impl Collapsed {
    fn apply(&mut self, rec: HistoryRecord) {
        for (id, labels) in rec.added {
            if !self.deleted.contains(&id) && self.added_set.insert(id.clone()) {
                self.added.push(id.clone());
            }
            self.current.insert(id, labels);
        }
        for (id, labels) in rec.message_labels {
            self.current.insert(id, labels);
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

    /// How many messages the records named (an upper bound: a message can
    /// be counted once per kind of change).
    fn size(&self) -> usize {
        self.added.len() + self.deleted.len() + self.labels.len()
    }

    /// Whether `id` carries a label of `scope` at the end of the history
    /// read: from its latest `labelIds`, else from the net delta (a scope
    /// label added).
    fn in_scope(&self, id: &GmailMessageId, scope: &[String]) -> bool {
        if let Some(labels) = self.current.get(id) {
            return labels.iter().any(|l| scope.contains(l));
        }
        self.labels
            .get(id)
            .is_some_and(|d| d.iter().any(|(l, on)| *on && scope.contains(l)))
    }

    /// Messages whose latest `labelIds` carry no label of `scope`.
    fn known_outside(&self, scope: &[String]) -> Vec<GmailMessageId> {
        let mut ids: Vec<GmailMessageId> = self
            .current
            .iter()
            .filter(|(id, labels)| {
                !self.deleted.contains(*id) && !labels.iter().any(|l| scope.contains(l))
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// One chunk of history: its net effect and where it ends.
struct Chunk {
    collapsed: Collapsed,
    /// The history position to commit with the chunk: the id of its last
    /// record, or for the last chunk the mailbox's current historyId.
    position: HistoryId,
    /// The history listing ended with this chunk.
    last: bool,
}

impl Pass<'_> {
    /// Incremental pass from the stored historyId, chunk by chunk;
    /// `started` is when the run recorded by its last batch began.
    pub(super) async fn incremental(
        &mut self,
        state: &SyncState,
        started: DateTime<Utc>,
    ) -> Result<SyncState, PassError> {
        self.gmail
            .stats()
            .set_purpose(crate::google::daily::Purpose::Incremental);
        if state.history_id.is_none() {
            return Err(PassError::Incomplete(
                "no history position to continue from".to_owned(),
            ));
        }
        self.retry_placeholders(state).await?;
        let mut state = state.clone();
        let mut misses = Misses::new(&state);
        let limit = self.ctx().settings.sync.history_chunk_messages.max(1);
        loop {
            let from = state.history_id.unwrap_or(HistoryId::ZERO);
            let chunk = self.read_chunk(from, limit).await?;
            let to_fetch = self.not_stored(&chunk.collapsed).await?;
            let fetched = self
                .fetch_added(&state, &chunk.collapsed, to_fetch, &mut misses)
                .await?;
            // A missed message keeps the checkpoint before the chunk.
            misses.check()?;
            state = self.commit_chunk(state, &chunk, &fetched, started).await?;
            if chunk.last {
                return Ok(state);
            }
            self.check_cancel()?;
        }
    }

    /// Reads history pages from `start` until they name `limit` messages
    /// (cut only after a page with records) or the listing ends.
    async fn read_chunk(&self, start: HistoryId, limit: usize) -> Result<Chunk, PassError> {
        let mut collapsed = Collapsed::default();
        let mut token: Option<String> = None;
        let mut last_record = start;
        loop {
            self.check_standing().await?;
            let page = self.gmail.list_history(start, token.as_deref()).await?;
            let had_records = !page.records.is_empty();
            for rec in page.records {
                if let Some(id) = rec.id {
                    last_record = last_record.max(id);
                }
                collapsed.apply(rec);
            }
            // An empty page that carries a token is not the end.
            match page.next_page_token {
                Some(_) if had_records && collapsed.size() >= limit && last_record > start => {
                    return Ok(Chunk {
                        collapsed,
                        position: last_record,
                        last: false,
                    });
                }
                Some(t) => token = Some(t),
                None => {
                    let current = page.history_id.unwrap_or(last_record);
                    return Ok(Chunk {
                        collapsed,
                        position: last_record.max(current),
                        last: true,
                    });
                }
            }
        }
    }

    /// What was added and is not deleted since and not stored already; with
    /// a label scope, only what is in it, including messages that entered it
    /// by a label change.
    async fn not_stored(&self, collapsed: &Collapsed) -> Result<Vec<GmailMessageId>, PassError> {
        let mut candidates: Vec<GmailMessageId> = collapsed
            .added
            .iter()
            .filter(|id| !collapsed.deleted.contains(*id))
            .cloned()
            .collect();
        if !self.scope.is_empty() {
            let mut relabeled: Vec<GmailMessageId> = collapsed
                .labels
                .keys()
                .filter(|id| !collapsed.deleted.contains(*id) && !collapsed.added_set.contains(*id))
                .cloned()
                .collect();
            relabeled.sort();
            candidates.extend(relabeled);
            candidates.retain(|id| collapsed.in_scope(id, &self.scope));
        }
        let known = self
            .ctx()
            .store
            .known_message_ids(self.mailbox(), &candidates)
            .await?;
        Ok(candidates
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect())
    }

    /// Fetches `to_fetch` in batches with the chunk's label deltas applied;
    /// the batches keep the checkpoint before the chunk (upserts are
    /// idempotent and already-stored IDs are skipped on a retry). Returns
    /// what was fetched.
    async fn fetch_added(
        &mut self,
        state: &SyncState,
        collapsed: &Collapsed,
        to_fetch: Vec<GmailMessageId>,
        misses: &mut Misses,
    ) -> Result<HashSet<GmailMessageId>, PassError> {
        let scope = self.scope.clone();
        let placed_at = state.history_id.unwrap_or(HistoryId::ZERO);
        let stored = self
            .fetch_and_store(
                to_fetch,
                state,
                misses,
                |_| (None, placed_at),
                |u| {
                    // The fetched labels already reflect the history's net delta up
                    // to the fetch; apply it anyway (idempotent) for what came between.
                    if let Some(delta) = collapsed.labels.get(&u.meta.gmail_id) {
                        apply_delta(&mut u.meta.label_ids, delta);
                    }
                    // Left the scope between the history read and the fetch: not stored.
                    scope.is_empty() || u.meta.label_ids.iter().any(|l| scope.contains(l))
                },
            )
            .await?;
        Ok(stored.fetched.into_iter().collect())
    }

    /// The chunk's last batch: deletes, label changes of messages not
    /// refetched, scope departures and the chunk's history position; for
    /// the last chunk also the run row, in one transaction.
    async fn commit_chunk(
        &mut self,
        mut state: SyncState,
        chunk: &Chunk,
        fetched: &HashSet<GmailMessageId>,
        started: DateTime<Utc>,
    ) -> Result<SyncState, PassError> {
        let collapsed = &chunk.collapsed;
        let position = chunk.position;
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
                history_id: Some(position),
            })
            .collect();
        let deletes: Vec<(GmailMessageId, Option<HistoryId>)> = collapsed
            .deleted
            .iter()
            .map(|id| (id.clone(), Some(position)))
            .collect();

        state.history_id = Some(position);
        state.phase = SyncPhase::Incremental;
        let scoped = !self.scope.is_empty();
        let leave_scope = if scoped {
            collapsed
                .known_outside(&self.scope)
                .into_iter()
                .filter(|id| !fetched.contains(id))
                .collect()
        } else {
            Vec::new()
        };
        let mut batch = SyncBatch {
            deletes,
            label_changes,
            leave_scope,
            enforce_scope: scoped.then(|| self.scope.clone()),
            ..empty_batch(&state, chunk.last)
        };
        let mut released = None;
        if chunk.last {
            // The run row counts this batch too; it is written in the same
            // transaction. A pass that changed nothing writes none: it is
            // counted on `sync_state` (`quiet_passes`). The lease is released
            // with this last checkpoint.
            let pending = SyncCounts {
                deleted: self.totals.deleted + batch.deletes.len() as u64,
                ..self.totals
            };
            batch.quiet = is_quiet(&pending, &batch);
            if !batch.quiet {
                batch.run = Some(self.run_row(SyncKind::Incremental, started, &pending));
            }
            let next = self.run.next_after_success();
            batch.release_at = Some(next);
            released = Some(next);
        }
        self.commit(&batch).await?;
        if let Some(next) = released {
            self.run.released(next);
        }
        Ok(state)
    }
}

/// Whether a pass whose committed batches changed `changes` and whose last
/// batch is `last` changed nothing at all (a quiet poll).
fn is_quiet(changes: &SyncCounts, last: &SyncBatch) -> bool {
    changes.added == 0
        && changes.updated == 0
        && changes.deleted == 0
        && changes.label_changes == 0
        && last.deletes.is_empty()
        && last.label_changes.is_empty()
        && last.leave_scope.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
