//! The one behavioural suite both backends must pass.
//!
//! Each function takes a freshly migrated, empty [`Store`] and panics on the
//! first deviation; `tests/it/store.rs` runs every one against SQLite and
//! PostgreSQL. It lives in the library (hidden from docs) so the integration
//! tests and any future backend share it, but is compiled only for tests
//! (`cfg(test)` or the `test-support` feature, which the package's own
//! integration tests enable): a release build does not contain it.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};

use super::sql::{micros, now};
use super::{
    Checkpoint, FailureRecord, LabelChange, LabelRow, Lease, MessageUpsert, NewSubscription,
    Pruned, Store, StoreError, SubscriptionUpdate, SyncBatch, SyncRunRow,
};
use crate::domain::{
    AddressRole, AttachmentMeta, AuthMode, ChangeKind, GmailMessageId, GmailMessageMeta, HistoryId,
    MailboxAddress, MessageAddress, NormalizedMessage, Operator, RunOutcome, StopDecision,
    SubscriptionAction, SubscriptionStatus, SyncCounts, SyncKind, SyncPhase,
};

// ---------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------

pub fn mailbox(s: &str) -> MailboxAddress {
    MailboxAddress::parse(s).expect("fixture mailbox is valid")
}

pub fn operator(s: &str) -> Operator {
    Operator::parse(s).expect("fixture operator is valid")
}

pub fn gid(s: &str) -> GmailMessageId {
    GmailMessageId::parse(s).expect("fixture gmail id is valid")
}

pub fn hid(v: u64) -> HistoryId {
    HistoryId::new(v).expect("fixture history id is valid")
}

/// A subscription driven to `active` through the state machine.
pub async fn active_subscription(store: &Store, m: &MailboxAddress) {
    store
        .insert_subscription(&NewSubscription {
            mailbox: m.clone(),
            requested_by: operator("requester"),
            label_filter: vec![],
            note: None,
            auth_mode: AuthMode::Delegated,
        })
        .await
        .expect("insert subscription");
    store
        .update_subscription(&transition(
            m,
            SubscriptionStatus::Pending,
            SubscriptionAction::Approve,
        ))
        .await
        .expect("approve subscription");
}

fn transition(
    m: &MailboxAddress,
    from: SubscriptionStatus,
    action: SubscriptionAction,
) -> SubscriptionUpdate {
    let to = from.apply(action).expect("legal transition in fixture");
    SubscriptionUpdate {
        mailbox: m.clone(),
        expected: from,
        new_status: to,
        actor: operator("approver"),
        action: action.as_str().to_owned(),
        reason: None,
        approved_by: (action == SubscriptionAction::Approve).then(|| operator("approver")),
        reviewed_by: None,
        org_unit_seen: None,
        label_scope: None,
    }
}

/// A message with one sender, one recipient and the given labels.
pub fn message(
    id: &str,
    thread: &str,
    labels: &[&str],
    subject: &str,
    body: &str,
) -> MessageUpsert {
    MessageUpsert {
        meta: GmailMessageMeta {
            gmail_id: gid(id),
            thread_id: thread.to_owned(),
            history_id: hid(10),
            internal_date_ms: 1_767_225_600_000,
            size_estimate: 1200,
            snippet: Some(body.chars().take(40).collect()),
            label_ids: labels.iter().map(|l| (*l).to_owned()).collect(),
        },
        content: NormalizedMessage {
            subject: Some(subject.to_owned()),
            addresses: vec![
                address(
                    AddressRole::From,
                    Some("Billing Team"),
                    "billing@vendor.example",
                ),
                address(AddressRole::To, None, "ops@example.com"),
            ],
            message_id: Some(format!("{id}@mail.example")),
            body_text: Some(body.to_owned()),
            date: Some("2026-01-01T00:00:00Z".to_owned()),
            ..NormalizedMessage::default()
        },
        raw: None,
    }
}

pub fn address(role: AddressRole, name: Option<&str>, addr: &str) -> MessageAddress {
    MessageAddress {
        role,
        name: name.map(str::to_owned),
        address: addr.to_owned(),
        domain: addr
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default(),
    }
}

pub fn attachment(part: &str, mime: &str, size: i64) -> AttachmentMeta {
    AttachmentMeta {
        part_id: part.to_owned(),
        filename: Some(format!("file-{part}.bin")),
        mime_type: mime.to_owned(),
        size_bytes: size,
        sha256: "ab".repeat(32),
        inline: false,
        content_id: None,
    }
}

pub fn checkpoint(history: u64) -> Checkpoint {
    Checkpoint {
        phase: SyncPhase::Incremental,
        history_id: Some(hid(history)),
        page_token: None,
        full_sync_history_id: None,
        full_sync_generation: 1,
        applied_label_scope: None,
        success: true,
    }
}

pub async fn lease(store: &Store, m: &MailboxAddress) -> Lease {
    store
        .claim_mailbox(m, "conformance", Utc::now(), Duration::from_secs(300))
        .await
        .expect("claim_mailbox")
        .expect("mailbox is claimable")
}

fn batch(upserts: Vec<MessageUpsert>, history: u64) -> SyncBatch {
    SyncBatch {
        upserts,
        ..SyncBatch::new(checkpoint(history))
    }
}

