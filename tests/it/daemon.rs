//! The daemon through its one startup path: `Application::build` →
//! `run_until_stopped`, against the emulator, on SQLite and PostgreSQL.

use std::time::Duration;

use crate::helpers::{Backend, RunningDaemon, World, both_backends, small, world, world_with};
use chrono::Utc;
use gmail_ingest::domain::MailboxAddress;
use serde_json::json;

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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn converged(w: &World, m: &MailboxAddress) -> bool {
    w.db(m).await == w.truth(m).await
}

both_backends!(
    health_readiness_and_metrics_are_served,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 10)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        let app = RunningDaemon::start(&w.settings).await;
        let http = reqwest::Client::new();

        let health = http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        eventually("readiness", Duration::from_secs(10), || async {
            http.get(app.url("/readyz"))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await;
        let ready: serde_json::Value = http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["database"], "ok");
        assert_eq!(ready["migrations"], "ok");
        assert_eq!(ready["integration"], "enabled");
        eventually("the first sync", Duration::from_secs(30), || {
            converged(&w, &m)
        })
        .await;
        let metrics = http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("gmail_ingest_messages_ingested_total"),
            "{metrics}"
        );
        assert!(
            metrics.contains("gmail_ingest_api_requests_total"),
            "{metrics}"
        );
        assert!(
            !metrics.contains(m.as_str()),
            "metrics must not name mailboxes"
        );
        app.finish().await.unwrap();
    }
);

