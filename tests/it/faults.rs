//! Real faults, not simulated ones: a PostgreSQL server that restarts and
//! goes down under two running replicas, and SQLite on a disk that fills up.
//!
//! PostgreSQL: the test runs its own cluster (`pg::PrivateCluster`: the
//! shared server must never be restarted under other tests), two real
//! `gmail-ingest run` processes on one database of it, and the audit of
//! `replica_helpers` (statement triggers that record, for every write, the
//! lease owner the writing transaction saw). Mid full sync the server is
//! restarted with `pg_ctl restart -m fast`, then stopped for longer than a
//! lease and started again. What must hold: each replica's `/readyz` goes
//! false while the server is down and comes back by itself; the lease
//! keepers' renewals failed (the outage hit them, not only the batches);
//! no write landed under a lease its writer did not hold, and no two runs of
//! one mailbox by different replicas overlap; every mailbox converges to the
//! emulator's ground truth with a clean change log; both replicas stop on
//! SIGTERM with status 0.
//!
//! SQLite: the database lives on a small tmpfs the test mounts (root only;
//! elsewhere the test uses a file-size limit on the `sync` process instead).
//! A `sync` that runs out of space fails with one clear line naming the
//! cause, the file passes `PRAGMA integrity_check`, and once there is space
//! again a daemon started while the disk was still full finishes the
//! mailbox without a restart, nothing lost or duplicated.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gmail_ingest::app::Application;
use gmail_ingest::domain::MailboxAddress;
use serde_json::json;
use sqlx::{Connection, Executor, SqliteConnection};

use crate::chaos_helpers::{WorldCli, change_log_violations, eventually, label_rows_violations};
use crate::helpers::{Backend, World, small, world_at};
use crate::pg::PrivateCluster;
use crate::replica_helpers::{AUDIT_SQL, Replica, leases, overlapping_runs, pg, stale_writes};

const LEASE: Duration = Duration::from_secs(2);

