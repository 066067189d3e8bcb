//! The sync engine against the emulator, on SQLite and PostgreSQL.

use std::time::Duration;

use gmail_ingest::domain::{SubscriptionStatus, SyncPhase};
use gmail_ingest::sync::engine::{Outcome, SyncKind};
use serde_json::json;

use crate::helpers::{Backend, World, both_backends, small, world, world_with};

const GET: &str = "gmail.users.messages.get";
const LIST: &str = "gmail.users.messages.list";

async fn one_mailbox(w: &World) -> gmail_ingest::domain::MailboxAddress {
    let m = w
        .shared_mailboxes()
        .await
        .into_iter()
        .next()
        .expect("a shared mailbox");
    w.subscribe(&m).await;
    m
}

both_backends!(
    full_sync_equals_ground_truth_with_one_get_per_message,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 120)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        let n = w.truth(&m).await.len() as u64;

        let reports = w.sync(Some(&m)).await;

        assert_eq!(reports.len(), 1);
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert_eq!(reports[0].kinds.first(), Some(&SyncKind::Full));
        w.assert_converged(&m).await;
        assert_eq!(
            w.requests_by_user(&m, GET).await,
            n,
            "exactly one messages.get per message"
        );
        // Units: n gets at 20 + listings (5 per 500) + profile/labels/history: no more.
        let units = w.units(&m).await;
        let floor = 20 * n;
        assert!(
            units >= floor && units <= floor + 40,
            "units {units} for {n} messages"
        );
        assert_eq!(
            reports[0].counts.quota_units, units,
            "our accounting matches the emulator's"
        );
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!(st.phase, SyncPhase::Incremental);
        assert!(st.history_id.is_some());
        assert!(st.page_token.is_none());
        // A second pass fetches nothing.
        w.sync(Some(&m)).await;
        assert_eq!(w.requests_by_user(&m, GET).await, n);
    }
);

both_backends!(
    incremental_pass_applies_adds_deletes_relabels_and_add_then_delete,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 40)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        w.sync(Some(&m)).await;
        let before = w.truth(&m).await;
        let gets_before = w.requests_by_user(&m, GET).await;

        let new_id = w
            .insert_message(&m, "Zyxquartz inspection due", &["INBOX", "UNREAD"])
            .await;
        let gone = w.insert_message(&m, "Added then deleted", &["INBOX"]).await;
        w.delete_message(&m, &gone).await;
        w.delete_message(&m, &before[0].0).await;
        w.relabel(&m, &before[1].0, &["STARRED"], &["INBOX"]).await;
        w.relabel(&m, &new_id, &["IMPORTANT"], &["UNREAD"]).await;

        let reports = w.sync(Some(&m)).await;

        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert_eq!(reports[0].kinds, vec![SyncKind::Incremental]);
        w.assert_converged(&m).await;
        // Only the surviving new message was fetched.
        assert_eq!(w.requests_by_user(&m, GET).await, gets_before + 1);
        let changes = w.ctx.store.message_changes(&m).await.unwrap();
        let kinds: Vec<String> = changes.iter().map(|c| c.change.to_string()).collect();
        assert!(kinds.iter().any(|k| k == "deleted"));
        assert!(kinds.iter().any(|k| k == "label_added"));
        assert!(kinds.iter().any(|k| k == "label_removed"));
        let hits = w.ctx.store.search(Some(&m), "zyxquartz", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
    }
);

both_backends!(
    a_quiet_mailbox_still_advances_its_history_id,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 5)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        w.sync(Some(&m)).await;
        let before = w
            .ctx
            .store
            .sync_state(&m)
            .await
            .unwrap()
            .unwrap()
            .history_id
            .unwrap();
        // Activity elsewhere in the emulator does not matter; a relabel+undo moves this mailbox's history.
        let id = w.truth(&m).await[0].0.clone();
        w.relabel(&m, &id, &["STARRED"], &[]).await;
        w.relabel(&m, &id, &[], &["STARRED"]).await;
        w.sync(Some(&m)).await;
        let after = w
            .ctx
            .store
            .sync_state(&m)
            .await
            .unwrap()
            .unwrap()
            .history_id
            .unwrap();
        assert!(after > before, "history id stayed at {before}");
        w.assert_converged(&m).await;
    }
);

