//! End-to-end sync benchmarks: quota efficiency and economy, many mailboxes, the CPU
//! path into SQLite and PostgreSQL, memory of a full sync, and the idle cost of many
//! quiet mailboxes. Figures and how they were taken: `BENCHMARKS.md`.
//!
//! ```sh
//! export CARGO_TARGET_DIR=/work/main/target
//! cargo bench --bench sync -- quota      # one scenario (several names allowed)
//! cargo bench --bench sync               # every scenario (about 25 minutes)
//! ```
//!
//! Scenarios: `quota`, `economy`, `many`, `cpu`, `memory`, `idle`, `backlog`. Each prints its
//! figures to stderr. The emulator runs as a separate process (the release binary's
//! `emulator` command) so that the CPU and peak RSS read from `/proc/self` are the
//! daemon's alone; the SQLite database lives in this process, PostgreSQL in its server.
//! Loopback only; every run is bounded in requests and time.
//!
//! Environment: `BENCH_QUOTA_MESSAGES` (1000), `BENCH_INCR_MESSAGES` (100000),
//! `BENCH_RESYNC_MESSAGES` (10000), `BENCH_MANY_MAILBOXES` (200), `BENCH_MANY_SECONDS`
//! (120), `BENCH_CPU_MAILBOXES` (10), `BENCH_CPU_MESSAGES` (2000 per mailbox),
//! `BENCH_MEMORY_SIZES` (`10000,100000`), `BENCH_IDLE_MAILBOXES` (10000),
//! `BENCH_IDLE_SECONDS` (120), `BENCH_IDLE_DB` (`sqlite` or `postgres`),
//! `BENCH_IDLE_POLL_SECONDS` (60: the poll interval; 1 saturates the daemon, every
//! mailbox being due again at once), `BENCH_IDLE_SETTLE_SECONDS` (30),
//! `BENCH_IDLE_CATCHUP_SECONDS` (1200), `BENCH_BACKLOG_ADDS` (300000), `BENCH_BACKLOG_WINDOW`
//! (300 seconds at the quota ceiling), `BENCH_BACKLOG_MODES` (`off,ceiling`),
//! `BENCH_BACKLOG_CHUNK` (`sync.history_chunk_messages`), `BENCH_PG_URL`
//! (`postgres://postgres@127.0.0.1:5432/postgres`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use gmail_ingest::config::{DatabaseUrl, Settings};
use gmail_ingest::domain::{MailboxAddress, Operator};
use gmail_ingest::subscriptions::{OrgUnitVerdict, Subscriptions};
use gmail_ingest::sync::engine::{SyncContext, SyncReport};
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio_util::sync::CancellationToken;

const SCENARIOS: &[&str] = &[
    "quota", "economy", "many", "cpu", "memory", "idle", "backlog",
];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn say(line: &str) {
    eprintln!("{line}");
}

// ---------------------------------------------------------------- process figures

/// CPU seconds (user + system, all threads) of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks are 100 Hz on Linux (USER_HZ).
    (ticks(11) + ticks(12)) / 100.0
}

fn self_cpu() -> f64 {
    cpu_seconds("self")
}

/// A `/proc/self/status` field in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- the emulator process