async fn rows(store: &Store, sql: &str) -> usize {
    store
        .count_query_rows(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn labels_of(live: &[super::LiveMessage], id: &str) -> Vec<String> {
    live.iter()
        .find(|m| m.gmail_id.as_str() == id)
        .map(|m| m.label_ids.clone())
        .unwrap_or_else(|| panic!("{id} is not live"))
}

fn kinds(changes: &[super::MessageChange]) -> Vec<(String, ChangeKind, Option<String>)> {
    changes
        .iter()
        .map(|c| (c.gmail_id.to_string(), c.change, c.label_id.clone()))
        .collect()
}

// ---------------------------------------------------------------------------
// The suite.
// ---------------------------------------------------------------------------

/// The same batch twice: same rows, no duplicate change rows.
pub async fn upserts_are_idempotent(store: &Store) {
    let m = mailbox("idem@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let mut with_attachment = message("m3", "t2", &["INBOX"], "Report", "see attached");
    with_attachment.content.attachments = vec![attachment("1", "application/pdf", 5000)];
    with_attachment.raw = Some(vec![0, 1, 0xfe, 0xff, b'\'']);
    let b = batch(
        vec![
            message("m1", "t1", &["INBOX", "UNREAD"], "Hello", "first body"),
            message("m2", "t1", &["INBOX"], "Re: Hello", "second body"),
            with_attachment,
        ],
        100,
    );

    let first = store.commit_batch(&l, &b).await.expect("first commit");
    let live_1 = store.live_messages(&m).await.unwrap();
    let changes_1 = store.message_changes(&m).await.unwrap();
    let second = store.commit_batch(&l, &b).await.expect("replayed commit");
    let live_2 = store.live_messages(&m).await.unwrap();
    let changes_2 = store.message_changes(&m).await.unwrap();

    assert_eq!(
        first,
        SyncCounts {
            added: 3,
            updated: 0,
            deleted: 0,
            label_changes: 0,
            ..SyncCounts::default()
        }
    );
    assert_eq!(
        second,
        SyncCounts {
            added: 0,
            updated: 3,
            deleted: 0,
            label_changes: 0,
            ..SyncCounts::default()
        }
    );
    assert_eq!(live_1, live_2);
    assert_eq!(changes_1, changes_2, "a replay must not log changes");
    assert_eq!(changes_1.len(), 3);
    assert!(changes_1.iter().all(|c| c.change == ChangeKind::Added));
    assert_eq!(labels_of(&live_2, "m1"), vec!["INBOX", "UNREAD"]);
    assert_eq!(
        rows(
            store,
            "SELECT * FROM message_addresses WHERE mailbox = 'idem@example.com'"
        )
        .await,
        6
    );
    assert_eq!(
        rows(
            store,
            "SELECT * FROM message_labels WHERE mailbox = 'idem@example.com'"
        )
        .await,
        4
    );
    assert_eq!(
        rows(
            store,
            "SELECT * FROM attachments WHERE mailbox = 'idem@example.com'"
        )
        .await,
        1
    );
    assert_eq!(
        rows(
            store,
            "SELECT * FROM messages WHERE mailbox = 'idem@example.com' AND has_attachments"
        )
        .await,
        1
    );
    assert_eq!(
        store.search(Some(&m), "attached", 10).await.unwrap().len(),
        1
    );
    let state = store.sync_state(&m).await.unwrap().expect("sync_state row");
    assert_eq!(state.history_id, Some(hid(100)));
    assert_eq!(state.phase, SyncPhase::Incremental);
    assert!(state.last_success_at.is_some());
}

/// Deletes are soft, idempotent, and a re-fetched message comes back.
pub async fn soft_delete_and_readd(store: &Store) {
    let m = mailbox("del@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    store
        .commit_batch(
            &l,
            &batch(
                vec![
                    message("a1", "t", &["INBOX"], "One", "x"),
                    message("a2", "t", &[], "Two", "y"),
                ],
                10,
            ),
        )
        .await
        .unwrap();

    let del = SyncBatch {
        deletes: vec![(gid("a1"), Some(hid(11))), (gid("zz"), None)],
        ..SyncBatch::new(checkpoint(11))
    };
    let s1 = store.commit_batch(&l, &del).await.unwrap();
    let s2 = store.commit_batch(&l, &del).await.unwrap();

    assert_eq!(s1.deleted, 1);
    assert_eq!(s2.deleted, 0);
    assert_eq!(store.count_messages(&m).await.unwrap(), 1);
    assert_eq!(
        rows(
            store,
            "SELECT * FROM messages WHERE mailbox = 'del@example.com'"
        )
        .await,
        2,
        "soft delete keeps the row"
    );
    let known = store
        .known_message_ids(&m, &[gid("a1"), gid("a2"), gid("nope")])
        .await
        .unwrap();
    assert_eq!(known, HashSet::from([gid("a2")]));
    let changes = store.message_changes(&m).await.unwrap();
    let deleted: Vec<_> = changes
        .iter()
        .filter(|c| c.change == ChangeKind::Deleted)
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].history_id, Some(hid(11)));

    let readd = store
        .commit_batch(
            &l,
            &batch(vec![message("a1", "t", &["INBOX"], "One", "x")], 12),
        )
        .await
        .unwrap();
    assert_eq!(
        readd.added, 1,
        "an upsert of a deleted message counts as added"
    );
    assert_eq!(store.count_messages(&m).await.unwrap(), 2);
    assert_eq!(store.search(Some(&m), "One", 10).await.unwrap().len(), 1);
}

/// Label changes apply to known live messages only and log actual changes.
pub async fn label_changes_and_reconcile(store: &Store) {
    let m = mailbox("labels@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    store
        .commit_batch(
            &l,
            &batch(
                vec![
                    message("b1", "t", &["INBOX", "STARRED"], "One", "x"),
                    message("b2", "t", &["INBOX"], "Two", "y"),
                    message("b3", "t", &["INBOX"], "Three", "z"),
                ],
                10,
            ),
        )
        .await
        .unwrap();
    let before = store.message_changes(&m).await.unwrap().len();

    let changes = SyncBatch {
        label_changes: vec![
            LabelChange {
                gmail_id: gid("b1"),
                added: vec!["Label_1".into(), "INBOX".into()],
                removed: vec!["UNREAD".into()],
                history_id: Some(hid(20)),
            },
            LabelChange {
                gmail_id: gid("b2"),
                added: vec![],
                removed: vec!["INBOX".into()],
                history_id: Some(hid(21)),
            },
            LabelChange {
                gmail_id: gid("unknown"),
                added: vec!["X".into()],
                removed: vec![],
                history_id: None,
            },
        ],
        ..SyncBatch::new(checkpoint(21))
    };
    let s = store.commit_batch(&l, &changes).await.unwrap();
    assert_eq!(s.label_changes, 2);
    let again = store.commit_batch(&l, &changes).await.unwrap();
    assert_eq!(again.label_changes, 0);

    let live = store.live_messages(&m).await.unwrap();
    assert_eq!(labels_of(&live, "b1"), vec!["INBOX", "Label_1", "STARRED"]);
    assert_eq!(labels_of(&live, "b2"), Vec::<String>::new());
    let log = store.message_changes(&m).await.unwrap();
    assert_eq!(
        kinds(&log[before..]),
        vec![
            ("b1".into(), ChangeKind::LabelAdded, Some("Label_1".into())),
            ("b2".into(), ChangeKind::LabelRemoved, Some("INBOX".into())),
        ]
    );
    assert_eq!(log[before].history_id, Some(hid(20)));
    assert_eq!(rows(store, "SELECT * FROM message_labels WHERE mailbox = 'labels@example.com' AND label_id = 'Label_1'").await, 1);

    // Reconcile STARRED to exactly {b3}: b1 loses it, b3 gains it.
    let reconcile = SyncBatch {
        label_reconcile: Some(("STARRED".into(), vec![gid("b3"), gid("not-stored")])),
        ..SyncBatch::new(checkpoint(22))
    };
    let s = store.commit_batch(&l, &reconcile).await.unwrap();
    assert_eq!(s.label_changes, 2);
    assert_eq!(
        store
            .commit_batch(&l, &reconcile)
            .await
            .unwrap()
            .label_changes,
        0
    );
    let live = store.live_messages(&m).await.unwrap();
    assert_eq!(labels_of(&live, "b1"), vec!["INBOX", "Label_1"]);
    assert_eq!(labels_of(&live, "b3"), vec!["INBOX", "STARRED"]);
    assert_eq!(rows(store, "SELECT * FROM message_labels WHERE mailbox = 'labels@example.com' AND label_id = 'STARRED'").await, 1);

    // An upsert whose labels differ from the stored ones logs the difference.
    let s = store
        .commit_batch(
            &l,
            &batch(vec![message("b3", "t", &["TRASH"], "Three", "z")], 23),
        )
        .await
        .unwrap();
    assert_eq!((s.updated, s.label_changes), (1, 3));
    let tail = store.message_changes(&m).await.unwrap();
    let tail = kinds(&tail[tail.len() - 3..]);
    assert!(tail.contains(&("b3".into(), ChangeKind::LabelAdded, Some("TRASH".into()))));
    assert!(tail.contains(&("b3".into(), ChangeKind::LabelRemoved, Some("INBOX".into()))));
    assert!(tail.contains(&(
        "b3".into(),
        ChangeKind::LabelRemoved,
        Some("STARRED".into())
    )));

    // The labels table is replaced as a whole.
    let with_labels = |names: &[&str]| SyncBatch {
        labels: Some(
            names
                .iter()
                .map(|n| LabelRow {
                    label_id: format!("id-{n}"),
                    name: (*n).to_owned(),
                    label_type: "user".into(),
                })
                .collect(),
        ),
        ..SyncBatch::new(checkpoint(23))
    };
    store
        .commit_batch(&l, &with_labels(&["a", "b", "c"]))
        .await
        .unwrap();
    store.commit_batch(&l, &with_labels(&["d"])).await.unwrap();
    assert_eq!(
        rows(
            store,
            "SELECT * FROM labels WHERE mailbox = 'labels@example.com'"
        )
        .await,
        1
    );
}

/// A batch that fails half-way moves neither data nor checkpoint.
pub async fn failed_batch_moves_nothing(store: &Store) {
    let m = mailbox("atomic@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    store
        .commit_batch(
            &l,
            &batch(vec![message("c1", "t", &["INBOX"], "Keep", "x")], 100),
        )
        .await
        .unwrap();
    let changes_before = store.message_changes(&m).await.unwrap();

    let mut bad = message("c3", "t", &["INBOX"], "Bad", "negative attachment size");
    bad.content.attachments = vec![attachment("1", "image/png", -1)];
    let failing = SyncBatch {
        deletes: vec![(gid("c1"), None)],
        ..batch(vec![message("c2", "t", &["INBOX"], "New", "y"), bad], 200)
    };
    let err = store
        .commit_batch(&l, &failing)
        .await
        .expect_err("constraint violation must fail the batch");

    assert!(
        matches!(err, StoreError::Other(_)),
        "unexpected error {err:?}"
    );
    let live = store.live_messages(&m).await.unwrap();
    assert_eq!(
        live.iter().map(|m| m.gmail_id.as_str()).collect::<Vec<_>>(),
        vec!["c1"]
    );
    assert_eq!(store.message_changes(&m).await.unwrap(), changes_before);
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().history_id,
        Some(hid(100))
    );
    // The lease is still usable afterwards.
    store
        .commit_batch(&l, &batch(vec![message("c2", "t", &[], "New", "y")], 201))
        .await
        .unwrap();
}

/// Expired or overtaken leases write nothing.
pub async fn fencing_refuses_stale_leases(store: &Store) {
    let m = mailbox("fence@example.com");
    active_subscription(store, &m).await;
    let now = Utc::now();

    // Expired: claimed an hour ago for one second.
    let expired = store
        .claim_mailbox(
            &m,
            "replica-a",
            now - TimeDelta::hours(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap()
        .expect("free mailbox is claimable");
    let err = store
        .commit_batch(&expired, &batch(vec![message("d1", "t", &[], "S", "b")], 5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert!(matches!(
        store
            .renew_lease(&expired, now, Duration::from_secs(60))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));

    // Overtaken: A holds a live lease; B claims after A's expiry (as seen
    // from a clock two minutes ahead) and bumps the epoch.
    let a = store
        .claim_mailbox(&m, "replica-a", now, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(a.epoch > expired.epoch);
    assert!(
        store
            .claim_mailbox(&m, "replica-b", now, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "a live lease of another owner is respected"
    );
    let later = now + TimeDelta::minutes(2);
    let b = store
        .claim_mailbox(&m, "replica-b", later, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.epoch, a.epoch + 1);

    let err = store
        .commit_batch(&a, &batch(vec![message("d2", "t", &[], "S", "b")], 50))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseLost { ref mailbox } if mailbox == "fence@example.com"),
        "{err:?}"
    );
    let failure = FailureRecord {
        phase: SyncPhase::Error,
        error: "boom".into(),
        next_poll_at: now,
        run: None,
    };
    assert!(matches!(
        store.record_failure(&a, &failure).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.renew_lease(&a, now, Duration::from_secs(60)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .release_lease(&a, now)
        .await
        .expect("releasing a lost lease is not an error");

    assert_eq!(store.count_messages(&m).await.unwrap(), 0);
    assert!(store.message_changes(&m).await.unwrap().is_empty());
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.history_id, None);
    assert_eq!(
        state.lease_owner.as_deref(),
        Some("replica-b"),
        "A's release must not free B's lease"
    );
    assert_eq!(state.lease_epoch, b.epoch);

    // B's lease works, renews, and releases.
    store
        .commit_batch(&b, &batch(vec![message("d3", "t", &[], "S", "b")], 60))
        .await
        .unwrap();
    let renewed = store
        .renew_lease(&b, Utc::now(), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(renewed.epoch, b.epoch);
    let next = Utc::now() + TimeDelta::minutes(5);
    store.release_lease(&renewed, next).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.lease_owner, None);
    assert_eq!(state.history_id, Some(hid(60)));
    assert!(state.next_poll_at.is_some());
}

/// Concurrent claimers never get the same mailbox; only due, active,
/// unleased mailboxes are handed out.
pub async fn claim_due_hands_each_mailbox_to_one_owner(store: &Store) {
    let mut active = Vec::new();
    for i in 0..8 {
        let m = mailbox(&format!("claim{i}@example.com"));
        active_subscription(store, &m).await;
        active.push(m);
    }
    let paused = mailbox("paused@example.com");
    active_subscription(store, &paused).await;
    store
        .update_subscription(&transition(
            &paused,
            SubscriptionStatus::Active,
            SubscriptionAction::Pause,
        ))
        .await
        .unwrap();
    let pending = mailbox("pending@example.com");
    store
        .insert_subscription(&NewSubscription {
            mailbox: pending,
            requested_by: operator("r"),
            label_filter: vec![],
            note: None,
            auth_mode: AuthMode::Delegated,
        })
        .await
        .unwrap();

    let now = Utc::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim_due(&format!("owner-{i}"), now, Duration::from_secs(60), 3)
                .await
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.expect("claim task").expect("claim_due"));
    }
    let mut names: Vec<String> = claimed.iter().map(|l| l.mailbox.to_string()).collect();
    names.sort();
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a mailbox was claimed twice: {names:?}"
    );
    assert_eq!(
        names.len(),
        8,
        "every active mailbox is claimed exactly once: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("paused") || n.starts_with("pending"))
    );

    // Nothing left while the leases are live.
    assert!(
        store
            .claim_due("late", now, Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A released mailbox is claimed again only once it is due.
    let first = &claimed[0];
    for l in &claimed[1..] {
        store
            .release_lease(l, now + TimeDelta::hours(1))
            .await
            .unwrap();
    }
    store
        .release_lease(first, now + TimeDelta::minutes(30))
        .await
        .unwrap();
    assert!(
        store
            .claim_due("late", now, Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_due(
            "late",
            now + TimeDelta::minutes(45),
            Duration::from_secs(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].mailbox, first.mailbox);
    assert_eq!(again[0].epoch, first.epoch + 1);
    let rest = store
        .claim_due(
            "later",
            now + TimeDelta::minutes(61),
            Duration::from_secs(60),
            3,
        )
        .await
        .unwrap();
    assert_eq!(rest.len(), 3, "limit is respected");

    // claim_mailbox ignores next_poll_at but not a live lease of another owner.
    assert!(
        store
            .claim_mailbox(
                &rest[0].mailbox,
                "cli",
                now + TimeDelta::minutes(61),
                Duration::from_secs(60)
            )
            .await
            .unwrap()
            .is_none()
    );
    let not_due = claimed
        .iter()
        .find(|l| !rest.iter().any(|r| r.mailbox == l.mailbox) && l.mailbox != first.mailbox)
        .unwrap();
    assert!(
        store
            .claim_mailbox(&not_due.mailbox, "cli", now, Duration::from_secs(60))
            .await
            .unwrap()
            .is_some(),
        "claim_mailbox ignores next_poll_at"
    );
    assert!(matches!(
        store
            .claim_mailbox(
                &mailbox("nobody@example.com"),
                "cli",
                now,
                Duration::from_secs(60)
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store
            .claim_mailbox(&paused, "cli", now, Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );

    let statuses = store.mailbox_statuses().await.unwrap();
    assert_eq!(statuses.len(), 10);
    assert!(
        statuses
            .iter()
            .any(|s| s.status == SubscriptionStatus::Pending && s.phase.is_none())
    );
}

/// Full-text search: live messages only; hostile input never errors.
pub async fn full_text_search(store: &Store) {
    let m = mailbox("fts@example.com");
    let other = mailbox("fts2@example.com");
    for mb in [&m, &other] {
        active_subscription(store, mb).await;
        let l = lease(store, mb).await;
        store
            .commit_batch(
                &l,
                &batch(
                    vec![
                        message(
                            "e1",
                            "t",
                            &["INBOX"],
                            "Quarterly invoice",
                            "Payment is overdue",
                        ),
                        message("e2", "t", &["INBOX"], "Lunch", "Sandwiches at noon"),
                    ],
                    10,
                ),
            )
            .await
            .unwrap();
    }

    let hits = store.search(Some(&m), "invoice", 10).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].gmail_id, gid("e1"));
    assert_eq!(hits[0].subject.as_deref(), Some("Quarterly invoice"));
    assert_eq!(
        store
            .search(Some(&m), "INVOICE overdue", 10)
            .await
            .unwrap()
            .len(),
        1,
        "words are ANDed, case-insensitive"
    );
    assert!(
        store
            .search(Some(&m), "invoice sandwiches", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .search(Some(&m), "billing@vendor.example", 10)
            .await
            .unwrap()
            .len(),
        2,
        "addresses are indexed"
    );
    assert_eq!(
        store.search(Some(&m), "billing", 10).await.unwrap().len(),
        2
    );
    assert_eq!(store.search(None, "invoice", 10).await.unwrap().len(), 2);
    assert_eq!(store.search(None, "invoice", 1).await.unwrap().len(), 1);

    for hostile in [
        "\"",
        "*",
        "AND",
        "NEAR(",
        "invoice\"",
        "a OR b",
        "-x",
        "'; DROP TABLE messages; --",
        "(",
        "^",
        ":",
        "\0",
        "",
        "   ",
        "subject:invoice",
        "inv*",
        "NOT invoice",
        "\"unbalanced",
    ] {
        store
            .search(Some(&m), hostile, 10)
            .await
            .unwrap_or_else(|e| panic!("search {hostile:?} failed: {e}"));
    }
    assert_eq!(
        store
            .search(Some(&m), "\"invoice\"", 10)
            .await
            .unwrap()
            .len(),
        1
    );

    let l = lease(store, &m).await;
    store
        .commit_batch(
            &l,
            &SyncBatch {
                deletes: vec![(gid("e1"), None)],
                ..SyncBatch::new(checkpoint(11))
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .search(Some(&m), "invoice", 10)
            .await
            .unwrap()
            .is_empty(),
        "a deleted message must not match"
    );
    assert_eq!(store.search(None, "invoice", 10).await.unwrap().len(), 1);
    // Re-upserted content replaces the indexed text.
    store
        .commit_batch(
            &l,
            &batch(vec![message("e2", "t", &["INBOX"], "Dinner", "Pizza")], 12),
        )
        .await
        .unwrap();
    assert!(
        store
            .search(Some(&m), "sandwiches", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.search(Some(&m), "pizza", 10).await.unwrap().len(), 1);
}

/// The subscription state machine through update_subscription, with events.
pub async fn subscription_lifecycle_is_audited(store: &Store) {
    let m = mailbox("life@example.com");
    let new = NewSubscription {
        mailbox: m.clone(),
        requested_by: operator("alice"),
        label_filter: vec!["INBOX".into(), "Label_7".into()],
        note: Some("shared support box".into()),
        auth_mode: AuthMode::Delegated,
    };
    let s = store.insert_subscription(&new).await.unwrap();
    assert_eq!(s.status, SubscriptionStatus::Pending);
    assert_eq!(s.label_filter, vec!["INBOX", "Label_7"]);
    assert!(matches!(
        store.insert_subscription(&new).await,
        Err(StoreError::Conflict(_))
    ));

    let stale = transition(&m, SubscriptionStatus::Active, SubscriptionAction::Pause);
    assert!(matches!(
        store.update_subscription(&stale).await,
        Err(StoreError::Conflict(_))
    ));
    let unknown = transition(
        &mailbox("ghost@example.com"),
        SubscriptionStatus::Pending,
        SubscriptionAction::Approve,
    );
    assert!(matches!(
        store.update_subscription(&unknown).await,
        Err(StoreError::NotFound(_))
    ));

    let mut status = SubscriptionStatus::Pending;
    for action in [
        SubscriptionAction::Approve,
        SubscriptionAction::Suspend,
        SubscriptionAction::Reinstate,
        SubscriptionAction::Pause,
        SubscriptionAction::Resume,
        SubscriptionAction::Remove,
    ] {
        let mut u = transition(&m, status, action);
        if action == SubscriptionAction::Suspend {
            u.reason = Some("left the approved org unit".into());
            u.org_unit_seen = Some("/Elsewhere".into());
        }
        let s = store
            .update_subscription(&u)
            .await
            .unwrap_or_else(|e| panic!("{action:?}: {e}"));
        assert_eq!(s.status, u.new_status);
        if action == SubscriptionAction::Approve {
            assert_eq!(s.approved_by, Some(operator("approver")));
            assert!(s.approved_at.is_some());
        }
        if action == SubscriptionAction::Suspend {
            assert_eq!(
                s.status_reason.as_deref(),
                Some("left the approved org unit")
            );
            assert_eq!(s.org_unit_seen.as_deref(), Some("/Elsewhere"));
        }
        if action == SubscriptionAction::Reinstate {
            assert_eq!(
                s.status_reason, None,
                "a status change without reason clears the old one"
            );
        }
        status = u.new_status;
    }

    // Review without a status change.
    let readded = store
        .insert_subscription(&new)
        .await
        .expect("a removed subscription can be re-added");
    assert_eq!(readded.status, SubscriptionStatus::Pending);
    let review = SubscriptionUpdate {
        reviewed_by: Some(operator("carol")),
        action: "review".into(),
        ..transition(&m, SubscriptionStatus::Pending, SubscriptionAction::Approve)
    };
    let review = SubscriptionUpdate {
        new_status: SubscriptionStatus::Pending,
        approved_by: None,
        ..review
    };
    let s = store.update_subscription(&review).await.unwrap();
    assert_eq!(s.reviewed_by, Some(operator("carol")));
    assert!(s.last_reviewed_at.is_some());
    store
        .record_org_unit(&m, Some("/Shared Mailboxes"), true)
        .await
        .unwrap();
    let s = store.get_subscription(&m).await.unwrap().unwrap();
    assert_eq!(s.org_unit_seen.as_deref(), Some("/Shared Mailboxes"));
    assert!(s.org_unit_checked_at.is_some());
    assert!(matches!(
        store
            .record_org_unit(&mailbox("ghost@example.com"), None, false)
            .await,
        Err(StoreError::NotFound(_))
    ));

    let events = store.subscription_events(&m).await.unwrap();
    let trail: Vec<(String, Option<SubscriptionStatus>, SubscriptionStatus)> = events
        .iter()
        .map(|e| (e.action.clone(), e.old_status, e.new_status))
        .collect();
    use SubscriptionStatus as S;
    assert_eq!(
        trail,
        vec![
            ("add".into(), None, S::Pending),
            ("approve".into(), Some(S::Pending), S::Active),
            ("suspend".into(), Some(S::Active), S::Suspended),
            ("reinstate".into(), Some(S::Suspended), S::Active),
            ("pause".into(), Some(S::Active), S::Paused),
            ("resume".into(), Some(S::Paused), S::Active),
            ("remove".into(), Some(S::Active), S::Removed),
            ("add".into(), Some(S::Removed), S::Pending),
            ("review".into(), Some(S::Pending), S::Pending),
        ]
    );
    assert_eq!(
        events[2].reason.as_deref(),
        Some("left the approved org unit")
    );
    assert_eq!(events[0].actor, "alice");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.list_subscriptions().await.unwrap().len(), 1);
}

/// purge_mailbox deletes everything ingested and reports counts per table.
pub async fn purge_reports_counts(store: &Store) {
    let m = mailbox("purge@example.com");
    let keep = mailbox("keep@example.com");
    for mb in [&m, &keep] {
        active_subscription(store, mb).await;
    }
    let l = lease(store, &m).await;
    let mut with_attachment = message("f2", "t", &["INBOX"], "Two", "y");
    with_attachment.content.attachments = vec![
        attachment("1", "text/csv", 10),
        attachment("2", "text/csv", 20),
    ];
    let b = SyncBatch {
        labels: Some(vec![LabelRow {
            label_id: "INBOX".into(),
            name: "INBOX".into(),
            label_type: "system".into(),
        }]),
        run: Some(run_row(&m)),
        ..batch(
            vec![
                message("f1", "t", &["INBOX", "UNREAD"], "One", "x"),
                with_attachment,
            ],
            10,
        )
    };
    store.commit_batch(&l, &b).await.unwrap();
    let lk = lease(store, &keep).await;
    store
        .commit_batch(
            &lk,
            &batch(vec![message("k1", "t", &["INBOX"], "Kept", "x")], 10),
        )
        .await
        .unwrap();

    let counts = store.purge_mailbox(&m).await.unwrap();

    assert_eq!(counts.messages, 2);
    assert_eq!(counts.message_addresses, 4);
    assert_eq!(counts.message_labels, 3);
    assert_eq!(counts.attachments, 2);
    assert_eq!(counts.labels, 1);
    assert_eq!(counts.message_changes, 2);
    assert_eq!(counts.sync_runs, 1);
    assert_eq!(counts.sync_state, 1);
    assert_eq!(store.count_messages(&m).await.unwrap(), 0);
    assert!(store.sync_state(&m).await.unwrap().is_none());
    assert!(
        store.get_subscription(&m).await.unwrap().is_some(),
        "the subscription and its audit log stay"
    );
    assert!(store.search(Some(&m), "One", 10).await.unwrap().is_empty());
    assert_eq!(store.count_messages(&keep).await.unwrap(), 1);
    assert_eq!(store.search(None, "Kept", 10).await.unwrap().len(), 1);
    assert_eq!(
        store.purge_mailbox(&m).await.unwrap(),
        super::PurgeCounts::default()
    );
}

/// A finished incremental pass of `replica-1` (2 added, 3 calls, 45 units).
pub fn run_row(m: &MailboxAddress) -> SyncRunRow {
    let now = now();
    SyncRunRow {
        mailbox: m.clone(),
        kind: SyncKind::Incremental,
        replica: "replica-1".into(),
        started_at: now - TimeDelta::seconds(3),
        finished_at: now,
        counts: SyncCounts {
            added: 2,
            updated: 0,
            deleted: 0,
            label_changes: 0,
            api_calls: 3,
            quota_units: 45,
        },
        outcome: RunOutcome::Ok,
        error: None,
    }
}

/// SQL metacharacters (and NUL) from operators and mail are stored verbatim.
pub async fn metacharacters_are_stored_verbatim(store: &Store) {
    let m = mailbox("o'brien+x@example.com");
    let note = "'; DROP TABLE subscriptions; -- \"quoted\" 100% _under_ \\back";
    let who = operator("x'); DELETE FROM subscription_events; --");
    store
        .insert_subscription(&NewSubscription {
            mailbox: m.clone(),
            requested_by: who.clone(),
            label_filter: vec!["Robert'); DROP TABLE labels;--".into(), "a,b".into()],
            note: Some(note.into()),
            auth_mode: AuthMode::Delegated,
        })
        .await
        .unwrap();
    let s = store.get_subscription(&m).await.unwrap().unwrap();
    assert_eq!(s.note.as_deref(), Some(note));
    assert_eq!(s.requested_by, who);
    assert_eq!(
        s.label_filter,
        vec!["Robert'); DROP TABLE labels;--", "a,b"]
    );
    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Pending,
            SubscriptionAction::Approve,
        ))
        .await
        .unwrap();

    let l = lease(store, &m).await;
    let mut msg = message(
        "g1",
        "t'1",
        &["Label_'; --", "%"],
        "It's \"quoted\" -- ; DROP",
        "body\0with nul",
    );
    msg.content.addresses.push(address(
        AddressRole::Cc,
        Some("O'Brien, \"Pat\""),
        "pat@o'brien.example",
    ));
    store.commit_batch(&l, &batch(vec![msg], 10)).await.unwrap();

    let live = store.live_messages(&m).await.unwrap();
    assert_eq!(live[0].thread_id, "t'1");
    assert_eq!(live[0].label_ids, vec!["%", "Label_'; --"]);
    let subjects = store
        .query_first_column("SELECT subject FROM messages WHERE gmail_id = 'g1'")
        .await
        .unwrap();
    assert_eq!(subjects, vec!["It's \"quoted\" -- ; DROP"]);
    let bodies = store
        .query_first_column("SELECT body_text FROM messages WHERE gmail_id = 'g1'")
        .await
        .unwrap();
    assert_eq!(bodies, vec!["bodywith nul"], "NUL is stripped");
    let names = store
        .query_first_column(
            "SELECT name FROM message_addresses WHERE gmail_id = 'g1' AND role = 'cc'",
        )
        .await
        .unwrap();
    assert_eq!(names, vec!["O'Brien, \"Pat\""]);
    assert_eq!(store.list_subscriptions().await.unwrap().len(), 1);
    assert_eq!(store.subscription_events(&m).await.unwrap().len(), 2);
}

/// reserve_quota never lets concurrent reservations exceed the limit.
pub async fn quota_reservations_respect_the_limit(store: &Store) {
    let window = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.reserve_quota("project", window, 10, 100).await
        }));
    }
    let mut granted = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 10);
    assert!(
        !store
            .reserve_quota("project", window, 1, 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .reserve_quota("other", window, 101, 100)
            .await
            .unwrap(),
        "a single request over the limit"
    );
    assert!(
        store
            .reserve_quota("other", window, 100, 100)
            .await
            .unwrap()
    );
    let next = window + TimeDelta::minutes(1);
    assert!(
        store
            .reserve_quota("project", next, 100, 100)
            .await
            .unwrap(),
        "a new window starts empty"
    );
    let total = store
        .query_first_column(
            "SELECT units FROM quota_usage WHERE bucket = 'project' ORDER BY window_start",
        )
        .await
        .unwrap();
    assert_eq!(total, vec!["100", "100"]);
}

/// The daily count: concurrent reservations never pass the limit, backfill
/// units are counted apart, days are separate; the listing's progress and a
/// quota wait are fenced by the lease, shown by `mailbox_statuses`, and
/// cleared by the progress write that follows.
pub async fn daily_quota_and_backfill_progress(store: &Store) {
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .reserve_daily_quota("2026-03-08", 10, 100, i % 2 == 0)
                .await
        }));
    }
    let mut granted = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 10);
    let day = store.daily_quota_usage("2026-03-08").await.unwrap();
    assert_eq!(day.units, 100);
    assert!(day.backfill_units <= 100 && day.backfill_units % 10 == 0);
    assert!(
        !store
            .reserve_daily_quota("2026-03-08", 1, 100, false)
            .await
            .unwrap()
    );
    assert_eq!(
        store.daily_quota_usage("2026-03-09").await.unwrap(),
        super::DailyQuotaUsage::default(),
        "a new day starts empty"
    );

    let m = mailbox("progress@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let p = super::FullSyncProgress {
        started_at: micros(Utc::now()),
        listed: 500,
        fetched: 480,
        estimated_total: 1200,
    };
    store.record_full_sync_progress(&l, Some(&p)).await.unwrap();
    assert_eq!(store.full_sync_progress(&m).await.unwrap(), Some(p));
    let until = micros(Utc::now() + TimeDelta::hours(3));
    let run = SyncRunRow {
        mailbox: m.clone(),
        kind: SyncKind::Full,
        replica: "conformance".into(),
        started_at: micros(Utc::now()),
        finished_at: micros(Utc::now()),
        counts: SyncCounts::default(),
        outcome: RunOutcome::QuotaWait,
        error: Some("kept for incremental passes".into()),
    };
    store
        .record_quota_wait(&l, until, "kept for incremental passes", &run)
        .await
        .unwrap();
    let status = store.mailbox_statuses().await.unwrap();
    let st = status.iter().find(|s| s.mailbox == m).unwrap();
    assert_eq!(st.full_sync, Some(p));
    assert_eq!(
        st.quota_wait.as_ref().map(|w| (w.until, w.reason.as_str())),
        Some((until, "kept for incremental passes"))
    );
    assert_eq!(st.next_poll_at, Some(until));
    assert_eq!(
        store.sync_runs(&m).await.unwrap().last().map(|r| r.outcome),
        Some(RunOutcome::QuotaWait)
    );

    // A stale lease writes neither.
    let stale = Lease {
        epoch: l.epoch - 1,
        ..l.clone()
    };
    assert!(matches!(
        store.record_full_sync_progress(&stale, None).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.record_quota_wait(&stale, until, "x", &run).await,
        Err(StoreError::LeaseLost { .. })
    ));

    // The listing goes on (or ends): the wait is over.
    store.record_full_sync_progress(&l, None).await.unwrap();
    let status = store.mailbox_statuses().await.unwrap();
    let st = status.iter().find(|s| s.mailbox == m).unwrap();
    assert_eq!((st.full_sync, st.quota_wait.clone()), (None, None));
}

/// Full-sync reconciliation: mark_seen + delete_unseen.
pub async fn full_sync_deletes_unseen_messages(store: &Store) {
    let m = mailbox("gen@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let at_gen = |g: i64, history: u64| Checkpoint {
        phase: SyncPhase::FullSync,
        full_sync_generation: g,
        ..checkpoint(history)
    };
    let first = SyncBatch {
        upserts: vec![
            message("h1", "t", &[], "1", "x"),
            message("h2", "t", &[], "2", "x"),
            message("h3", "t", &[], "3", "x"),
        ],
        ..SyncBatch::new(at_gen(1, 10))
    };
    store.commit_batch(&l, &first).await.unwrap();

    let page = SyncBatch {
        upserts: vec![message("h4", "t", &[], "4", "x")],
        mark_seen: vec![gid("h1"), gid("h2")],
        delete_unseen: true,
        ..SyncBatch::new(Checkpoint {
            phase: SyncPhase::Incremental,
            ..at_gen(2, 20)
        })
    };
    let s = store.commit_batch(&l, &page).await.unwrap();

    assert_eq!((s.added, s.deleted), (1, 1));
    let live: Vec<String> = store
        .live_messages(&m)
        .await
        .unwrap()
        .iter()
        .map(|m| m.gmail_id.to_string())
        .collect();
    assert_eq!(live, vec!["h1", "h2", "h4"]);
    let last = store.message_changes(&m).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.gmail_id.as_str(), last.change),
        ("h3", ChangeKind::Deleted)
    );
    assert_eq!(store.commit_batch(&l, &page).await.unwrap().deleted, 0);
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.full_sync_generation, 2);
    assert_eq!(state.phase, SyncPhase::Incremental);
}

