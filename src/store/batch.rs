//! The batch planner: what a [`SyncBatch`] changes, decided once for both
//! backends, and the JSON payloads its bulk statements read.
//!
//! The backend reads the stored state of the messages a batch touches
//! (`ExistingRow`s), [`plan_batch`] decides from it which rows are new,
//! which labels moved and which messages go, and the shared statements in
//! `sql/batches.rs` apply the plan (one statement per table per batch, each
//! fed a JSON array built here). Deciding in one place is what makes both
//! backends record the same `message_changes`. Pure: nothing here runs SQL.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::model::{LabelRow, MessageUpsert, SyncBatch};
use super::rows::ExistingRow;
use super::sql::micros;
use super::text::{clean, clean_opt, fts_addresses, json_strings, parse_json_strings};
use crate::domain::{ChangeKind, GmailMessageId, HistoryId, SyncCounts};

/// A stored message as far as a plan is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub(crate) live: bool,
    pub(crate) labels: BTreeSet<String>,
}

pub(crate) fn existing_map(rows: Vec<ExistingRow>) -> HashMap<String, Existing> {
    rows.into_iter()
        .map(|r| {
            let labels = parse_json_strings(&r.label_ids).into_iter().collect();
            (
                r.gmail_id,
                Existing {
                    live: r.live,
                    labels,
                },
            )
        })
        .collect()
}

/// One `message_changes` row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeRow {
    pub(crate) gmail_id: String,
    pub(crate) change: ChangeKind,
    pub(crate) label_id: Option<String>,
    pub(crate) history_id: Option<i64>,
}

/// A label-only rewrite of a message that is not upserted in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelUpdate {
    pub(crate) gmail_id: String,
    pub(crate) labels: Vec<String>,
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
}

/// What a batch changes, in the order the statements apply it.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// Each upsert with the message's final (sorted) label set.
    pub(crate) upserts: Vec<(&'a MessageUpsert, Vec<String>)>,
    pub(crate) label_updates: Vec<LabelUpdate>,
    /// Live messages to soft-delete.
    pub(crate) deletes: Vec<String>,
    pub(crate) changes: Vec<ChangeRow>,
    pub(crate) stats: SyncCounts,
}

/// The message ids whose stored state [`plan_batch`] needs (besides the
/// live holders of the reconciled label, which the backend adds).
pub(crate) fn batch_ids(b: &SyncBatch) -> Vec<String> {
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    ids.extend(b.upserts.iter().map(|u| u.meta.gmail_id.as_str()));
    ids.extend(b.deletes.iter().map(|(id, _)| id.as_str()));
    ids.extend(b.label_changes.iter().map(|c| c.gmail_id.as_str()));
    ids.extend(b.leave_scope.iter().map(GmailMessageId::as_str));
    if let Some((_, members)) = &b.label_reconcile {
        ids.extend(members.iter().map(GmailMessageId::as_str));
    }
    ids.into_iter().map(str::to_owned).collect()
}