/// `gmail-ingest emulator` as a child process, killed on drop.
struct EmulatorProcess {
    child: Child,
    base: String,
    admin: String,
    key: PathBuf,
    http: reqwest::Client,
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EmulatorProcess {
    async fn start(dir: &Path, users: usize, messages: usize) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let key = dir.join("sa.json");
        let log = std::fs::File::create(dir.join("emulator.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
            .args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--seed", "1", "--users", &users.to_string()])
            .args(["--messages", &messages.to_string(), "--write-key"])
            .arg(&key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the emulator process")?;
        let mut emulator = EmulatorProcess {
            child,
            base: format!("http://127.0.0.1:{port}/"),
            admin: "admin@example.com".to_owned(),
            key,
            http: reqwest::Client::new(),
        };
        // Ready when the key is written (after the world is generated and the port bound)
        // and the control API answers.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = emulator.child.try_wait()? {
                bail!("the emulator exited early: {status}");
            }
            if emulator.key.exists()
                && let Ok(r) = emulator.http.get(emulator.url("stats")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the emulator did not become ready in 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(emulator)
    }

    fn url(&self, path: &str) -> String {
        format!("{}emulator/v1/{}", self.base, path.trim_start_matches('/'))
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("control call");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path} -> {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn quota(&self, body: Value) {
        self.call(reqwest::Method::PUT, "quota", Some(body)).await;
    }

    async fn latency(&self, min: u64, max: u64) {
        self.call(
            reqwest::Method::PUT,
            "faults",
            Some(json!({"latency_ms": [min, max]})),
        )
        .await;
    }

    async fn stats(&self) -> Stats {
        Stats(self.call(reqwest::Method::GET, "stats", None).await)
    }

    /// Shared mailboxes (the approved org unit), in the emulator's order.
    async fn shared_mailboxes(&self) -> Vec<MailboxAddress> {
        let state = self.call(reqwest::Method::GET, "state", None).await;
        state["users"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|u| !u["is_admin"].as_bool().unwrap_or(false))
            .filter(|u| {
                u["org_unit"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("/Shared Mailboxes")
            })
            .filter_map(|u| MailboxAddress::parse(u["email"].as_str()?).ok())
            .collect()
    }

    async fn message_ids(&self, m: &MailboxAddress) -> Vec<String> {
        let truth = self
            .call(reqwest::Method::GET, &format!("users/{m}/messages"), None)
            .await;
        truth["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// `n` changes spread over adds, deletes and relabels (in that rotation) among `ids`.
    async fn change(&self, m: &MailboxAddress, ids: &[String], n: usize) -> (usize, usize, usize) {
        let (mut adds, mut deletes, mut relabels) = (0, 0, 0);
        for i in 0..n {
            // Spread targets over the whole mailbox, newest to oldest.
            let target = &ids[(i * 7919 + 13) % ids.len()];
            match i % 3 {
                0 => {
                    let raw = format!(
                        "From: bench@example.net\r\nTo: {m}\r\nSubject: bench change {i}\r\n\
                         Date: Mon, 27 May 2024 16:20:31 -0700\r\nMessage-ID: <bench-{i}@example.net>\r\n\
                         Content-Type: text/plain; charset=utf-8\r\n\r\nA new message for the benchmark.\r\n"
                    );
                    self.call(
                        reqwest::Method::POST,
                        &format!("users/{m}/messages"),
                        Some(json!({"raw": BASE64_URL_SAFE_NO_PAD.encode(raw)})),
                    )
                    .await;
                    adds += 1;
                }
                1 => {
                    self.call(
                        reqwest::Method::DELETE,
                        &format!("users/{m}/messages/{target}"),
                        None,
                    )
                    .await;
                    deletes += 1;
                }
                _ => {
                    self.call(
                        reqwest::Method::POST,
                        &format!("users/{m}/messages/{target}/labels"),
                        Some(json!({"add": ["STARRED"], "remove": []})),
                    )
                    .await;
                    relabels += 1;
                }
            }
        }
        (adds, deletes, relabels)
    }
}

/// `GET /emulator/v1/stats`.
struct Stats(Value);

impl Stats {
    fn units(&self, m: Option<&MailboxAddress>) -> u64 {
        match m {
            Some(m) => self.0["quota_units"][m.to_string()].as_u64().unwrap_or(0),
            None => self.0["quota_units"]
                .as_object()
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0),
        }
    }

    /// (Gmail requests answered, of which 403 or 429).
    fn requests(&self) -> (u64, u64) {
        let (mut all, mut throttled) = (0, 0);
        if let Some(methods) = self.0["requests"].as_object() {
            for (method, statuses) in methods {
                if !method.starts_with("gmail.") {
                    continue;
                }
                for (status, n) in statuses.as_object().into_iter().flatten() {
                    let n = n.as_u64().unwrap_or(0);
                    all += n;
                    if status == "403" || status == "429" {
                        throttled += n;
                    }
                }
            }
        }
        (all, throttled)
    }

    fn by_method(&self) -> String {
        let mut parts = Vec::new();
        if let Some(methods) = self.0["requests"].as_object() {
            for (method, statuses) in methods {
                let s: Vec<String> = statuses
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}:{}", v.as_u64().unwrap_or(0)))
                    .collect();
                parts.push(format!("{method} {{{}}}", s.join(", ")));
            }
        }
        parts.join("; ")
    }
}

// ---------------------------------------------------------------- the daemon side

enum Db {
    Sqlite,
    Postgres,
}

/// A fresh database: a SQLite file in `dir`, or `bench_<random>` on the PostgreSQL server
/// (dropped by [`drop_pg`]).
async fn database(db: &Db, dir: &Path) -> anyhow::Result<String> {
    match db {
        Db::Sqlite => Ok(format!("sqlite://{}", dir.join("bench.db").display())),
        Db::Postgres => {
            let base = std::env::var("BENCH_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = PgConnection::connect(&base)
                .await
                .context("connecting to PostgreSQL")?;
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await?;
            let _ = conn.close().await;
            let mut url = url::Url::parse(&base)?;
            url.set_path(&name);
            Ok(url.to_string())
        }
    }
}

async fn drop_pg(url: &str) {
    let Ok(mut u) = url::Url::parse(url) else {
        return;
    };
    let name = u.path().trim_start_matches('/').to_owned();
    if !name.starts_with("bench_") {
        return;
    }
    u.set_path("postgres");
    if let Ok(mut conn) = PgConnection::connect(u.as_str()).await {
        let _ = conn
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await;
        let _ = conn.close().await;
    }
}

/// The default settings pointed at `emulator` and `url`, with the 2026 per-user quota.
fn settings(emulator: &EmulatorProcess, url: &str) -> anyhow::Result<Settings> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut s = Settings::load_from(&dir, None, &[])?;
    s.database.url = DatabaseUrl::new(url.to_owned());
    s.google.service_account_key_file = emulator.key.clone();
    s.google.gmail_base_url = emulator.base.clone();
    s.google.directory_base_url = emulator.base.clone();
    s.google.admin_subject = emulator.admin.clone();
    s.http.listen = "127.0.0.1:0".into();
    s.sync.user_quota_units_per_minute = 6000;
    Ok(s)
}

/// add (by ops-a) + approve (by ops-b), as an operator pair would.
async fn subscribe(ctx: &SyncContext, mailboxes: &[MailboxAddress]) -> anyhow::Result<()> {
    let policy = ctx.settings.policy()?;
    let subs = Subscriptions::new(&ctx.store, &policy);
    for m in mailboxes {
        subs.add(
            m.clone(),
            Operator::parse("ops-a")?,
            &[],
            None,
            gmail_ingest::domain::AuthMode::Delegated,
        )
        .await?;
        subs.approve(
            m,
            Operator::parse("ops-b")?,
            OrgUnitVerdict::Unverified("benchmark".into()),
        )
        .await?;
    }
    Ok(())
}

async fn sync(
    ctx: &SyncContext,
    only: Option<&MailboxAddress>,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<SyncReport>> {
    gmail_ingest::app::sync_with(ctx, only.cloned(), false, false, cancel).await
}

fn summary(reports: &[SyncReport]) -> String {
    let sum = |f: fn(&SyncReport) -> u64| reports.iter().map(f).sum::<u64>();
    let failed = reports.iter().filter(|r| !r.outcome.is_ok()).count();
    let kinds: Vec<String> = reports
        .iter()
        .take(1)
        .map(|r| format!("{:?}", r.kinds))
        .collect();
    let first_failure: String = reports
        .iter()
        .find(|r| !r.outcome.is_ok())
        .map(|r| format!(" [{}: {:?}]", r.mailbox, r.outcome))
        .unwrap_or_default();
    format!(
        "{} mailboxes ({} not ok{first_failure}), kinds {}: added {} updated {} deleted {} label changes {}, {} calls, {} units, {} gets",
        reports.len(),
        failed,
        kinds.join(""),
        sum(|r| r.counts.added),
        sum(|r| r.counts.updated),
        sum(|r| r.counts.deleted),
        sum(|r| r.counts.label_changes),
        sum(|r| r.counts.api_calls),
        sum(|r| r.counts.quota_units),
        sum(|r| r.message_gets),
    )
}

// ---------------------------------------------------------------- scenarios

/// Scenario 1, quota efficiency: one mailbox, enforced 6,000 units/min, 30–80 ms latency.
async fn quota() -> anyhow::Result<()> {
    let messages = env_or("BENCH_QUOTA_MESSAGES", 1000) as usize;
    let dir = tempfile::tempdir()?;
    let emulator = EmulatorProcess::start(dir.path(), 3, messages).await?;
    emulator
        .quota(json!({"enforce": true, "user_units_per_minute": 6000, "project_units_per_minute": 1_200_000, "max_concurrent_per_user": 10}))
        .await;
    emulator.latency(30, 80).await;
    let url = database(&Db::Sqlite, dir.path()).await?;
    let ctx = gmail_ingest::app::context(settings(&emulator, &url)?).await?;
    let m = emulator.shared_mailboxes().await.remove(0);
    subscribe(&ctx, std::slice::from_ref(&m)).await?;
    say(&format!(
        "quota: full sync of {m} ({messages} messages), enforced 6000 units/min/user, latency 30-80 ms, load {}",
        load()
    ));
    let before = emulator.stats().await;
    let started = Instant::now();
    let reports = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
    let secs = started.elapsed().as_secs_f64();
    let after = emulator.stats().await;
    let units = after.units(Some(&m)) - before.units(Some(&m));
    let (all, throttled) = after.requests();
    let (all0, throttled0) = before.requests();
    let (requests, throttled) = (all - all0, throttled - throttled0);
    let added: u64 = reports.iter().map(|r| r.counts.added).sum();
    let units_per_minute = units as f64 / (secs / 60.0);
    say(&format!("  {}", summary(&reports)));
    say(&format!(
        "  {secs:.1} s, {:.3} msg/s = {:.3} of the 5 msg/s ceiling; {units} units = {units_per_minute:.0} units/min = {:.3} of 6000; \
         {:.2} units/message; {requests} requests, {throttled} throttled (403/429) = {:.2} per 1000; load after {}",
        added as f64 / secs,
        added as f64 / secs / 5.0,
        units_per_minute / 6000.0,
        units as f64 / added.max(1) as f64,
        throttled as f64 * 1000.0 / requests.max(1) as f64,
        load()
    ));
    say(&format!("  requests: {}", after.by_method()));
    ctx.store.close().await;
    Ok(())
}

/// Scenario 2, quota economy: full sync, incremental with 10 changes in a big mailbox, and a
/// resync after history expiry with 1 % changed.
async fn economy() -> anyhow::Result<()> {
    let unlimited = json!({"enforce": false});
    // (a) + (b): full sync, then 10 changes and an incremental pass.
    let big = env_or("BENCH_INCR_MESSAGES", 100_000) as usize;
    {
        let dir = tempfile::tempdir()?;
        let emulator = EmulatorProcess::start(dir.path(), 3, big).await?;
        emulator.quota(unlimited.clone()).await;
        let url = database(&Db::Sqlite, dir.path()).await?;
        let mut s = settings(&emulator, &url)?;
        s.sync.user_quota_units_per_minute = 100_000_000;
        let ctx = gmail_ingest::app::context(s).await?;
        let m = emulator.shared_mailboxes().await.remove(0);
        subscribe(&ctx, std::slice::from_ref(&m)).await?;
        say(&format!(
            "economy: full sync of {m} ({big} messages, quota off), load {}",
            load()
        ));
        let cpu0 = self_cpu();
        let started = Instant::now();
        let reports = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
        let secs = started.elapsed().as_secs_f64();
        let units = emulator.stats().await.units(Some(&m));
        let added: u64 = reports.iter().map(|r| r.counts.added).sum();
        say(&format!("  {}", summary(&reports)));
        say(&format!(
            "  full: {units} units for {added} messages = {:.3} units/message; {secs:.1} s ({:.0} msg/s), {:.1} CPU s; peak RSS {:.1} MiB",
            units as f64 / added.max(1) as f64,
            added as f64 / secs,
            self_cpu() - cpu0,
            mib(status_kib("VmHWM"))
        ));
        let ids = emulator.message_ids(&m).await;
        let (a, d, r) = emulator.change(&m, &ids, 10).await;
        let before = emulator.stats().await.units(Some(&m));
        let reports = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
        let units = emulator.stats().await.units(Some(&m)) - before;
        say(&format!("  {}", summary(&reports)));
        say(&format!(
            "  incremental after {a} adds, {d} deletes, {r} relabels: {units} units ({:.1} per change); a naive full sync would spend {:.0}",
            units as f64 / 10.0,
            20.0 * ids.len() as f64
        ));
        ctx.store.close().await;
    }
    // (c): resync after history expiry, 1 % changed.
    let n = env_or("BENCH_RESYNC_MESSAGES", 10_000) as usize;
    {
        let dir = tempfile::tempdir()?;
        let emulator = EmulatorProcess::start(dir.path(), 3, n).await?;
        emulator.quota(unlimited).await;
        let url = database(&Db::Sqlite, dir.path()).await?;
        let mut s = settings(&emulator, &url)?;
        s.sync.user_quota_units_per_minute = 100_000_000;
        let ctx = gmail_ingest::app::context(s).await?;
        let m = emulator.shared_mailboxes().await.remove(0);
        subscribe(&ctx, std::slice::from_ref(&m)).await?;
        let reports = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
        let full = emulator.stats().await.units(Some(&m));
        say(&format!(
            "economy: resync of {m} ({n} messages) after history/expire with 1 % changed, load {}",
            load()
        ));
        say(&format!("  initial {}", summary(&reports)));
        let ids = emulator.message_ids(&m).await;
        let (a, d, r) = emulator.change(&m, &ids, n / 100).await;
        emulator
            .call(
                reqwest::Method::POST,
                &format!("users/{m}/history/expire"),
                None,
            )
            .await;
        let before = emulator.stats().await;
        let reports = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
        let after = emulator.stats().await;
        let units = after.units(Some(&m)) - before.units(Some(&m));
        say(&format!("  resync {}", summary(&reports)));
        say(&format!(
            "  resync after {a} adds, {d} deletes, {r} relabels: {units} units = {:.2} % of the naive full sync's {full} units",
            units as f64 * 100.0 / full.max(1) as f64
        ));
        say(&format!("  requests: {}", after.by_method()));
        ctx.store.close().await;
    }
    Ok(())
}

/// Scenario 3, many mailboxes against a per-project ceiling.
async fn many() -> anyhow::Result<()> {
    let wanted = env_or("BENCH_MANY_MAILBOXES", 200) as usize;
    let seconds = env_or("BENCH_MANY_SECONDS", 120);
    let project: u64 = 300_000;
    let dir = tempfile::tempdir()?;
    // About two thirds of the generated users are shared mailboxes.
    let emulator = EmulatorProcess::start(dir.path(), wanted * 3 / 2 + 20, 1000).await?;
    emulator
        .quota(json!({"enforce": true, "user_units_per_minute": 6000, "project_units_per_minute": project, "max_concurrent_per_user": 10}))
        .await;
    emulator.latency(30, 80).await;
    let url = database(&Db::Sqlite, dir.path()).await?;
    let mut s = settings(&emulator, &url)?;
    s.sync.project_quota_units_per_minute = u32::try_from(project)?;
    s.sync.max_concurrent_mailboxes = wanted;
    let ctx = gmail_ingest::app::context(s).await?;
    let mut mailboxes = emulator.shared_mailboxes().await;
    mailboxes.truncate(wanted);
    subscribe(&ctx, &mailboxes).await?;
    say(&format!(
        "many: {} mailboxes x 1000 messages, project {project} units/min, user 6000, latency 30-80 ms, window {seconds} s, load {}",
        mailboxes.len(),
        load()
    ));
    let before = emulator.stats().await;
    let cpu0 = self_cpu();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let pass = {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        tokio::spawn(async move { sync(&ctx, None, &cancel).await })
    };
    // Units charged are read at half-window and at the window's end, before cancelling, so
    // the figure covers the window exactly; the second half excludes the start-up burst.
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    let half = emulator.stats().await;
    tokio::time::sleep(Duration::from_secs(seconds - seconds / 2)).await;
    let after = emulator.stats().await;
    let window_secs = started.elapsed().as_secs_f64();
    let cpu = self_cpu() - cpu0;
    cancel.cancel();
    let cancelled = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(300), pass).await;
    let stop_secs = cancelled.elapsed().as_secs_f64();
    let units = after.units(None) - before.units(None);
    let second_half = after.units(None) - half.units(None);
    let (all, throttled) = after.requests();
    let (all0, throttled0) = before.requests();
    let (requests, throttled) = (all - all0, throttled - throttled0);
    match result {
        Ok(Ok(Ok(reports))) => say(&format!("  {}", summary(&reports))),
        Ok(Ok(Err(e))) => say(&format!("  sync ended with an error: {e:#}")),
        Ok(Err(e)) => say(&format!("  sync task failed: {e}")),
        Err(_) => say("  the cancelled sync did not end within 300 s"),
    }
    say(&format!(
        "  window {window_secs:.1} s: {units} units = {:.3} of the project quota over the window; second half alone {:.3}; \
         {requests} requests, {throttled} throttled = {:.2} per 1000; daemon CPU {cpu:.1} s in the window; \
         the pass stopped {stop_secs:.1} s after cancel; load after {}",
        units as f64 * 60.0 / (project as f64 * window_secs),
        second_half as f64 * 60.0 / (project as f64 * (seconds - seconds / 2) as f64),
        throttled as f64 * 1000.0 / requests.max(1) as f64,
        load()
    ));
    ctx.store.close().await;
    Ok(())
}

/// Scenario 4, CPU path: quota off, no latency, into SQLite then PostgreSQL.
async fn cpu() -> anyhow::Result<()> {
    let count = env_or("BENCH_CPU_MAILBOXES", 10) as usize;
    let per = env_or("BENCH_CPU_MESSAGES", 2000) as usize;
    for db in [Db::Sqlite, Db::Postgres] {
        let dir = tempfile::tempdir()?;
        let emulator = EmulatorProcess::start(dir.path(), count * 3 / 2 + 5, per).await?;
        emulator.quota(json!({"enforce": false})).await;
        let url = database(&db, dir.path()).await?;
        let mut s = settings(&emulator, &url)?;
        s.sync.user_quota_units_per_minute = 100_000_000;
        s.sync.project_quota_units_per_minute = 1_000_000_000;
        s.sync.project_quota_units_per_day = 1_000_000_000_000;
        let ctx = gmail_ingest::app::context(s).await?;
        let mut mailboxes = emulator.shared_mailboxes().await;
        mailboxes.truncate(count);
        subscribe(&ctx, &mailboxes).await?;
        let name = match db {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        };
        say(&format!(
            "cpu ({name}): {} mailboxes x {per} messages, quota off, no latency, load {}",
            mailboxes.len(),
            load()
        ));
        let (cpu0, ecpu0) = (self_cpu(), emulator.cpu());
        let started = Instant::now();
        let reports = sync(&ctx, None, &CancellationToken::new()).await?;
        let secs = started.elapsed().as_secs_f64();
        let (cpu, ecpu) = (self_cpu() - cpu0, emulator.cpu() - ecpu0);
        let added: u64 = reports.iter().map(|r| r.counts.added).sum();
        say(&format!("  {}", summary(&reports)));
        say(&format!(
            "  {name}: {added} messages in {secs:.1} s = {:.0} msg/s; daemon CPU {cpu:.1} s = {:.2} CPU s per 1000 messages \
             ({:.0} % of one core); emulator CPU {ecpu:.1} s; peak RSS {:.1} MiB; load after {}",
            added as f64 / secs,
            cpu * 1000.0 / added.max(1) as f64,
            cpu * 100.0 / secs,
            mib(status_kib("VmHWM")),
            load()
        ));
        ctx.store.close().await;
        drop(ctx);
        if matches!(db, Db::Postgres) {
            drop_pg(&url).await;
        }
    }
    Ok(())
}

/// Scenario 5, memory: each size is synced in a fresh process (this executable, `memory-one N`)
/// so that its peak RSS is that sync's alone.
fn memory() -> anyhow::Result<()> {
    let sizes = std::env::var("BENCH_MEMORY_SIZES").unwrap_or_else(|_| "10000,100000".into());
    for size in sizes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let status = Command::new(std::env::current_exe()?)
            .args(["memory-one", size])
            .status()?;
        if !status.success() {
            bail!("memory-one {size} failed: {status}");
        }
    }
    Ok(())
}

async fn memory_one(size: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let emulator = EmulatorProcess::start(dir.path(), 3, size).await?;
    emulator.quota(json!({"enforce": false})).await;
    let url = database(&Db::Sqlite, dir.path()).await?;
    let mut s = settings(&emulator, &url)?;
    s.sync.user_quota_units_per_minute = 100_000_000;
    let ctx = gmail_ingest::app::context(s).await?;
    let m = emulator.shared_mailboxes().await.remove(0);
    subscribe(&ctx, std::slice::from_ref(&m)).await?;
    let base = status_kib("VmHWM");
    let started = Instant::now();
    // Sample RSS while the sync runs, to see whether it grows with progress.
    let sampler = tokio::spawn(async {
        let mut samples = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            samples.push(status_kib("VmRSS"));
            if samples.len() > 1000 {
                return samples;
            }
        }
    });
    let reports = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
    let secs = started.elapsed().as_secs_f64();
    sampler.abort();
    let added: u64 = reports.iter().map(|r| r.counts.added).sum();
    say(&format!(
        "memory: full sync of {size} messages ({added} added) in {secs:.1} s: peak RSS {:.1} MiB (before the sync {:.1} MiB), RSS now {:.1} MiB; load {}",
        mib(status_kib("VmHWM")),
        mib(base),
        mib(status_kib("VmRSS")),
        load()
    ));
    ctx.store.close().await;
    Ok(())
}

/// Scenario 7, an incremental backlog: `BENCH_BACKLOG_ADDS` messages added to a synced
/// mailbox's history window (an outage on a busy mailbox), then one incremental pass; each
/// mode in a fresh child process (`backlog-one MODE`) so its peak RSS is that pass's alone.
/// `off`: quota off, a window of the pass (CPU and peak RSS of reading, collapsing and
/// streaming, rows per second).
/// `ceiling`: the 2026 per-user ceiling enforced (6,000 units/min), a window of
/// `BENCH_BACKLOG_WINDOW` seconds: units/min against the ceiling and RSS over time.
fn backlog() -> anyhow::Result<()> {
    let modes = std::env::var("BENCH_BACKLOG_MODES").unwrap_or_else(|_| "off,ceiling".into());
    for mode in modes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let status = Command::new(std::env::current_exe()?)
            .args(["backlog-one", mode])
            .status()?;
        if !status.success() {
            bail!("backlog-one {mode} failed: {status}");
        }
    }
    Ok(())
}

/// Adds `n` small messages to `m`'s history: in bulk when the emulator takes `count`, one
/// request each otherwise (an emulator from before it did).
async fn add_backlog(
    emulator: &EmulatorProcess,
    m: &MailboxAddress,
    n: usize,
) -> anyhow::Result<()> {
    let raw = BASE64_URL_SAFE_NO_PAD.encode(format!(
        "From: Busy <busy@outside.example>\r\nTo: {m}\r\nSubject: Backlog\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nOne of a backlog of {n}.\r\n"
    ));
    let url = emulator.url(&format!("users/{m}/messages"));
    let probe = emulator
        .http
        .post(&url)
        .json(&json!({"raw": raw, "label_ids": ["INBOX"], "count": 1}))
        .send()
        .await?;
    let bulk = probe.status().is_success();
    let mut added = usize::from(bulk);
    while added < n {
        let count = if bulk { (n - added).min(50_000) } else { 1 };
        let body = if bulk {
            json!({"raw": raw, "label_ids": ["INBOX"], "count": count})
        } else {
            json!({"raw": raw, "label_ids": ["INBOX"]})
        };
        let r = emulator.http.post(&url).json(&body).send().await?;
        if !r.status().is_success() {
            bail!("inserting the backlog: {}", r.status());
        }
        added += count;
    }
    Ok(())
}

async fn backlog_one(mode: &str) -> anyhow::Result<()> {
    let adds = env_or("BENCH_BACKLOG_ADDS", 300_000) as usize;
    let window = env_or("BENCH_BACKLOG_WINDOW", 300);
    let ceiling = mode == "ceiling";
    let dir = tempfile::tempdir()?;
    let emulator = EmulatorProcess::start(dir.path(), 3, 200).await?;
    emulator.quota(json!({"enforce": false})).await;
    let url = database(&Db::Sqlite, dir.path()).await?;
    let mut s = settings(&emulator, &url)?;
    if !ceiling {
        s.sync.user_quota_units_per_minute = 100_000_000;
    }
    // `BENCH_BACKLOG_CHUNK=1000000` makes the whole window one chunk: history read whole
    // before any fetch, as before chunking (the collapse stays linear).
    let chunk = env_or("BENCH_BACKLOG_CHUNK", s.sync.history_chunk_messages as u64);
    s.sync.history_chunk_messages = usize::try_from(chunk)?;
    let ctx = gmail_ingest::app::context(s).await?;
    let m = emulator.shared_mailboxes().await.remove(0);
    subscribe(&ctx, std::slice::from_ref(&m)).await?;
    let first = sync(&ctx, Some(&m), &CancellationToken::new()).await?;
    let t = Instant::now();
    add_backlog(&emulator, &m, adds).await?;
    say(&format!(
        "backlog {mode}: chunk {chunk}, mailbox synced ({}), {adds} adds inserted in {:.1} s; load {}",
        summary(&first),
        t.elapsed().as_secs_f64(),
        load()
    ));
    if ceiling {
        emulator
            .quota(json!({"enforce": true, "user_units_per_minute": 6000, "project_units_per_minute": 1_200_000, "max_concurrent_per_user": 10}))
            .await;
    }
    // Reset the peak to the current RSS, so that it measures the pass.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base = status_kib("VmRSS");
    let before = emulator.stats().await;
    let cpu0 = self_cpu();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let pass = {
        let (ctx, cancel, m) = (ctx.clone(), cancel.clone(), m.clone());
        tokio::spawn(async move { sync(&ctx, Some(&m), &cancel).await })
    };
    let every = if ceiling { 30 } else { 5 };
    let mut samples = Vec::new();
    let mut last_units = before.units(Some(&m));
    let deadline = started + Duration::from_secs(window);
    while !pass.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let units = emulator.stats().await.units(Some(&m));
        let stored = ctx.store.count_messages(&m).await.unwrap_or(0);
        samples.push(format!(
            "{:.0}s {:.1}MiB {}u/min {stored}rows",
            started.elapsed().as_secs_f64(),
            mib(status_kib("VmRSS")),
            (units - last_units) * 60 / every
        ));
        last_units = units;
    }
    let window_secs = started.elapsed().as_secs_f64();
    let after = emulator.stats().await;
    let cpu = self_cpu() - cpu0;
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(300), pass).await;
    let units = after.units(Some(&m)) - before.units(Some(&m));
    let (all, throttled) = after.requests();
    let (all0, throttled0) = before.requests();
    match result {
        Ok(Ok(Ok(reports))) => say(&format!("  {}", summary(&reports))),
        Ok(Ok(Err(e))) => say(&format!("  sync ended with an error: {e:#}")),
        Ok(Err(e)) => say(&format!("  sync task failed: {e}")),
        Err(_) => say("  the cancelled sync did not end within 300 s"),
    }
    let stored = ctx.store.count_messages(&m).await.unwrap_or(0);
    say(&format!(
        "  {window_secs:.1} s: {units} units = {:.0} u/min ({:.3} of 6,000); {} requests, {} throttled; \
         {stored} rows stored; daemon CPU {cpu:.1} s; peak RSS {:.1} MiB (RSS {:.1} MiB before the pass); load {}",
        units as f64 * 60.0 / window_secs,
        units as f64 * 60.0 / window_secs / 6000.0,
        all - all0,
        throttled - throttled0,
        mib(status_kib("VmHWM")),
        mib(base),
        load()
    ));
    say(&format!(
        "  samples (time RSS units/min rows): {}",
        samples.join(" | ")
    ));
    ctx.store.close().await;
    Ok(())
}