/// The label scope: a relabeled live message left with no scope label, and
/// those named in `leave_scope`, leave the live rows as `left_scope`; a
/// later upsert brings one back as `added`; the applied scope is written
/// with the checkpoint. Replaying a batch records nothing twice.
pub async fn label_scope_is_enforced_by_the_batch(store: &Store) {
    let m = mailbox("scope@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let first = SyncBatch {
        upserts: vec![
            message("s1", "t", &["STARRED", "INBOX"], "1", "x"),
            message("s2", "t", &["STARRED"], "2", "x"),
            message("s3", "t", &["Label_1"], "3", "x"),
            message("s4", "t", &["STARRED"], "4", "x"),
        ],
        ..SyncBatch::new(Checkpoint {
            applied_label_scope: Some(vec!["STARRED".into(), "Label_1".into()]),
            ..checkpoint(10)
        })
    };
    store.commit_batch(&l, &first).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(
        state.applied_label_scope,
        Some(vec!["STARRED".to_owned(), "Label_1".to_owned()])
    );
    let scoped = SyncBatch {
        label_changes: vec![
            // Loses one of two scope labels: stays.
            LabelChange {
                gmail_id: gid("s1"),
                added: vec![],
                removed: vec!["STARRED".into()],
                history_id: Some(hid(20)),
            },
            // Loses its last scope label: leaves.
            LabelChange {
                gmail_id: gid("s2"),
                added: vec!["INBOX".into()],
                removed: vec!["STARRED".into()],
                history_id: Some(hid(20)),
            },
        ],
        leave_scope: vec![gid("s3"), gid("unknown1")],
        enforce_scope: Some(vec!["STARRED".into(), "INBOX".into()]),
        ..SyncBatch::new(checkpoint(20))
    };
    let s = store.commit_batch(&l, &scoped).await.unwrap();
    assert_eq!(s.deleted, 1, "only s3 leaves: {s:?}");
    let live: Vec<String> = store
        .live_messages(&m)
        .await
        .unwrap()
        .iter()
        .map(|m| m.gmail_id.to_string())
        .collect();
    assert_eq!(
        live,
        vec!["s1", "s2", "s4"],
        "s2 keeps INBOX, in this scope"
    );
    let scoped = SyncBatch {
        label_changes: vec![LabelChange {
            gmail_id: gid("s2"),
            added: vec![],
            removed: vec!["INBOX".into()],
            history_id: Some(hid(30)),
        }],
        enforce_scope: Some(vec!["STARRED".into(), "INBOX".into()]),
        ..SyncBatch::new(checkpoint(30))
    };
    store.commit_batch(&l, &scoped).await.unwrap();
    let left: Vec<String> = store
        .message_changes(&m)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.change == ChangeKind::LeftScope)
        .map(|c| c.gmail_id.to_string())
        .collect();
    assert_eq!(left, vec!["s3", "s2"]);
    // Replayed: nothing new.
    assert_eq!(store.commit_batch(&l, &scoped).await.unwrap().deleted, 0);
    // No scope enforced: a relabel to no label at all keeps the row.
    let whole = SyncBatch {
        label_changes: vec![LabelChange {
            gmail_id: gid("s4"),
            added: vec![],
            removed: vec!["STARRED".into()],
            history_id: Some(hid(40)),
        }],
        ..SyncBatch::new(checkpoint(40))
    };
    assert_eq!(store.commit_batch(&l, &whole).await.unwrap().deleted, 0);
    // Back in scope: an upsert revives the row as `added`.
    let back = SyncBatch {
        upserts: vec![message("s3", "t", &["STARRED"], "3", "x")],
        ..SyncBatch::new(checkpoint(50))
    };
    assert_eq!(store.commit_batch(&l, &back).await.unwrap().added, 1);
    let last = store.message_changes(&m).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.gmail_id.as_str(), last.change),
        ("s3", ChangeKind::Added)
    );
    assert_eq!(store.count_messages(&m).await.unwrap(), 3);
}

