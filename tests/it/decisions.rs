//! Operators' decisions take effect during a pass, and `check` reads no
//! mailbox that is not active (issue 13, points 2 and 4), on SQLite and
//! PostgreSQL, through the daemon and the real `sync` and `check` binary.
//!
//! The measurements run under the 2026 quota (6,000 units a minute per
//! user, 20 per `messages.get`: about five messages a second) with
//! `batch_size = 50`, on a mailbox of 300 messages: after the first batch is
//! committed a decision is taken, and the rest of the pass may write at most
//! the batch in flight and send at most its requests.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use gmail_ingest::app::Application;
use gmail_ingest::domain::{MailboxAddress, Operator, SubscriptionAction};
use gmail_ingest::subscriptions::Subscriptions;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::chaos_helpers::{binary, write_config};
use crate::helpers::{Backend, World, both_backends, small, world, world_with};

const BATCH: usize = 50;
const MESSAGES: usize = 300;

/// A decision taken while a pass runs.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Pause,
    Remove,
    /// Moved out of the approved OU in the Directory; the re-check suspends it.
    MoveOu,
}

impl Decision {
    /// The `sync_runs.outcome` naming it.
    fn outcome(self) -> &'static str {
        match self {
            Decision::Pause => "paused",
            Decision::Remove => "removed",
            Decision::MoveOu => "suspended",
        }
    }

    async fn take(self, w: &World, m: &MailboxAddress) {
        let policy = w.settings.policy().unwrap();
        let subs = Subscriptions::new(&w.ctx.store, &policy);
        let by = Operator::parse("ops-c").unwrap();
        match self {
            Decision::Pause => {
                subs.transition(m, by, SubscriptionAction::Pause, Some("test".into()))
                    .await
                    .unwrap();
            }
            Decision::Remove => {
                subs.remove(m, by, false).await.unwrap();
            }
            Decision::MoveOu => w.patch_user(m, json!({"org_unit": "/Staff"})).await,
        }
    }
}

/// A world under the 2026 quota: our limiter and the emulator's both enforce it.
async fn quota_world(b: Backend) -> Option<World> {
    let w = world_with(b, small(2, MESSAGES), |s| {
        s.sync.batch_size = BATCH;
        s.sync.user_quota_units_per_minute = 6_000;
        s.sync.org_unit_recheck_interval = Duration::from_secs(1);
    })
    .await?;
    w.quota(json!({"enforce": true, "user_units_per_minute": 6_000}))
        .await;
    Some(w)
}

async fn subscribed(w: &World) -> MailboxAddress {
    let m = w.shared_mailboxes().await.into_iter().next().unwrap();
    w.subscribe(&m).await;
    m
}

/// Rows stored and Gmail requests made for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    rows: i64,
    requests: u64,
    gets: u64,
}

async fn seen(w: &World, m: &MailboxAddress) -> Seen {
    let stats = w.stats().await;
    let mine = &stats["requests_by_user"][m.as_str()];
    let requests = mine
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Seen {
        rows: w.ctx.store.count_messages(m).await.unwrap(),
        requests,
        gets: mine["gmail.users.messages.get"].as_u64().unwrap_or(0),
    }
}

async fn outcomes(w: &World, m: &MailboxAddress) -> Vec<String> {
    w.ctx
        .store
        .query_first_column(&format!(
            "SELECT outcome FROM sync_runs WHERE mailbox = '{m}' ORDER BY id"
        ))
        .await
        .unwrap()
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// What must hold once the stopped pass ended: at most the batch in flight
/// written and requested after the decision, the mailbox not finished, the
/// lease released, no failure recorded; then nothing more at all.
async fn assert_stopped(w: &World, m: &MailboxAddress, d: Decision, before: Seen) {
    // The run row is written before the lease is released.
    eventually("the lease released", Duration::from_secs(10), || async {
        let st = w.ctx.store.sync_state(m).await.unwrap().unwrap();
        st.lease_owner.is_none()
    })
    .await;
    let after = seen(w, m).await;
    // TEST_LOG=1 shows what was measured.
    tracing::info!(
        decision = ?d,
        backend = ?w.backend,
        rows_after = after.rows - before.rows,
        gets_after = after.gets - before.gets,
        requests_after = after.requests - before.requests,
        rows = after.rows,
        "Measured a stopped pass."
    );
    assert!(
        after.rows - before.rows <= BATCH as i64,
        "{d:?}: {} rows written after the decision (batch {BATCH})",
        after.rows - before.rows
    );
    assert!(
        after.gets - before.gets <= BATCH as u64,
        "{d:?}: {} messages.get after the decision",
        after.gets - before.gets
    );
    assert!(
        after.requests - before.requests <= BATCH as u64 + 1,
        "{d:?}: {} Gmail requests after the decision",
        after.requests - before.requests
    );
    assert!(
        after.rows < MESSAGES as i64,
        "{d:?}: the pass ran to the end"
    );
    let runs = outcomes(w, m).await;
    assert!(
        !runs.iter().any(|o| o == "ok" || o == "error"),
        "{d:?}: a stopped pass is neither ok nor a failure: {runs:?}"
    );
    let st = w.ctx.store.sync_state(m).await.unwrap().unwrap();
    assert_eq!(st.lease_owner, None, "{d:?}: the lease was released");
    assert_eq!(
        st.consecutive_failures, 0,
        "{d:?}: not retried as a failure"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        seen(w, m).await,
        after,
        "{d:?}: requests or rows after the pass ended"
    );
}

async fn daemon_stops_at_the_decision(b: Backend, d: Decision) {
    let Some(w) = quota_world(b).await else {
        return;
    };
    let m = subscribed(&w).await;
    let app = Application::build(w.settings.clone()).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));

    eventually("the first batch", Duration::from_secs(60), || async {
        w.ctx.store.count_messages(&m).await.unwrap() >= BATCH as i64
    })
    .await;
    let before = seen(&w, &m).await;
    d.take(&w, &m).await;
    eventually(
        "a run row naming the decision",
        Duration::from_secs(30),
        || async { outcomes(&w, &m).await.iter().any(|o| o == d.outcome()) },
    )
    .await;
    assert_stopped(&w, &m, d, before).await;

    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// The real `sync` binary, with JSON output, while the decision is taken.