both_backends!(
    expired_history_resyncs_cheaply_and_catches_deletions,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 300)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        w.sync(Some(&m)).await;
        let units_full = w.units(&m).await;
        let truth = w.truth(&m).await;
        // 1 % changed: a few deletes, relabels and adds, then history expires.
        for (id, _, _) in truth.iter().take(1) {
            w.delete_message(&m, id).await;
        }
        for (id, _, _) in truth.iter().skip(1).take(1) {
            w.relabel(&m, id, &["STARRED"], &[]).await;
        }
        w.insert_message(&m, "After expiry", &["INBOX"]).await;
        w.control(
            reqwest::Method::POST,
            &format!("users/{m}/history/expire"),
            None,
        )
        .await;

        let reports = w.sync(Some(&m)).await;

        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        assert!(
            reports[0].kinds.contains(&SyncKind::Resync),
            "{:?}",
            reports[0].kinds
        );
        w.assert_converged(&m).await;
        let resync_units = w.units(&m).await - units_full;
        assert!(
            resync_units * 10 < units_full,
            "resync cost {resync_units} units, naive full sync {units_full}"
        );
    }
);

both_backends!(
    an_interrupted_full_sync_resumes_from_its_page_token_without_refetching,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 1200), |s| s.sync.batch_size = 50).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        let n = w.truth(&m).await.len() as u64;
        // Fetches stream across batch boundaries now, so the pass needs more
        // latency than 2-4 ms to be still running after 1.5 s.
        w.faults(json!({"latency_ms": [8, 14]})).await;

        // Drop the pass mid-way, as a crash would: once a few batches are
        // stored (a fixed timeout let the whole sync finish on an idle machine).
        {
            let pass = w.sync(Some(&m));
            tokio::pin!(pass);
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                tokio::select! {
                    _ = &mut pass => break,
                    () = tokio::time::sleep(Duration::from_millis(5)) => {
                        let stored = w.ctx.store.count_messages(&m).await.unwrap();
                        if stored >= 100 || tokio::time::Instant::now() > give_up {
                            break;
                        }
                    }
                }
            }
        }
        let stored_mid = w.ctx.store.count_messages(&m).await.unwrap() as u64;
        assert!(
            stored_mid > 0 && stored_mid < n,
            "interrupt too early or late: {stored_mid}/{n}"
        );
        // The lease of the dropped pass must expire before another claim.
        tokio::time::sleep(w.settings.sync.lease_duration + Duration::from_millis(200)).await;
        w.faults(json!({"latency_ms": [0, 0]})).await;

        let reports = w.sync(Some(&m)).await;

        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
        let gets = w.requests_by_user(&m, GET).await;
        // At most what was in flight when the pass was dropped is fetched twice.
        let slack = (w.settings.sync.batch_size + w.settings.sync.per_mailbox_concurrency) as u64;
        assert!(gets <= n + slack, "{gets} gets for {n} messages");
        assert!(w.requests_by_user(&m, LIST).await <= (n / 500 + 2) * 2 + 2);
    }
);

both_backends!(
    injected_5xx_and_rate_limits_still_converge,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 150)).await else {
            return;
        };
        let shared = w.shared_mailboxes().await;
        for m in &shared {
            w.subscribe(m).await;
        }
        w.faults(json!({"error_rate": 0.20, "rate_limit_rate": 0.05, "seed": 42}))
            .await;

        let mut reports = w.sync(None).await;
        // Bounded retries may exhaust on an unlucky message; the next pass finishes the job.
        for _ in 0..3 {
            if reports.iter().all(|r| r.outcome.is_ok()) {
                break;
            }
            reports = w.sync(None).await;
        }
        w.faults(json!({"error_rate": 0.0, "rate_limit_rate": 0.0}))
            .await;
        let reports2 = w.sync(None).await;

        assert!(reports2.iter().all(|r| r.outcome.is_ok()), "{reports2:?}");
        for m in &shared {
            w.assert_converged(m).await;
        }
    }
);