/// record_failure counts failures; a successful batch resets them.
pub async fn failures_are_counted_and_reset(store: &Store) {
    let m = mailbox("fail@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let next = now() + TimeDelta::minutes(10);
    for _ in 0..2 {
        let mut run = run_row(&m);
        run.outcome = RunOutcome::Error;
        run.error = Some("HTTP 500".into());
        store
            .record_failure(
                &l,
                &FailureRecord {
                    phase: SyncPhase::Error,
                    error: "HTTP 500 from Gmail".into(),
                    next_poll_at: next,
                    run: Some(run),
                },
            )
            .await
            .unwrap();
    }
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.consecutive_failures, 2);
    assert_eq!(state.phase, SyncPhase::Error);
    assert_eq!(state.last_error.as_deref(), Some("HTTP 500 from Gmail"));
    assert_eq!(state.next_poll_at, Some(next));
    let runs = store.sync_runs(&m).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].error.as_deref(), Some("HTTP 500"));
    assert_eq!(runs[0], {
        let mut r = run_row(&m);
        r.outcome = RunOutcome::Error;
        r.error = Some("HTTP 500".into());
        SyncRunRow {
            started_at: runs[0].started_at,
            finished_at: runs[0].finished_at,
            ..r
        }
    });

    store
        .commit_batch(&l, &SyncBatch::new(checkpoint(30)))
        .await
        .unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!((state.consecutive_failures, state.last_error), (0, None));
    assert_eq!(state.history_id, Some(hid(30)));
    let statuses = store.mailbox_statuses().await.unwrap();
    assert_eq!(statuses[0].history_id, Some(hid(30)));
}

