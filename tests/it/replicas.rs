//! Replica loss: three real `gmail-ingest run` processes on one PostgreSQL
//! database against one emulator. While all three are syncing, replica 1 is
//! SIGKILLed and replica 2 is SIGSTOPped until its leases have expired and
//! replica 3 has taken its mailboxes over; then replica 2 is SIGCONTinued
//! and runs on.
//!
//! What must hold (DESIGN.md "Scale-out": a replica that lost its lease can
//! never write a mailbox):
//!
//! - every mailbox converges to the emulator's ground truth, with a clean
//!   change log and no duplicate rows;
//! - no write of the paused replica landed on a mailbox another replica
//!   owned. The evidence is taken by the database itself: statement
//!   triggers installed by this test record, for every write to `messages`,
//!   `message_changes`, `sync_runs` and `sync_state`, the writing replica
//!   (its connections' `application_name`) and the lease owner the writing
//!   transaction sees. Without fencing, the paused replica's in-flight batch
//!   commits into a mailbox replica 3 owns and shows up here;
//! - no two `sync_runs` of one mailbox by different replicas overlap in time;
//! - the paused replica noticed (`gmail_ingest_lease_losses_total` > 0 on its
//!   `/metrics`), then claims and syncs mailboxes again;
//! - the two survivors stop on SIGTERM with exit status 0.
//!
//! A replica frozen inside a transaction keeps that mailbox's `sync_state`
//! row locked, and claims (`FOR UPDATE SKIP LOCKED`) pass the mailbox over
//! until the replica wakes and its transaction ends; the test waits for the
//! takeover of the other mailboxes only and reports how many were pinned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gmail_ingest::domain::MailboxAddress;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::chaos_helpers::{binary, change_log_violations, eventually, label_rows_violations};
use crate::helpers::{Backend, World, small, world, world_with};

/// Subscribed mailboxes.
const MAILBOXES: usize = 30;
/// Generated messages per mailbox: with the latency below a full sync takes
/// a few seconds, so the signals land mid-sync.
const MESSAGES: usize = 200;
const LEASE: Duration = Duration::from_secs(2);
/// Replicas 1 and 2 each claim a third of the mailboxes at start; replica 3
/// takes the last third and keeps room to take over every mailbox of the
/// other two at once, so the takeover happens while replica 2 is stopped.
const SMALL_POOL: usize = MAILBOXES / 3;

/// One `gmail-ingest run` process. Its `HOSTNAME` is its name, so its
/// replica id (the lease owner and `sync_runs.replica`) starts with
/// `"{name}-"`; its database connections carry `application_name = name`.
struct Replica {
    name: String,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Replica {
    async fn spawn(w: &World, name: &str, max_concurrent: usize) -> Replica {
        let config = w.dir.path().join(format!("{name}.toml"));
        write_replica_config(w, &config, name, max_concurrent);
        let log = w.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary())
            .current_dir(w.dir.path())
            .args(["--config", config.to_str().unwrap(), "run"])
            .env_remove("RUST_LOG")
            .env("HOSTNAME", name)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("daemon starts");
        let mut r = Replica {
            name: name.to_owned(),
            child,
            log,
            port: 0,
        };
        let start = Instant::now();
        while r.port == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{name} did not report its HTTP port; log:\n{}",
                r.log_text()
            );
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("{name} exited at start ({status}); log:\n{}", r.log_text());
            }
            r.port = r
                .log_lines()
                .iter()
                .find(|l| l["message"].as_str() == Some("Serving /healthz /readyz /metrics."))
                .and_then(|l| l["port"].as_u64())
                .map_or(0, |p| p as u16);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r
    }

    fn owner_prefix(&self) -> String {
        format!("{}-", self.name)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} {}", self.name);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines (`log.format = "json"`).
    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port))
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then the exit status (bounded: the grace is 5 s).
    async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not exit after SIGTERM; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // A failed assertion must not leave daemons running (SIGKILL also
        // ends a stopped process).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn write_replica_config(w: &World, path: &Path, name: &str, max_concurrent: usize) {
    let s = &w.settings;
    let toml = format!(
        r#"[database]
url = "{db}{app}"
max_connections = 4

[google]
service_account_key_file = "{key}"
admin_subject = "{admin}"
gmail_base_url = "{base}"
directory_base_url = "{base}"
initial_backoff = "5ms"
max_backoff = "200ms"
max_attempts = 8
request_timeout = "60s"

[http]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

[sync]
poll_interval = "1s"
lease_duration = "{lease}s"
batch_size = 5
per_mailbox_concurrency = 5
max_concurrent_mailboxes = {max_concurrent}
user_quota_units_per_minute = 100000000

[log]
format = "json"
level = "info"
"#,
        db = s.database.url.expose(),
        app = if s.database.url.expose().starts_with("postgres") {
            format!("?application_name={name}")
        } else {
            String::new()
        },
        key = s.google.service_account_key_file.display(),
        admin = s.google.admin_subject,
        base = s.google.gmail_base_url,
        lease = LEASE.as_secs(),
    );
    std::fs::write(path, toml).expect("config written");
}