both_backends!(
    a_revoked_mailbox_fails_alone_and_recovers,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 20)).await else {
            return;
        };
        let shared = w.shared_mailboxes().await;
        for m in &shared {
            w.subscribe(m).await;
        }
        let bad = &shared[0];
        w.patch_user(bad, json!({"token_error": "admin_policy_enforced"}))
            .await;

        let reports = w.sync(None).await;

        let bad_report = reports.iter().find(|r| &r.mailbox == bad).unwrap();
        assert!(
            matches!(&bad_report.outcome, Outcome::AuthFailed { cause } if cause.contains("API controls")),
            "{:?}",
            bad_report.outcome
        );
        for r in reports.iter().filter(|r| &r.mailbox != bad) {
            assert!(r.outcome.is_ok(), "{:?}", r.outcome);
            w.assert_converged(&r.mailbox).await;
        }
        let st = w.ctx.store.sync_state(bad).await.unwrap().unwrap();
        assert_eq!(st.phase, SyncPhase::AuthFailed);
        assert!(st.last_error.unwrap().contains("API controls"));

        w.patch_user(bad, json!({"token_error": null})).await;
        let reports = w.sync(Some(bad)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(bad).await;
    }
);

both_backends!(
    moving_a_mailbox_out_of_the_approved_ou_suspends_it_and_back_resumes,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 10)).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        w.sync(Some(&m)).await;
        w.patch_user(&m, json!({"org_unit": "/Staff"})).await;
        let tokens_before = w.stats().await["tokens_issued"][m.as_str()]
            .as_u64()
            .unwrap_or(0);

        let reports = w.sync(Some(&m)).await;

        assert!(
            matches!(&reports[0].outcome, Outcome::Suspended { reason } if reason.contains("/Staff")),
            "{:?}",
            reports[0].outcome
        );
        let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
        assert_eq!(sub.status, SubscriptionStatus::Suspended);
        let events = w.ctx.store.subscription_events(&m).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.action == "suspend"
                    && e.reason.as_deref().unwrap_or("").contains("/Staff"))
        );
        let tokens_after = w.stats().await["tokens_issued"][m.as_str()]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(
            tokens_before, tokens_after,
            "no token requested for a mailbox outside the approved OU"
        );

        w.patch_user(&m, json!({"org_unit": "/Shared Mailboxes"}))
            .await;
        let reports = w.sync(Some(&m)).await;
        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
        assert_eq!(sub.status, SubscriptionStatus::Active);
        let events = w.ctx.store.subscription_events(&m).await.unwrap();
        assert!(events.iter().any(|e| e.action == "reinstate"));
    }
);

both_backends!(
    suspended_users_and_users_without_gmail_are_not_synced,
    |b: Backend| async move {
        let Some(w) = world(b, small(3, 10)).await else {
            return;
        };
        let shared = w.shared_mailboxes().await;
        for m in &shared {
            w.subscribe(m).await;
        }
        w.patch_user(&shared[0], json!({"suspended": true})).await;
        w.patch_user(&shared[1], json!({"mailbox_enabled": false}))
            .await;

        let reports = w.sync(None).await;

        let r0 = reports.iter().find(|r| r.mailbox == shared[0]).unwrap();
        assert!(
            matches!(&r0.outcome, Outcome::Suspended { reason } if reason.contains("suspended")),
            "{:?}",
            r0.outcome
        );
        let r1 = reports.iter().find(|r| r.mailbox == shared[1]).unwrap();
        assert!(!r1.outcome.is_ok(), "{:?}", r1.outcome);
    }
);

