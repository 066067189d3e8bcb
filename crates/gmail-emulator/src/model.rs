//! The emulator's world: users and their lazily generated mailboxes, history, grants, tokens,
//! quota windows, fault settings and request counters.
//!
//! Everything here is plain data behind one `std::sync::Mutex` owned by `pipeline::Shared`;
//! callers keep critical sections short and never hold the lock across an `.await`. Message
//! bodies are not stored for generated mail: a [`Msg`] is a compact descriptor, rendered on
//! demand.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::errors::GoogleError;
use super::generate::{self, MessageSpec};
use super::grants::OAuthState;
use super::pubsub::{GMAIL_PUSH_ACCOUNT, PubSub};
use super::util::{SplitMix, hash, hash_str};

/// System labels, in bit order: bit `i` of a [`LabelMask`] is `SYSTEM_LABELS[i]`.
pub(crate) const SYSTEM_LABELS: [&str; 13] = [
    "INBOX",
    "SENT",
    "DRAFT",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "SPAM",
    "TRASH",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
];

/// Names of the user labels every generated mailbox starts with (`Label_1` …).
const USER_LABEL_NAMES: [&str; 6] = [
    "Invoices",
    "Tenants/Unit 4B",
    "Contractors",
    "Leases 2026",
    "Follow up",
    "Archive/2025",
];

/// A set of labels as bits into the mailbox's label table (at most 64 labels per mailbox).
pub(crate) type LabelMask = u64;

pub(crate) const INBOX: LabelMask = 1 << 0;
pub(crate) const SENT: LabelMask = 1 << 1;
pub(crate) const UNREAD: LabelMask = 1 << 3;
pub(crate) const STARRED: LabelMask = 1 << 4;
pub(crate) const IMPORTANT: LabelMask = 1 << 5;
pub(crate) const SPAM: LabelMask = 1 << 6;
pub(crate) const TRASH: LabelMask = 1 << 7;
const CATEGORY_PERSONAL: LabelMask = 1 << 8;

/// Generated mail ends at this instant (2026-11-01T00:00:00Z) so that the same seed gives the same
/// mailbox on any day; it spreads over the preceding eight months.
const GENERATED_UNTIL_MS: i64 = 1_793_491_200_000;
const GENERATED_SPAN_MS: i64 = 240 * 24 * 3600 * 1000;
/// History IDs grow by 1 + a random gap below this.
const HISTORY_GAP: u64 = 40;
/// Replies walk at most this many ancestors when building `References`.
const MAX_THREAD_DEPTH: usize = 20;

/// Where a message's bytes come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyRef {
    /// Rendered from the seed; `parent` is the index of the message it replies to, or `u32::MAX`.
    Generated { parent: u32 },
    /// Inserted through the control API; index into `Mailbox::inserted`.
    Inserted(u32),
}

/// A message descriptor: about 56 bytes whatever the message's size.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub(crate) id: u64,
    pub(crate) thread_id: u64,
    pub(crate) internal_date: i64,
    pub(crate) history_id: u64,
    pub(crate) labels: LabelMask,
    pub(crate) deleted: bool,
    pub(crate) body: BodyRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Deleted,
    LabelsAdded,
    LabelsRemoved,
}

impl ChangeKind {
    /// The `historyTypes` value that selects this kind.
    pub(crate) fn from_history_type(value: &str) -> Option<ChangeKind> {
        match value {
            "messageAdded" => Some(ChangeKind::Added),
            "messageDeleted" => Some(ChangeKind::Deleted),
            "labelAdded" => Some(ChangeKind::LabelsAdded),
            "labelRemoved" => Some(ChangeKind::LabelsRemoved),
            _ => None,
        }
    }
}

/// One history record: one change to one message.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) message: u64,
    pub(crate) thread: u64,
    /// The message's labels after the change.
    pub(crate) labels: LabelMask,
    /// The labels added or removed (empty for added/deleted).
    pub(crate) changed: LabelMask,
    pub(crate) kind: ChangeKind,
}

/// What `messages.list` selects.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    pub(crate) all_of: LabelMask,
    pub(crate) none_of: LabelMask,
    pub(crate) include_spam_trash: bool,
    pub(crate) after_ms: Option<i64>,
    pub(crate) before_ms: Option<i64>,
    /// Set when the query names a label the mailbox does not have: nothing matches.
    pub(crate) impossible: bool,
    /// The messages a `q` search matched, when there is one.
    pub(crate) only: Option<std::collections::HashSet<u64>>,
}

/// A mailbox: descriptors in ascending internal date, plus history.
#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Ascending by internal date; deleted messages stay as tombstones so positions (page
    /// tokens) remain valid.
    pub(crate) msgs: Vec<Msg>,
    by_id: HashMap<u64, u32>,
    thread_sizes: HashMap<u64, u32>,
    live: usize,
    label_ids: Vec<String>,
    label_names: Vec<String>,
    inserted: Vec<Arc<[u8]>>,
    /// `Message-ID` header → thread, for inserted messages (generated IDs parse back).
    message_ids: HashMap<String, u64>,
    pub(crate) history: Vec<Record>,
    pub(crate) history_id: u64,
    /// Every `startHistoryId` at or below this is too old (404).
    expired_through: u64,
    rng: SplitMix,
}

/// Why a history listing was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HistoryRefusal {
    Expired,
}

