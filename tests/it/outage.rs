//! Database outage (PostgreSQL): every connection of the daemon killed
//! from the server side, repeatedly, while it syncs. The daemon recovers
//! without a restart and the database converges with nothing lost or
//! duplicated.
//!
//! `/readyz` is polled throughout; whether it reports not-ready is printed,
//! not asserted: `pg_terminate_backend` kills connections but the server
//! stays up, and the pool replaces a dead connection before handing it out
//! (sqlx tests connections before acquire), so readiness may legitimately
//! never fail. A real outage (server down) is covered by `cli.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gmail_ingest::app::Application;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::chaos_helpers::{change_log_violations, label_rows_violations};
use crate::helpers::{Backend, small, world_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_killed_database_connections_and_converges() {
    // Arrange: a mailbox big enough that the kills land mid-sync.
    let Some(w) = world_with(Backend::Postgres, small(2, 1500), |s| {
        s.sync.batch_size = 20;
        s.sync.lease_duration = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    w.faults(json!({"latency_ms": [2, 6]})).await;
    let app = Application::build(w.settings.clone()).await.unwrap();
    let port = app.http_port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let not_ready = Arc::new(AtomicU64::new(0));
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (not_ready, polling, http) = (not_ready.clone(), polling.clone(), w.http.clone());
        tokio::spawn(async move {
            while polling.load(Ordering::Relaxed) {
                let ok = http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    not_ready.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let mut killer = PgConnection::connect(w.settings.database.url.expose())
        .await
        .unwrap();
    // Start the outage once the full sync is under way (a loaded machine can
    // take seconds to store the first batch; a fixed pause made this flaky).
    let begun = Instant::now();
    while w.ctx.store.count_messages(&m).await.unwrap_or(0) == 0
        && begun.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act: kill every other connection to the database, ten times over ~4s.
    let mut killed = 0i64;
    let mut mid_sync = 0;
    for _ in 0..10 {
        let stored = w.ctx.store.count_messages(&m).await.unwrap_or(0);
        if stored > 0 && (stored as usize) < 1500 {
            mid_sync += 1;
        }
        let rows: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut killer)
        .await
        .unwrap();
        killed += rows.len() as i64;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let _ = killer.execute("SELECT 1").await;

    // Assert: still running, converges, nothing duplicated.
    assert!(!task.is_finished(), "the daemon stopped during the outage");
    let start = Instant::now();
    while w.db(&m).await != w.truth(&m).await {
        if start.elapsed() > Duration::from_secs(45) {
            let st = w.ctx.store.sync_state(&m).await.unwrap();
            let metrics = |w: &crate::helpers::World| {
                let http = w.http.clone();
                async move {
                    let body = http
                        .get(format!("http://127.0.0.1:{port}/metrics"))
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    body.lines()
                        .filter(|l| {
                            l.contains("tick")
                                || l.contains("claim")
                                || l.contains("db_error")
                                || l.contains("in_flight")
                        })
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            };
            let a = metrics(&w).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let b = metrics(&w).await;
            let ready = w
                .http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let mut probe = PgConnection::connect(w.settings.database.url.expose())
                .await
                .unwrap();
            let act: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, wait_event_type || ':' || COALESCE(wait_event, ''), LEFT(query, 160) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut probe)
            .await
            .unwrap();
            #[allow(clippy::print_stderr)]
            {
                eprintln!("ACTIVITY {act:#?}");
                eprintln!("METRICS A:\n{a}\nMETRICS B:\n{b}\nREADY {ready}");
            }
            panic!(
                "no convergence within 90s of the outage: {} of {} stored, daemon finished: {}, state {st:#?}",
                w.db(&m).await.len(),
                w.truth(&m).await.len(),
                task.is_finished()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    polling.store(false, Ordering::Relaxed);
    let _ = poller.await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    assert!(
        killed > 0,
        "no connection was killed: the test proved nothing"
    );
    assert!(mid_sync > 0, "no kill landed mid-sync");
    let mut bad = change_log_violations(&w, &m).await;
    bad.extend(label_rows_violations(&w, &m).await);
    assert!(bad.is_empty(), "{bad:#?}");
    let runs = w.ctx.store.sync_runs(&m).await.unwrap();
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "outage: {killed} connections killed, {mid_sync} rounds mid-sync, /readyz not ready {} times, \
             runs {:?}",
            not_ready.load(Ordering::Relaxed),
            runs.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>()
        );
    }
}