/// The private cluster, or `None` (skip) when PostgreSQL's binaries are not
/// installed, unless `GMAIL_INGEST_REQUIRE_POSTGRES=1`.
fn private_cluster() -> Option<PrivateCluster> {
    let cluster = PrivateCluster::start();
    if cluster.is_none() {
        assert!(
            std::env::var("GMAIL_INGEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "GMAIL_INGEST_REQUIRE_POSTGRES=1 but a private PostgreSQL cluster could not be \
             started (initdb/pg_ctl missing or failing)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("initdb/pg_ctl not available: the PostgreSQL restart test did not run");
        }
    }
    cluster
}

/// Counts, for each replica, the `/readyz` answers that were not 200 and
/// the last status seen, polling every 25 ms until dropped.
struct ReadinessWatch {
    not_ready: Vec<Arc<AtomicU64>>,
    last: Vec<Arc<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadinessWatch {
    fn start(ports: &[u16]) -> ReadinessWatch {
        let not_ready: Vec<Arc<AtomicU64>> = ports.iter().map(|_| Arc::default()).collect();
        let last: Vec<Arc<AtomicU64>> = ports.iter().map(|_| Arc::default()).collect();
        let (n, l, ports) = (not_ready.clone(), last.clone(), ports.to_vec());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            loop {
                for (i, port) in ports.iter().enumerate() {
                    let code = http
                        .get(format!("http://127.0.0.1:{port}/readyz"))
                        .send()
                        .await
                        .map_or(0, |r| u64::from(r.status().as_u16()));
                    if code != 200 {
                        n[i].fetch_add(1, Ordering::Relaxed);
                    }
                    l[i].store(code, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        ReadinessWatch {
            not_ready,
            last,
            task,
        }
    }

    fn not_ready(&self, i: usize) -> u64 {
        self.not_ready[i].load(Ordering::Relaxed)
    }

    fn last(&self, i: usize) -> u64 {
        self.last[i].load(Ordering::Relaxed)
    }
}

impl Drop for ReadinessWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stored(w: &World, ms: &[MailboxAddress]) -> Vec<i64> {
    let mut out = Vec::new();
    for m in ms {
        out.push(w.ctx.store.count_messages(m).await.unwrap_or(-1));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_postgresql_restart_and_outage_under_two_replicas_lose_nothing() {
    let Some(cluster) = tokio::task::spawn_blocking(private_cluster).await.unwrap() else {
        return;
    };
    let url = cluster.fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    // Arrange: 4 mailboxes of 400 messages, 5-15 ms per Google call and
    // batches of 5, so the full syncs are under way for many seconds.
    let w = world_at(Backend::Postgres, url, dir, small(8, 400), |_| {}).await;
    let mailboxes: Vec<MailboxAddress> = w.shared_mailboxes().await.into_iter().take(4).collect();
    assert_eq!(mailboxes.len(), 4, "shared mailboxes generated");
    for m in &mailboxes {
        w.subscribe(m).await;
    }
    let mut db = pg(&w).await;
    db.execute(AUDIT_SQL)
        .await
        .expect("audit triggers installed");
    let _ = db.close().await;
    w.faults(json!({"latency_ms": [5, 15]})).await;
    let mut r1 = Replica::spawn(&w, "replica1", 2, LEASE).await;
    let mut r2 = Replica::spawn(&w, "replica2", 2, LEASE).await;
    let watch = ReadinessWatch::start(&[r1.port, r2.port]);
    eventually("both replicas ready", Duration::from_secs(30), || async {
        watch.last(0) == 200 && watch.last(1) == 200
    })
    .await;
    eventually(
        "the full syncs to be under way",
        Duration::from_secs(60),
        || async {
            stored(&w, &mailboxes)
                .await
                .iter()
                .filter(|n| **n > 0)
                .count()
                >= 2
        },
    )
    .await;

    // Act 1: a fast restart in the middle of the full syncs.
    let before_restart = stored(&w, &mailboxes).await;
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    let restart_took = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        c.restart_fast();
        t.elapsed()
    })
    .await
    .unwrap();
    let after_restart = stored(&w, &mailboxes).await;
    assert!(
        after_restart.iter().sum::<i64>() < 1600,
        "the restart came after the syncs had finished ({before_restart:?} → {after_restart:?}); \
         it must land mid-sync"
    );
    eventually(
        "both replicas ready again after the restart",
        Duration::from_secs(30),
        || async { watch.last(0) == 200 && watch.last(1) == 200 },
    )
    .await;
    let dips_after_restart = (watch.not_ready(0), watch.not_ready(1));

    // Act 2: the server down for longer than a lease (every renewal in the
    // window fails and the leases expire), then back.
    let mid_outage = stored(&w, &mailboxes).await;
    let held = leases(&mut pg(&w).await).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_fast())
        .await
        .unwrap();
    eventually(
        "both replicas to report not ready while the server is down",
        Duration::from_secs(15),
        || async { watch.last(0) != 200 && watch.last(1) != 200 },
    )
    .await;
    tokio::time::sleep(LEASE * 2).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap();
    // The outage outlived every lease held when it began: no keeper could
    // renew one in time, so each mailbox was open to a claim by the other
    // replica the moment the server came back.
    let back = chrono::Utc::now();
    assert!(
        !held.is_empty(),
        "no lease was held when the server went down"
    );
    for (m, (_, _, expires)) in &held {
        assert!(*expires < back, "{m}: its lease outlived the outage");
    }
    eventually(
        "both replicas ready again by themselves",
        Duration::from_secs(30),
        || async { watch.last(0) == 200 && watch.last(1) == 200 },
    )
    .await;

    // Every mailbox converges without a restart of either replica.
    eventually(
        "every mailbox converged",
        Duration::from_secs(180),
        || async {
            for m in &mailboxes {
                if w.db(m).await != w.truth(m).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let renew_failures = r1
        .metric("gmail_ingest_db_errors_total{operation=\"renew_lease\"}")
        .await
        + r2.metric("gmail_ingest_db_errors_total{operation=\"renew_lease\"}")
            .await;
    let lease_losses = r1.metric("gmail_ingest_lease_losses_total").await
        + r2.metric("gmail_ingest_lease_losses_total").await;
    assert!(
        r1.child.try_wait().unwrap().is_none() && r2.child.try_wait().unwrap().is_none(),
        "a replica exited during the outage"
    );
    let s1 = r1.terminate().await;
    let s2 = r2.terminate().await;
    drop(watch);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "restart took {restart_took:?}; stored before/after it {before_restart:?} / \
             {after_restart:?}, at the outage {mid_outage:?}; not-ready answers after the \
             restart {dips_after_restart:?}; leases held at the outage {}; renewals refused {renew_failures}, \
             leases lost {lease_losses}",
            held.len()
        );
    }

    // Assert: nothing written under a lease its writer did not hold, no two
    // owners syncing one mailbox at once, nothing lost or duplicated.
    let mut db = pg(&w).await;
    let stale = stale_writes(&mut db).await;
    assert!(
        stale.is_empty(),
        "writes without the lease:\n{}",
        stale.join("\n")
    );
    let overlaps = overlapping_runs(&w, &mailboxes).await;
    assert!(overlaps.is_empty(), "{overlaps:#?}");
    for m in &mailboxes {
        w.assert_converged(m).await;
        let mut bad = change_log_violations(&w, m).await;
        bad.extend(label_rows_violations(&w, m).await);
        assert!(bad.is_empty(), "{m}: {bad:#?}");
    }
    assert!(s1.success() && s2.success(), "exit statuses {s1} / {s2}");
}

/// A filesystem of `size` the test owns, or `None` where mounting is not
/// allowed (not root, or no CAP_SYS_ADMIN in this container).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| SmallDisk {
            path: path.to_owned(),
        })
    }

    fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn integrity(path: &Path) -> String {
    let mut c = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("the database file opens");
    let (verdict,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut c)
        .await
        .expect("integrity_check runs");
    let _ = c.close().await;
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_fails_clearly_stays_intact_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mdir = tempfile::tempdir().unwrap();
    let mount = mdir.path().join("small");
    // Room for the schema and a part of the mailbox (~400 messages of
    // ~10 KB, raw kept: several MB with the full-text index).
    let disk = SmallDisk::mount(&mount, "1536k");
    let db_path = mount.join("gi.db");
    if disk.is_none() {
        std::fs::create_dir_all(&mount).unwrap();
    }
    let url = format!("sqlite://{}", db_path.display());
    let w = world_at(Backend::Sqlite, url, dir, small(3, 400), |s| {
        s.sync.store_raw = true;
        s.sync.batch_size = 20;
    })
    .await;
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    let cli = WorldCli::new(&w, "[sync]\nstore_raw = true\nbatch_size = 20\n");

    // Act 1: a sync that runs out of space.
    let out = match &disk {
        Some(_) => cli.run(&["sync", "--mailbox", m.as_str()]),
        None => {
            // No mount here: the same fault through a file-size limit (the
            // signal it raises ignored, so writes fail with EFBIG instead).
            let limit = std::fs::metadata(&db_path).map_or(0, |m| m.len()) + 1_500_000;
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "trap '' XFSZ; exec prlimit --fsize={limit} \"$0\" --config \"$1\" sync --mailbox \"$2\""
                ))
                .arg(crate::chaos_helpers::binary())
                .arg(&cli.config)
                .arg(m.as_str())
                .current_dir(w.dir.path())
                .env_remove("RUST_LOG")
                .output()
                .expect("sync runs under prlimit")
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sync on a full disk reported success:\n{stdout}{stderr}"
    );
    let text = format!("{stdout}{stderr}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!("sync on a full disk (mounted: {}):\n{text}", disk.is_some());
    }
    assert!(
        text.contains("database or disk is full") || text.contains("disk I/O error"),
        "the failure does not name the cause:\n{text}"
    );
    let partial = w.ctx.store.count_messages(&m).await.unwrap_or(0);
    assert!(
        partial < 400,
        "the disk was not full before the end ({partial} stored)"
    );
    assert_eq!(integrity(&db_path).await, "ok", "the database is damaged");

    // Act 2: a daemon started while the disk is still full, then space
    // comes back; the daemon finishes the mailbox by itself.
    let app = Application::build(w.settings.clone())
        .await
        .expect("the daemon starts on a full disk (reads still work)");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Without the mount the daemon runs without the limit: space "returned".
    if let Some(d) = &disk {
        d.grow("256m");
    }
    eventually(
        "the mailbox converged",
        Duration::from_secs(120),
        || async { w.db(&m).await == w.truth(&m).await },
    )
    .await;
    let _ = tx.send(());
    task.await.unwrap().expect("the daemon stops cleanly");

    // Assert: complete, no duplicate, a clean log, an intact file.
    w.assert_converged(&m).await;
    let mut bad = change_log_violations(&w, &m).await;
    bad.extend(label_rows_violations(&w, &m).await);
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(integrity(&db_path).await, "ok", "the database is damaged");
    drop(w);
    drop(disk);
    drop(mdir);
}