impl Mailbox {
    /// Builds the descriptors of `count` generated messages for mailbox number `user`.
    pub(crate) fn generate(seed: u64, user: u32, count: usize) -> Mailbox {
        let mut rng = SplitMix::new(hash(&[seed, u64::from(user), 0x6d61_696c]));
        let mut mailbox = Mailbox {
            msgs: Vec::with_capacity(count),
            by_id: HashMap::with_capacity(count),
            thread_sizes: HashMap::new(),
            live: 0,
            label_ids: SYSTEM_LABELS.iter().map(|s| (*s).to_owned()).collect(),
            label_names: SYSTEM_LABELS.iter().map(|s| (*s).to_owned()).collect(),
            inserted: Vec::new(),
            message_ids: HashMap::new(),
            history: Vec::new(),
            history_id: 100_000 + rng.below(900_000),
            expired_through: 0,
            rng: SplitMix::new(0),
        };
        for (i, name) in USER_LABEL_NAMES.iter().enumerate() {
            mailbox.label_ids.push(format!("Label_{}", i + 1));
            mailbox.label_names.push((*name).to_owned());
        }
        let step = (GENERATED_SPAN_MS / count.max(1) as i64).max(1);
        let start = GENERATED_UNTIL_MS - GENERATED_SPAN_MS;
        let mut recent: VecDeque<u32> = VecDeque::with_capacity(12);
        let mut last_date = 0;
        for i in 0..count {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let h = |salt: u64| hash(&[seed, u64::from(user), u64::from(index), 0x7265_706c, salt]);
            let date =
                (start + i as i64 * step + (rng.below(step as u64) as i64)).max(last_date + 1);
            last_date = date;
            let reply_to = (!recent.is_empty() && h(0) % 100 < 35)
                .then(|| recent[(h(1) % recent.len() as u64) as usize]);
            let id = mailbox.unique_id(date, rng.next_u64());
            let thread_id = reply_to.map_or(id, |parent| mailbox.msgs[parent as usize].thread_id);
            mailbox.history_id += 1 + rng.below(HISTORY_GAP);
            let labels = initial_labels(seed, user, index);
            mailbox.push(Msg {
                id,
                thread_id,
                internal_date: date,
                history_id: mailbox.history_id,
                labels,
                deleted: false,
                body: BodyRef::Generated {
                    parent: reply_to.unwrap_or(u32::MAX),
                },
            });
            match reply_to.and_then(|parent| recent.iter().position(|&r| r == parent)) {
                Some(slot) => recent[slot] = index,
                None => {
                    if recent.len() == 12 {
                        recent.pop_front();
                    }
                    recent.push_back(index);
                }
            }
        }
        mailbox.history_id += 1 + rng.below(HISTORY_GAP);
        mailbox.rng = rng;
        mailbox
    }

    fn unique_id(&self, date_ms: i64, random: u64) -> u64 {
        // Real Gmail IDs are the arrival time in ms shifted left by 20 bits plus noise.
        let mut id = ((date_ms.max(0) as u64) << 20) | (random & 0xF_FFFF);
        while self.by_id.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        id
    }

    fn push(&mut self, msg: Msg) {
        let position = u32::try_from(self.msgs.len()).unwrap_or(u32::MAX);
        self.by_id.insert(msg.id, position);
        *self.thread_sizes.entry(msg.thread_id).or_default() += 1;
        self.live += 1;
        self.msgs.push(msg);
    }

    fn next_history_id(&mut self) -> u64 {
        self.history_id += 1 + self.rng.below(HISTORY_GAP);
        self.history_id
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live
    }

    pub(crate) fn thread_count(&self) -> usize {
        self.thread_sizes.len()
    }

    /// A live message by ID.
    pub(crate) fn get(&self, id: u64) -> Option<&Msg> {
        self.by_id
            .get(&id)
            .map(|&position| &self.msgs[position as usize])
            .filter(|m| !m.deleted)
    }

    /// The bit of a label ID, if the mailbox has that label.
    pub(crate) fn label_bit(&self, id: &str) -> Option<LabelMask> {
        self.label_ids.iter().position(|l| l == id).map(|i| 1 << i)
    }

    /// The bit of a label matched by ID or (case-insensitively) by name, as `label:` does.
    pub(crate) fn label_bit_by_name(&self, name: &str) -> Option<LabelMask> {
        let wanted = name.replace('-', " ").to_lowercase();
        self.label_bit(name).or_else(|| {
            self.label_names
                .iter()
                .position(|n| n.to_lowercase() == wanted || n.to_lowercase() == name.to_lowercase())
                .map(|i| 1 << i)
        })
    }

    /// The bit of a label, creating a user label `Label_N` on first use.
    pub(crate) fn label_bit_or_create(&mut self, id: &str) -> Result<LabelMask, String> {
        if let Some(bit) = self.label_bit(id) {
            return Ok(bit);
        }
        let is_user_label = id
            .strip_prefix("Label_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_user_label {
            return Err(format!("unknown label {id:?} (system labels or Label_N)"));
        }
        if self.label_ids.len() >= 64 {
            return Err("a mailbox holds at most 64 labels in the emulator".to_owned());
        }
        self.label_ids.push(id.to_owned());
        self.label_names.push(id.to_owned());
        Ok(1 << (self.label_ids.len() - 1))
    }

    /// Renames a user label, as Gmail's `labels.patch` does: its ID and its
    /// messages stay. System labels cannot be renamed; names are unique
    /// case-insensitively.
    pub(crate) fn rename_label(&mut self, id: &str, name: &str) -> Result<(), String> {
        let Some(i) = self.label_ids.iter().position(|l| l == id) else {
            return Err(format!("unknown label {id:?}"));
        };
        if i < SYSTEM_LABELS.len() {
            return Err(format!("system label {id} cannot be renamed"));
        }
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 225 || name.chars().any(char::is_control) {
            return Err("a label name is 1 to 225 printable characters".to_owned());
        }
        let lower = name.to_lowercase();
        if self
            .label_names
            .iter()
            .enumerate()
            .any(|(j, n)| j != i && n.to_lowercase() == lower)
        {
            return Err(format!("label name {name:?} exists"));
        }
        self.label_names[i] = name.to_owned();
        Ok(())
    }

