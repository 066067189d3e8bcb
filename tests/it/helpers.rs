//! The test world: an emulator on port 0, a fresh database (SQLite file in a
//! temp dir, or a fresh PostgreSQL database), settings pointing at both, and
//! typed helpers. Logs are silent unless TEST_LOG=1.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use gmail_emulator::{Emulator, EmulatorConfig};
use gmail_ingest::config::{DatabaseUrl, Settings};
use gmail_ingest::domain::{MailboxAddress, Operator};
use gmail_ingest::subscriptions::{OrgUnitVerdict, Subscriptions};
use gmail_ingest::sync::engine::{SyncContext, SyncReport};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

pub(crate) fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        let s = gmail_ingest::config::LogSettings {
            format: gmail_ingest::config::LogFormat::Pretty,
            level: "info".into(),
        };
        gmail_ingest::telemetry::init_tracing(&s);
    }
}

/// Default settings with fast retries, for tests.
pub(crate) fn base_settings() -> Settings {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut s = Settings::load_from(&dir, None, &[]).expect("default settings load");
    s.google.initial_backoff = Duration::from_millis(5);
    s.google.max_backoff = Duration::from_millis(200);
    s.google.request_timeout = Duration::from_secs(10);
    s.google.max_attempts = 8;
    s.sync.poll_interval = Duration::from_secs(1);
    // Tests exercise behaviour, not the 2026 ceiling (the benchmarks do):
    // our limiter and the emulator's quota are both lifted by `world`.
    s.sync.user_quota_units_per_minute = 100_000_000;
    s
}

pub(crate) struct World {
    pub(crate) emulator: Emulator,
    pub(crate) settings: Settings,
    pub(crate) ctx: SyncContext,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) http: reqwest::Client,
    pub(crate) backend: Backend,
}

/// A database URL for `backend`, or None when PostgreSQL is unavailable here
/// (which `GMAIL_INGEST_REQUIRE_POSTGRES=1` turns into a failure).
pub(crate) async fn database_url(backend: Backend, dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("test.db").display())),
        Backend::Postgres => crate::pg::fresh_pg_url().await,
    }
}

pub(crate) async fn world(backend: Backend, cfg: EmulatorConfig) -> Option<World> {
    world_with(backend, cfg, |_| {}).await
}

pub(crate) async fn world_with(
    backend: Backend,
    cfg: EmulatorConfig,
    tweak: impl FnOnce(&mut Settings),
) -> Option<World> {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, dir.path()).await?;
    Some(world_at(backend, url, dir, cfg, tweak).await)
}

/// A world on the database at `url` (in `dir`, which the world keeps): for
/// a database the test controls itself, e.g. on its own PostgreSQL cluster
/// or a small filesystem.
pub(crate) async fn world_at(
    backend: Backend,
    url: String,
    dir: tempfile::TempDir,
    cfg: EmulatorConfig,
    tweak: impl FnOnce(&mut Settings),
) -> World {
    let emulator = Emulator::start(cfg).await.expect("emulator starts");
    let key = dir.path().join("sa.json");
    emulator
        .write_service_account_key(&key)
        .expect("key written");
    let mut settings = base_settings();
    settings.database.url = DatabaseUrl::new(url);
    settings.google.service_account_key_file = key;
    settings.google.gmail_base_url = emulator.base_url();
    settings.google.directory_base_url = emulator.base_url();
    settings.google.admin_subject = emulator.admin_email();
    settings.http.listen = "127.0.0.1:0".into();
    tweak(&mut settings);
    let ctx = gmail_ingest::app::context(settings.clone())
        .await
        .expect("context builds");
    let w = World {
        emulator,
        settings,
        ctx,
        dir,
        http: reqwest::Client::new(),
        backend,
    };
    w.quota(json!({"enforce": false})).await;
    w
}

pub(crate) fn small(users: usize, messages: usize) -> EmulatorConfig {
    EmulatorConfig {
        users,
        messages,
        ..EmulatorConfig::default()
    }
}

