//! End-to-end sync benchmarks: quota efficiency and economy, many mailboxes, the CPU
//! path into SQLite and PostgreSQL, memory of a full sync, and the idle cost of many
//! quiet mailboxes (one replica, or several `run` children on PostgreSQL), and push versus
//! polling. Figures and how they were taken: `BENCHMARKS.md`.
//!
//! ```sh
//! export CARGO_TARGET_DIR=/work/main/target
//! cargo bench --bench sync -- quota      # one scenario (several names allowed)
//! cargo bench --bench sync               # every scenario (about 55 minutes; `push` needs PostgreSQL)
//! ```
//!
//! Scenarios: `quota`, `economy`, `many`, `cpu`, `memory`, `idle`, `backlog`, `push`. Each
//! prints its figures to stderr. The emulator runs as a separate process (the release
//! binary's `emulator` command) so that the CPU and peak RSS read from `/proc/self` are the
//! daemon's alone (`idle` with `BENCH_IDLE_REPLICAS` and `push` run the daemon as `run`
//! children and read `/proc/PID`); the SQLite database lives in this process, PostgreSQL in its server.
//! Loopback only; every run is bounded in requests and time.
//!
//! Environment: `BENCH_QUOTA_MESSAGES` (1000), `BENCH_INCR_MESSAGES` (100000),
//! `BENCH_RESYNC_MESSAGES` (10000), `BENCH_MANY_MAILBOXES` (200), `BENCH_MANY_SECONDS`
//! (120), `BENCH_CPU_MAILBOXES` (10), `BENCH_CPU_MESSAGES` (2000 per mailbox),
//! `BENCH_MEMORY_SIZES` (`10000,100000`), `BENCH_IDLE_MAILBOXES` (10000),
//! `BENCH_IDLE_SECONDS` (120), `BENCH_IDLE_DB` (`sqlite` or `postgres`), `BENCH_IDLE_REPLICAS`
//! (unset: the daemon in this process; set, with `postgres`: that many `gmail-ingest run`
//! children share the mailboxes, and with `pg_stat_statements` loaded in the server the top
//! statements of the steady window are printed),
//! `BENCH_IDLE_POLL_SECONDS` (60: the poll interval; 1 saturates the daemon, every
//! mailbox being due again at once), `BENCH_IDLE_SETTLE_SECONDS` (30),
//! `BENCH_IDLE_CATCHUP_SECONDS` (1200), `BENCH_BACKLOG_ADDS` (300000), `BENCH_BACKLOG_WINDOW`
//! (300 seconds at the quota ceiling), `BENCH_BACKLOG_MODES` (`off,ceiling`),
//! `BENCH_BACKLOG_CHUNK` (`sync.history_chunk_messages`), `BENCH_PUSH_MODES` (`on,off`),
//! `BENCH_PUSH_MAILBOXES` (10000), `BENCH_PUSH_RATE` (2 messages/s), `BENCH_PUSH_SECONDS`
//! (120), `BENCH_PUSH_TAIL_SECONDS` (90), `BENCH_PUSH_FALLBACK` (`15m`),
//! `BENCH_PUSH_WATCH_WAIT_SECONDS` (150 with push on, 0 off), `BENCH_PUSH_SETTLE_SECONDS`
//! (30), `BENCH_PUSH_CATCHUP_SECONDS` (1200), `BENCH_PG_URL`
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
    "quota", "economy", "many", "cpu", "memory", "idle", "backlog", "push",
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

