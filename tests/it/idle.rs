//! The idle cost of a quiet poll (issue 14, point 1), as users see it:
//!
//! - a quiet pass (nothing changed) writes no `sync_runs` row, yet `status`
//!   stays truthful: last success moves, the quiet passes are counted, and
//!   the count survives a daemon restart; a pass that changed something
//!   still writes its row;
//! - the daemon's quiet polls no longer ask the Directory: the org-unit
//!   verdict is cached for `sync.org_unit_recheck_interval`;
//! - a mailbox moved out of the approved OU is still suspended within that
//!   interval and not read after the gate refused it, and it comes back
//!   when it returns;
//! - a status change (pause, resume) clears the cached verdict: a mailbox
//!   moved out while paused is refused at its first pass after the resume,
//!   not read on a stale admission.

use std::time::Duration;

use chrono::Utc;
use gmail_ingest::domain::{MailboxAddress, Operator, SubscriptionAction, SubscriptionStatus};
use gmail_ingest::store::SyncState;
use gmail_ingest::subscriptions::Subscriptions;
use serde_json::{Value, json};

use crate::helpers::{Backend, RunningDaemon, World, both_backends, small, world_with};

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state(w: &World, m: &MailboxAddress) -> SyncState {
    w.ctx
        .store
        .sync_state(m)
        .await
        .unwrap()
        .expect("the mailbox has a sync state")
}

async fn runs(w: &World, m: &MailboxAddress) -> usize {
    w.ctx.store.sync_runs(m).await.unwrap().len()
}

async fn status(w: &World, m: &MailboxAddress) -> gmail_ingest::domain::SubscriptionStatus {
    w.ctx
        .store
        .get_subscription(m)
        .await
        .unwrap()
        .unwrap()
        .status
}

/// Directory `users.get` calls answered so far (one subscribed mailbox per test).
async fn directory_calls(w: &World) -> u64 {
    w.stats().await["requests"]["directory.users.get"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Gmail requests (and token grants) made as `m` so far.
async fn reads_as(w: &World, m: &MailboxAddress) -> (u64, u64) {
    let stats = w.stats().await;
    let requests = stats["requests_by_user"][m.as_str()]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let tokens = stats["tokens_issued"][m.as_str()].as_u64().unwrap_or(0);
    (requests, tokens)
}

/// `gmail-ingest status --format json`, the row of `m`.
fn status_json(w: &World, m: &MailboxAddress) -> Value {
    let config = w.dir.path().join("status.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = {:?}\n[google]\nservice_account_key_file = {:?}\n",
            w.settings.database.url.expose(),
            w.settings
                .google
                .service_account_key_file
                .display()
                .to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "status",
            "--format",
            "json",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("gmail-ingest runs");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == m.as_str())
        .cloned()
        .expect("the mailbox is in status")
}

async fn one_subscribed(w: &World) -> MailboxAddress {
    let m = w.shared_mailboxes().await.into_iter().next().unwrap();
    w.subscribe(&m).await;
    m
}

async fn transition(w: &World, m: &MailboxAddress, action: SubscriptionAction) {
    let policy = w.settings.policy().unwrap();
    Subscriptions::new(&w.ctx.store, &policy)
        .transition(m, Operator::parse("ops-c").unwrap(), action, None)
        .await
        .unwrap();
}

both_backends!(
    a_quiet_pass_is_counted_not_rowed_and_status_stays_truthful,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 5), |_| {}).await else {
            return;
        };
        let m = one_subscribed(&w).await;
        assert!(w.sync(Some(&m)).await[0].outcome.is_ok());
        let rows = runs(&w, &m).await;
        assert!(rows > 0, "the full sync wrote its row");
        let before = state(&w, &m).await;

        // A quiet one-off pass: no row, counted, last success moved.
        let report = w.sync(Some(&m)).await.remove(0);
        assert!(report.outcome.is_ok(), "{:?}", report.outcome);
        assert_eq!(report.counts.added + report.counts.deleted, 0);
        assert_eq!(runs(&w, &m).await, rows, "a quiet pass writes no run row");
        let after = state(&w, &m).await;
        assert_eq!(after.quiet_passes, before.quiet_passes + 1);
        assert!(after.last_quiet_at.is_some());
        assert!(after.last_success_at > before.last_success_at);
        assert_eq!(after.lease_owner, None, "released with its checkpoint");
        assert!(after.next_poll_at.is_some_and(|t| t > Utc::now()));
        let row = status_json(&w, &m);
        assert_eq!(row["quiet_passes"], after.quiet_passes);
        let shown: chrono::DateTime<Utc> =
            serde_json::from_value(row["last_success_at"].clone()).unwrap();
        assert_eq!(Some(shown), after.last_success_at);
        assert!(row["lag_seconds"].as_i64().unwrap() < 60);

        // A pass with a change still writes its row, and is not counted quiet.
        w.insert_message(&m, "news", &["INBOX"]).await;
        let report = w.sync(Some(&m)).await.remove(0);
        assert_eq!(report.counts.added, 1);
        let all = w.ctx.store.sync_runs(&m).await.unwrap();
        assert_eq!(all.len(), rows + 1);
        assert_eq!(all.last().unwrap().counts.added, 1);
        assert_eq!(state(&w, &m).await.quiet_passes, after.quiet_passes);

        // The daemon's quiet polls are counted too, across a restart, rowless.
        let rows = runs(&w, &m).await;
        for round in 1..=2 {
            let start = state(&w, &m).await.quiet_passes;
            let d = RunningDaemon::start(&w.settings).await;
            eventually(
                &format!("two quiet polls in daemon run {round}"),
                Duration::from_secs(30),
                || async { state(&w, &m).await.quiet_passes >= start + 2 },
            )
            .await;
            d.stop().await;
        }
        assert_eq!(runs(&w, &m).await, rows, "quiet daemon polls write no rows");
        w.assert_converged(&m).await;
    }
);