/// The audit: statement triggers that record, for each write a replica
/// makes, the lease owner its transaction sees. A fenced write locks its
/// mailbox's `sync_state` row while checking that the lease is its own, so
/// a correct replica always sees itself as the owner.
const AUDIT_SQL: &str = r#"
CREATE TABLE fence_audit (
    id bigserial PRIMARY KEY,
    writer text NOT NULL,
    tbl text NOT NULL,
    mailbox text NOT NULL,
    owner_before text,
    owner_after text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION fence_audit_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') LIKE 'replica%' THEN
        INSERT INTO fence_audit (writer, tbl, mailbox, owner_before, owner_after)
        SELECT current_setting('application_name'), TG_TABLE_NAME, d.mailbox,
               s.lease_owner, s.lease_owner
        FROM (SELECT DISTINCT mailbox FROM new_rows) d
        LEFT JOIN sync_state s ON s.mailbox = d.mailbox;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION fence_audit_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') LIKE 'replica%' THEN
        INSERT INTO fence_audit (writer, tbl, mailbox, owner_before, owner_after)
        SELECT current_setting('application_name'), TG_TABLE_NAME, o.mailbox,
               o.lease_owner, n.lease_owner
        FROM old_rows o JOIN new_rows n ON n.mailbox = o.mailbox;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER audit_messages_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fence_audit_rows();
CREATE TRIGGER audit_messages_update AFTER UPDATE ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fence_audit_rows();
CREATE TRIGGER audit_changes_insert AFTER INSERT ON message_changes
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fence_audit_rows();
CREATE TRIGGER audit_runs_insert AFTER INSERT ON sync_runs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION fence_audit_rows();
CREATE TRIGGER audit_state_update AFTER UPDATE ON sync_state
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fence_audit_state();
"#;

/// Writes whose replica held neither the lease before nor after them: a
/// claim makes the writer the owner, a release leaves it the previous
/// owner, every other write must happen under the writer's own lease.
const AUDIT_VIOLATIONS_SQL: &str = "SELECT writer || ' wrote ' || tbl || ' of ' || mailbox \
     || ' at ' || at || ' while the lease was ' || coalesce(owner_before, 'free') \
     || ' -> ' || coalesce(owner_after, 'free') \
     FROM fence_audit \
     WHERE coalesce(split_part(owner_before, '-', 1), '') <> writer \
     AND coalesce(split_part(owner_after, '-', 1), '') <> writer \
     ORDER BY id";

async fn pg(w: &World) -> PgConnection {
    PgConnection::connect(w.settings.database.url.expose())
        .await
        .expect("test connection to PostgreSQL")
}

/// mailbox -> (lease owner, epoch, lease expiry) of every leased mailbox.
async fn leases(c: &mut PgConnection) -> BTreeMap<String, (String, i64, DateTime<Utc>)> {
    let rows: Vec<(String, String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT mailbox, lease_owner, lease_epoch, lease_expires_at FROM sync_state \
         WHERE lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL",
    )
    .fetch_all(c)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(m, o, e, x)| (m, (o, e, x)))
        .collect()
}

/// Mailboxes whose `sync_state` row is locked by an open transaction.
async fn row_locked(c: &mut PgConnection, mailboxes: &BTreeSet<String>) -> BTreeSet<String> {
    let unlocked: Vec<(String,)> =
        sqlx::query_as("SELECT mailbox FROM sync_state FOR UPDATE SKIP LOCKED")
            .fetch_all(c)
            .await
            .unwrap();
    let unlocked: BTreeSet<String> = unlocked.into_iter().map(|(m,)| m).collect();
    mailboxes.difference(&unlocked).cloned().collect()
}