    /// Label IDs of a mask, in table order.
    pub(crate) fn label_names_of(&self, mask: LabelMask) -> Vec<String> {
        self.label_ids
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// `(id, name, is_system)` for every label.
    pub(crate) fn labels(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.label_ids
            .iter()
            .zip(&self.label_names)
            .enumerate()
            .map(|(i, (id, name))| (id.as_str(), name.as_str(), i < SYSTEM_LABELS.len()))
    }

    /// Inserts a message (control API) and records `messagesAdded`. Returns `(id, thread, historyId)`.
    pub(crate) fn insert(
        &mut self,
        seed: u64,
        user: u32,
        domain: &str,
        now_ms: i64,
        raw: Arc<[u8]>,
        labels: LabelMask,
    ) -> (u64, u64, u64) {
        let headers = thread_headers(&raw);
        let thread = headers
            .references
            .iter()
            .rev()
            .find_map(|r| {
                self.message_ids.get(r).copied().or_else(|| {
                    generate::parse_message_id(seed, user, domain, r)
                        .and_then(|index| self.msgs.get(index as usize))
                        .map(|m| m.thread_id)
                })
            })
            .filter(|t| self.thread_sizes.contains_key(t));
        let date = now_ms.max(self.msgs.last().map_or(0, |m| m.internal_date + 1));
        let random = self.rng.next_u64();
        let id = self.unique_id(date, random);
        let thread_id = thread.unwrap_or(id);
        if let Some(message_id) = headers.message_id {
            self.message_ids.insert(message_id, thread_id);
        }
        let body = BodyRef::Inserted(u32::try_from(self.inserted.len()).unwrap_or(u32::MAX));
        self.inserted.push(raw);
        let history_id = self.next_history_id();
        self.push(Msg {
            id,
            thread_id,
            internal_date: date,
            history_id,
            labels,
            deleted: false,
            body,
        });
        self.history.push(Record {
            id: history_id,
            message: id,
            thread: thread_id,
            labels,
            changed: 0,
            kind: ChangeKind::Added,
        });
        (id, thread_id, history_id)
    }

    /// Permanently deletes a message and records `messagesDeleted`.
    pub(crate) fn delete(&mut self, id: u64) -> Option<u64> {
        let position = *self.by_id.get(&id)?;
        let history_id = self.next_history_id();
        let msg = &mut self.msgs[position as usize];
        msg.deleted = true;
        msg.history_id = history_id;
        let (thread, labels) = (msg.thread_id, msg.labels);
        self.by_id.remove(&id);
        self.live -= 1;
        if let Some(size) = self.thread_sizes.get_mut(&thread) {
            *size -= 1;
            if *size == 0 {
                self.thread_sizes.remove(&thread);
            }
        }
        self.history.push(Record {
            id: history_id,
            message: id,
            thread,
            labels,
            changed: 0,
            kind: ChangeKind::Deleted,
        });
        Some(history_id)
    }

    /// Adds then removes labels, one history record per kind of actual change. Returns the
    /// message's `(labels, historyId)` afterwards.
    pub(crate) fn relabel(
        &mut self,
        id: u64,
        add: LabelMask,
        remove: LabelMask,
    ) -> Option<(LabelMask, u64)> {
        let position = *self.by_id.get(&id)? as usize;
        for (kind, mask) in [
            (ChangeKind::LabelsAdded, add),
            (ChangeKind::LabelsRemoved, remove),
        ] {
            let current = self.msgs[position].labels;
            let changed = match kind {
                ChangeKind::LabelsAdded => mask & !current,
                _ => mask & current,
            };
            if changed == 0 {
                continue;
            }
            let history_id = self.next_history_id();
            let msg = &mut self.msgs[position];
            msg.labels = match kind {
                ChangeKind::LabelsAdded => current | changed,
                _ => current & !changed,
            };
            msg.history_id = history_id;
            self.history.push(Record {
                id: history_id,
                message: id,
                thread: msg.thread_id,
                labels: msg.labels,
                changed,
                kind,
            });
        }
        let msg = &self.msgs[position];
        Some((msg.labels, msg.history_id))
    }

    /// Makes every history ID issued so far too old, and moves the current ID past it so that
    /// a fresh `getProfile` gives a usable starting point.
    pub(crate) fn expire_history(&mut self) {
        self.expired_through = self.history_id;
        self.next_history_id();
    }

    fn matches(&self, m: &Msg, f: &ListFilter) -> bool {
        if f.impossible || m.deleted || m.labels & f.all_of != f.all_of || m.labels & f.none_of != 0
        {
            return false;
        }
        if !f.include_spam_trash && m.labels & (SPAM | TRASH) & !f.all_of != 0 {
            return false;
        }
        f.after_ms.is_none_or(|after| m.internal_date >= after)
            && f.before_ms.is_none_or(|before| m.internal_date < before)
            && f.only.as_ref().is_none_or(|only| only.contains(&m.id))
    }

    /// `(messagesTotal, messagesUnread, threadsTotal, threadsUnread)` of one label, as
    /// `labels.get` counts them: live messages carrying it, those also `UNREAD`, the threads
    /// with such a message, and the threads with an unread one.
    pub(crate) fn label_counts(&self, bit: LabelMask) -> (usize, usize, usize, usize) {
        let (mut messages, mut unread) = (0, 0);
        let mut threads = std::collections::HashSet::new();
        let mut unread_threads = std::collections::HashSet::new();
        for m in self
            .msgs
            .iter()
            .filter(|m| !m.deleted && m.labels & bit != 0)
        {
            messages += 1;
            threads.insert(m.thread_id);
            if m.labels & UNREAD != 0 {
                unread += 1;
                unread_threads.insert(m.thread_id);
            }
        }
        (messages, unread, threads.len(), unread_threads.len())
    }

    /// One page of `threads.list`, newest first: a thread is listed once, where its newest
    /// matching message stands, so page tokens (positions) work as for `messages.list`.
    /// Returns the thread IDs, the next token and the number of matching threads.
    pub(crate) fn list_threads(
        &self,
        f: &ListFilter,
        end: Option<usize>,
        max: usize,
    ) -> (Vec<u64>, Option<usize>, usize) {
        let end = end.unwrap_or(self.msgs.len()).min(self.msgs.len());
        let mut seen = std::collections::HashSet::new();
        let mut page = Vec::new();
        let mut next = None;
        for position in (0..self.msgs.len()).rev() {
            let m = &self.msgs[position];
            if !self.matches(m, f) || !seen.insert(m.thread_id) || position >= end {
                continue;
            }
            if page.len() == max {
                next = next.or(Some(position + 1));
            } else {
                page.push(m.thread_id);
            }
        }
        (page, next, seen.len())
    }

    /// The live messages of a thread, oldest first (empty for an unknown thread).
    pub(crate) fn thread_messages(&self, thread: u64) -> Vec<&Msg> {
        if !self.thread_sizes.contains_key(&thread) {
            return Vec::new();
        }
        self.msgs
            .iter()
            .filter(|m| m.thread_id == thread && !m.deleted)
            .collect()
    }

    /// One page of `messages.list`, newest first. `end` is the page token: positions below it
    /// remain. Returns `(id, thread)` pairs, the next token and the total match count.
    pub(crate) fn list(
        &self,
        f: &ListFilter,
        end: Option<usize>,
        max: usize,
    ) -> (Vec<(u64, u64)>, Option<usize>, usize) {
        let end = end.unwrap_or(self.msgs.len()).min(self.msgs.len());
        let mut page = Vec::with_capacity(max.min(512));
        let mut next = None;
        for position in (0..end).rev() {
            let m = &self.msgs[position];
            if !self.matches(m, f) {
                continue;
            }
            if page.len() == max {
                next = Some(position + 1);
                break;
            }
            page.push((m.id, m.thread_id));
        }
        let unfiltered = f.all_of == 0
            && f.none_of == 0
            && f.include_spam_trash
            && !f.impossible
            && f.only.is_none();
        let estimate = if unfiltered && f.after_ms.is_none() && f.before_ms.is_none() {
            self.live
        } else {
            self.msgs.iter().filter(|m| self.matches(m, f)).count()
        };
        (page, next, estimate)
    }

    /// One page of `history.list`: records after `start`, filtered, from position `from`.
    pub(crate) fn history_page(
        &self,
        start: u64,
        kinds: &[ChangeKind],
        label: Option<LabelMask>,
        from: Option<usize>,
        max: usize,
    ) -> Result<(Vec<&Record>, Option<usize>), HistoryRefusal> {
        if start <= self.expired_through {
            return Err(HistoryRefusal::Expired);
        }
        let begin = from.unwrap_or_else(|| self.history.partition_point(|r| r.id <= start));
        let wanted = |r: &Record| {
            (kinds.is_empty() || kinds.contains(&r.kind))
                && label.is_none_or(|bit| (r.labels | r.changed) & bit != 0)
        };
        let mut page = Vec::new();
        let mut next = None;
        for (position, record) in self.history.iter().enumerate().skip(begin) {
            if !wanted(record) {
                continue;
            }
            if page.len() == max {
                next = Some(position);
                break;
            }
            page.push(record);
        }
        Ok((page, next))
    }

    /// The first position `history_page` would read for `start`; for empty fault pages.
    pub(crate) fn history_position(&self, start: u64) -> usize {
        self.history.partition_point(|r| r.id <= start)
    }

    /// What is needed to produce a message's bytes outside the lock.
    pub(crate) fn source(&self, msg: &Msg, ctx: &SourceContext<'_>) -> Source {
        match msg.body {
            BodyRef::Inserted(i) => Source::Inserted(self.inserted[i as usize].clone()),
            BodyRef::Generated { parent } => {
                let mut ancestors = Vec::new();
                let mut cursor = parent;
                while cursor != u32::MAX && ancestors.len() < MAX_THREAD_DEPTH {
                    let m = &self.msgs[cursor as usize];
                    ancestors.push((cursor, m.internal_date));
                    cursor = match m.body {
                        BodyRef::Generated { parent } => parent,
                        BodyRef::Inserted(_) => u32::MAX,
                    };
                }
                ancestors.reverse();
                let index = self.by_id.get(&msg.id).copied().unwrap_or_default();
                Source::Generated(MessageSpec {
                    seed: ctx.seed,
                    user_index: ctx.user_index,
                    user_email: ctx.email.to_owned(),
                    domain: ctx.domain.to_owned(),
                    index,
                    internal_date_ms: msg.internal_date,
                    ancestors,
                })
            }
        }
    }
}

/// Identifies the mailbox when rendering generated mail.
pub(crate) struct SourceContext<'a> {
    pub(crate) seed: u64,
    pub(crate) user_index: u32,
    pub(crate) email: &'a str,
    pub(crate) domain: &'a str,
}