/// Scenario 6, idle cost: many quiet subscribed mailboxes polled by the real daemon.
/// The figure is the daemon's CPU per quiet poll actually made in a steady window
/// (polls counted by the emulator's `history.list` answers), beside the polls a
/// second the poll interval needs.
async fn idle() -> anyhow::Result<()> {
    let wanted = env_or("BENCH_IDLE_MAILBOXES", 10_000) as usize;
    let seconds = env_or("BENCH_IDLE_SECONDS", 120);
    let poll = env_or("BENCH_IDLE_POLL_SECONDS", 60).max(1);
    let db = match std::env::var("BENCH_IDLE_DB").as_deref() {
        Ok("postgres") => Db::Postgres,
        Ok("sqlite") | Err(_) => Db::Sqlite,
        Ok(other) => bail!("BENCH_IDLE_DB must be sqlite or postgres, not {other}"),
    };
    let dir = tempfile::tempdir()?;
    let emulator = EmulatorProcess::start(dir.path(), wanted * 3 / 2 + 20, 1).await?;
    emulator.quota(json!({"enforce": false})).await;
    let url = database(&db, dir.path()).await?;
    let result = idle_on(&emulator, &url, wanted, seconds, poll).await;
    if matches!(db, Db::Postgres) {
        drop_pg(&url).await;
    }
    result
}