async fn sync_stops_at_the_decision(b: Backend, d: Decision) {
    let Some(w) = quota_world(b).await else {
        return;
    };
    let m = subscribed(&w).await;
    let config = w.dir.path().join("decisions.toml");
    write_config(
        &w,
        &config,
        "[sync]\nbatch_size = 50\nuser_quota_units_per_minute = 6000\norg_unit_recheck_interval = \"1s\"\n",
    );
    let child = Command::new(binary())
        .current_dir(w.dir.path())
        .args([
            "--config",
            config.to_str().unwrap(),
            "sync",
            "--format",
            "json",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = tokio::task::spawn_blocking(move || child.wait_with_output());

    eventually("the first batch", Duration::from_secs(60), || async {
        w.ctx.store.count_messages(&m).await.unwrap() >= BATCH as i64
    })
    .await;
    let before = seen(&w, &m).await;
    d.take(&w, &m).await;
    let out: Output = tokio::time::timeout(Duration::from_secs(40), done)
        .await
        .expect("sync stops soon after the decision")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{d:?}: a decision is not a failure: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Value = serde_json::from_str(&text).unwrap();
    let outcome = reports[0]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        outcome.contains(d.outcome()) && outcome != "ok",
        "{d:?}: sync's outcome must name the decision: {outcome}"
    );
    assert!(
        outcomes(&w, &m).await.iter().any(|o| o == d.outcome()),
        "{d:?}: the run row names the decision"
    );
    assert_stopped(&w, &m, d, before).await;
}

both_backends!(a_pause_stops_the_daemons_full_sync, |b| async move {
    daemon_stops_at_the_decision(b, Decision::Pause).await
});
both_backends!(a_removal_stops_the_daemons_full_sync, |b| async move {
    daemon_stops_at_the_decision(b, Decision::Remove).await
});
both_backends!(
    an_ou_move_suspends_and_stops_the_daemons_full_sync,
    |b| async move { daemon_stops_at_the_decision(b, Decision::MoveOu).await }
);
both_backends!(a_pause_stops_a_running_sync_command, |b| async move {
    sync_stops_at_the_decision(b, Decision::Pause).await
});
both_backends!(a_removal_stops_a_running_sync_command, |b| async move {
    sync_stops_at_the_decision(b, Decision::Remove).await
});
both_backends!(
    an_ou_move_is_rechecked_and_stops_a_running_sync_command,
    |b| async move { sync_stops_at_the_decision(b, Decision::MoveOu).await }
);

both_backends!(
    a_pass_refuses_to_start_when_the_integration_is_disabled,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 5), |s| s.integration.enabled = false).await else {
            return;
        };
        let m = subscribed(&w).await;
        let lease = w
            .ctx
            .store
            .claim_mailbox(&m, "test", chrono::Utc::now(), Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();

        let report = gmail_ingest::daemon::lease::run_leased(
            &w.ctx,
            &lease,
            &Default::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();

        assert!(!report.outcome.is_ok(), "{:?}", report.outcome);
        assert_eq!(seen(&w, &m).await.requests, 0, "no Gmail request");
        assert_eq!(w.stats().await["tokens_issued"][m.as_str()], Value::Null);
        assert_eq!(outcomes(&w, &m).await, vec!["disabled".to_owned()]);
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert_eq!(st.lease_owner, None);
    }
);

// -- check -----------------------------------------------------------------