/// A message's bytes, or the recipe for them.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Generated(MessageSpec),
    Inserted(Arc<[u8]>),
}

struct ThreadHeaders {
    message_id: Option<String>,
    /// `References` then `In-Reply-To`, so the last is the most direct parent.
    references: Vec<String>,
}

/// Reads `Message-ID`, `References` and `In-Reply-To` from the header block.
fn thread_headers(raw: &[u8]) -> ThreadHeaders {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut unfolded: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            unfolded.push(line.to_owned());
        }
    }
    let ids = |value: &str| -> Vec<String> {
        value
            .split('<')
            .skip(1)
            .filter_map(|s| s.split_once('>').map(|(id, _)| format!("<{}>", id.trim())))
            .collect()
    };
    let mut out = ThreadHeaders {
        message_id: None,
        references: Vec::new(),
    };
    let mut in_reply_to = Vec::new();
    for line in &unfolded {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "message-id" => out.message_id = ids(value).into_iter().next(),
            "references" => out.references = ids(value),
            "in-reply-to" => in_reply_to = ids(value),
            _ => {}
        }
    }
    out.references.extend(in_reply_to);
    out
}

/// The labels a generated message starts with.
fn initial_labels(seed: u64, user: u32, index: u32) -> LabelMask {
    let h = |salt: u64| hash(&[seed, u64::from(user), u64::from(index), 0x6c61_6273, salt]);
    let mut mask = 0;
    if generate::is_sent(seed, user, index) {
        mask |= SENT;
    } else {
        match h(0) % 100 {
            0..=1 => mask |= SPAM,
            2..=3 => mask |= TRASH,
            4..=87 => mask |= INBOX,
            _ => {}
        }
        if mask & (SPAM | TRASH) == 0 {
            mask |= match h(1) % 100 {
                0..=49 => CATEGORY_PERSONAL,
                50..=74 => CATEGORY_PERSONAL << 3,
                75..=84 => CATEGORY_PERSONAL << 2,
                85..=89 => CATEGORY_PERSONAL << 1,
                _ => CATEGORY_PERSONAL << 4,
            };
        }
        if h(2) % 100 < 30 {
            mask |= UNREAD;
        }
    }
    if h(3) % 100 < 20 {
        mask |= IMPORTANT;
    }
    if h(4) % 100 < 5 {
        mask |= STARRED;
    }
    if h(5) % 100 < 20 {
        let user_label = SYSTEM_LABELS.len() as u64 + h(6) % USER_LABEL_NAMES.len() as u64;
        mask |= 1 << user_label;
    }
    mask
}