/// Decides, from the stored state of the touched messages, what `b` changes.
/// Changes are derived from actual differences, so replaying a batch yields
/// no new change rows.
pub(crate) fn plan_batch(b: &SyncBatch, original: HashMap<String, Existing>) -> Plan<'_> {
    let mut state = original.clone();
    let mut changes = Vec::new();
    let mut stats = SyncCounts::default();
    let mut upsert_at: HashMap<&str, usize> = HashMap::new();
    let mut upserts: Vec<&MessageUpsert> = Vec::new();
    let mut dirty: BTreeSet<String> = BTreeSet::new();

    for u in &b.upserts {
        let id = u.meta.gmail_id.as_str();
        let hid = Some(u.meta.history_id.as_i64());
        let new_labels: BTreeSet<String> = u.meta.label_ids.iter().map(|l| clean(l)).collect();
        match state.get(id) {
            Some(e) if e.live => {
                stats.updated += 1;
                for l in new_labels.difference(&e.labels) {
                    changes.push(change(id, ChangeKind::LabelAdded, Some(l), hid));
                    stats.label_changes += 1;
                }
                for l in e.labels.difference(&new_labels) {
                    changes.push(change(id, ChangeKind::LabelRemoved, Some(l), hid));
                    stats.label_changes += 1;
                }
            }
            _ => {
                stats.added += 1;
                changes.push(change(id, ChangeKind::Added, None, hid));
            }
        }
        state.insert(
            id.to_owned(),
            Existing {
                live: true,
                labels: new_labels,
            },
        );
        match upsert_at.get(id) {
            Some(&i) => upserts[i] = u,
            None => {
                upsert_at.insert(id, upserts.len());
                upserts.push(u);
            }
        }
    }

    for c in &b.label_changes {
        let id = c.gmail_id.as_str();
        let hid = c.history_id.map(HistoryId::as_i64);
        let Some(e) = state.get_mut(id).filter(|e| e.live) else {
            continue;
        };
        for l in &c.added {
            if e.labels.insert(clean(l)) {
                changes.push(change(id, ChangeKind::LabelAdded, Some(l), hid));
                stats.label_changes += 1;
                dirty.insert(id.to_owned());
            }
        }
        for l in &c.removed {
            if e.labels.remove(&clean(l)) {
                changes.push(change(id, ChangeKind::LabelRemoved, Some(l), hid));
                stats.label_changes += 1;
                dirty.insert(id.to_owned());
            }
        }
    }

    if let Some((label, members)) = &b.label_reconcile {
        let label = clean(label);
        let members: HashSet<&str> = members.iter().map(GmailMessageId::as_str).collect();
        let mut ids: Vec<&String> = state.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            let Some(e) = state.get_mut(&id).filter(|e| e.live) else {
                continue;
            };
            let member = members.contains(id.as_str());
            let has = e.labels.contains(&label);
            if member && !has {
                e.labels.insert(label.clone());
                changes.push(change(&id, ChangeKind::LabelAdded, Some(&label), None));
            } else if !member && has {
                e.labels.remove(&label);
                changes.push(change(&id, ChangeKind::LabelRemoved, Some(&label), None));
            } else {
                continue;
            }
            stats.label_changes += 1;
            dirty.insert(id);
        }
    }

    // The scope: a live message this batch relabeled that carries no scope
    // label any more leaves the live rows, as do those named in `leave_scope`.
    let mut deletes = Vec::new();
    let mut leaving: Vec<String> = Vec::new();
    if let Some(scope) = b.enforce_scope.as_ref().filter(|s| !s.is_empty()) {
        let scope: BTreeSet<String> = scope.iter().map(|l| clean(l)).collect();
        leaving.extend(
            dirty
                .iter()
                .filter(|id| {
                    state
                        .get(id.as_str())
                        .is_some_and(|e| e.live && e.labels.is_disjoint(&scope))
                })
                .cloned(),
        );
    }
    leaving.extend(b.leave_scope.iter().map(|id| id.as_str().to_owned()));
    for id in leaving {
        if let Some(e) = state.get_mut(&id).filter(|e| e.live) {
            e.live = false;
            changes.push(change(&id, ChangeKind::LeftScope, None, None));
            deletes.push(id);
            stats.deleted += 1;
        }
    }
    for (id, hid) in &b.deletes {
        let id = id.as_str();
        if let Some(e) = state.get_mut(id).filter(|e| e.live) {
            e.live = false;
            deletes.push(id.to_owned());
            changes.push(change(
                id,
                ChangeKind::Deleted,
                None,
                hid.map(HistoryId::as_i64),
            ));
            stats.deleted += 1;
        }
    }

    let final_labels = |id: &str| -> Vec<String> {
        state
            .get(id)
            .map(|e| e.labels.iter().cloned().collect())
            .unwrap_or_default()
    };
    let upserts: Vec<(&MessageUpsert, Vec<String>)> = upserts
        .into_iter()
        .map(|u| (u, final_labels(u.meta.gmail_id.as_str())))
        .collect();
    let label_updates = dirty
        .into_iter()
        .filter(|id| !upsert_at.contains_key(id.as_str()))
        .filter_map(|id| {
            let before = &original.get(&id)?.labels;
            let after = &state.get(&id)?.labels;
            Some(LabelUpdate {
                labels: after.iter().cloned().collect(),
                added: after.difference(before).cloned().collect(),
                removed: before.difference(after).cloned().collect(),
                gmail_id: id,
            })
        })
        .collect();
    Plan {
        upserts,
        label_updates,
        deletes,
        changes,
        stats,
    }
}

fn change(id: &str, kind: ChangeKind, label: Option<&str>, hid: Option<i64>) -> ChangeRow {
    ChangeRow {
        gmail_id: id.to_owned(),
        change: kind,
        label_id: label.map(clean),
        history_id: hid,
    }
}

// JSON payloads for the bulk statements (one statement per table per batch).