/// [`subscribe`] from 8 tasks at once (PostgreSQL: one at a time costs ~10 ms a mailbox).
async fn subscribe_parallel(ctx: &SyncContext, mailboxes: &[MailboxAddress]) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in mailboxes.chunks(mailboxes.len().div_ceil(8).max(1)) {
        let (ctx, chunk) = (ctx.clone(), chunk.to_vec());
        tasks.spawn(async move { subscribe(&ctx, &chunk).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
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

// ---------------------------------------------------------------- daemon child processes

/// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`) of another process.
fn status_kib_of(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// The `[database] [google] [sync] [log]` sections of a `gmail-ingest run` child's config
/// file, pointed at `emulator` and `url`, with the 2026 per-user quota and the default
/// retry settings; `extra` is appended (e.g. a `[push]` section). Each child's port comes
/// from its environment.
fn daemon_config(emulator: &EmulatorProcess, url: &str, poll: u64, extra: &str) -> String {
    format!(
        r#"[database]
url = "{url}"

[google]
service_account_key_file = "{key}"
admin_subject = "{admin}"
gmail_base_url = "{base}"
directory_base_url = "{base}"

[sync]
poll_interval = "{poll}s"
user_quota_units_per_minute = 6000

[http]
shutdown_grace = "10s"

[log]
format = "json"
level = "warn"
{extra}"#,
        key = emulator.key.display(),
        admin = emulator.admin,
        base = emulator.base,
    )
}

/// One `gmail-ingest run` process: the release binary, `HOSTNAME` = its name (its replica
/// id starts with `"{name}-"`), its own HTTP port for `/metrics`, killed on drop.
struct DaemonProcess {
    name: String,
    child: Child,
    port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl DaemonProcess {
    /// Starts `gmail-ingest --config FILE run` in `dir` (`file` written by the caller from
    /// [`daemon_config`]; several children share it, each gets its own port through
    /// `GMAIL_INGEST__HTTP__LISTEN`); ready when `/healthz` answers.
    async fn spawn(dir: &Path, name: &str, file: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
            .current_dir(dir)
            .arg("--config")
            .arg(file)
            .arg("run")
            .env_remove("RUST_LOG")
            .env("HOSTNAME", name)
            .env("GMAIL_INGEST__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting daemon {name}"))?;
        let mut d = DaemonProcess {
            name: name.to_owned(),
            child,
            port,
            log,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!("daemon {name} exited at start ({status}): {}", d.log_tail());
            }
            if let Ok(r) = d
                .http
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon {name} did not answer /healthz in 120 s: {}",
                    d.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(&self.pid().to_string())
    }

    fn rss_mib(&self) -> f64 {
        mib(status_kib_of(self.pid(), "VmRSS"))
    }

    fn peak_mib(&self) -> f64 {
        mib(status_kib_of(self.pid(), "VmHWM"))
    }

    /// The sum of a `/metrics` counter over the series whose labels contain `label`
    /// (e.g. `method="gmail.users.history.list"`); 0 when it is absent.
    async fn metric(&self, name: &str, label: &str) -> f64 {
        let Ok(r) = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
        else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' '])
                    .next()
                    .is_some_and(|metric| metric == name)
            })
            .filter(|l| l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM and a bounded wait (the grace is 10 s), then SIGKILL.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        say(&format!(
            "  {} did not stop within 30 s of SIGTERM; killed",
            self.name
        ));
    }
}

/// The PostgreSQL server's processes serving the database of `url` (its client backends)
/// and the server-wide background processes (checkpointer, WAL writer...), by pid.
async fn pg_server_pids(url: &str) -> (Vec<u32>, Vec<u32>) {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return (Vec::new(), Vec::new());
    };
    let rows: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT pid, datname::text FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let name = url::Url::parse(url)
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    let _ = conn.close().await;
    let mut ours = Vec::new();
    let mut background = Vec::new();
    for (pid, db) in rows {
        match db {
            Some(d) if d == name => ours.push(pid as u32),
            None => background.push(pid as u32),
            Some(_) => {}
        }
    }
    (ours, background)
}

/// CPU seconds of each pid (0 for one that is gone).
fn cpu_of(pids: &[u32]) -> Vec<(u32, f64)> {
    pids.iter()
        .map(|p| (*p, cpu_seconds(&p.to_string())))
        .collect()
}

/// CPU spent by `now`'s pids since `then` (a pid absent from `then` counts from 0).
fn cpu_delta(then: &[(u32, f64)], now: &[(u32, f64)]) -> f64 {
    now.iter()
        .map(|(p, c)| c - then.iter().find(|(q, _)| q == p).map_or(0.0, |(_, c0)| *c0))
        .sum()
}

/// Unleased mailboxes past their due time: how many by more than `slack` seconds, and the
/// largest lateness in seconds (PostgreSQL); `(-1, NaN)` when the query fails.
async fn overdue(conn: &mut PgConnection, slack: f64) -> (i64, f64) {
    sqlx::query_as::<_, (i64, Option<f64>)>(
        "SELECT count(*) FILTER (WHERE next_poll_at < now() - make_interval(secs => $1)), \
         max(extract(epoch FROM now() - next_poll_at))::float8 FROM sync_state \
         WHERE next_poll_at < now() AND (lease_expires_at IS NULL OR lease_expires_at < now())",
    )
    .bind(slack)
    .fetch_one(conn)
    .await
    .map(|(n, max)| (n, max.unwrap_or(0.0)))
    .unwrap_or((-1, f64::NAN))
}

/// The database's activity counters (`pg_stat_database`: commits, rows returned, fetched,
/// inserted, updated) and, per table, (name, sequential scans, rows they read, index scans).
type PgActivity = (Vec<i64>, Vec<(String, i64, i64, i64)>);

/// Reads [`PgActivity`] of the connection's database.
async fn pg_activity(conn: &mut PgConnection) -> PgActivity {
    let db: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_returned, tup_fetched, tup_inserted, tup_updated \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_default();
    let tables: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, coalesce(seq_scan, 0), coalesce(seq_tup_read, 0), coalesce(idx_scan, 0) \
         FROM pg_stat_user_tables",
    )
    .fetch_all(conn)
    .await
    .unwrap_or_default();
    (vec![db.0, db.1, db.2, db.3, db.4], tables)
}