/// A user of the emulated Workspace domain.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) email: String,
    /// Numeric Directory ID.
    pub(crate) id: String,
    /// Mailbox number: part of the generation seed.
    pub(crate) index: u32,
    pub(crate) org_unit: String,
    pub(crate) suspended: bool,
    pub(crate) archived: bool,
    pub(crate) mailbox_enabled: bool,
    pub(crate) is_admin: bool,
    /// A forced token-endpoint refusal for this user (`admin_policy_enforced` | `access_denied`).
    pub(crate) token_error: Option<String>,
    /// The Workspace domain userinfo and ID tokens report (`hd`): the email's
    /// domain, or `None` for an account of no Workspace (a personal Google Account).
    pub(crate) hosted_domain: Option<String>,
    pub(crate) mailbox: Mailbox,
    /// Quota units charged in the last 60 s.
    pub(crate) window: Window,
    /// Gmail requests currently admitted for this user (the concurrency cap).
    pub(crate) in_flight: u32,
    /// The mailbox's `users.watch`, if any (lapsed ones stay until replaced or stopped).
    pub(crate) watch: Option<Watch>,
    /// When the last push notification for this user was published (0 = never).
    pub(crate) last_notified_ms: i64,
}

/// A mailbox's push watch (`users.watch`).
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// `projects/P/topics/T`.
    pub(crate) topic: String,
    /// The label filter; 0 = every change.
    pub(crate) labels: LabelMask,
    /// `include` (notify for changes on those labels) or `exclude` (on any other).
    pub(crate) include: bool,
    pub(crate) expiration_ms: i64,
}

impl Watch {
    /// Whether a change touching `touched` labels is notified.
    fn covers(&self, touched: LabelMask) -> bool {
        if self.labels == 0 {
            return true;
        }
        if self.include {
            touched & self.labels != 0
        } else {
            touched & !self.labels != 0 || touched == 0
        }
    }
}

impl User {
    pub(crate) fn new(seed: u64, index: u32, email: &str, org_unit: &str, messages: usize) -> User {
        User {
            email: email.to_owned(),
            id: format!("1{:020}", hash(&[seed, hash_str(email)])),
            index,
            org_unit: org_unit.to_owned(),
            suspended: false,
            archived: false,
            mailbox_enabled: true,
            is_admin: false,
            token_error: None,
            hosted_domain: email.rsplit_once('@').map(|(_, d)| d.to_owned()),
            mailbox: Mailbox::generate(seed, index, messages),
            window: Window::default(),
            in_flight: 0,
            watch: None,
            last_notified_ms: 0,
        }
    }
}

/// Units charged over a rolling 60-second window, in 100 ms slots.
#[derive(Debug, Default)]
pub(crate) struct Window {
    slots: VecDeque<(i64, u64)>,
    total: u64,
}

const WINDOW_MS: i64 = 60_000;
const SLOT_MS: i64 = 100;

impl Window {
    fn prune(&mut self, now: i64) {
        while let Some(&(slot, units)) = self.slots.front() {
            if slot + WINDOW_MS > now {
                break;
            }
            self.total -= units;
            self.slots.pop_front();
        }
    }

    /// Seconds until `cost` more units fit under `limit`, or `None` if they fit now.
    pub(crate) fn wait_for(&mut self, now: i64, cost: u64, limit: u64) -> Option<u64> {
        self.prune(now);
        if self.total + cost <= limit {
            return None;
        }
        let mut excess = self.total + cost - limit;
        for &(slot, units) in &self.slots {
            if units >= excess {
                return Some(((slot + WINDOW_MS - now + 999) / 1000).max(1) as u64);
            }
            excess -= units;
        }
        Some(60)
    }

    pub(crate) fn charge(&mut self, now: i64, units: u64) {
        let slot = now - now.rem_euclid(SLOT_MS);
        match self.slots.back_mut() {
            Some((last, total)) if *last == slot => *total += units,
            _ => self.slots.push_back((slot, units)),
        }
        self.total += units;
    }
}

/// The quota regime; `PUT /emulator/v1/quota` replaces fields selectively.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QuotaConfig {
    pub(crate) user_units_per_minute: u64,
    pub(crate) project_units_per_minute: u64,
    pub(crate) max_concurrent_per_user: u32,
    pub(crate) enforce: bool,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            user_units_per_minute: 6_000,
            project_units_per_minute: 1_200_000,
            max_concurrent_per_user: 10,
            enforce: true,
        }
    }
}

/// Fault injection rates; `PUT /emulator/v1/faults` replaces it whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultConfig {
    #[serde(default)]
    pub(crate) error_rate: f64,
    #[serde(default)]
    pub(crate) rate_limit_rate: f64,
    #[serde(default)]
    pub(crate) reset_rate: f64,
    #[serde(default)]
    pub(crate) latency_ms: [u64; 2],
    #[serde(default)]
    pub(crate) empty_page_rate: f64,
    #[serde(default)]
    pub(crate) seed: Option<u64>,
}

/// What the fault dice chose for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Reset,
    ServerError,
    Unavailable,
    UserRateLimit,
    ConcurrentRateLimit,
}

impl Fault {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::ServerError => "backend_error_500",
            Fault::Unavailable => "unavailable_503",
            Fault::UserRateLimit => "rate_limit_403",
            Fault::ConcurrentRateLimit => "rate_limit_429",
        }
    }
}

/// The API methods the emulator serves, named by their discovery IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiMethod {
    GetProfile,
    LabelsList,
    LabelsGet,
    MessagesList,
    MessagesGet,
    AttachmentsGet,
    HistoryList,
    ThreadsList,
    ThreadsGet,
    Watch,
    Stop,
    DirectoryUsersGet,
    DirectoryGroupsList,
    DirectoryMembersList,
    Token,
    Authorize,
    Revoke,
    Userinfo,
    Tokeninfo,
}