impl World {
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}emulator/v1/{}",
            self.emulator.base_url(),
            path.trim_start_matches('/')
        )
    }

    pub(crate) async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
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

    /// Mailboxes the emulator generated, with their org units (admin excluded).
    pub(crate) async fn users(&self) -> Vec<(MailboxAddress, String)> {
        let state = self.control(reqwest::Method::GET, "state", None).await;
        state["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| !u["is_admin"].as_bool().unwrap_or(false))
            .map(|u| {
                (
                    MailboxAddress::parse(u["email"].as_str().unwrap()).unwrap(),
                    u["org_unit"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub(crate) async fn shared_mailboxes(&self) -> Vec<MailboxAddress> {
        self.users()
            .await
            .into_iter()
            .filter(|(_, ou)| ou.starts_with("/Shared Mailboxes"))
            .map(|(m, _)| m)
            .collect()
    }

    /// add (by ops-a) + approve (by ops-b).
    pub(crate) async fn subscribe(&self, m: &MailboxAddress) {
        let policy = self.settings.policy().unwrap();
        let subs = Subscriptions::new(&self.ctx.store, &policy);
        subs.add(
            m.clone(),
            Operator::parse("ops-a").unwrap(),
            &[],
            None,
            gmail_ingest::domain::AuthMode::Delegated,
        )
        .await
        .unwrap();
        subs.approve(
            m,
            Operator::parse("ops-b").unwrap(),
            OrgUnitVerdict::Unverified("test".into()),
        )
        .await
        .unwrap();
    }

    pub(crate) async fn sync(&self, only: Option<&MailboxAddress>) -> Vec<SyncReport> {
        gmail_ingest::app::sync_with(
            &self.ctx,
            only.cloned(),
            false,
            false,
            &CancellationToken::new(),
        )
        .await
        .expect("sync pass runs")
    }

    pub(crate) async fn sync_full(&self, only: Option<&MailboxAddress>) -> Vec<SyncReport> {
        gmail_ingest::app::sync_with(
            &self.ctx,
            only.cloned(),
            true,
            false,
            &CancellationToken::new(),
        )
        .await
        .expect("sync pass runs")
    }

    /// Ground truth: (id, threadId, sorted labels) of every live message.
    pub(crate) async fn truth(&self, m: &MailboxAddress) -> Vec<(String, String, Vec<String>)> {
        let v = self
            .control(reqwest::Method::GET, &format!("users/{m}/messages"), None)
            .await;
        let arr = v
            .as_array()
            .cloned()
            .or_else(|| v["messages"].as_array().cloned())
            .unwrap_or_default();
        let mut out: Vec<(String, String, Vec<String>)> = arr
            .iter()
            .map(|x| {
                let mut labels: Vec<String> = x["labelIds"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|l| l.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                labels.sort();
                (
                    x["id"].as_str().unwrap().to_owned(),
                    x["threadId"].as_str().unwrap_or_default().to_owned(),
                    labels,
                )
            })
            .collect();
        out.sort();
        out
    }

    pub(crate) async fn db(&self, m: &MailboxAddress) -> Vec<(String, String, Vec<String>)> {
        let mut out: Vec<(String, String, Vec<String>)> = self
            .ctx
            .store
            .live_messages(m)
            .await
            .unwrap()
            .into_iter()
            .map(|l| {
                let mut labels = l.label_ids.clone();
                labels.sort();
                (l.gmail_id.to_string(), l.thread_id.clone(), labels)
            })
            .collect();
        out.sort();
        out
    }

    pub(crate) async fn assert_converged(&self, m: &MailboxAddress) {
        let truth = self.truth(m).await;
        let db = self.db(m).await;
        assert_eq!(db.len(), truth.len(), "{m}: message count differs");
        assert_eq!(
            db, truth,
            "{m}: database differs from the emulator's ground truth"
        );
    }

    pub(crate) async fn stats(&self) -> Value {
        self.control(reqwest::Method::GET, "stats", None).await
    }

    /// Requests of `method` made for `user` so far.
    pub(crate) async fn requests_by_user(&self, user: &MailboxAddress, method: &str) -> u64 {
        self.stats().await["requests_by_user"][user.as_str()][method]
            .as_u64()
            .unwrap_or(0)
    }

    pub(crate) async fn units(&self, user: &MailboxAddress) -> u64 {
        self.stats().await["quota_units"][user.as_str()]
            .as_u64()
            .unwrap_or(0)
    }

    pub(crate) async fn insert_message(
        &self,
        m: &MailboxAddress,
        subject: &str,
        labels: &[&str],
    ) -> String {
        use base64::Engine;
        let raw = format!(
            "From: Someone <someone@outside.example>\r\nTo: {m}\r\nSubject: {subject}\r\nMessage-ID: <{}@outside.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody of {subject}.\r\n",
            uuid::Uuid::new_v4()
        );
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let v = self
            .control(
                reqwest::Method::POST,
                &format!("users/{m}/messages"),
                Some(json!({"raw": enc, "label_ids": labels})),
            )
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn insert_raw(
        &self,
        m: &MailboxAddress,
        raw: &[u8],
        labels: &[&str],
    ) -> String {
        use base64::Engine;
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let v = self
            .control(
                reqwest::Method::POST,
                &format!("users/{m}/messages"),
                Some(json!({"raw": enc, "label_ids": labels})),
            )
            .await;
        v["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn delete_message(&self, m: &MailboxAddress, id: &str) {
        self.control(
            reqwest::Method::DELETE,
            &format!("users/{m}/messages/{id}"),
            None,
        )
        .await;
    }

    pub(crate) async fn relabel(
        &self,
        m: &MailboxAddress,
        id: &str,
        add: &[&str],
        remove: &[&str],
    ) {
        self.control(
            reqwest::Method::POST,
            &format!("users/{m}/messages/{id}/labels"),
            Some(json!({"add": add, "remove": remove})),
        )
        .await;
    }

    pub(crate) async fn faults(&self, body: Value) {
        self.control(reqwest::Method::PUT, "faults", Some(body))
            .await;
    }

    pub(crate) async fn quota(&self, body: Value) {
        self.control(reqwest::Method::PUT, "quota", Some(body))
            .await;
    }

    pub(crate) async fn patch_user(&self, m: &MailboxAddress, body: Value) {
        self.control(reqwest::Method::PATCH, &format!("users/{m}"), Some(body))
            .await;
    }
}

/// Both backends, for tests that must pass on each.
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(crate::helpers::Backend::Postgres).await
            }
        }
    };
}
pub(crate) use both_backends;

/// The daemon (`Application::build` + `run_until_stopped`) in this process,
/// stopped as SIGTERM would stop it.
pub(crate) struct RunningDaemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub(crate) http_port: u16,
    pub(crate) oauth_port: Option<u16>,
}

impl RunningDaemon {
    pub(crate) async fn start(settings: &Settings) -> RunningDaemon {
        RunningDaemon::try_start(settings.clone())
            .await
            .expect("daemon builds")
    }

    /// Builds and starts it; the error is the build's (a held port, a
    /// refused configuration).
    pub(crate) async fn try_start(settings: Settings) -> anyhow::Result<RunningDaemon> {
        let app = gmail_ingest::app::Application::build(settings).await?;
        let http_port = app.http_port();
        let oauth_port = app.oauth_port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Ok(RunningDaemon {
            stop: Some(tx),
            task,
            http_port,
            oauth_port,
        })
    }

    /// `path` on its HTTP listener.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Stops it and fails unless it drained within its grace.
    pub(crate) async fn stop(self) {
        self.finish()
            .await
            .expect("daemon stops cleanly within its grace");
    }

    /// Stops it and returns how its run ended.
    pub(crate) async fn finish(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("daemon task joins")
    }

    /// A crash: the task is dropped without any cleanup.
    pub(crate) fn kill(self) {
        self.task.abort();
    }
}

pub(crate) fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