/// Housekeeping deletes runs and quota windows older than the cut-offs, in
/// batches, and nothing else; `None` keeps every run.
pub async fn old_runs_and_quota_windows_are_pruned(store: &Store) {
    let m = mailbox("prune@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let now = now();
    let record = |age: TimeDelta| {
        let mut run = run_row(&m);
        run.started_at = now - age;
        run.finished_at = now - age + TimeDelta::seconds(2);
        FailureRecord {
            phase: SyncPhase::Error,
            error: "HTTP 500 from Gmail".into(),
            next_poll_at: now,
            run: Some(run),
        }
    };
    for days in [200, 120, 100, 95, 91, 3] {
        store
            .record_failure(&l, &record(TimeDelta::days(days)))
            .await
            .unwrap();
    }
    let minute = |age: TimeDelta| {
        (now - age)
            .duration_trunc(TimeDelta::minutes(1))
            .expect("a minute boundary")
    };
    for age in [TimeDelta::days(3), TimeDelta::hours(25), TimeDelta::zero()] {
        assert!(
            store
                .reserve_quota("project-minute", minute(age), 20, 1_000)
                .await
                .unwrap()
        );
    }

    let cutoff = now - TimeDelta::days(90);
    let kept_runs = store
        .prune_history(None, now - TimeDelta::days(30), 2)
        .await
        .unwrap();
    assert_eq!(
        kept_runs,
        Pruned {
            sync_runs: 0,
            quota_windows: 0
        }
    );
    assert_eq!(store.sync_runs(&m).await.unwrap().len(), 6);

    // Five old runs in batches of two: the loop must not stop after one.
    let pruned = store
        .prune_history(Some(cutoff), now - TimeDelta::days(1), 2)
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            sync_runs: 5,
            quota_windows: 2
        }
    );
    let runs = store.sync_runs(&m).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].started_at, micros(now - TimeDelta::days(3)));
    let windows = store
        .query_first_column("SELECT units FROM quota_usage")
        .await
        .unwrap();
    assert_eq!(windows, vec!["20"]);
    assert_eq!(
        store
            .prune_history(Some(cutoff), now - TimeDelta::days(1), 2)
            .await
            .unwrap(),
        Pruned::default(),
        "a second pass finds nothing"
    );
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.consecutive_failures, 6, "sync_state is not touched");
}

/// Migrations are embedded and idempotent.
pub async fn migrations_are_applied_once(store: &Store) {
    assert_eq!(store.pending_migrations().await.unwrap(), 0);
    store
        .migrate()
        .await
        .expect("re-running migrations is a no-op");
    store.ping().await.unwrap();
}

// ---------------------------------------------------------------------------
// Sample data for the analysts' example queries (docs/schema.md).
// ---------------------------------------------------------------------------

/// Two mailboxes with threads, replies, attachments, labels, a parse error,
/// a deletion and label changes, written through `commit_batch`.
pub async fn seed_sample_data(store: &Store) {
    let support = mailbox("support@example.com");
    let sales = mailbox("sales@example.com");
    for m in [&support, &sales] {
        active_subscription(store, m).await;
    }
    let day = 86_400_000_i64;
    let base = 1_767_225_600_000_i64; // 2026-01-01T00:00:00Z
    let mk =
        |id: &str, thread: &str, at: i64, from: &str, to: &str, labels: &[&str], subject: &str| {
            let mut m = message(id, thread, labels, subject, &format!("{subject} body text"));
            m.meta.internal_date_ms = at;
            m.content.addresses = vec![
                address(AddressRole::From, None, from),
                address(AddressRole::To, None, to),
            ];
            m.content.message_id = Some(
                format!("<{id}@example>")
                    .trim_matches(['<', '>'])
                    .to_owned(),
            );
            m
        };
    // support@: thread t1 answered within an hour; t2 never answered; t3 answered after 2 days.
    let mut s1 = mk(
        "s1",
        "t1",
        base,
        "alice@customer.example",
        "support@example.com",
        &["INBOX"],
        "Printer broken",
    );
    s1.content.attachments = vec![
        attachment("1", "image/png", 2048),
        attachment("2", "application/pdf", 4096),
    ];
    let mut s2 = mk(
        "s2",
        "t1",
        base + 3_600_000,
        "support@example.com",
        "alice@customer.example",
        &["SENT"],
        "Re: Printer broken",
    );
    s2.content.in_reply_to = Some("s1@example".into());
    let s3 = mk(
        "s3",
        "t2",
        base + day,
        "bob@customer.example",
        "support@example.com",
        &["INBOX", "UNREAD"],
        "Invoice question",
    );
    let s4 = mk(
        "s4",
        "t3",
        base + 2 * day,
        "carol@partner.example",
        "support@example.com",
        &["INBOX", "UNREAD"],
        "Contract renewal",
    );
    let mut s5 = mk(
        "s5",
        "t3",
        base + 4 * day,
        "support@example.com",
        "carol@partner.example",
        &["SENT"],
        "Re: Contract renewal",
    );
    s5.content.in_reply_to = Some("s4@example".into());
    let mut s6 = mk(
        "s6",
        "t4",
        base + 8 * day,
        "alice@customer.example",
        "support@example.com",
        &["INBOX"],
        "Garbled",
    );
    s6.content.parse_error = Some("invalid MIME boundary".into());
    let s7 = mk(
        "s7",
        "t5",
        base + 9 * day,
        "spam@junk.example",
        "support@example.com",
        &["SPAM"],
        "Win a prize",
    );
    let m1 = mk(
        "m1",
        "u1",
        base + day,
        "dave@customer.example",
        "sales@example.com",
        &["INBOX", "UNREAD"],
        "Quote request",
    );
    let mut m2 = mk(
        "m2",
        "u1",
        base + day + 600_000,
        "sales@example.com",
        "dave@customer.example",
        &["SENT"],
        "Re: Quote request",
    );
    m2.content.in_reply_to = Some("m1@example".into());
    m2.content.attachments = vec![attachment("1", "application/pdf", 10_000)];

    let system = |ids: &[&str]| {
        Some(
            ids.iter()
                .map(|i| LabelRow {
                    label_id: (*i).into(),
                    name: (*i).into(),
                    label_type: "system".into(),
                })
                .collect(),
        )
    };
    let l = lease(store, &support).await;
    store
        .commit_batch(
            &l,
            &SyncBatch {
                labels: system(&["INBOX", "SENT", "UNREAD", "SPAM"]),
                run: Some(run_row(&support)),
                ..batch(vec![s1, s2, s3, s4, s5, s6, s7], 100)
            },
        )
        .await
        .unwrap();
    store
        .commit_batch(
            &l,
            &SyncBatch {
                label_changes: vec![LabelChange {
                    gmail_id: gid("s4"),
                    added: vec![],
                    removed: vec!["UNREAD".into()],
                    history_id: Some(hid(101)),
                }],
                deletes: vec![(gid("s7"), Some(hid(102)))],
                ..SyncBatch::new(checkpoint(102))
            },
        )
        .await
        .unwrap();
    let l = lease(store, &sales).await;
    store
        .commit_batch(
            &l,
            &SyncBatch {
                labels: system(&["INBOX", "SENT", "UNREAD"]),
                ..batch(vec![m1, m2], 50)
            },
        )
        .await
        .unwrap();
}