fn run_check(w: &World, config: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(binary())
        .current_dir(w.dir.path())
        .args([&["--config", config.to_str().unwrap(), "check"], extra].concat())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn tokens(stats: &Value, m: &MailboxAddress) -> u64 {
    stats["tokens_issued"][m.as_str()].as_u64().unwrap_or(0)
}

fn requests(stats: &Value, m: &MailboxAddress) -> usize {
    stats["requests_by_user"][m.as_str()]
        .as_object()
        .map_or(0, serde_json::Map::len)
}

both_backends!(
    check_reads_no_mailbox_that_is_not_active,
    |b: Backend| async move {
        // Arrange: one active, one pending, one paused and one suspended
        // subscription, in approved and unapproved org units.
        let Some(w) = world(b, small(6, 3)).await else {
            return;
        };
        let shared = w.shared_mailboxes().await;
        let staff = w
            .users()
            .await
            .into_iter()
            .find(|(_, ou)| !ou.starts_with("/Shared Mailboxes"))
            .map(|(m, _)| m)
            .unwrap();
        let (active, pending, paused) = (&shared[0], &shared[1], &shared[2]);
        w.subscribe(active).await;
        w.subscribe(paused).await;
        w.subscribe(&staff).await;
        let policy = w.settings.policy().unwrap();
        let subs = Subscriptions::new(&w.ctx.store, &policy);
        subs.add(
            pending.clone(),
            Operator::parse("ops-a").unwrap(),
            &[],
            None,
            gmail_ingest::domain::AuthMode::Delegated,
        )
        .await
        .unwrap();
        subs.transition(
            paused,
            Operator::parse("ops-a").unwrap(),
            SubscriptionAction::Pause,
            None,
        )
        .await
        .unwrap();
        gmail_ingest::sync::gate::check_all(&w.ctx).await.unwrap();
        let sub = w.ctx.store.get_subscription(&staff).await.unwrap().unwrap();
        assert_eq!(sub.status.as_str(), "suspended");
        let config = w.dir.path().join("check.toml");
        write_config(&w, &config, "");

        // Act: the whole check, then one mailbox at a time.
        let all = run_check(&w, &config, &[]);
        let one_pending = run_check(&w, &config, &["--mailbox", pending.as_str()]);
        let one_paused = run_check(&w, &config, &["--mailbox", paused.as_str()]);

        // Assert: only the active mailbox got a token and a Gmail call.
        let stats = w.stats().await;
        assert!(tokens(&stats, active) > 0, "the active mailbox is checked");
        assert!(requests(&stats, active) > 0);
        for m in [pending, paused, &staff] {
            assert_eq!(tokens(&stats, m), 0, "{m}: a token was requested");
            assert_eq!(requests(&stats, m), 0, "{m}: Gmail was called");
        }
        let all_text = String::from_utf8_lossy(&all.stdout).to_string();
        assert!(
            all.status.code() == Some(1),
            "the suspended one fails: {all_text}"
        );
        let pending_line = all_text
            .lines()
            .find(|l| l.contains(pending.as_str()) && l.contains("org unit"))
            .unwrap_or_else(|| panic!("the Directory verdict for the pending one: {all_text}"));
        assert!(pending_line.starts_with("[ ok ]"), "{pending_line}");
        assert!(
            all_text
                .lines()
                .any(|l| l.contains(pending.as_str()) && l.contains("pending")),
            "{all_text}"
        );
        assert!(
            all_text
                .lines()
                .any(|l| l.contains(active.as_str()) && l.contains("profile")),
            "{all_text}"
        );

        let text = String::from_utf8_lossy(&one_pending.stdout).to_string();
        assert_eq!(one_pending.status.code(), Some(0), "{text}");
        assert!(text.contains(pending.as_str()), "{text}");
        for other in [active, paused, &staff] {
            assert!(
                !text.contains(other.as_str()),
                "--mailbox checks one: {text}"
            );
        }
        let text = String::from_utf8_lossy(&one_paused.stdout).to_string();
        assert_eq!(one_paused.status.code(), Some(0), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains(paused.as_str()) && l.contains("paused")),
            "{text}"
        );
        assert_eq!(tokens(&w.stats().await, paused), 0);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_of_an_unknown_or_malformed_mailbox_is_a_one_line_error_with_exit_code_2() {
    let w = world(Backend::Sqlite, small(2, 3)).await.unwrap();
    let config = w.dir.path().join("check.toml");
    write_config(&w, &config, "");
    for (arg, cause) in [
        (
            "nobody@example.com",
            "no subscription for nobody@example.com",
        ),
        ("not-an-address", "not-an-address"),
    ] {
        let out = run_check(&w, &config, &["--mailbox", arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(out.stdout.is_empty(), "{arg}: nothing is checked");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains(cause), "{stderr}");
    }
    let stats = w.stats().await;
    assert!(
        stats["token_requests"]
            .as_object()
            .is_none_or(serde_json::Map::is_empty),
        "{stats}"
    );
}