impl ApiMethod {
    pub(crate) fn id(self) -> &'static str {
        match self {
            ApiMethod::GetProfile => "gmail.users.getProfile",
            ApiMethod::LabelsList => "gmail.users.labels.list",
            ApiMethod::LabelsGet => "gmail.users.labels.get",
            ApiMethod::MessagesList => "gmail.users.messages.list",
            ApiMethod::MessagesGet => "gmail.users.messages.get",
            ApiMethod::AttachmentsGet => "gmail.users.messages.attachments.get",
            ApiMethod::HistoryList => "gmail.users.history.list",
            ApiMethod::ThreadsList => "gmail.users.threads.list",
            ApiMethod::ThreadsGet => "gmail.users.threads.get",
            ApiMethod::Watch => "gmail.users.watch",
            ApiMethod::Stop => "gmail.users.stop",
            ApiMethod::DirectoryUsersGet => "directory.users.get",
            ApiMethod::DirectoryGroupsList => "directory.groups.list",
            ApiMethod::DirectoryMembersList => "directory.members.list",
            ApiMethod::Token => "oauth2.token",
            ApiMethod::Authorize => "oauth2.authorize",
            ApiMethod::Revoke => "oauth2.revoke",
            ApiMethod::Userinfo => "oauth2.userinfo",
            ApiMethod::Tokeninfo => "oauth2.tokeninfo",
        }
    }

    /// Quota units under the 2026 regime; Directory and OAuth calls are not charged.
    pub(crate) fn cost(self) -> u64 {
        match self {
            ApiMethod::GetProfile | ApiMethod::LabelsList | ApiMethod::LabelsGet => 1,
            ApiMethod::HistoryList => 2,
            ApiMethod::MessagesList => 5,
            ApiMethod::ThreadsList | ApiMethod::ThreadsGet => 10,
            ApiMethod::MessagesGet | ApiMethod::AttachmentsGet => 20,
            ApiMethod::Watch => 100,
            ApiMethod::Stop => 50,
            ApiMethod::DirectoryUsersGet
            | ApiMethod::DirectoryGroupsList
            | ApiMethod::DirectoryMembersList
            | ApiMethod::Token
            | ApiMethod::Authorize
            | ApiMethod::Revoke
            | ApiMethod::Userinfo
            | ApiMethod::Tokeninfo => 0,
        }
    }

    pub(crate) fn is_gmail(self) -> bool {
        self.id().starts_with("gmail.")
    }
}

/// Counters served by `GET /emulator/v1/stats`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Stats {
    pub(crate) requests: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    pub(crate) requests_by_user: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub(crate) quota_units: BTreeMap<String, u64>,
    pub(crate) tokens_issued: BTreeMap<String, u64>,
    /// Every token request by `sub`, refused ones included.
    pub(crate) token_requests: BTreeMap<String, u64>,
    /// Injected faults by kind.
    pub(crate) faults_injected: BTreeMap<&'static str, u64>,
}

/// A registered service account: the public half of its key.
#[derive(Debug, Clone)]
pub(crate) struct ServiceAccount {
    pub(crate) client_id: String,
    pub(crate) public_key: rsa::RsaPublicKey,
}

/// An issued access token.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    pub(crate) subject: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) expires_at_ms: i64,
    /// The OAuth client it was issued to: the service account's numeric ID, or the web client.
    pub(crate) client_id: String,
    /// The consent-flow session it belongs to (`None` for a service-account token): revoking
    /// the session or the user's grant ends the token before it expires.
    pub(crate) session: Option<u64>,
}

/// How the seeded state is built; kept so that `POST /reset` can rebuild it.
#[derive(Debug, Clone)]
pub(crate) struct Seeding {
    pub(crate) seed: u64,
    pub(crate) users: usize,
    pub(crate) messages: usize,
    pub(crate) domain: String,
}

/// The name of the one seeded group.
pub(crate) fn shared_group(domain: &str) -> String {
    format!("shared-mailboxes@{domain}")
}

/// A Google Group: its Directory ID and name, and its direct members in the order they were set.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) members: Vec<GroupMember>,
}

/// A direct member of a group: a user or another group (Directory `type`), with its `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupMember {
    /// Lower case.
    pub(crate) email: String,
    /// `USER` or `GROUP` (`CUSTOMER` is not emulated).
    pub(crate) kind: String,
    /// `ACTIVE`, `SUSPENDED`, `ARCHIVED`, … as the control API set it.
    pub(crate) status: String,
}

impl Group {
    pub(crate) fn new(seed: u64, email: &str, members: Vec<GroupMember>) -> Group {
        let local = email.split('@').next().unwrap_or_default();
        Group {
            id: format!("0{:016x}", hash(&[seed, hash_str(email), 7])),
            name: local.replace(['-', '.', '_'], " "),
            members,
        }
    }
}

pub(crate) const SHARED_OU: &str = "/Shared Mailboxes";
pub(crate) const STAFF_OU: &str = "/Staff";
const SHARED_NAMES: [&str; 10] = [
    "support",
    "billing",
    "leasing",
    "maintenance",
    "info",
    "accounts",
    "operations",
    "tenants",
    "facilities",
    "sales",
];
const STAFF_NAMES: [&str; 10] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
];

/// Everything the emulator knows. Deliberately not `Debug`: it holds bearer tokens.
pub(crate) struct World {
    pub(crate) seeding: Seeding,
    /// By lower-case primary email.
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) next_user_index: u32,
    /// By lower-case group email.
    pub(crate) groups: BTreeMap<String, Group>,
    /// By `client_email`.
    pub(crate) accounts: HashMap<String, ServiceAccount>,
    /// Grants made by `write_service_account_key`; `reset` restores these.
    pub(crate) registered_grants: HashMap<String, BTreeSet<String>>,
    /// The DWD table: client ID → scopes.
    pub(crate) grants: HashMap<String, BTreeSet<String>>,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    /// The per-user web-server flow: policy, grants, codes, sessions, refresh tokens.
    pub(crate) oauth: OAuthState,
    pub(crate) quota: QuotaConfig,
    pub(crate) project_window: Window,
    pub(crate) faults: FaultConfig,
    pub(crate) fault_rng: SplitMix,
    pub(crate) stats: Stats,
    /// Cloud Pub/Sub: topics, subscriptions, delivery.
    pub(crate) pubsub: PubSub,
}