both_backends!(
    quiet_daemon_polls_do_not_ask_the_directory_within_the_recheck_interval,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 3), |s| {
            s.sync.org_unit_recheck_interval = Duration::from_secs(3600);
        })
        .await
        else {
            return;
        };
        let m = one_subscribed(&w).await;
        let d = RunningDaemon::start(&w.settings).await;
        eventually("the first quiet poll", Duration::from_secs(30), || async {
            w.ctx
                .store
                .sync_state(&m)
                .await
                .unwrap()
                .is_some_and(|s| s.quiet_passes >= 1)
        })
        .await;
        let asked = directory_calls(&w).await;
        assert!(asked >= 1, "the first pass asked the Directory");
        let polls = state(&w, &m).await.quiet_passes;
        eventually("five more quiet polls", Duration::from_secs(30), || async {
            state(&w, &m).await.quiet_passes >= polls + 5
        })
        .await;
        assert_eq!(
            directory_calls(&w).await,
            asked,
            "a quiet poll within the recheck interval asks the Directory nothing"
        );
        let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
        assert!(sub.org_unit_allowed_at.is_some());

        // A pause and a resume clear the cached verdict: moved out while
        // paused, the mailbox is refused at its first pass after the resume
        // and never read on the stale admission.
        transition(&w, &m, SubscriptionAction::Pause).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        w.patch_user(&m, json!({"org_unit": "/Staff"})).await;
        let reads = reads_as(&w, &m).await;
        transition(&w, &m, SubscriptionAction::Resume).await;
        eventually(
            "the resumed mailbox refused by the gate",
            Duration::from_secs(30),
            || async { status(&w, &m).await == SubscriptionStatus::Suspended },
        )
        .await;
        assert!(directory_calls(&w).await > asked, "the resume asked again");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            reads_as(&w, &m).await,
            reads,
            "no Gmail request or token for a mailbox the gate refused"
        );
        d.stop().await;
    }
);

both_backends!(
    a_mailbox_moved_out_is_suspended_within_the_recheck_interval_and_comes_back,
    |b: Backend| async move {
        let interval = Duration::from_secs(3);
        let Some(w) = world_with(b, small(2, 3), |s| {
            s.sync.org_unit_recheck_interval = interval;
        })
        .await
        else {
            return;
        };
        let m = one_subscribed(&w).await;
        let d = RunningDaemon::start(&w.settings).await;
        eventually("two quiet polls", Duration::from_secs(30), || async {
            w.ctx
                .store
                .sync_state(&m)
                .await
                .unwrap()
                .is_some_and(|s| s.quiet_passes >= 2)
        })
        .await;

        w.patch_user(&m, json!({"org_unit": "/Staff"})).await;
        let moved = tokio::time::Instant::now();
        eventually(
            "the moved mailbox suspended",
            Duration::from_secs(30),
            || async { status(&w, &m).await == SubscriptionStatus::Suspended },
        )
        .await;
        let took = moved.elapsed();
        // The bound is the interval (cache age or the scheduler's re-check),
        // plus a poll and the load of a shared test machine.
        assert!(
            took < interval + Duration::from_secs(4),
            "suspended {took:?} after the move, interval {interval:?}"
        );
        // A pass that had started stops at once (the watcher); then nothing.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let reads = reads_as(&w, &m).await;
        let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
        assert_eq!(
            sub.org_unit_allowed_at, None,
            "the refusal cleared the admission"
        );
        tokio::time::sleep(interval + Duration::from_secs(1)).await;
        assert_eq!(
            reads_as(&w, &m).await,
            reads,
            "no Gmail request or token after the gate refused the mailbox"
        );

        // Back in an approved OU: reinstated by the re-check and polled again.
        w.patch_user(&m, json!({"org_unit": "/Shared Mailboxes"}))
            .await;
        let quiet = state(&w, &m).await.quiet_passes;
        eventually(
            "the mailbox reinstated and polled",
            Duration::from_secs(30),
            || async {
                status(&w, &m).await == SubscriptionStatus::Active
                    && state(&w, &m).await.quiet_passes > quiet
            },
        )
        .await;
        d.stop().await;
        w.assert_converged(&m).await;
    }
);
