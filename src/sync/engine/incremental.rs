//! Incremental sync: replay the mailbox's history from the stored historyId,
//! collapsed to its net effect, and commit the new historyId with the last
//! batch.
//!
//! This module must not move `history_id` in any batch but the last one,
//! which also carries the deletes, the label changes and the run row.
//!
//! With a label scope, what to fetch is decided from the `labelIds` the
//! history records carry, without a fetch: a message added outside the
//! scope costs nothing; one that gains a scope label and is not live is
//! fetched and enters; a live one left with no scope label leaves the live
//! rows (`left_scope`) in the last batch.

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
    deleted: BTreeSet<GmailMessageId>,
    /// Net label delta per message: label -> true (present at the end) / false (absent).
    labels: HashMap<GmailMessageId, BTreeMap<String, bool>>,
    /// The latest whole label set a record carried per message (`labelIds`).
    current: HashMap<GmailMessageId, Vec<String>>,
}

impl Collapsed {
    fn apply(&mut self, rec: HistoryRecord) {
        for (id, labels) in rec.added {
            self.current.insert(id.clone(), labels);
            if !self.deleted.contains(&id) && !self.added.contains(&id) {
                self.added.push(id);
            }
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

impl Pass<'_> {
    /// Incremental pass from the stored historyId over all history pages;
    /// `started` is when the run recorded by its last batch began.
    pub(super) async fn incremental(
        &mut self,
        state: &SyncState,
        started: DateTime<Utc>,
    ) -> Result<SyncState, PassError> {
        self.gmail
            .stats()
            .set_purpose(crate::google::daily::Purpose::Incremental);
        let Some(start) = state.history_id else {
            return Err(PassError::Incomplete(
                "no history position to continue from".to_owned(),
            ));
        };
        self.retry_placeholders(state).await?;
        let (collapsed, newest) = self.collect_history(start).await?;
        let to_fetch = self.not_stored(&collapsed).await?;
        let fetched = self
            .fetch_added(state, &collapsed, to_fetch, newest)
            .await?;
        self.commit_history(state.clone(), &collapsed, &fetched, newest, started)
            .await
    }

    /// Reads every history page from `start`; returns the net effect and the
    /// newest history position seen.
    async fn collect_history(&self, start: HistoryId) -> Result<(Collapsed, HistoryId), PassError> {
        let mut collapsed = Collapsed::default();
        let mut token: Option<String> = None;
        let mut newest = start;
        loop {
            self.check_standing().await?;
            let page = self.gmail.list_history(start, token.as_deref()).await?;
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
        Ok((collapsed, newest))
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
            // A set, not `Vec::contains`: a backlog can hold many thousands of adds.
            let added: HashSet<&GmailMessageId> = collapsed.added.iter().collect();
            let mut relabeled: Vec<GmailMessageId> = collapsed
                .labels
                .keys()
                .filter(|id| !collapsed.deleted.contains(*id) && !added.contains(*id))
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

    /// Fetches `to_fetch` in batches with the history's label deltas applied;
    /// intermediate batches keep the old checkpoint (upserts are idempotent
    /// and already-stored IDs are skipped on a retry). Returns what was stored.
    async fn fetch_added(
        &mut self,
        state: &SyncState,
        collapsed: &Collapsed,
        to_fetch: Vec<GmailMessageId>,
        newest: HistoryId,
    ) -> Result<BTreeSet<GmailMessageId>, PassError> {
        let batch_size = self.ctx().settings.sync.batch_size.max(1);
        let mut misses = Misses::new(state);
        let chunks: Vec<Vec<GmailMessageId>> =
            to_fetch.chunks(batch_size).map(<[_]>::to_vec).collect();
        let mut fetched: BTreeSet<GmailMessageId> = BTreeSet::new();
        for chunk in chunks {
            let (mut upserts, _) = self
                .fetch_chunk(chunk, &mut misses, |_| (None, newest))
                .await?;
            for u in &mut upserts {
                fetched.insert(u.meta.gmail_id.clone());
                // The fetched labels already reflect the history's net delta up to
                // the fetch; apply it anyway (idempotent) for what came between.
                if let Some(delta) = collapsed.labels.get(&u.meta.gmail_id) {
                    apply_delta(&mut u.meta.label_ids, delta);
                }
            }
            // Left the scope between the history read and the fetch: not stored.
            if !self.scope.is_empty() {
                let scope = &self.scope;
                upserts.retain(|u| u.meta.label_ids.iter().any(|l| scope.contains(l)));
            }
            let batch = SyncBatch {
                upserts,
                ..empty_batch(state, false)
            };
            self.commit(&batch).await?;
            self.check_cancel()?;
        }
        misses.check()?;
        Ok(fetched)
    }

    /// The last batch: deletes, label changes of messages not refetched, the
    /// new historyId and the run row, in one transaction.
    async fn commit_history(
        &mut self,
        mut state: SyncState,
        collapsed: &Collapsed,
        fetched: &BTreeSet<GmailMessageId>,
        newest: HistoryId,
        started: DateTime<Utc>,
    ) -> Result<SyncState, PassError> {
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
            ..empty_batch(&state, true)
        };
        // The run row counts this batch too; it is written in the same
        // transaction. A pass that changed nothing writes none: it is counted
        // on `sync_state` (`quiet_passes`). The lease is released with this
        // last checkpoint.
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
        self.commit(&batch).await?;
        self.run.released(next);
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