/// Every fenced sync write also checks, in its own transaction, that the
/// subscription is still active: a pause or a removal refuses the batch and
/// the failure record (nothing written), while releasing the lease still
/// works; resumed, the mailbox is claimable and writable again.
pub async fn decisions_fence_every_sync_write(store: &Store) {
    let m = mailbox("decided@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    store
        .commit_batch(&l, &batch(vec![message("k1", "t", &[], "S", "b")], 10))
        .await
        .expect("an active subscription's batch is written");

    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Active,
            SubscriptionAction::Pause,
        ))
        .await
        .unwrap();
    let err = store
        .commit_batch(&l, &batch(vec![message("k2", "t", &[], "S", "b")], 20))
        .await
        .expect_err("a paused subscription's batch is refused");
    assert!(err.to_string().contains("paused"), "{err}");
    let failure = FailureRecord {
        phase: SyncPhase::Error,
        error: "boom".into(),
        next_poll_at: Utc::now(),
        run: Some(run_row(&m)),
    };
    let err = store
        .record_failure(&l, &failure)
        .await
        .expect_err("a paused subscription's failure record is refused");
    assert!(err.to_string().contains("paused"), "{err}");
    assert!(
        matches!(
            err,
            StoreError::NotActive {
                decision: StopDecision::Paused,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.count_messages(&m).await.unwrap(), 1);
    assert!(store.sync_runs(&m).await.unwrap().is_empty());
    // The stop's own run row is written under the lease alone.
    let mut stopped = run_row(&m);
    stopped.outcome = RunOutcome::Paused;
    store.record_stop(&l, &stopped).await.unwrap();
    assert_eq!(
        store.sync_runs(&m).await.unwrap()[0].outcome,
        RunOutcome::Paused
    );
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(
        state.history_id,
        Some(hid(10)),
        "the checkpoint did not move"
    );
    assert_eq!(state.consecutive_failures, 0);
    store.release_lease(&l, Utc::now()).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(
        state.lease_owner, None,
        "the lease is released after a stop"
    );
    assert!(
        store
            .claim_mailbox(&m, "conformance", Utc::now(), Duration::from_secs(60))
            .await
            .unwrap()
            .is_none(),
        "a paused mailbox is not claimable"
    );

    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Paused,
            SubscriptionAction::Resume,
        ))
        .await
        .unwrap();
    let l = lease(store, &m).await;
    store
        .commit_batch(&l, &batch(vec![message("k3", "t", &[], "S", "b")], 30))
        .await
        .expect("a resumed subscription's batch is written");

    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Active,
            SubscriptionAction::Remove,
        ))
        .await
        .unwrap();
    let err = store
        .commit_batch(&l, &batch(vec![message("k4", "t", &[], "S", "b")], 40))
        .await
        .expect_err("a removed subscription's batch is refused");
    assert!(err.to_string().contains("removed"), "{err}");
    assert_eq!(store.count_messages(&m).await.unwrap(), 2);
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.history_id, Some(hid(30)));

    // Removed with --purge while the pass runs: nothing comes back.
    store.purge_mailbox(&m).await.unwrap();
    assert!(
        store
            .commit_batch(&l, &batch(vec![message("k5", "t", &[], "S", "b")], 50))
            .await
            .is_err()
    );
    assert!(matches!(
        store.record_stop(&l, &run_row(&m)).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(store.count_messages(&m).await.unwrap(), 0);
    assert!(store.sync_state(&m).await.unwrap().is_none());

    // A lease pinned to another auth mode is refused too.
    let o = mailbox("pinned@example.com");
    active_subscription(store, &o).await;
    let pinned = Lease {
        auth_mode: Some(AuthMode::OAuth),
        ..lease(store, &o).await
    };
    let err = store
        .commit_batch(&pinned, &batch(vec![message("p1", "t", &[], "S", "b")], 10))
        .await
        .expect_err("a delegated subscription refuses a pass pinned to oauth");
    assert!(
        matches!(
            err,
            StoreError::NotActive {
                decision: StopDecision::AuthModeChanged,
                ..
            }
        ),
        "{err:?}"
    );
    let same = Lease {
        auth_mode: Some(AuthMode::Delegated),
        ..pinned
    };
    store
        .commit_batch(&same, &batch(vec![message("p2", "t", &[], "S", "b")], 10))
        .await
        .expect("the pinned mode matches");
    assert_eq!(store.count_messages(&o).await.unwrap(), 1);
}

/// A governance change (`relabel`, `set-auth`) is a compare-and-set on
/// status, labels and mode: back to pending with the actor as requester and
/// the approval cleared, audited; a change computed from a stale read, a
/// switch to oauth without a stored consent, a removed or unknown
/// subscription change nothing.
pub async fn governance_changes_compare_and_set(store: &Store) {
    use super::{ConsentRemoval, ConsentWrite, OAuthConsent, SubscriptionChange};
    let m = mailbox("change@example.com");
    active_subscription(store, &m).await;
    let before = store.get_subscription(&m).await.unwrap().unwrap();
    let relabel = SubscriptionChange {
        mailbox: m.clone(),
        expected_status: SubscriptionStatus::Active,
        expected_label_filter: before.label_filter.clone(),
        expected_auth_mode: AuthMode::Delegated,
        label_filter: vec!["STARRED".into()],
        auth_mode: AuthMode::Delegated,
        require_consent: false,
        actor: operator("carol"),
        action: "relabel".into(),
        reason: "labels: all mail → STARRED".into(),
    };
    let s = store.request_subscription_change(&relabel).await.unwrap();
    assert_eq!(s.status, SubscriptionStatus::Pending);
    assert_eq!(s.label_filter, vec!["STARRED"]);
    assert_eq!(s.requested_by.as_str(), "carol");
    assert_eq!((s.approved_by, s.approved_at), (None, None));
    let events = store.subscription_events(&m).await.unwrap();
    let e = events.last().unwrap();
    assert_eq!((e.action.as_str(), e.actor.as_str()), ("relabel", "carol"));
    assert_eq!(e.old_status, Some(SubscriptionStatus::Active));
    let n_events = events.len();

    // The same change again was computed from a read that is stale now.
    let after = store.get_subscription(&m).await.unwrap().unwrap();
    assert!(matches!(
        store.request_subscription_change(&relabel).await,
        Err(StoreError::Conflict(_))
    ));
    // Labels moved on: a change expecting the old labels is refused too.
    let stale_labels = SubscriptionChange {
        expected_status: SubscriptionStatus::Pending,
        ..relabel.clone()
    };
    assert!(matches!(
        store.request_subscription_change(&stale_labels).await,
        Err(StoreError::Conflict(_))
    ));
    // To oauth without a stored consent.
    let to_oauth = SubscriptionChange {
        expected_status: SubscriptionStatus::Pending,
        expected_label_filter: vec!["STARRED".into()],
        label_filter: vec!["STARRED".into()],
        auth_mode: AuthMode::OAuth,
        require_consent: true,
        action: "set-auth".into(),
        ..relabel.clone()
    };
    assert!(matches!(
        store.request_subscription_change(&to_oauth).await,
        Err(StoreError::Conflict(_))
    ));
    let unknown = SubscriptionChange {
        mailbox: mailbox("ghost@example.com"),
        ..relabel.clone()
    };
    assert!(matches!(
        store.request_subscription_change(&unknown).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get_subscription(&m).await.unwrap().unwrap(), after);
    assert_eq!(store.subscription_events(&m).await.unwrap().len(), n_events);

    // A consent for a delegated subscription keeps its mode; then the switch works.
    let consent = |subject: &str, id: &str| OAuthConsent {
        mailbox: m.clone(),
        refresh_token_ciphertext: format!("k.sealed-{id}"),
        key_id: "k".into(),
        scopes: "https://www.googleapis.com/auth/gmail.readonly openid email".into(),
        google_subject: Some(subject.into()),
        consent_id: id.into(),
        actor: operator("owner change@example.com"),
    };
    let ConsentWrite::Stored(s) = store
        .record_oauth_consent(&consent("111", "c1"))
        .await
        .unwrap()
    else {
        panic!("the first consent is stored");
    };
    assert_eq!(
        (s.status, s.auth_mode),
        (SubscriptionStatus::Pending, AuthMode::Delegated)
    );
    assert_eq!(
        store
            .record_oauth_consent(&consent("222", "c2"))
            .await
            .unwrap(),
        ConsentWrite::OtherAccount {
            stored_subject: "111".into()
        },
        "another Google account replaces no stored consent"
    );
    assert_eq!(
        store.oauth_token(&m).await.unwrap().unwrap().consent_id,
        "c1"
    );
    let s = store.request_subscription_change(&to_oauth).await.unwrap();
    assert_eq!(
        (s.status, s.auth_mode),
        (SubscriptionStatus::Pending, AuthMode::OAuth)
    );

    // Removing a consent acts only on the one named.
    let removal = ConsentRemoval {
        mailbox: m.clone(),
        consent_id: Some("c0".into()),
        actor: operator("dave"),
        action: "forget-consent".into(),
        reason: "test".into(),
        pause: false,
    };
    assert!(matches!(
        store.remove_oauth_consent(&removal).await,
        Err(StoreError::Conflict(_))
    ));
    let s = store
        .remove_oauth_consent(&ConsentRemoval {
            consent_id: Some("c1".into()),
            ..removal.clone()
        })
        .await
        .unwrap();
    assert_eq!(s.status, SubscriptionStatus::Pending);
    assert!(store.oauth_token(&m).await.unwrap().is_none());
    assert!(matches!(
        store
            .record_oauth_consent(&consent("222", "c2"))
            .await
            .unwrap(),
        ConsentWrite::Stored(_)
    ));

    // Removed: no change.
    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Pending,
            SubscriptionAction::Remove,
        ))
        .await
        .unwrap();
    let removed = SubscriptionChange {
        expected_status: SubscriptionStatus::Removed,
        expected_auth_mode: AuthMode::OAuth,
        ..relabel
    };
    assert!(matches!(
        store.request_subscription_change(&removed).await,
        Err(StoreError::Conflict(_))
    ));
}