/// Resets `pg_stat_statements` when the server has it loaded (`shared_preload_libraries`),
/// creating the extension in the bench's database; false when it is not available.
async fn pg_statements_reset(conn: &mut PgConnection) -> bool {
    let loaded: Option<String> = sqlx::query_scalar("SHOW shared_preload_libraries")
        .fetch_one(&mut *conn)
        .await
        .ok();
    if !loaded.is_some_and(|l| l.contains("pg_stat_statements")) {
        return false;
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut *conn)
        .await
        .is_ok()
        && sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut *conn)
            .await
            .is_ok()
}

/// The statements the database ran since [`pg_statements_reset`], by total execution time:
/// calls, time and shared buffers per quiet poll and per call.
async fn pg_statements_report(url: &str, polls: f64) {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return;
    };
    let rows: Vec<(String, i64, f64, i64, i64)> = sqlx::query_as(
        "SELECT query, calls, total_exec_time, rows, shared_blks_hit + shared_blks_read          FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())          ORDER BY total_exec_time DESC LIMIT 15",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let _ = conn.close().await;
    let polls = polls.max(1.0);
    say(
        "  pg_stat_statements, by execution time (per quiet poll: calls, ms; per call: rows, buffers):",
    );
    for (query, calls, ms, rows, buffers) in rows {
        let calls_f = calls.max(1) as f64;
        let text: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
        say(&format!(
            "    {:.2} calls {:.3} ms | {:.1} rows {:.0} buffers | {}",
            calls as f64 / polls,
            ms / polls,
            rows as f64 / calls_f,
            buffers as f64 / calls_f,
            text.chars().take(160).collect::<String>()
        ));
    }
}

