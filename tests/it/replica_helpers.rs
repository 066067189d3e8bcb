//! Real `gmail-ingest run` processes for multi-replica tests, and the
//! database-side audit that proves no replica wrote a mailbox it did not
//! hold the lease of.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gmail_ingest::domain::MailboxAddress;
use sqlx::{Connection, PgConnection};

use crate::chaos_helpers::binary;
use crate::helpers::World;

/// One `gmail-ingest run` process. Its `HOSTNAME` is its name, so its
/// replica id (the lease owner and `sync_runs.replica`) starts with
/// `"{name}-"`; its database connections carry `application_name = name`.
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    pub(crate) port: u16,
}

impl Replica {
    pub(crate) async fn spawn(
        w: &World,
        name: &str,
        max_concurrent: usize,
        lease: Duration,
    ) -> Replica {
        Self::spawn_with(w, name, max_concurrent, lease, "").await
    }

    /// [`Replica::spawn`] with `extra` appended to its config (whole
    /// sections, e.g. `[push]`).
    pub(crate) async fn spawn_with(
        w: &World,
        name: &str,
        max_concurrent: usize,
        lease: Duration,
        extra: &str,
    ) -> Replica {
        let config = w.dir.path().join(format!("{name}.toml"));
        write_replica_config(w, &config, name, max_concurrent, lease, extra);
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

    pub(crate) fn owner_prefix(&self) -> String {
        format!("{}-", self.name)
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} {}", self.name);
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines (`log.format = "json"`).
    pub(crate) fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub(crate) async fn readyz(&self) -> u16 {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port))
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    pub(crate) async fn metric(&self, name: &str) -> f64 {
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
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
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

fn write_replica_config(
    w: &World,
    path: &Path,
    name: &str,
    max_concurrent: usize,
    lease: Duration,
    extra: &str,
) {
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

{extra}
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
        lease = lease.as_secs(),
    );
    std::fs::write(path, toml).expect("config written");
}

/// The audit: statement triggers that record, for each write a replica
/// makes, the lease owner its transaction sees. A fenced write locks its
/// mailbox's `sync_state` row while checking that the lease is its own, so
/// a correct replica always sees itself as the owner. A Gmail push mark
/// (`Store::mark_notified`) is no sync write: it changes only
/// `notified_history_id`, `notified_at` and `next_poll_at`, under no lease,
/// and is not recorded.
pub(crate) const AUDIT_SQL: &str = r#"
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
        FROM old_rows o JOIN new_rows n ON n.mailbox = o.mailbox
        WHERE to_jsonb(o) - 'notified_history_id' - 'notified_at' - 'next_poll_at'
              IS DISTINCT FROM to_jsonb(n) - 'notified_history_id' - 'notified_at' - 'next_poll_at';
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
pub(crate) const AUDIT_VIOLATIONS_SQL: &str = "SELECT writer || ' wrote ' || tbl || ' of ' || mailbox \
     || ' at ' || at || ' while the lease was ' || coalesce(owner_before, 'free') \
     || ' -> ' || coalesce(owner_after, 'free') \
     FROM fence_audit \
     WHERE coalesce(split_part(owner_before, '-', 1), '') <> writer \
     AND coalesce(split_part(owner_after, '-', 1), '') <> writer \
     ORDER BY id";

pub(crate) async fn pg(w: &World) -> PgConnection {
    PgConnection::connect(w.settings.database.url.expose())
        .await
        .expect("test connection to PostgreSQL")
}

/// mailbox -> (lease owner, epoch, lease expiry) of every leased mailbox.
pub(crate) async fn leases(c: &mut PgConnection) -> BTreeMap<String, (String, i64, DateTime<Utc>)> {
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

/// Writes made under a lease the writer held neither before nor after
/// them, as the audit (`AUDIT_SQL`) recorded them.
pub(crate) async fn stale_writes(db: &mut PgConnection) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(AUDIT_VIOLATIONS_SQL)
        .fetch_all(db)
        .await
        .unwrap();
    rows.into_iter().map(|(v,)| v).collect()
}

/// Pairs of `sync_runs` of one mailbox by different replicas that overlap
/// in time: two owners syncing one mailbox at once.
pub(crate) async fn overlapping_runs(w: &World, mailboxes: &[MailboxAddress]) -> Vec<String> {
    let mut out = Vec::new();
    for m in mailboxes {
        let runs = w.ctx.store.sync_runs(m).await.unwrap();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                if a.replica != b.replica
                    && a.finished_at > b.started_at
                    && b.finished_at > a.started_at
                {
                    out.push(format!("{m}: runs overlap: {a:?} and {b:?}"));
                }
            }
        }
    }
    out
}