/// A quiet pass's last batch writes no run row: it counts the pass on
/// `sync_state` (`quiet_passes`, `last_quiet_at`), still moves the checkpoint
/// and `last_success_at`, and releases the lease in the same transaction;
/// a batch with a run row is not counted quiet.
pub async fn quiet_passes_are_counted_not_rowed(store: &Store) {
    let m = mailbox("quiet@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    store
        .commit_batch(&l, &batch(vec![message("q1", "t", &[], "S", "b")], 10))
        .await
        .unwrap();
    let before = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!((before.quiet_passes, before.last_quiet_at), (0, None));

    // A quiet last batch, releasing the lease.
    let next = now() + TimeDelta::minutes(1);
    let quiet = SyncBatch {
        quiet: true,
        release_at: Some(next),
        ..SyncBatch::new(checkpoint(11))
    };
    store.commit_batch(&l, &quiet).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.quiet_passes, 1);
    assert!(state.last_quiet_at.is_some());
    assert!(state.last_success_at >= before.last_success_at && state.last_success_at.is_some());
    assert_eq!(state.history_id, Some(hid(11)));
    assert_eq!(state.lease_owner, None, "released with the checkpoint");
    assert_eq!(state.lease_expires_at, None);
    assert_eq!(state.next_poll_at, Some(next));
    assert!(store.sync_runs(&m).await.unwrap().is_empty());
    let status = store.mailbox_statuses().await.unwrap();
    assert_eq!(status[0].quiet_passes, 1);
    assert_eq!(status[0].last_quiet_at, state.last_quiet_at);
    // The released lease fences nothing any more.
    assert!(matches!(
        store
            .commit_batch(&l, &SyncBatch::new(checkpoint(12)))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));

    // A pass that changed something keeps its row and is not counted.
    let l = lease(store, &m).await;
    let busy = SyncBatch {
        run: Some(run_row(&m)),
        release_at: Some(next),
        ..batch(vec![message("q2", "t", &[], "S", "b")], 13)
    };
    store.commit_batch(&l, &busy).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.quiet_passes, 1);
    assert_eq!(store.sync_runs(&m).await.unwrap().len(), 1);
    assert_eq!(state.lease_owner, None);
}

/// The schedule follows the status: activation creates the mailbox's row and
/// makes it due at once; leaving `active` unschedules it (`next_poll_at`
/// NULL), and a release of a mailbox no longer active does not schedule it
/// again; claims take due rows in `next_poll_at` order.
pub async fn the_schedule_follows_the_subscription_status(store: &Store) {
    let m = mailbox("sched@example.com");
    let before = now();
    active_subscription(store, &m).await;
    let state = store
        .sync_state(&m)
        .await
        .unwrap()
        .expect("row created at activation");
    assert!(state.next_poll_at.is_some_and(|t| t >= before), "{state:?}");
    assert_eq!(state.phase, SyncPhase::Initial);

    let pause = transition(&m, SubscriptionStatus::Active, SubscriptionAction::Pause);
    store.update_subscription(&pause).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        None
    );
    let far = now() + TimeDelta::days(365);
    assert!(
        store
            .claim_due("r", far, Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let resume = transition(&m, SubscriptionStatus::Paused, SubscriptionAction::Resume);
    store.update_subscription(&resume).await.unwrap();
    let claimed = store
        .claim_due("r", now(), Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "due at once after a resume");

    // Paused while in flight: its release does not schedule it.
    let pause = transition(&m, SubscriptionStatus::Active, SubscriptionAction::Pause);
    store.update_subscription(&pause).await.unwrap();
    store.release_lease(&claimed[0], now()).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        None
    );

    // Due order: the earliest first, ties by mailbox.
    let mut leases = Vec::new();
    for name in ["c", "a", "b"] {
        let m = mailbox(&format!("order-{name}@example.com"));
        active_subscription(store, &m).await;
        leases.push((
            name,
            store
                .claim_due("r", now(), Duration::from_secs(60), 1)
                .await
                .unwrap(),
        ));
    }
    let t0 = now();
    for (name, l) in &leases {
        let at = match *name {
            "c" => t0 + TimeDelta::seconds(1),
            _ => t0 + TimeDelta::seconds(2),
        };
        store.release_lease(&l[0], at).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let one = store
            .claim_due("r", t0 + TimeDelta::seconds(3), Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        order.push(one[0].mailbox.to_string());
    }
    assert_eq!(
        order,
        [
            "order-c@example.com",
            "order-a@example.com",
            "order-b@example.com"
        ]
    );
    assert!(
        store
            .claim_due("s", t0 + TimeDelta::seconds(3), Duration::from_secs(60), 1)
            .await
            .unwrap()
            .is_empty(),
        "all three are leased"
    );
}

/// The gate's cached admission: recorded with an allowed verdict, cleared
/// by a refusal and by every status change.
pub async fn org_unit_admission_is_recorded_and_cleared(store: &Store) {
    let m = mailbox("gate@example.com");
    active_subscription(store, &m).await;
    assert_eq!(
        store
            .get_subscription(&m)
            .await
            .unwrap()
            .unwrap()
            .org_unit_allowed_at,
        None
    );
    store
        .record_org_unit(&m, Some("/Shared Mailboxes"), true)
        .await
        .unwrap();
    let s = store.get_subscription(&m).await.unwrap().unwrap();
    assert!(s.org_unit_allowed_at.is_some());
    assert_eq!(s.org_unit_allowed_at, s.org_unit_checked_at);
    store
        .record_org_unit(&m, Some("/Staff"), false)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_subscription(&m)
            .await
            .unwrap()
            .unwrap()
            .org_unit_allowed_at,
        None
    );

    store
        .record_org_unit(&m, Some("/Shared Mailboxes"), true)
        .await
        .unwrap();
    // A review keeps the status: the admission stands.
    let review = SubscriptionUpdate {
        reviewed_by: Some(operator("carol")),
        ..transition(&m, SubscriptionStatus::Active, SubscriptionAction::Pause)
    };
    let review = SubscriptionUpdate {
        new_status: SubscriptionStatus::Active,
        ..review
    };
    let s = store.update_subscription(&review).await.unwrap();
    assert!(s.org_unit_allowed_at.is_some());
    // A pause (or any status change) clears it; so the resume asks again.
    let s = store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Active,
            SubscriptionAction::Pause,
        ))
        .await
        .unwrap();
    assert_eq!(s.org_unit_allowed_at, None);
    let s = store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Paused,
            SubscriptionAction::Resume,
        ))
        .await
        .unwrap();
    assert_eq!(s.org_unit_allowed_at, None);
}

/// A pass's watch records are fenced by its lease alone (a stale lease is
/// refused, a paused subscription is not); the mailboxes to stop are those
/// not active with a watch that has not expired, and the compare-and-set
/// hands each stop to one caller only; a stop's failure is recorded.
pub async fn push_watches_are_recorded_and_stopped_once(store: &Store) {
    let m = mailbox("watch@example.com");
    active_subscription(store, &m).await;
    let l = lease(store, &m).await;
    let t0 = now();
    let expires = t0 + TimeDelta::days(7);
    let scope = vec!["INBOX".to_owned()];
    store.record_watch(&l, expires, &scope, t0).await.unwrap();
    let st = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(st.watch_expires_at, Some(expires));
    assert_eq!(st.watch_renewed_at, Some(t0));
    assert_eq!(st.watch_label_scope, Some(scope.clone()));
    assert_eq!(st.watch_state(t0), super::WatchState::Live);
    assert_eq!(
        st.watch_state(expires + TimeDelta::seconds(1)),
        super::WatchState::Lapsed
    );
    let status = store.mailbox_statuses().await.unwrap();
    assert_eq!(status[0].watch_expires_at, Some(expires));

    // A failure keeps the watch columns and says why; a success clears it.
    store
        .record_watch_failure(&l, "users.watch failed: no grant", t0)
        .await
        .unwrap();
    let st = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(
        st.watch_error.as_deref(),
        Some("users.watch failed: no grant")
    );
    assert_eq!(st.watch_failed_at, Some(t0));
    assert_eq!(st.watch_expires_at, Some(expires));
    assert_eq!(st.watch_state(t0), super::WatchState::Failed);
    store.record_watch(&l, expires, &scope, t0).await.unwrap();
    let st = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!((st.watch_error, st.watch_failed_at), (None, None));

    // A stale lease is refused.
    let stale = Lease {
        epoch: l.epoch - 1,
        ..l.clone()
    };
    assert!(matches!(
        store.record_watch(&stale, expires, &scope, t0).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.record_watch_failure(&stale, "x", t0).await,
        Err(StoreError::LeaseLost { .. })
    ));

    // Active: nothing to stop.
    assert!(store.watches_to_stop(t0, 10).await.unwrap().is_empty());

    // Paused: the lease still records (not a checkpoint), and the watch is listed.
    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Active,
            SubscriptionAction::Pause,
        ))
        .await
        .unwrap();
    store.record_watch(&l, expires, &scope, t0).await.unwrap();
    let other = mailbox("expired-watch@example.com");
    active_subscription(store, &other).await;
    let lo = lease(store, &other).await;
    store
        .record_watch(&lo, t0 - TimeDelta::seconds(1), &[], t0)
        .await
        .unwrap();
    store
        .update_subscription(&transition(
            &other,
            SubscriptionStatus::Active,
            SubscriptionAction::Pause,
        ))
        .await
        .unwrap();
    let due = store.watches_to_stop(t0, 10).await.unwrap();
    assert_eq!(due.len(), 1, "an expired watch needs no stop: {due:?}");
    assert_eq!(due[0].mailbox, m);
    assert_eq!(due[0].status, SubscriptionStatus::Paused);
    assert_eq!(due[0].auth_mode, AuthMode::Delegated);
    assert_eq!(due[0].expires_at, expires);

    // One caller wins the stop.
    assert!(store.take_watch_to_stop(&due[0], t0).await.unwrap());
    assert!(!store.take_watch_to_stop(&due[0], t0).await.unwrap());
    let st = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(st.watch_expires_at, None);
    assert_eq!(st.watch_state(t0), super::WatchState::None);
    assert!(store.watches_to_stop(t0, 10).await.unwrap().is_empty());
    store
        .record_watch_stop_failure(&m, "users.stop failed: x; the watch lapses at y", t0)
        .await
        .unwrap();
    let st = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(
        st.watch_error.as_deref(),
        Some("users.stop failed: x; the watch lapses at y")
    );

    // A stop is not taken once the subscription is active again.
    store
        .update_subscription(&transition(
            &m,
            SubscriptionStatus::Paused,
            SubscriptionAction::Resume,
        ))
        .await
        .unwrap();
    let l = lease(store, &m).await;
    store.record_watch(&l, expires, &scope, t0).await.unwrap();
    let stale_claim = super::WatchToStop {
        expires_at: expires,
        ..due[0].clone()
    };
    assert!(!store.take_watch_to_stop(&stale_claim, t0).await.unwrap());
    assert_eq!(
        store
            .sync_state(&m)
            .await
            .unwrap()
            .unwrap()
            .watch_expires_at,
        Some(expires)
    );
}