/// What the database did per quiet poll between two [`pg_activity`] readings.
fn pg_activity_per_poll(then: &PgActivity, now: &PgActivity, polls: f64) -> String {
    let per = |i: usize| (now.0[i] - then.0[i]) as f64 / polls.max(1.0);
    let mut tables: Vec<String> = now
        .1
        .iter()
        .filter_map(|(t, seq, read, idx)| {
            let (_, seq0, read0, idx0) = then.1.iter().find(|(t0, ..)| t0 == t)?;
            let (seq, read, idx) = (seq - seq0, read - read0, idx - idx0);
            (seq > 0 || idx > 0).then(|| {
                format!(
                    "{t} {:.2} seq scans ({:.0} rows) {:.2} index scans",
                    seq as f64 / polls.max(1.0),
                    read as f64 / polls.max(1.0),
                    idx as f64 / polls.max(1.0)
                )
            })
        })
        .collect();
    tables.sort();
    format!(
        "per quiet poll: {:.2} commits, rows returned {:.1} fetched {:.1} inserted {:.2} updated {:.2}; {}",
        per(0),
        per(1),
        per(2),
        per(3),
        per(4),
        tables.join("; ")
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
    // Set (even to 1), the replicas are `run` children on PostgreSQL; unset, the daemon
    // runs in this process as before.
    let replicas = std::env::var("BENCH_IDLE_REPLICAS")
        .ok()
        .map(|v| v.parse::<usize>().map(|r| r.max(1)))
        .transpose()
        .context("BENCH_IDLE_REPLICAS must be a number of replicas")?;
    if replicas.is_some() && !matches!(db, Db::Postgres) {
        bail!("BENCH_IDLE_REPLICAS needs BENCH_IDLE_DB=postgres (SQLite admits one replica)");
    }
    let dir = tempfile::tempdir()?;
    let emulator = EmulatorProcess::start(dir.path(), wanted * 3 / 2 + 20, 1).await?;
    emulator.quota(json!({"enforce": false})).await;
    let url = database(&db, dir.path()).await?;
    let result = match replicas {
        Some(r) => idle_replicas(&emulator, dir.path(), &url, wanted, seconds, poll, r).await,
        None => idle_on(&emulator, &url, wanted, seconds, poll).await,
    };
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

/// Scenario 6 with `BENCH_IDLE_REPLICAS` = R, on PostgreSQL: R `gmail-ingest run`
/// children (`HOSTNAME` replica1..R, one config file) share the quiet mailboxes. Per
/// replica: its CPU (`/proc/PID/stat`) and RSS (`/proc/PID/status`) over the steady window,
/// and its quiet polls (its own `/metrics`: `history.list` requests); in all: the emulator's
/// `history.list` answers against the polls a second the interval needs, the PostgreSQL
/// server's CPU (the database's backends and the background processes, from
/// `pg_stat_activity` pids), and how many mailboxes were ever overdue.
async fn idle_replicas(
    emulator: &EmulatorProcess,
    dir: &Path,
    url: &str,
    wanted: usize,
    seconds: u64,
    poll: u64,
    replicas: usize,
) -> anyhow::Result<()> {
    let mut mailboxes = emulator.shared_mailboxes().await;
    mailboxes.truncate(wanted);
    {
        let mut s = settings(emulator, url)?;
        s.log.level = "warn".into();
        let ctx = gmail_ingest::app::context(s).await?;
        let t = Instant::now();
        subscribe_parallel(&ctx, &mailboxes).await?;
        say(&format!(
            "idle: {} subscriptions added and approved in {:.1} s (PostgreSQL, poll interval {poll} s, {replicas} replicas as child processes)",
            mailboxes.len(),
            t.elapsed().as_secs_f64(),
        ));
        ctx.store.close().await;
    }
    let file = dir.join("daemon.toml");
    std::fs::write(&file, daemon_config(emulator, url, poll, ""))?;
    let mut daemons = Vec::new();
    for i in 1..=replicas {
        daemons.push(DaemonProcess::spawn(dir, &format!("replica{i}"), &file).await?);
    }
    let cpu_all = |ds: &[DaemonProcess]| ds.iter().map(DaemonProcess::cpu).sum::<f64>();
    let rss_all = |ds: &[DaemonProcess]| {
        ds.iter()
            .map(|d| format!("{:.0}", d.rss_mib()))
            .collect::<Vec<_>>()
            .join("/")
    };
    // Initial syncs: done when every mailbox has been charged units (getProfile at least).
    let started = Instant::now();
    let cpu0 = cpu_all(&daemons);
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
        for d in &mut daemons {
            if !matches!(d.child.try_wait(), Ok(None)) {
                bail!(
                    "daemon {} exited during the initial syncs: {}",
                    d.name,
                    d.log_tail()
                );
            }
        }
        if Instant::now() > deadline {
            say(&format!(
                "  only {synced} of {} mailboxes synced after {catchup} s; stopping",
                mailboxes.len()
            ));
            for d in daemons {
                d.stop().await;
            }
            return Ok(());
        }
        if started.elapsed().as_secs() / 60 > reported {
            reported = started.elapsed().as_secs() / 60;
            say(&format!(
                "  {:.0} s: {synced} mailboxes synced, daemons' CPU {:.1} s, RSS {} MiB, load {}",
                started.elapsed().as_secs_f64(),
                cpu_all(&daemons) - cpu0,
                rss_all(&daemons),
                load()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    say(&format!(
        "  initial syncs of {} mailboxes: {:.1} s, {:.1} CPU s in the daemons; RSS {} MiB; load {}",
        mailboxes.len(),
        started.elapsed().as_secs_f64(),
        cpu_all(&daemons) - cpu0,
        rss_all(&daemons),
        load()
    ));
    // Let the first polls settle (each replica meets each mailbox, and grants its token,
    // the first time it claims it), then measure a steady window.
    tokio::time::sleep(Duration::from_secs(env_or("BENCH_IDLE_SETTLE_SECONDS", 30))).await;
    let history = "method=\"gmail.users.history.list\"";
    let mut per0 = Vec::new();
    for d in &daemons {
        per0.push((
            d.cpu(),
            d.metric("gmail_ingest_api_requests_total", history).await,
        ));
    }
    let mut pg = PgConnection::connect(url).await?;
    let (ours, background) = pg_server_pids(url).await;
    let (pg_ours0, pg_bg0) = (cpu_of(&ours), cpu_of(&background));
    let activity0 = pg_activity(&mut pg).await;
    let statements = pg_statements_reset(&mut pg).await;
    let before = emulator.stats().await;
    let ecpu0 = emulator.cpu();
    let load0 = load();
    let t = Instant::now();
    let (mut late_max, mut late_count_max, mut samples) = (0.0_f64, 0_i64, 0);
    let mut rss_max = vec![0.0_f64; daemons.len()];
    while t.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds))).await;
        let (n, late) = overdue(&mut pg, 5.0).await;
        late_count_max = late_count_max.max(n);
        late_max = late_max.max(late);
        samples += 1;
        for (m, d) in rss_max.iter_mut().zip(&daemons) {
            *m = m.max(d.rss_mib());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let after = emulator.stats().await;
    let ecpu = emulator.cpu() - ecpu0;
    let (ours_now, background_now) = pg_server_pids(url).await;
    let pg_ours = cpu_delta(&pg_ours0, &cpu_of(&ours_now));
    let pg_bg = cpu_delta(&pg_bg0, &cpu_of(&background_now));
    let load1 = load();
    // The statistics collector publishes a backend's counters within about a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let activity1 = pg_activity(&mut pg).await;
    let _ = pg.close().await;
    let count = |st: &Stats, method: &str| -> u64 {
        st.0["requests"][method]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let tokens = |st: &Stats| -> u64 {
        st.0["tokens_issued"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let emulator_polls =
        count(&after, "gmail.users.history.list") - count(&before, "gmail.users.history.list");
    let directory = count(&after, "directory.users.get") - count(&before, "directory.users.get");
    let needed = mailboxes.len() as f64 / poll as f64;
    let (mut cpu_total, mut polls_total) = (0.0, 0.0);
    for ((d, (c0, p0)), rss_peak) in daemons.iter().zip(&per0).zip(&rss_max) {
        let cpu = d.cpu() - c0;
        let polls = d.metric("gmail_ingest_api_requests_total", history).await - p0;
        cpu_total += cpu;
        polls_total += polls;
        say(&format!(
            "  {} (pid {}): CPU {cpu:.2} s = {:.1} % of one core; {polls:.0} quiet polls ({:.1}/s) = {:.3} ms CPU per quiet poll; \
             RSS {:.1} MiB (max sampled {rss_peak:.1}, peak {:.1})",
            d.name,
            d.pid(),
            cpu * 100.0 / secs,
            polls / secs,
            if polls > 0.0 {
                cpu * 1000.0 / polls
            } else {
                f64::NAN
            },
            d.rss_mib(),
            d.peak_mib(),
        ));
    }
    say(&format!(
        "  steady {secs:.0} s, {replicas} replicas: CPU {cpu_total:.2} s = {:.1} % of one core; {polls_total:.0} quiet polls by the replicas' \
         metrics, {emulator_polls} history.list answered by the emulator ({:.1}/s of the {needed:.1}/s the poll interval needs) = \
         {:.3} ms CPU per quiet poll; {directory} Directory look-ups, {} tokens issued; most mailboxes overdue > 5 s in {samples} samples: \
         {late_count_max}, largest lateness {late_max:.1} s",
        cpu_total * 100.0 / secs,
        emulator_polls as f64 / secs,
        if polls_total > 0.0 {
            cpu_total * 1000.0 / polls_total
        } else {
            f64::NAN
        },
        tokens(&after) - tokens(&before),
    ));
    say(&format!(
        "  PostgreSQL server: the database's {} backends {pg_ours:.2} CPU s ({:.3} ms per quiet poll), background processes {pg_bg:.2} s; \
         emulator CPU {ecpu:.1} s; load {load0} -> {load1}",
        ours_now.len(),
        if polls_total > 0.0 {
            pg_ours * 1000.0 / polls_total
        } else {
            f64::NAN
        },
    ));
    say(&format!(
        "  PostgreSQL {}",
        pg_activity_per_poll(&activity0, &activity1, polls_total)
    ));
    if statements {
        pg_statements_report(url, polls_total).await;
    }
    for d in daemons {
        d.stop().await;
    }
    Ok(())
}

// ---------------------------------------------------------------- push versus polling

const PUSH_TOPIC: &str = "projects/emulator-project/topics/gmail";
const PUSH_SUBSCRIPTION: &str = "projects/emulator-project/subscriptions/ingest";
const GMAIL_PUSH: &str = "serviceAccount:gmail-api-push@system.gserviceaccount.com";
const GMAIL_READONLY: &str = "https://www.googleapis.com/auth/gmail.readonly";

/// What one half of the push scenario measured.
struct PushFigures {
    mode: &'static str,
    inserted: usize,
    latencies: Vec<f64>,
    window: f64,
    cpu: f64,
    polls: f64,
    requests: u64,
    units: u64,
    watches: usize,
    made_by_bench: usize,
    notifications: String,
    rss: f64,
    load: String,
}

impl PushFigures {
    /// The `q` quantile (nearest rank) of the latencies in seconds.
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
}

/// Scenario `push` (issue 17 point 7): `BENCH_PUSH_MAILBOXES` quiet mailboxes, the 2026
/// quota enforced by the emulator, a `gmail-ingest run` child with push on
/// (`fallback_poll_interval` `BENCH_PUSH_FALLBACK`, 15m) and, in the same run, one with push
/// off at a 60-s poll; in each, after the initial syncs and a watch on every mailbox, one
/// new message every 1/`BENCH_PUSH_RATE` s into a random mailbox for `BENCH_PUSH_SECONDS`,
/// and per message the time from its insert to its row in `messages`. PostgreSQL only (the
/// bench reads `messages` while the daemon writes it).
async fn push() -> anyhow::Result<()> {
    let modes = std::env::var("BENCH_PUSH_MODES").unwrap_or_else(|_| "on,off".into());
    let mut rows = Vec::new();
    for mode in modes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let on = match mode {
            "on" => true,
            "off" => false,
            other => bail!("BENCH_PUSH_MODES takes on and off, not {other}"),
        };
        rows.push(push_one(on).await?);
    }
    let cell = |f: &dyn Fn(&PushFigures) -> String| {
        rows.iter()
            .map(|r| format!(" {} |", f(r)))
            .collect::<String>()
    };
    say(&format!("| |{}", cell(&|r| r.mode.to_owned())));
    say(&format!("|---|{}", cell(&|_| "---".to_owned())));
    type Line<'a> = (&'a str, &'a dyn Fn(&PushFigures) -> String);
    let lines: [Line<'_>; 11] = [
        ("messages inserted / landed", &|r| {
            format!("{} / {}", r.inserted, r.latencies.len())
        }),
        ("insert → row, median", &|r| {
            format!("{:.2} s", r.quantile(0.5))
        }),
        ("insert → row, p99", &|r| {
            format!("{:.2} s", r.quantile(0.99))
        }),
        ("insert → row, max", &|r| {
            format!("{:.2} s", r.quantile(1.0))
        }),
        ("daemon CPU in the window", &|r| {
            format!(
                "{:.2} s = {:.1} % of one core",
                r.cpu,
                r.cpu * 100.0 / r.window
            )
        }),
        ("history.list calls in the window", &|r| {
            format!("{:.0} ({:.1}/s)", r.polls, r.polls / r.window)
        }),
        ("Gmail requests / units in the window", &|r| {
            format!("{} / {}", r.requests, r.units)
        }),
        ("live watches (made by the bench)", &|r| {
            format!("{} ({})", r.watches, r.made_by_bench)
        }),
        ("Pub/Sub in the window", &|r| r.notifications.clone()),
        ("daemon RSS", &|r| format!("{:.1} MiB", r.rss)),
        ("load (1, 5, 15 min) at the end", &|r| r.load.clone()),
    ];
    for (name, f) in lines {
        say(&format!("| {name} |{}", cell(f)));
    }
    Ok(())
}

async fn push_one(on: bool) -> anyhow::Result<PushFigures> {
    let mode = if on { "push on" } else { "push off" };
    let n = env_or("BENCH_PUSH_MAILBOXES", 10_000) as usize;
    let rate = env_or("BENCH_PUSH_RATE", 2).max(1);
    let seconds = env_or("BENCH_PUSH_SECONDS", 120);
    let tail = env_or("BENCH_PUSH_TAIL_SECONDS", 90);
    let poll = 60;
    let fallback = std::env::var("BENCH_PUSH_FALLBACK").unwrap_or_else(|_| "15m".into());
    let dir = tempfile::tempdir()?;
    let emulator = EmulatorProcess::start(dir.path(), n * 3 / 2 + 20, 1).await?;
    emulator.quota(json!({"enforce": false})).await;
    // What the admin sets up (docs/operations.md): the topic, publish granted to Gmail's
    // push account, a pull subscription, subscribe granted to our service account.
    let put = reqwest::Method::PUT;
    emulator
        .call(put.clone(), &format!("pubsub/{PUSH_TOPIC}"), None)
        .await;
    emulator
        .call(
            put.clone(),
            &format!("pubsub/{PUSH_TOPIC}/publishers/{GMAIL_PUSH}"),
            None,
        )
        .await;
    emulator
        .call(
            put.clone(),
            &format!("pubsub/{PUSH_SUBSCRIPTION}"),
            Some(json!({"topic": PUSH_TOPIC, "ack_deadline_seconds": 60})),
        )
        .await;
    let key: Value = serde_json::from_slice(&std::fs::read(&emulator.key)?)?;
    let me = format!(
        "serviceAccount:{}",
        key["client_email"]
            .as_str()
            .context("client_email in the key")?
    );
    emulator
        .call(
            put,
            &format!("pubsub/{PUSH_SUBSCRIPTION}/subscribers/{me}"),
            None,
        )
        .await;
    let url = database(&Db::Postgres, dir.path()).await?;
    let result = push_on_db(
        &emulator,
        dir.path(),
        &url,
        on,
        n,
        rate,
        seconds,
        tail,
        poll,
        &fallback,
    )
    .await;
    drop_pg(&url).await;
    let figures = result?;
    say(&format!(
        "  {mode}: {} of {} landed, median {:.2} s, p99 {:.2} s; daemon CPU {:.2} s in {:.0} s",
        figures.latencies.len(),
        figures.inserted,
        figures.quantile(0.5),
        figures.quantile(0.99),
        figures.cpu,
        figures.window
    ));
    Ok(figures)
}

#[allow(clippy::too_many_arguments)]
async fn push_on_db(
    emulator: &EmulatorProcess,
    dir: &Path,
    url: &str,
    on: bool,
    n: usize,
    rate: u64,
    seconds: u64,
    tail: u64,
    poll: u64,
    fallback: &str,
) -> anyhow::Result<PushFigures> {
    let mode = if on { "push on" } else { "push off" };
    let mut mailboxes = emulator.shared_mailboxes().await;
    mailboxes.truncate(n);
    {
        let mut s = settings(emulator, url)?;
        s.log.level = "warn".into();
        let ctx = gmail_ingest::app::context(s).await?;
        subscribe_parallel(&ctx, &mailboxes).await?;
        ctx.store.close().await;
    }
    let push_section = if on {
        format!(
            "\n[push]\nenabled = true\ntopic = \"{PUSH_TOPIC}\"\nsubscription = \"{PUSH_SUBSCRIPTION}\"\n\
             fallback_poll_interval = \"{fallback}\"\npubsub_base_url = \"{}\"\n",
            emulator.base
        )
    } else {
        String::new()
    };
    let file = dir.join("daemon.toml");
    std::fs::write(&file, daemon_config(emulator, url, poll, &push_section))?;
    let name = if on { "push-on" } else { "push-off" };
    let mut daemon = DaemonProcess::spawn(dir, name, &file).await?;
    say(&format!(
        "push: {mode}: {} mailboxes subscribed, daemon {} (pid {}), poll interval {poll} s{}, load {}",
        mailboxes.len(),
        daemon.name,
        daemon.pid(),
        if on {
            format!(", fallback {fallback}")
        } else {
            String::new()
        },
        load()
    ));
    // Initial syncs: every mailbox in phase incremental.
    let mut pg = PgConnection::connect(url).await?;
    let started = Instant::now();
    let catchup = Duration::from_secs(env_or("BENCH_PUSH_CATCHUP_SECONDS", 1200));
    let mut reported = 0;
    loop {
        let (synced,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM sync_state WHERE phase = 'incremental'")
                .fetch_one(&mut pg)
                .await?;
        if synced as usize >= mailboxes.len() {
            break;
        }
        if !matches!(daemon.child.try_wait(), Ok(None)) {
            bail!(
                "{mode}: the daemon exited during the initial syncs: {}",
                daemon.log_tail()
            );
        }
        if started.elapsed() > catchup {
            bail!(
                "{mode}: only {synced} of {} mailboxes synced in {catchup:?}",
                mailboxes.len()
            );
        }
        if started.elapsed().as_secs() / 60 > reported {
            reported = started.elapsed().as_secs() / 60;
            say(&format!(
                "  {:.0} s: {synced} mailboxes synced, daemon CPU {:.1} s, load {}",
                started.elapsed().as_secs_f64(),
                daemon.cpu(),
                load()
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    say(&format!(
        "  initial syncs: {:.1} s, daemon CPU {:.1} s, RSS {:.1} MiB",
        started.elapsed().as_secs_f64(),
        daemon.cpu(),
        daemon.rss_mib()
    ));
    // Watches: the daemon with push on makes them at each mailbox's first incremental pass
    // (within a poll interval of its full sync); the bench makes the missing ones.
    let wait = env_or(
        "BENCH_PUSH_WATCH_WAIT_SECONDS",
        if on { 2 * poll + 30 } else { 0 },
    );
    let deadline = Instant::now() + Duration::from_secs(wait);
    let live = loop {
        let live = live_watches(emulator, &mailboxes).await;
        if live.len() >= mailboxes.len() || Instant::now() >= deadline {
            break live;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    let by_daemon = live.len();
    let missing: Vec<MailboxAddress> = mailboxes
        .iter()
        .filter(|m| !live.contains(&m.to_string()))
        .cloned()
        .collect();
    let t = Instant::now();
    let made = make_watches(emulator, missing).await?;
    let watches = live_watches(emulator, &mailboxes).await.len();
    say(&format!(
        "  watches: {by_daemon} live before the bench's, {made} made by the bench in {:.1} s; {watches} of {} live",
        t.elapsed().as_secs_f64(),
        mailboxes.len()
    ));
    // The 2026 quota, enforced from here on.
    emulator
        .quota(json!({"enforce": true, "user_units_per_minute": 6000, "project_units_per_minute": 1_200_000, "max_concurrent_per_user": 10}))
        .await;
    tokio::time::sleep(Duration::from_secs(env_or("BENCH_PUSH_SETTLE_SECONDS", 30))).await;

    let history = "method=\"gmail.users.history.list\"";
    let polls0 = daemon
        .metric("gmail_ingest_api_requests_total", history)
        .await;
    let before = emulator.stats().await;
    let pubsub0 = emulator.call(reqwest::Method::GET, "pubsub", None).await["stats"].clone();
    let cpu0 = daemon.cpu();
    let t = Instant::now();
    let end_inserts = t + Duration::from_secs(seconds);
    let give_up = end_inserts + Duration::from_secs(tail);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let check = Duration::from_millis(100);
    let mut next_insert = t;
    let mut next_check = t;
    let mut pending: Vec<(String, String, Instant)> = Vec::new();
    let mut latencies = Vec::new();
    let mut inserted = 0;
    let (mut cpu, mut window, mut polls, mut after) = (0.0, 0.0, 0.0, None);
    loop {
        let now = Instant::now();
        if now >= next_insert && now < end_inserts {
            let m = &mailboxes[rand::random_range(0..mailboxes.len())];
            let raw = format!(
                "From: Push Bench <bench@outside.example>\r\nTo: {m}\r\nSubject: push bench {inserted}\r\n\
                 Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <push-bench-{inserted}@outside.example>\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\r\nOne new message.\r\n"
            );
            let at = Instant::now();
            let answer = emulator
                .call(
                    reqwest::Method::POST,
                    &format!("users/{m}/messages"),
                    Some(json!({"raw": BASE64_URL_SAFE_NO_PAD.encode(raw)})),
                )
                .await;
            let id = answer["id"].as_str().context("the insert's id")?.to_owned();
            pending.push((m.to_string(), id, at));
            inserted += 1;
            next_insert += period;
        }
        if now >= end_inserts && after.is_none() {
            // The CPU window is the insert window: what the daemon costs while mail arrives.
            window = t.elapsed().as_secs_f64();
            cpu = daemon.cpu() - cpu0;
            polls = daemon
                .metric("gmail_ingest_api_requests_total", history)
                .await
                - polls0;
            after = Some((
                emulator.stats().await,
                emulator.call(reqwest::Method::GET, "pubsub", None).await["stats"].clone(),
            ));
        }
        if now >= next_check && !pending.is_empty() {
            let asked = Instant::now();
            let (boxes, ids): (Vec<String>, Vec<String>) = pending
                .iter()
                .map(|(m, id, _)| (m.clone(), id.clone()))
                .unzip();
            let found: Vec<(String, String)> = sqlx::query_as(
                "SELECT mailbox, gmail_id FROM messages \
                 WHERE (mailbox, gmail_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            )
            .bind(boxes)
            .bind(ids)
            .fetch_all(&mut pg)
            .await?;
            pending.retain(|(m, id, at)| {
                let landed = found.iter().any(|(fm, fid)| fm == m && fid == id);
                if landed {
                    latencies.push(asked.saturating_duration_since(*at).as_secs_f64());
                }
                !landed
            });
            next_check = asked + check;
        }
        if now >= end_inserts && (pending.is_empty() || now >= give_up) {
            break;
        }
        if !matches!(daemon.child.try_wait(), Ok(None)) {
            bail!(
                "{mode}: the daemon exited during the window: {}",
                daemon.log_tail()
            );
        }
        let wake = if now < end_inserts {
            next_insert.min(next_check)
        } else {
            next_check
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake.max(Instant::now()))).await;
    }
    let (after, pubsub1) = after.context("the insert window ended")?;
    let (all, _) = after.requests();
    let (all0, _) = before.requests();
    let stat = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let notifications = format!(
        "published {}, delivered {}, acknowledged {}, rate-limited {}",
        stat(&pubsub1, "published") - stat(&pubsub0, "published"),
        stat(&pubsub1, "delivered") - stat(&pubsub0, "delivered"),
        stat(&pubsub1, "acknowledged") - stat(&pubsub0, "acknowledged"),
        stat(&pubsub1, "rate_limited") - stat(&pubsub0, "rate_limited"),
    );
    if !pending.is_empty() {
        say(&format!(
            "  {mode}: {} of {inserted} messages not in the database {tail} s after the last insert",
            pending.len()
        ));
    }
    let figures = PushFigures {
        mode,
        inserted,
        latencies,
        window,
        cpu,
        polls,
        requests: all - all0,
        units: after.units(None) - before.units(None),
        watches,
        made_by_bench: made,
        notifications,
        rss: daemon.rss_mib(),
        load: load(),
    };
    let _ = pg.close().await;
    daemon.stop().await;
    Ok(figures)
}

/// The mailboxes among `mailboxes` with a live watch in the emulator.
async fn live_watches(
    emulator: &EmulatorProcess,
    mailboxes: &[MailboxAddress],
) -> std::collections::HashSet<String> {
    let ours: std::collections::HashSet<String> =
        mailboxes.iter().map(ToString::to_string).collect();
    emulator.call(reqwest::Method::GET, "pubsub", None).await["watches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["live"] == true)
        .filter_map(|w| w["email"].as_str())
        .filter(|e| ours.contains(*e))
        .map(str::to_owned)
        .collect()
}

/// `users.watch` on the bench's topic for each of `mailboxes`, through google-gmail1 as
/// each mailbox (8 at a time); the number made.
async fn make_watches(
    emulator: &EmulatorProcess,
    mailboxes: Vec<MailboxAddress>,
) -> anyhow::Result<usize> {
    use google_gmail1::hyper_rustls::HttpsConnectorBuilder;
    use google_gmail1::hyper_util::client::legacy::Client;
    use google_gmail1::hyper_util::rt::TokioExecutor;

    if mailboxes.is_empty() {
        return Ok(0);
    }
    let key = yup_oauth2::read_service_account_key(&emulator.key).await?;
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(mailboxes));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (queue, key, client, base) = (
            queue.clone(),
            key.clone(),
            client.clone(),
            emulator.base.clone(),
        );
        workers.spawn(async move {
            let mut made = 0;
            loop {
                let Some(m) = queue.lock().expect("queue").pop() else {
                    return Ok::<usize, anyhow::Error>(made);
                };
                let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key.clone())
                    .subject(m.to_string())
                    .build()
                    .await?;
                let mut hub = google_gmail1::Gmail::new(client.clone(), auth);
                hub.base_url(base.clone());
                hub.root_url(base.clone());
                let request = google_gmail1::api::WatchRequest {
                    topic_name: Some(PUSH_TOPIC.to_owned()),
                    ..Default::default()
                };
                hub.users()
                    .watch(request, "me")
                    .add_scope(GMAIL_READONLY)
                    .doit()
                    .await
                    .with_context(|| format!("users.watch of {m}"))?;
                made += 1;
            }
        });
    }
    let mut made = 0;
    while let Some(r) = workers.join_next().await {
        made += r??;
    }
    Ok(made)
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
            "push" => runtime.block_on(push())?,
            _ => runtime.block_on(idle())?,
        }
        say(&format!(
            "{name}: done in {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}
