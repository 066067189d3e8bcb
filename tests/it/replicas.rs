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
use std::time::{Duration, Instant};

use chrono::Utc;
use gmail_ingest::domain::MailboxAddress;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::chaos_helpers::{change_log_violations, eventually, label_rows_violations};
use crate::helpers::{Backend, World, small, world, world_with};
use crate::replica_helpers::{AUDIT_SQL, Replica, leases, overlapping_runs, pg, stale_writes};

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
        let r = Replica::spawn(&w, name, pool, LEASE).await;
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
    let violations = stale_writes(&mut db).await;
    assert!(
        violations.is_empty(),
        "writes without the lease ({} of them; replica 2 was stopped for {paused_for:?}, \
         {taken_over:?} taken over):\n{}",
        violations.len(),
        violations.join("\n")
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
    let overlaps = overlapping_runs(&w, &mailboxes).await;
    assert!(overlaps.is_empty(), "{overlaps:#?}");

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
    let r = Replica::spawn(&w, "replica1", 4, LEASE).await;
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