async fn idle_on(
    emulator: &EmulatorProcess,
    url: &str,
    wanted: usize,
    seconds: u64,
    poll: u64,
) -> anyhow::Result<()> {
    let mut s = settings(emulator, url)?;
    s.sync.poll_interval = Duration::from_secs(poll);
    s.log.level = "warn".into();
    let mut mailboxes = emulator.shared_mailboxes().await;
    mailboxes.truncate(wanted);
    {
        let ctx = gmail_ingest::app::context(s.clone()).await?;
        let t = Instant::now();
        subscribe(&ctx, &mailboxes).await?;
        say(&format!(
            "idle: {} subscriptions added and approved in {:.1} s ({}, poll interval {poll} s)",
            mailboxes.len(),
            t.elapsed().as_secs_f64(),
            if url.starts_with("postgres") {
                "PostgreSQL"
            } else {
                "SQLite"
            },
        ));
        ctx.store.close().await;
    }
    let app = gmail_ingest::app::Application::build(s).await?;
    let stop = CancellationToken::new();
    let daemon = {
        let stop = stop.clone();
        tokio::spawn(app.run_until_stopped(async move { stop.cancelled().await }))
    };
    // Initial syncs: done when every mailbox has been charged units (getProfile at least).
    let started = Instant::now();
    let cpu0 = self_cpu();
    let catchup = env_or("BENCH_IDLE_CATCHUP_SECONDS", 1200);
    let deadline = started + Duration::from_secs(catchup);
    let mut reported = 0;
    loop {
        let stats = emulator.stats().await;
        let synced = stats.0["quota_units"]
            .as_object()
            .map(|o| o.len())
            .unwrap_or(0);
        if synced >= mailboxes.len() {
            break;
        }
        if Instant::now() > deadline {
            say(&format!(
                "  only {synced} of {} mailboxes synced after {catchup} s; stopping",
                mailboxes.len()
            ));
            stop.cancel();
            let _ = daemon.await;
            return Ok(());
        }
        if started.elapsed().as_secs() / 60 > reported {
            // Progress each minute: the catch-up rate and its CPU are figures in themselves.
            reported = started.elapsed().as_secs() / 60;
            say(&format!(
                "  {:.0} s: {synced} mailboxes synced, daemon CPU {:.1} s, RSS {:.1} MiB, load {}",
                started.elapsed().as_secs_f64(),
                self_cpu() - cpu0,
                mib(status_kib("VmRSS")),
                load()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    say(&format!(
        "  initial syncs of {} mailboxes: {:.1} s, {:.1} CPU s; RSS {:.1} MiB; load {}",
        mailboxes.len(),
        started.elapsed().as_secs_f64(),
        self_cpu() - cpu0,
        mib(status_kib("VmRSS")),
        load()
    ));
    // Let the first polls settle, then measure a steady window.
    tokio::time::sleep(Duration::from_secs(env_or("BENCH_IDLE_SETTLE_SECONDS", 30))).await;
    let before = emulator.stats().await;
    let (cpu0, ecpu0) = (self_cpu(), emulator.cpu());
    let load0 = load();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let after = emulator.stats().await;
    let cpu = self_cpu() - cpu0;
    let (all, _) = after.requests();
    let (all0, _) = before.requests();
    let count = |st: &Stats, method: &str| -> u64 {
        st.0["requests"][method]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let polls =
        count(&after, "gmail.users.history.list") - count(&before, "gmail.users.history.list");
    let directory = count(&after, "directory.users.get") - count(&before, "directory.users.get");
    let needed = mailboxes.len() as f64 / poll as f64;
    say(&format!(
        "  steady {secs:.0} s: daemon CPU {cpu:.2} s = {:.1} % of one core; {polls} quiet polls ({:.1}/s of the {needed:.1}/s \
         the poll interval needs) = {:.3} ms CPU per quiet poll; {} Gmail requests, {directory} Directory look-ups; \
         emulator CPU {:.1} s; RSS {:.1} MiB, peak {:.1} MiB; load {load0} -> {}",
        cpu * 100.0 / secs,
        polls as f64 / secs,
        if polls > 0 {
            cpu * 1000.0 / polls as f64
        } else {
            f64::NAN
        },
        all - all0,
        emulator.cpu() - ecpu0,
        mib(status_kib("VmRSS")),
        mib(status_kib("VmHWM")),
        load()
    ));
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), daemon).await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::var("BENCH_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("backlog-one") {
        let mode = args.get(1).cloned().unwrap_or_else(|| "off".into());
        return runtime.block_on(backlog_one(&mode));
    }
    if args.first().map(String::as_str) == Some("memory-one") {
        let size = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
        return runtime.block_on(memory_one(size));
    }
    // `cargo bench` passes `--bench`; names select scenarios; none means all.
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(unknown) = names.iter().find(|n| !SCENARIOS.contains(n)) {
        bail!(
            "unknown scenario {unknown}; known: {}",
            SCENARIOS.join(", ")
        );
    }
    for &name in SCENARIOS {
        if !names.is_empty() && !names.contains(&name) {
            continue;
        }
        let t = Instant::now();
        match name {
            "quota" => runtime.block_on(quota())?,
            "economy" => runtime.block_on(economy())?,
            "many" => runtime.block_on(many())?,
            "cpu" => runtime.block_on(cpu())?,
            "memory" => memory()?,
            "backlog" => backlog()?,
            _ => runtime.block_on(idle())?,
        }
        say(&format!(
            "{name}: done in {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}
