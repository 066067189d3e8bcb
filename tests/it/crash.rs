//! Crash convergence: the real `gmail-ingest run` process killed with
//! SIGKILL at random moments, twenty times in a row, during full and
//! incremental syncs; after the last restart the database equals the
//! emulator's ground truth, nothing is duplicated, and the resume points
//! (page token, stored IDs) kept the `messages.get` bill close to one per
//! message.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gmail_ingest::domain::MailboxAddress;
use serde_json::json;

use crate::chaos_helpers::{
    Rng, binary, change_log_violations, label_rows_violations, write_config,
};
use crate::helpers::{Backend, World, both_backends, small, world_with};

const GET: &str = "gmail.users.messages.get";
const LIST: &str = "gmail.users.messages.list";
const KILLS: usize = 20;
const BATCH: usize = 20;
const PER_MAILBOX: usize = 4;

fn spawn_daemon(w: &World, config: &std::path::Path, run: usize) -> Child {
    let log = std::fs::File::create(w.dir.path().join(format!("run-{run}.log"))).unwrap();
    Command::new(binary())
        .current_dir(w.dir.path())
        .args(["--config", config.to_str().unwrap(), "run"])
        .env_remove("RUST_LOG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("daemon starts")
}

async fn converged(w: &World, ms: &[MailboxAddress]) -> bool {
    for m in ms {
        if w.db(m).await != w.truth(m).await {
            return false;
        }
    }
    true
}

async fn crash_convergence(backend: Backend) {
    // Arrange: a large mailbox (three listing pages, so the page token
    // matters) and a small one; latency so that kills land mid-sync.
    let Some(w) = world_with(backend, small(3, 1100), |_| {}).await else {
        return;
    };
    let mailboxes: Vec<MailboxAddress> = w.shared_mailboxes().await.into_iter().take(2).collect();
    assert_eq!(mailboxes.len(), 2, "two shared mailboxes");
    for m in &mailboxes {
        w.subscribe(m).await;
    }
    let config = w.dir.path().join("crash.toml");
    write_config(
        &w,
        &config,
        &format!(
            "[sync]\npoll_interval = \"1s\"\nlease_duration = \"2s\"\nbatch_size = {BATCH}\n\
             per_mailbox_concurrency = {PER_MAILBOX}\nuser_quota_units_per_minute = 100000000\n"
        ),
    );
    w.faults(json!({"latency_ms": [4, 10]})).await;
    let initial: Vec<u64> = {
        let mut v = Vec::new();
        for m in &mailboxes {
            v.push(w.truth(m).await.len() as u64);
        }
        v
    };
    let mut inserted = vec![0u64; mailboxes.len()];
    let seed: u64 = rand::random();
    let mut rng = Rng::new(seed);
    let mut partial_full_syncs = 0;

    // Act: twenty runs, each SIGKILLed at a random moment, with mail
    // arriving, leaving and being relabelled between runs.
    for run in 0..KILLS {
        let mut child = spawn_daemon(&w, &config, run);
        // Early runs die young (the full sync), later ones live longer.
        let life = if run < KILLS / 2 {
            rng.range(300, 1500)
        } else {
            rng.range(400, 2500)
        };
        tokio::time::sleep(Duration::from_millis(life)).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let stored = w.ctx.store.count_messages(&mailboxes[0]).await.unwrap() as u64;
        if stored > 0 && stored < initial[0] {
            partial_full_syncs += 1;
        }
        if run >= KILLS / 2 {
            for (i, m) in mailboxes.iter().enumerate() {
                for _ in 0..rng.range(0, 3) {
                    w.insert_message(m, "Arrived between crashes", &["INBOX"])
                        .await;
                    inserted[i] += 1;
                }
                let truth = w.truth(m).await;
                let pick = &truth[(rng.next_u64() % truth.len() as u64) as usize].0;
                if rng.chance(0.5) {
                    w.delete_message(m, pick).await;
                } else {
                    w.relabel(m, pick, &["STARRED"], &["INBOX"]).await;
                }
            }
        }
    }
    // The last restart runs to convergence, then stops on SIGTERM.
    let mut child = spawn_daemon(&w, &config, KILLS);
    let start = Instant::now();
    while !converged(&w, &mailboxes).await {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "seed {seed}: no convergence within 120s after the last restart (logs in {})",
            w.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();

    // Assert.
    assert!(exit.success(), "seed {seed}: SIGTERM exit {exit:?}");
    assert!(
        partial_full_syncs >= 2,
        "seed {seed}: only {partial_full_syncs} kills landed mid full sync; the test lost its teeth"
    );
    for (i, m) in mailboxes.iter().enumerate() {
        w.assert_converged(m).await;
        let mut bad = change_log_violations(&w, m).await;
        bad.extend(label_rows_violations(&w, m).await);
        assert!(bad.is_empty(), "seed {seed}: {m}: {bad:#?}");
        let gets = w.requests_by_user(m, GET).await;
        let bound = initial[i] + inserted[i] + (KILLS * (BATCH + PER_MAILBOX)) as u64;
        assert!(
            gets <= bound,
            "seed {seed}: {m}: {gets} messages.get for {} messages (bound {bound})",
            initial[i] + inserted[i]
        );
    }
    // The big mailbox's listing resumed from its page token: each run that
    // met the full sync lists at most one page again, not all of them.
    let lists = w.requests_by_user(&mailboxes[0], LIST).await;
    let pages = initial[0].div_ceil(500);
    assert!(
        lists <= pages + partial_full_syncs + 2,
        "seed {seed}: {lists} messages.list calls for {pages} pages and {partial_full_syncs} interrupted full-sync runs"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "crash {backend:?} seed {seed}: {partial_full_syncs} kills mid full sync, \
             gets {} for {} messages, lists {lists}",
            w.requests_by_user(&mailboxes[0], GET).await,
            initial[0] + inserted[0]
        );
    }
}

both_backends!(
    a_daemon_killed_twenty_times_converges_without_duplicates_or_refetching,
    crash_convergence
);