both_backends!(
    huge_and_malformed_messages_are_stored_without_stopping_the_mailbox,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 5), |s| s.sync.max_message_bytes = 200_000).await
        else {
            return;
        };
        let m = one_mailbox(&w).await;
        w.sync(Some(&m)).await;
        let mut huge =
            b"From: a@example.com\r\nSubject: Huge\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 400_000));
        w.insert_raw(&m, &huge, &["INBOX"]).await;
        w.insert_raw(
            &m,
            b"\x00\xff\xfe garbage \r\n\r\n--unterminated",
            &["INBOX"],
        )
        .await;
        w.insert_message(&m, "Normal after junk", &["INBOX"]).await;

        let reports = w.sync(Some(&m)).await;

        assert!(reports[0].outcome.is_ok(), "{:?}", reports[0].outcome);
        w.assert_converged(&m).await;
    }
);

both_backends!(
    messages_that_keep_failing_become_placeholders_and_are_refetched_later,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 60), |s| s.google.max_attempts = 1).await else {
            return;
        };
        let m = one_mailbox(&w).await;
        w.faults(json!({"error_rate": 0.3, "seed": 7})).await;

        // Passes fail until the engine gives up on the messages it cannot
        // fetch and stores placeholders so the mailbox moves on.
        let mut saw_placeholder = false;
        for _ in 0..25 {
            w.sync(Some(&m)).await;
            if !w
                .ctx
                .store
                .unfetched_message_ids(&m, 500)
                .await
                .unwrap()
                .is_empty()
            {
                saw_placeholder = true;
                break;
            }
        }
        assert!(saw_placeholder, "no placeholder was ever stored");
        w.faults(json!({"error_rate": 0.0})).await;
        w.sync(Some(&m)).await;
        w.sync(Some(&m)).await;

        assert!(
            w.ctx
                .store
                .unfetched_message_ids(&m, 500)
                .await
                .unwrap()
                .is_empty()
        );
        w.assert_converged(&m).await;
    }
);

/// A replica keeps each mailbox's access token (not an authenticator per
/// mailbox: BENCHMARKS.md §6): 32 concurrent requests as a mailbox met for
/// the first time are served by one grant, another mailbox gets its own, a
/// later request reuses the token, and after `forget` (a 401, a revocation)
/// the next request signs exactly one new JWT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grant_serves_a_mailboxs_concurrent_requests_until_it_is_forgotten() {
    let Some(w) = world(Backend::Sqlite, small(3, 1)).await else {
        return;
    };
    let google = gmail_ingest::google::Google::from_settings(&w.settings).expect("google");
    let tokens = google.tokens().expect("a service-account key");
    let scopes = google.scopes().to_vec();
    let mailboxes = w.shared_mailboxes().await;
    let (a, b) = (&mailboxes[0], &mailboxes[1]);
    let grants = |stats: &serde_json::Value, m: &gmail_ingest::domain::MailboxAddress| {
        stats["tokens_issued"][m.as_str()].as_u64().unwrap_or(0)
    };

    let answers =
        futures::future::join_all((0..32).map(|_| tokens.token(a.as_str(), &scopes))).await;
    let first = answers[0].as_ref().expect("a token").clone();
    assert!(
        answers.iter().all(|t| t.as_ref().ok() == Some(&first)),
        "{answers:?}"
    );
    let other = tokens.token(b.as_str(), &scopes).await.expect("a token");
    assert_ne!(other, first, "one mailbox's token handed to another");
    assert_eq!(tokens.token(a.as_str(), &scopes).await.unwrap(), first);
    let stats = w.stats().await;
    assert_eq!((grants(&stats, a), grants(&stats, b)), (1, 1));

    google.forget(a);
    let answers =
        futures::future::join_all((0..8).map(|_| tokens.token(a.as_str(), &scopes))).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let stats = w.stats().await;
    assert_eq!((grants(&stats, a), grants(&stats, b)), (2, 1));
}