impl World {
    pub(crate) fn seeded(seeding: Seeding) -> World {
        let mut world = World {
            users: BTreeMap::new(),
            next_user_index: 0,
            groups: BTreeMap::new(),
            accounts: HashMap::new(),
            registered_grants: HashMap::new(),
            grants: HashMap::new(),
            tokens: HashMap::new(),
            oauth: OAuthState::default(),
            quota: QuotaConfig::default(),
            project_window: Window::default(),
            faults: FaultConfig::default(),
            fault_rng: SplitMix::new(seeding.seed),
            stats: Stats::default(),
            pubsub: PubSub::new(seeding.seed),
            seeding,
        };
        world.populate();
        world
    }

    /// (Re)creates the seeded users, mailboxes and group.
    fn populate(&mut self) {
        let Seeding {
            users,
            messages,
            ref domain,
            ..
        } = self.seeding;
        let domain = domain.clone();
        self.users.clear();
        self.groups.clear();
        self.next_user_index = 0;
        let admin = format!("admin@{domain}");
        self.add_user(&admin, "/", messages.min(25));
        if let Some(user) = self.users.get_mut(&admin) {
            user.is_admin = true;
        }
        let shared = (users * 2).div_ceil(3);
        let mut members = Vec::new();
        for i in 0..users {
            let (email, ou) = if i < shared {
                let name = SHARED_NAMES
                    .get(i)
                    .map_or_else(|| format!("shared-{}", i + 1), |n| (*n).to_owned());
                (format!("{name}@{domain}"), SHARED_OU)
            } else {
                let j = i - shared;
                let name = STAFF_NAMES
                    .get(j)
                    .map_or_else(|| format!("staff-{}", j + 1), |n| (*n).to_owned());
                (format!("{name}@{domain}"), STAFF_OU)
            };
            if ou == SHARED_OU {
                members.push(GroupMember {
                    email: email.clone(),
                    kind: "USER".to_owned(),
                    status: "ACTIVE".to_owned(),
                });
            }
            self.add_user(&email, ou, messages);
        }
        let group = shared_group(&domain);
        let seeded = Group::new(self.seeding.seed, &group, members);
        self.groups.insert(group, seeded);
    }

    /// Adds a user with a generated mailbox of `messages` messages.
    pub(crate) fn add_user(&mut self, email: &str, org_unit: &str, messages: usize) -> &mut User {
        let index = self.next_user_index;
        self.next_user_index += 1;
        let user = User::new(self.seeding.seed, index, email, org_unit, messages);
        match self.users.entry(email.to_ascii_lowercase()) {
            Entry::Occupied(mut slot) => {
                slot.insert(user);
                slot.into_mut()
            }
            Entry::Vacant(slot) => slot.insert(user),
        }
    }

    /// Back to the seeded state: users, mailboxes, grants, consent-flow state, faults, quota
    /// and counters. Service-account tokens and registered service accounts survive, like a
    /// real token outliving a test step; consent-flow tokens die with their sessions.
    pub(crate) fn reset(&mut self) {
        self.populate();
        self.grants = self.registered_grants.clone();
        self.oauth.reset();
        self.quota = QuotaConfig::default();
        self.project_window = Window::default();
        self.faults = FaultConfig::default();
        self.fault_rng = SplitMix::new(self.seeding.seed);
        self.stats = Stats::default();
        self.pubsub = PubSub::new(self.seeding.seed);
    }

    /// After a change to `email`'s mailbox that touched messages carrying `touched` labels
    /// (before or after the change) and moved its history to `history_id`: the push
    /// notification Gmail would publish, if the mailbox has a live watch that covers the
    /// change. At most one per second per user (more are dropped, as Gmail does); a topic
    /// that no longer exists or no longer grants publish to Gmail gets nothing.
    pub(crate) fn notify_change(
        &mut self,
        email: &str,
        touched: LabelMask,
        history_id: u64,
        now: i64,
    ) {
        let Some(user) = self.users.get_mut(&email.to_ascii_lowercase()) else {
            return;
        };
        let Some(watch) = user.watch.as_ref().filter(|w| w.expiration_ms > now) else {
            return;
        };
        if !watch.covers(touched) {
            return;
        }
        if user.last_notified_ms > 0 && now - user.last_notified_ms < 1000 {
            self.pubsub.stats.rate_limited += 1;
            return;
        }
        let topic = watch.topic.clone();
        let grant = self
            .pubsub
            .topics
            .get(&topic)
            .is_some_and(|t| t.publishers.contains(GMAIL_PUSH_ACCOUNT));
        if !grant {
            self.pubsub.stats.unpublishable += 1;
            return;
        }
        user.last_notified_ms = now;
        let data = serde_json::json!({"emailAddress": user.email, "historyId": history_id});
        let _ = self
            .pubsub
            .publish(&topic, data.to_string().into_bytes(), now);
    }

    /// An access token that is unexpired at `now` and whose consent session, if any, is live.
    pub(crate) fn live_token(&self, token: &str, now: i64) -> Option<&IssuedToken> {
        self.tokens.get(token).filter(|t| {
            t.expires_at_ms > now && t.session.is_none_or(|id| self.oauth.session_live(id))
        })
    }

    pub(crate) fn user(&self, email: &str) -> Option<&User> {
        self.users.get(&email.to_ascii_lowercase())
    }

    pub(crate) fn user_mut(&mut self, email: &str) -> Option<&mut User> {
        self.users.get_mut(&email.to_ascii_lowercase())
    }