both_backends!(
    new_mail_shows_up_within_a_poll_interval,
    |b: Backend| async move {
        let Some(w) = world(b, small(2, 10)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        let app = RunningDaemon::start(&w.settings).await;
        eventually("the first sync", Duration::from_secs(30), || {
            converged(&w, &m)
        })
        .await;

        w.insert_message(&m, "Water shut-off on Friday", &["INBOX"])
            .await;
        let poll = w.settings.sync.poll_interval;
        eventually(
            "the new message",
            poll * 2 + Duration::from_secs(10),
            || converged(&w, &m),
        )
        .await;

        app.finish().await.unwrap();
    }
);

both_backends!(
    shutdown_mid_sync_exits_cleanly_and_a_restart_converges,
    |b: Backend| async move {
        let Some(w) = world_with(b, small(2, 600), |s| s.sync.batch_size = 25).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        w.faults(json!({"latency_ms": [5, 10]})).await;
        let app = RunningDaemon::start(&w.settings).await;
        eventually("some progress", Duration::from_secs(30), || async {
            w.ctx.store.count_messages(&m).await.unwrap() > 0
        })
        .await;

        let started = tokio::time::Instant::now();
        app.finish().await.expect("clean shutdown");
        assert!(started.elapsed() < w.settings.http.shutdown_grace);
        // The lease was released, not left to expire.
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert!(st.lease_owner.is_none() || st.lease_expires_at.is_none_or(|t| t <= Utc::now()));

        w.faults(json!({"latency_ms": [0, 0]})).await;
        let app = RunningDaemon::start(&w.settings).await;
        eventually("convergence after restart", Duration::from_secs(60), || {
            converged(&w, &m)
        })
        .await;
        app.finish().await.unwrap();
    }
);

both_backends!(
    housekeeping_prunes_old_runs_and_quota_windows_at_start,
    |b: Backend| async move {
        let Some(w) = world(b, small(1, 5)).await else {
            return;
        };
        let m = w.shared_mailboxes().await[0].clone();
        w.subscribe(&m).await;
        // History left by an earlier replica: failed passes 120 and 95 days
        // ago and one yesterday, and quota windows from three days and one
        // minute ago.
        let store = &w.ctx.store;
        let now = Utc::now();
        let lease = store
            .claim_mailbox(&m, "earlier-replica", now, Duration::from_secs(2))
            .await
            .unwrap()
            .expect("claimable");
        for days in [120, 95, 1] {
            let started = now - chrono::TimeDelta::days(days);
            let run = gmail_ingest::store::SyncRunRow {
                replica: "earlier-replica".into(),
                started_at: started,
                finished_at: started + chrono::TimeDelta::seconds(1),
                outcome: gmail_ingest::domain::RunOutcome::Error,
                error: Some("HTTP 503".into()),
                ..gmail_ingest::store::conformance::run_row(&m)
            };
            let failure = gmail_ingest::store::FailureRecord {
                phase: gmail_ingest::domain::SyncPhase::Error,
                error: "HTTP 503".into(),
                next_poll_at: now,
                run: Some(run),
            };
            store.record_failure(&lease, &failure).await.unwrap();
        }
        let minute = |ago: chrono::TimeDelta| {
            chrono::DurationRound::duration_trunc(now - ago, chrono::TimeDelta::minutes(1)).unwrap()
        };
        for ago in [chrono::TimeDelta::days(3), chrono::TimeDelta::minutes(1)] {
            assert!(
                store
                    .reserve_quota("project-minute", minute(ago), 5, 1_000_000)
                    .await
                    .unwrap()
            );
        }

        let app = RunningDaemon::start(&w.settings).await;
        let old = now - chrono::TimeDelta::days(90);
        eventually("the old runs pruned", Duration::from_secs(20), || async {
            let runs = store.sync_runs(&m).await.unwrap();
            runs.iter().all(|r| r.started_at > old)
                && runs.iter().any(|r| r.replica == "earlier-replica")
        })
        .await;
        eventually("the mailbox synced", Duration::from_secs(30), || {
            converged(&w, &m)
        })
        .await;
        let windows = store
            .query_first_column("SELECT units FROM quota_usage ORDER BY window_start")
            .await
            .unwrap();
        assert!(!windows.is_empty() && windows.len() <= 3, "{windows:?}");
        let oldest = store
            .query_first_column("SELECT MIN(window_start) FROM quota_usage")
            .await
            .unwrap();
        assert!(
            !oldest[0].starts_with(
                &minute(chrono::TimeDelta::days(3))
                    .format("%Y-%m-%d")
                    .to_string()
            ),
            "{oldest:?}"
        );
        let metrics = reqwest::get(app.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // The recorder is process-wide: the other backend's run of this test
        // may have added its own rows.
        let pruned = |table: &str| {
            let series = format!("gmail_ingest_rows_pruned_total{{table=\"{table}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        assert!(pruned("sync_runs") >= 2.0, "{metrics}");
        assert!(pruned("quota_usage") >= 1.0, "{metrics}");
        app.finish().await.unwrap();
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_sqlite_file_refuses_to_start() {
    let Some(w) = world(Backend::Sqlite, small(1, 1)).await else {
        return;
    };
    let first = RunningDaemon::start(&w.settings).await;
    let err = match RunningDaemon::try_start(w.settings.clone()).await {
        Ok(_) => panic!("second daemon started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("SQLite supports one replica"), "{err}");
    first.finish().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_disabled_ingests_nothing_and_says_so() {
    let Some(w) = world_with(Backend::Sqlite, small(2, 10), |s| {
        s.integration.enabled = false
    })
    .await
    else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    let app = RunningDaemon::start(&w.settings).await;
    let http = reqwest::Client::new();
    eventually("readiness", Duration::from_secs(10), || async {
        http.get(app.url("/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    let ready: serde_json::Value = http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["integration"]
            .as_str()
            .unwrap()
            .starts_with("disabled")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.ctx.store.count_messages(&m).await.unwrap(), 0);
    assert_eq!(
        w.stats().await["tokens_issued"][m.as_str()]
            .as_u64()
            .unwrap_or(0),
        0
    );
    app.finish().await.unwrap();
}

/// Several replicas on one PostgreSQL: every mailbox synced, never by two
/// replicas at once; a killed replica's mailboxes are taken over after its
/// leases expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_mailboxes_without_overlap_and_take_over_from_a_dead_one() {
    let Some(w) = world_with(Backend::Postgres, small(30, 15), |s| {
        s.sync.lease_duration = Duration::from_secs(3);
        s.sync.max_concurrent_mailboxes = 4;
    })
    .await
    else {
        return;
    };
    let mailboxes = w.shared_mailboxes().await;
    assert!(mailboxes.len() >= 15, "{}", mailboxes.len());
    for m in &mailboxes {
        w.subscribe(m).await;
    }
    w.faults(json!({"latency_ms": [1, 3]})).await;
    let a = RunningDaemon::start(&w.settings).await;
    let b2 = RunningDaemon::start(&w.settings).await;
    let c = RunningDaemon::start(&w.settings).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill();

    for m in &mailboxes {
        eventually("every mailbox converges", Duration::from_secs(90), || {
            converged(&w, m)
        })
        .await;
    }
    a.finish().await.unwrap();
    b2.finish().await.unwrap();

    // No two runs of one mailbox overlap in time.
    for m in &mailboxes {
        let mut runs = w.ctx.store.sync_runs(m).await.unwrap();
        runs.sort_by_key(|r| r.started_at);
        for pair in runs.windows(2) {
            assert!(
                pair[1].started_at >= pair[0].finished_at || pair[0].replica == pair[1].replica,
                "{m}: runs by {} and {} overlap",
                pair[0].replica,
                pair[1].replica
            );
        }
    }
}