pub(crate) fn addresses_json(plan: &Plan<'_>) -> String {
    let mut rows = Vec::new();
    for (u, _) in &plan.upserts {
        let mut position: HashMap<&str, i64> = HashMap::new();
        for a in &u.content.addresses {
            let p = position.entry(a.role.as_str()).or_insert(0);
            rows.push(serde_json::json!([
                u.meta.gmail_id.as_str(),
                a.role.as_str(),
                *p,
                clean_opt(a.name.as_deref()),
                clean(&a.address),
                clean(&a.domain),
            ]));
            *p += 1;
        }
    }
    serde_json::Value::Array(rows).to_string()
}

/// The text form both backends store timestamps in on SQLite (the same as
/// sqlx's own encoding), also parseable by PostgreSQL's `::timestamptz`.
fn ts_text(t: DateTime<Utc>) -> String {
    micros(t).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// One row per upserted message, fields in the order the bulk upsert reads
/// them (see `sql/batches.rs`).
pub(crate) fn messages_json(plan: &Plan<'_>) -> String {
    let rows = plan
        .upserts
        .iter()
        .map(|(u, labels)| {
            let c = &u.content;
            let meta = &u.meta;
            let internal_date =
                DateTime::<Utc>::from_timestamp_millis(meta.internal_date_ms).unwrap_or_default();
            let date_header = c
                .date
                .as_deref()
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| ts_text(d.with_timezone(&Utc)));
            let raw_hex = u.raw.as_deref().map(hex);
            serde_json::json!([
                meta.gmail_id.as_str(),
                clean(&meta.thread_id),
                meta.history_id.as_i64(),
                ts_text(internal_date),
                clean_opt(c.message_id.as_deref()),
                clean_opt(c.in_reply_to.as_deref()),
                json_strings(&c.references),
                clean_opt(c.subject.as_deref()),
                clean_opt(meta.snippet.as_deref()),
                clean_opt(c.body_text.as_deref()),
                clean_opt(c.body_html.as_deref()),
                meta.size_estimate,
                c.has_attachments(),
                json_strings(labels),
                clean_opt(c.parse_error.as_deref()),
                c.truncated,
                date_header,
                raw_hex,
                fts_addresses(c),
            ])
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Lower-case hex of `bytes`, which the bulk upsert turns back into bytes.
/// A table lookup, not `format!` per byte: raw messages run to tens of MB.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `[gmail_id, label_ids JSON]` for each label-only rewrite.
pub(crate) fn label_updates_json(plan: &Plan<'_>) -> String {
    serde_json::Value::Array(
        plan.label_updates
            .iter()
            .map(|u| serde_json::json!([u.gmail_id, json_strings(&u.labels)]))
            .collect(),
    )
    .to_string()
}

pub(crate) fn attachments_json(plan: &Plan<'_>) -> String {
    let mut rows = Vec::new();
    for (u, _) in &plan.upserts {
        let mut seen = HashSet::new();
        for a in &u.content.attachments {
            // A part id appears once per message; keep the first if a
            // malformed message repeats one.
            if !seen.insert(a.part_id.as_str()) {
                continue;
            }
            rows.push(serde_json::json!([
                u.meta.gmail_id.as_str(),
                clean(&a.part_id),
                clean_opt(a.filename.as_deref()),
                clean(&a.mime_type),
                a.size_bytes,
                clean(&a.sha256),
                a.inline,
                clean_opt(a.content_id.as_deref()),
            ]));
        }
    }
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn upsert_labels_json(plan: &Plan<'_>) -> String {
    let mut rows = Vec::new();
    for (u, labels) in &plan.upserts {
        for l in labels {
            rows.push(serde_json::json!([u.meta.gmail_id.as_str(), l]));
        }
    }
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn label_pairs_json(plan: &Plan<'_>, added: bool) -> String {
    let mut rows = Vec::new();
    for u in &plan.label_updates {
        for l in if added { &u.added } else { &u.removed } {
            rows.push(serde_json::json!([u.gmail_id, l]));
        }
    }
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn changes_json(changes: &[ChangeRow]) -> String {
    serde_json::Value::Array(
        changes
            .iter()
            .map(|c| serde_json::json!([c.gmail_id, c.change.as_str(), c.label_id, c.history_id]))
            .collect(),
    )
    .to_string()
}

pub(crate) fn label_rows_json(rows: &[LabelRow]) -> String {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| serde_json::json!([clean(&r.label_id), clean(&r.name), clean(&r.label_type)]))
            .collect(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::hex;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}
