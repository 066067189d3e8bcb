//! The daemon through its one startup path: `Application::build` →
//! `run_until_stopped`, against the emulator, on SQLite and PostgreSQL.

use std::time::Duration;

use chrono::Utc;
use gmail_ingest::app::Application;
use gmail_ingest::domain::MailboxAddress;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::{Backend, World, both_backends, small, world, world_with};

struct Running {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(w: &World) -> anyhow::Result<Running> {
        Self::start_with(w.settings.clone()).await
    }

    async fn start_with(settings: gmail_ingest::config::Settings) -> anyhow::Result<Running> {
        let app = Application::build(settings).await?;
        let port = app.http_port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Ok(Running {
            port,
            stop: Some(tx),
            task,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("daemon task joins")
    }

    /// A crash: the task is dropped without any cleanup.
    fn kill(self) {
        self.task.abort();
    }
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
        let app = Running::start(&w).await.unwrap();
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
        app.stop().await.unwrap();
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
        let app = Running::start(&w).await.unwrap();
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

        app.stop().await.unwrap();
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
        let app = Running::start(&w).await.unwrap();
        eventually("some progress", Duration::from_secs(30), || async {
            w.ctx.store.count_messages(&m).await.unwrap() > 0
        })
        .await;

        let started = tokio::time::Instant::now();
        app.stop().await.expect("clean shutdown");
        assert!(started.elapsed() < w.settings.http.shutdown_grace);
        // The lease was released, not left to expire.
        let st = w.ctx.store.sync_state(&m).await.unwrap().unwrap();
        assert!(st.lease_owner.is_none() || st.lease_expires_at.is_none_or(|t| t <= Utc::now()));

        w.faults(json!({"latency_ms": [0, 0]})).await;
        let app = Running::start(&w).await.unwrap();
        eventually("convergence after restart", Duration::from_secs(60), || {
            converged(&w, &m)
        })
        .await;
        app.stop().await.unwrap();
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_sqlite_file_refuses_to_start() {
    let Some(w) = world(Backend::Sqlite, small(1, 1)).await else {
        return;
    };
    let first = Running::start(&w).await.unwrap();
    let err = match Running::start(&w).await {
        Ok(_) => panic!("second daemon started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("SQLite supports one replica"), "{err}");
    first.stop().await.unwrap();
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
    let app = Running::start(&w).await.unwrap();
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
    app.stop().await.unwrap();
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
    let a = Running::start(&w).await.unwrap();
    let b2 = Running::start(&w).await.unwrap();
    let c = Running::start(&w).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill();

    for m in &mailboxes {
        eventually("every mailbox converges", Duration::from_secs(90), || {
            converged(&w, m)
        })
        .await;
    }
    a.stop().await.unwrap();
    b2.stop().await.unwrap();

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