    /// Rolls the fault dice for one request: an optional fault and a latency in ms.
    pub(crate) fn roll_fault(&mut self) -> (Option<Fault>, u64) {
        let latency = self.roll_fault_latency_only();
        let f = &self.faults;
        let (reset, error, limit) = (f.reset_rate, f.error_rate, f.rate_limit_rate);
        if reset + error + limit <= 0.0 {
            return (None, latency);
        }
        let u = self.fault_rng.unit();
        let coin = self.fault_rng.below(2) == 0;
        let fault = if u < reset {
            Some(Fault::Reset)
        } else if u < reset + error {
            Some(if coin {
                Fault::ServerError
            } else {
                Fault::Unavailable
            })
        } else if u < reset + error + limit {
            Some(if coin {
                Fault::UserRateLimit
            } else {
                Fault::ConcurrentRateLimit
            })
        } else {
            None
        };
        if let Some(fault) = fault {
            *self.stats.faults_injected.entry(fault.name()).or_default() += 1;
        }
        (fault, latency)
    }

    /// Only the latency part of the dice (the token endpoint gets no other faults).
    pub(crate) fn roll_fault_latency_only(&mut self) -> u64 {
        let [low, high] = self.faults.latency_ms;
        if high > low {
            low + self.fault_rng.below(high - low + 1)
        } else {
            low
        }
    }

    /// Whether this history page should come back empty (fault injection).
    pub(crate) fn roll_empty_page(&mut self) -> bool {
        self.faults.empty_page_rate > 0.0
            && self.fault_rng.unit() < self.faults.empty_page_rate
            && {
                *self
                    .stats
                    .faults_injected
                    .entry("empty_history_page")
                    .or_default() += 1;
                true
            }
    }

    /// Charges `method`'s cost to `email` and the project, or refuses without charging.
    pub(crate) fn charge(
        &mut self,
        email: &str,
        method: ApiMethod,
        now: i64,
    ) -> Result<(), GoogleError> {
        let cost = method.cost();
        if cost == 0 {
            return Ok(());
        }
        let quota = self.quota.clone();
        let user = self
            .users
            .get_mut(email)
            .ok_or_else(GoogleError::not_found)?;
        if quota.enforce {
            if let Some(wait) = user.window.wait_for(now, cost, quota.user_units_per_minute) {
                return Err(GoogleError::user_rate_limit(wait));
            }
            if let Some(wait) =
                self.project_window
                    .wait_for(now, cost, quota.project_units_per_minute)
            {
                return Err(GoogleError::project_rate_limit(wait));
            }
        }
        user.window.charge(now, cost);
        self.project_window.charge(now, cost);
        *self.stats.quota_units.entry(email.to_owned()).or_default() += cost;
        Ok(())
    }

    /// Counts one answered request.
    pub(crate) fn record(&mut self, method: ApiMethod, status: u16, email: Option<&str>) {
        *self
            .stats
            .requests
            .entry(method.id())
            .or_default()
            .entry(status)
            .or_default() += 1;
        if let Some(email) = email {
            *self
                .stats
                .requests_by_user
                .entry(email.to_owned())
                .or_default()
                .entry(method.id())
                .or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(users: usize, messages: usize) -> World {
        World::seeded(Seeding {
            seed: 1,
            users,
            messages,
            domain: "example.com".into(),
        })
    }

    #[test]
    fn three_users_are_two_shared_mailboxes_and_one_staff_member_plus_the_admin() {
        let w = world(3, 10);
        let ous: Vec<(&str, &str)> = w
            .users
            .values()
            .map(|u| (u.email.as_str(), u.org_unit.as_str()))
            .collect();
        assert_eq!(
            ous,
            vec![
                ("admin@example.com", "/"),
                ("alice@example.com", STAFF_OU),
                ("billing@example.com", SHARED_OU),
                ("support@example.com", SHARED_OU)
            ]
        );
        let members: Vec<&str> = w.groups[&shared_group("example.com")]
            .members
            .iter()
            .map(|m| m.email.as_str())
            .collect();
        assert_eq!(members, vec!["support@example.com", "billing@example.com"]);
    }

    #[test]
    fn generated_ids_are_unique_sixteen_hex_digits_and_threads_start_with_their_first_message() {
        let w = world(1, 2000);
        let mb = &w.users["support@example.com"].mailbox;
        assert_eq!(mb.live_count(), 2000);
        for m in &mb.msgs {
            assert_eq!(format!("{:016x}", m.id).len(), 16);
            let first = mb.msgs.iter().find(|o| o.thread_id == m.thread_id).unwrap();
            assert_eq!(first.id, m.thread_id);
        }
        assert!(mb.thread_count() < 2000, "some messages are replies");
        assert!(
            mb.msgs
                .windows(2)
                .all(|p| p[0].internal_date < p[1].internal_date)
        );
        assert!(
            mb.msgs
                .windows(2)
                .all(|p| p[0].history_id < p[1].history_id)
        );
    }

    #[test]
    fn mutations_append_increasing_history_and_expiry_refuses_old_ids() {
        let mut w = world(1, 20);
        let mb = &mut w.users.get_mut("support@example.com").unwrap().mailbox;
        let start = mb.history_id;
        let (id, _, added) = mb.insert(
            1,
            1,
            "example.com",
            1_800_000_000_000,
            b"Subject: x\r\n\r\nhi".to_vec().into(),
            INBOX,
        );
        let (_, relabelled) = mb.relabel(id, STARRED, INBOX).unwrap();
        let deleted = mb.delete(id).unwrap();
        assert!(start < added && added < relabelled && relabelled < deleted);
        let (page, next) = mb.history_page(start, &[], None, None, 100).unwrap();
        let kinds: Vec<ChangeKind> = page.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Added,
                ChangeKind::LabelsAdded,
                ChangeKind::LabelsRemoved,
                ChangeKind::Deleted
            ]
        );
        assert_eq!(next, None);
        mb.expire_history();
        assert_eq!(
            mb.history_page(deleted, &[], None, None, 100).unwrap_err(),
            HistoryRefusal::Expired
        );
        assert!(mb.history_page(mb.history_id, &[], None, None, 100).is_ok());
    }

    #[test]
    fn quota_window_refuses_then_frees_after_a_minute() {
        let mut window = Window::default();
        window.charge(0, 5_990);
        assert_eq!(window.wait_for(1_000, 20, 6_000), Some(59));
        assert_eq!(window.wait_for(60_000, 20, 6_000), None);
    }
}