/// `notified_history_id` and `next_poll_at` of `m`, read in SQL (the
/// `SyncState` struct does not carry the notification columns).
async fn notified(store: &Store, m: &MailboxAddress) -> Option<i64> {
    store
        .query_first_column(&format!(
            "SELECT CAST(notified_history_id AS TEXT) FROM sync_state \
             WHERE mailbox = '{m}' AND notified_history_id IS NOT NULL"
        ))
        .await
        .expect("read notified_history_id")
        .first()
        .map(|h| h.parse().expect("an integer"))
}

fn due_now(state: &super::SyncState) -> bool {
    state.next_poll_at.is_some_and(|t| t <= now())
}

/// A notification makes an idle incremental mailbox behind it due at once,
/// and only that one: a current, leased, failing or not-yet-synced mailbox
/// records it without becoming due; an unknown or not-active one changes
/// nothing. `notified_history_id` only grows.
pub async fn notifications_make_an_idle_mailbox_behind_them_due(store: &Store) {
    use super::NotifyOutcome::{Due, NotActive, Recorded};
    let m = mailbox("pushed@example.com");
    active_subscription(store, &m).await;
    // Before its first full sync: recorded, nothing more.
    assert_eq!(
        store.mark_notified(&m, hid(5), now()).await.unwrap(),
        Recorded
    );
    let l = lease(store, &m).await;
    let later = now() + TimeDelta::hours(1);
    let release = SyncBatch {
        release_at: Some(later),
        ..SyncBatch::new(checkpoint(10))
    };
    store.commit_batch(&l, &release).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(
        state.next_poll_at,
        Some(later),
        "5 is behind the pass: not due"
    );

    // Current: recorded, not due.
    assert_eq!(
        store.mark_notified(&m, hid(10), now()).await.unwrap(),
        Recorded
    );
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(later)
    );
    assert_eq!(notified(store, &m).await, Some(10));

    // Behind: due at once, and claimable.
    let at = now();
    assert_eq!(store.mark_notified(&m, hid(12), at).await.unwrap(), Due);
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(at)
    );
    // A late, older notification moves neither the mark nor the time back.
    assert_eq!(store.mark_notified(&m, hid(11), now()).await.unwrap(), Due);
    assert_eq!(notified(store, &m).await, Some(12));
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(at)
    );
    let claimed = store
        .claim_due("replica", now(), Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    // Leased: recorded only (the pass's end decides).
    assert_eq!(
        store.mark_notified(&m, hid(13), now()).await.unwrap(),
        Recorded
    );
    assert_eq!(notified(store, &m).await, Some(13));
    store.release_lease(&claimed[0], later).await.unwrap();
    // (that release left it due: 10 is behind 13; see the end-of-pass test)
    let l = lease(store, &m).await;
    let caught_up = SyncBatch {
        release_at: Some(later),
        ..SyncBatch::new(checkpoint(13))
    };
    store.commit_batch(&l, &caught_up).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(later)
    );

    // An expired lease holds nothing: due.
    let stale = store
        .claim_mailbox(
            &m,
            "gone",
            now() - TimeDelta::minutes(10),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("claimable");
    assert!(stale.expires_at < now());
    assert_eq!(store.mark_notified(&m, hid(14), now()).await.unwrap(), Due);

    // In a failure backoff: recorded, the backoff stands.
    let l = lease(store, &m).await;
    let backoff = now() + TimeDelta::minutes(30);
    store
        .record_failure(
            &l,
            &FailureRecord {
                phase: SyncPhase::Error,
                error: "boom".into(),
                next_poll_at: backoff,
                run: None,
            },
        )
        .await
        .unwrap();
    store.release_lease(&l, backoff).await.unwrap();
    assert_eq!(
        store.mark_notified(&m, hid(30), now()).await.unwrap(),
        Recorded
    );
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.next_poll_at, Some(backoff));
    assert_eq!(notified(store, &m).await, Some(30));

    // Unknown: nothing, not even a row.
    let stranger = mailbox("stranger@example.com");
    assert_eq!(
        store
            .mark_notified(&stranger, hid(99), now())
            .await
            .unwrap(),
        NotActive
    );
    assert!(store.sync_state(&stranger).await.unwrap().is_none());

    // Paused: nothing recorded, still unscheduled.
    let p = mailbox("paused-push@example.com");
    active_subscription(store, &p).await;
    let l = lease(store, &p).await;
    store.commit_batch(&l, &release).await.unwrap();
    let pause = transition(&p, SubscriptionStatus::Active, SubscriptionAction::Pause);
    store.update_subscription(&pause).await.unwrap();
    assert_eq!(
        store.mark_notified(&p, hid(50), now()).await.unwrap(),
        NotActive
    );
    assert_eq!(
        store.sync_state(&p).await.unwrap().unwrap().next_poll_at,
        None
    );
    assert_eq!(notified(store, &p).await, None);
}

/// The end-of-pass rule: every statement that ends a pass leaves the mailbox
/// due at once instead of at its computed time when a notification named a
/// historyId beyond the one the pass leaves, except after a failure (the
/// backoff stands) and for a paced backfill (the budget decides).
pub async fn a_notification_that_arrives_mid_pass_is_not_lost(store: &Store) {
    let m = mailbox("midpass@example.com");
    active_subscription(store, &m).await;
    let later = now() + TimeDelta::hours(1);
    let l = lease(store, &m).await;
    store
        .commit_batch(&l, &SyncBatch::new(checkpoint(10)))
        .await
        .unwrap();

    // The final checkpoint's release: behind the notification → due now.
    store.mark_notified(&m, hid(15), now()).await.unwrap();
    let before = now();
    let last = SyncBatch {
        release_at: Some(later),
        ..SyncBatch::new(checkpoint(14))
    };
    store.commit_batch(&l, &last).await.unwrap();
    let state = store.sync_state(&m).await.unwrap().unwrap();
    assert_eq!(state.lease_owner, None);
    assert!(
        due_now(&state) && state.next_poll_at >= Some(before),
        "{state:?}"
    );
    // Caught up: the computed time.
    let l = lease(store, &m).await;
    let last = SyncBatch {
        release_at: Some(later),
        ..SyncBatch::new(checkpoint(15))
    };
    store.commit_batch(&l, &last).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(later)
    );

    // `release_lease` (a full sync's end, an interrupted pass): the same.
    let l = lease(store, &m).await;
    store.mark_notified(&m, hid(20), now()).await.unwrap();
    store.release_lease(&l, later).await.unwrap();
    assert!(due_now(&store.sync_state(&m).await.unwrap().unwrap()));
    let l = lease(store, &m).await;
    store
        .commit_batch(&l, &SyncBatch::new(checkpoint(20)))
        .await
        .unwrap();
    store.release_lease(&l, later).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(later)
    );
    // An earlier computed time is kept (the rule only brings it forward).
    let l = lease(store, &m).await;
    store.mark_notified(&m, hid(21), now()).await.unwrap();
    let past = now() - TimeDelta::minutes(5);
    store.release_lease(&l, past).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(past)
    );

    // A failure: its backoff stands, notification or not.
    let l = lease(store, &m).await;
    store.mark_notified(&m, hid(30), now()).await.unwrap();
    let backoff = now() + TimeDelta::minutes(30);
    store
        .record_failure(
            &l,
            &FailureRecord {
                phase: SyncPhase::Error,
                error: "boom".into(),
                next_poll_at: backoff,
                run: None,
            },
        )
        .await
        .unwrap();
    store.release_lease(&l, backoff).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        Some(backoff)
    );

    // A paced backfill (phase full_sync): it waits for the budget.
    let b = mailbox("paced-push@example.com");
    active_subscription(store, &b).await;
    let l = lease(store, &b).await;
    let listing = SyncBatch::new(Checkpoint {
        phase: SyncPhase::FullSync,
        history_id: Some(hid(40)),
        page_token: Some("page-2".into()),
        full_sync_history_id: Some(hid(40)),
        ..checkpoint(40)
    });
    store.commit_batch(&l, &listing).await.unwrap();
    store.mark_notified(&b, hid(45), now()).await.unwrap();
    let until = now() + TimeDelta::hours(3);
    let run = SyncRunRow {
        kind: SyncKind::Full,
        outcome: RunOutcome::QuotaWait,
        ..run_row(&b)
    };
    store
        .record_quota_wait(&l, until, "kept for incremental passes", &run)
        .await
        .unwrap();
    store.release_lease(&l, until).await.unwrap();
    assert_eq!(
        store.sync_state(&b).await.unwrap().unwrap().next_poll_at,
        Some(until)
    );

    // Paused mid-pass: the release unschedules it whatever was notified.
    let l = lease(store, &m).await;
    store
        .commit_batch(&l, &SyncBatch::new(checkpoint(31)))
        .await
        .unwrap();
    store.mark_notified(&m, hid(40), now()).await.unwrap();
    let pause = transition(&m, SubscriptionStatus::Active, SubscriptionAction::Pause);
    store.update_subscription(&pause).await.unwrap();
    store.release_lease(&l, later).await.unwrap();
    assert_eq!(
        store.sync_state(&m).await.unwrap().unwrap().next_poll_at,
        None
    );
}