async fn converged(w: &World, ms: &[MailboxAddress]) -> bool {
    for m in ms {
        if w.db(m).await != w.truth(m).await {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_a_paused_replica_converge_without_a_stale_write() {
    // Arrange: 30 mailboxes of 200 messages, 20-40 ms per Google call.
    let Some(w) = world_with(
        Backend::Postgres,
        small(MAILBOXES * 5 / 3, MESSAGES),
        |_| {},
    )
    .await
    else {
        return;
    };
    let test_start = Instant::now();
    // Where the time goes, printed at the end.
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    let mailboxes: Vec<MailboxAddress> = w
        .shared_mailboxes()
        .await
        .into_iter()
        .take(MAILBOXES)
        .collect();
    assert_eq!(mailboxes.len(), MAILBOXES, "shared mailboxes generated");
    for m in &mailboxes {
        w.subscribe(m).await;
    }
    let mut db = pg(&w).await;
    db.execute(AUDIT_SQL)
        .await
        .expect("audit triggers installed");
    w.faults(json!({"latency_ms": [20, 40]})).await;

    // Each replica claims its share before the next one starts.
    let mut replicas: Vec<Replica> = Vec::new();
    for (name, pool) in [
        ("replica1", SMALL_POOL),
        ("replica2", SMALL_POOL),
        ("replica3", MAILBOXES),
    ] {
        let r = Replica::spawn(&w, name, pool).await;
        let prefix = r.owner_prefix();
        let want = if pool == SMALL_POOL { SMALL_POOL } else { 1 };
        eventually(
            &format!("{name} claims"),
            Duration::from_secs(20),
            || async {
                let held = leases(&mut pg(&w).await).await;
                held.values()
                    .filter(|(o, ..)| o.starts_with(&prefix))
                    .count()
                    >= want
            },
        )
        .await;
        replicas.push(r);
    }
    phases.push(("started", test_start.elapsed()));
    let [r1, r2, r3] = &mut replicas[..] else {
        unreachable!()
    };

    // Replica 2 is mid full sync: half of its mailboxes have rows already.
    let r2_prefix = r2.owner_prefix();
    eventually(
        "replica 2 to be mid full sync",
        Duration::from_secs(20),
        || async {
            let held = leases(&mut pg(&w).await).await;
            let mut progressing = 0;
            for (m, (o, ..)) in &held {
                if o.starts_with(&r2_prefix) {
                    let m = MailboxAddress::parse(m).unwrap();
                    if w.ctx.store.count_messages(&m).await.unwrap() > 0 {
                        progressing += 1;
                    }
                }
            }
            progressing >= SMALL_POOL / 2
        },
    )
    .await;
    phases.push(("mid sync", test_start.elapsed()));

    // Act: replica 1 dies, replica 2 freezes holding its leases.
    r1.child.kill().expect("SIGKILL replica 1");
    let _ = r1.child.wait();
    r2.signal("STOP");
    let stopped_at = Instant::now();
    let frozen: BTreeMap<String, i64> = leases(&mut db)
        .await
        .into_iter()
        .filter(|(_, (o, ..))| o.starts_with(&r2_prefix))
        .map(|(m, (_, epoch, _))| (m, epoch))
        .collect();
    assert!(!frozen.is_empty(), "replica 2 held no lease when stopped");
    let frozen_set: BTreeSet<String> = frozen.keys().cloned().collect();

    // Keep it stopped until replica 3 owns every mailbox replica 2 held,
    // except those whose row an open transaction of replica 2 still locks
    // (SKIP LOCKED passes them over until that transaction ends).
    let r3_prefix = r3.owner_prefix();
    let mut taken_over: BTreeSet<String>;
    let mut pinned: BTreeSet<String>;
    loop {
        let held = leases(&mut db).await;
        taken_over = frozen
            .iter()
            .filter(|(m, epoch)| {
                held.get(*m)
                    .is_some_and(|(o, e, _)| o.starts_with(&r3_prefix) && e > *epoch)
            })
            .map(|(m, _)| m.clone())
            .collect();
        pinned = &row_locked(&mut db, &frozen_set).await - &taken_over;
        let settled = stopped_at.elapsed() > LEASE * 2
            && frozen_set
                .iter()
                .all(|m| taken_over.contains(m) || pinned.contains(m));
        if settled || stopped_at.elapsed() > LEASE * 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused_for = stopped_at.elapsed();
    let (open_transactions,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'replica2' AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        !taken_over.is_empty(),
        "replica 3 took over none of replica 2's {} mailboxes in {paused_for:?} \
         ({} row-locked); the test lost its teeth",
        frozen.len(),
        pinned.len()
    );
    phases.push(("stopped", test_start.elapsed()));
    r2.signal("CONT");

    // Replica 2 finds out, stops its stale work, and runs on.
    eventually(
        "replica 2 to report a lease loss",
        Duration::from_secs(15),
        || async { r2.metric("gmail_ingest_lease_losses_total").await > 0.0 },
    )
    .await;
    phases.push(("lease loss seen", test_start.elapsed()));
    let lost_in_log: BTreeSet<String> = r2
        .log_lines()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Lease lost"))
        })
        .filter_map(|l| l["mailbox"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !lost_in_log.is_disjoint(&taken_over),
        "replica 2's log names no taken-over mailbox as lost ({lost_in_log:?}, taken over \
         {taken_over:?})"
    );
    // New mail after the takeover, so the passes that follow do real work.
    for m in mailboxes.iter().step_by(3) {
        w.insert_message(m, "Arrived after the takeover", &["INBOX"])
            .await;
    }
    eventually("every mailbox to converge", Duration::from_secs(60), || {
        converged(&w, &mailboxes)
    })
    .await;
    phases.push(("converged", test_start.elapsed()));
    // Replica 3 (with room for every mailbox) wins most claims while it
    // runs; once it is gone, replica 2 alone must pick up new mail.
    let r3_status = r3.terminate().await;
    let r3_gone = Utc::now();
    phases.push(("replica 3 stopped", test_start.elapsed()));
    for m in mailboxes.iter().skip(1).step_by(3) {
        w.insert_message(m, "Arrived after replica 3 left", &["INBOX"])
            .await;
    }
    eventually(
        "replica 2 alone to sync the new mail",
        Duration::from_secs(30),
        || converged(&w, &mailboxes),
    )
    .await;
    let (r2_runs,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM sync_runs WHERE replica LIKE $1 AND started_at > $2 \
         AND outcome = 'ok' AND added > 0",
    )
    .bind(format!("{r2_prefix}%"))
    .bind(r3_gone)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(r2_runs > 0, "replica 2 synced nothing after replica 3 left");
    phases.push(("replica 2 synced alone", test_start.elapsed()));
    let r2_status = r2.terminate().await;

    phases.push(("stopped cleanly", test_start.elapsed()));

    // Assert (b) first, as it names the cause of most other failures: no
    // write under a lease the writer did not hold...
    let violations: Vec<(String,)> = sqlx::query_as(AUDIT_VIOLATIONS_SQL)
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(
        violations.is_empty(),
        "writes without the lease ({} of them; replica 2 was stopped for {paused_for:?}, \
         {taken_over:?} taken over):\n{}",
        violations.len(),
        violations
            .iter()
            .map(|(v,)| v.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let audited: Vec<(String, i64)> =
        sqlx::query_as("SELECT writer, count(*) FROM fence_audit GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        audited.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>(),
        ["replica1", "replica2", "replica3"],
        "the audit saw every replica write: {audited:?}"
    );
    // ...and no two runs of one mailbox by different replicas overlap.
    for m in &mailboxes {
        let runs = w.ctx.store.sync_runs(m).await.unwrap();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                assert!(
                    a.replica == b.replica
                        || a.finished_at <= b.started_at
                        || b.finished_at <= a.started_at,
                    "{m}: runs overlap: {a:?} and {b:?}"
                );
            }
        }
    }

    // Assert (a): ground truth, a clean change log, no duplicate rows.
    for m in &mailboxes {
        w.assert_converged(m).await;
        let mut bad = change_log_violations(&w, m).await;
        bad.extend(label_rows_violations(&w, m).await);
        assert!(bad.is_empty(), "{m}: {bad:#?}");
    }
    let duplicates: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT mailbox, gmail_id, count(*) FROM messages GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(
        duplicates.is_empty(),
        "duplicate message rows: {duplicates:?}"
    );

    // Assert (c): the survivors stopped cleanly.
    assert!(
        r2_status.success(),
        "replica 2 exit {r2_status:?}; log:\n{}",
        r2.log_text()
    );
    assert!(
        r3_status.success(),
        "replica 3 exit {r3_status:?}; log:\n{}",
        r3.log_text()
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "replicas: replica 2 stopped for {paused_for:?} holding {} mailboxes: {} taken over, \
             {} row-locked by its {open_transactions} open transaction(s); audit {audited:?}; \
             phases {phases:?}",
            frozen.len(),
            taken_over.len(),
            pinned.len(),
        );
    }
    let _ = db.close().await;
    crate::pg::drop_database(w.settings.database.url.expose()).await;
}

/// A replica paused for longer than its poll tick (SIGSTOP, a VM pause, a
/// forward clock step) ticks again when it wakes: `/readyz` stays fresh and
/// it dispatches at its poll tick, not only on the dispatcher's 8 s silence
/// fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_poll_tick_ticks_again_after_waking() {
    let Some(w) = world(Backend::Sqlite, small(2, 5)).await else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    let r = Replica::spawn(&w, "replica1", 4).await;
    eventually("readiness", Duration::from_secs(20), || async {
        r.readyz().await == 200
    })
    .await;

    r.signal("STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    r.signal("CONT");
    // Past the readiness budget (three 1 s poll ticks + 5 s).
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_eq!(
        r.readyz().await,
        200,
        "the scheduler stopped ticking after the pause; log:\n{}",
        r.log_text()
    );
}
