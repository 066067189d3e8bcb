//! Shared pieces of the reliability suites (chaos, crash, outage, security,
//! adversarial): a tiny deterministic RNG, the change-log invariants, and a
//! runner for the real binary.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use gmail_ingest::domain::MailboxAddress;
use serde_json::Value;

use crate::helpers::World;

/// SplitMix64: tiny, fast and stable across crate versions, so a printed
/// seed replays the same scenario forever.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next_u64() % xs.len() as u64) as usize]
    }
}

/// Every row ever stored for the mailbox (live or soft-deleted): id -> live.
pub(crate) async fn stored_rows(w: &World, m: &MailboxAddress) -> BTreeMap<String, bool> {
    let rows = w
        .ctx
        .store
        .query_first_column(&format!(
            "SELECT gmail_id || ':' || CASE WHEN deleted_at IS NULL THEN 'live' ELSE 'gone' END \
             FROM messages WHERE mailbox = '{m}'"
        ))
        .await
        .expect("messages readable");
    rows.into_iter()
        .map(|r| {
            let (id, state) = r.split_once(':').expect("id:state");
            (id.to_owned(), state == "live")
        })
        .collect()
}

/// The change-log invariants that hold given the store's semantics
/// (`plan_batch` in `src/store/batch.rs`: `added` when an upsert meets no live
/// row, `deleted` when a live row goes, label changes against the stored
/// set of a live row). Returns a list of violations, empty when all hold.
///
/// 1. Per message, `added` and `deleted` alternate, starting with `added`.
/// 2. A message is `added` at most once: Gmail never reuses an ID and a
///    deleted message never comes back, so a second `added` means a false
///    deletion (lost mail, later repaired) or a duplicate.
/// 3. No label change is recorded for a message that is not live.
/// 4. Per (message, label), within one life, `label_added` and
///    `label_removed` alternate (the first may be either: `added` does not
///    record the initial labels).
/// 5. Replaying the log gives the stored state: the ids with an `added`
///    are exactly the stored rows, the ones whose last event is `deleted`
///    exactly the soft-deleted rows, and the last label event of a live
///    message agrees with its stored labels.
pub(crate) async fn change_log_violations(w: &World, m: &MailboxAddress) -> Vec<String> {
    let changes = w.ctx.store.message_changes(m).await.expect("change log");
    let stored = stored_rows(w, m).await;
    let live: BTreeMap<String, BTreeSet<String>> = w
        .ctx
        .store
        .live_messages(m)
        .await
        .expect("live messages")
        .into_iter()
        .map(|l| (l.gmail_id.to_string(), l.label_ids.into_iter().collect()))
        .collect();

    #[derive(Default)]
    struct Replay {
        adds: u32,
        live: bool,
        labels: BTreeMap<String, bool>,
    }
    let mut bad = Vec::new();
    let mut replay: BTreeMap<String, Replay> = BTreeMap::new();
    for c in &changes {
        let id = c.gmail_id.to_string();
        let r = replay.entry(id.clone()).or_default();
        let label = c.label_id.clone().unwrap_or_default();
        match c.change.to_string().as_str() {
            "added" => {
                if r.live {
                    bad.push(format!("{id}: added twice without a deleted between"));
                }
                r.adds += 1;
                if r.adds == 2 {
                    bad.push(format!("{id}: added again after it was deleted"));
                }
                r.live = true;
                r.labels.clear();
            }
            "deleted" => {
                if !r.live {
                    bad.push(format!("{id}: deleted while not live"));
                }
                r.live = false;
            }
            kind @ ("label_added" | "label_removed") => {
                let add = kind == "label_added";
                if !r.live {
                    bad.push(format!("{id}: {kind} {label} while not live"));
                }
                if r.labels.get(&label) == Some(&add) {
                    bad.push(format!("{id}: {kind} {label} twice in a row"));
                }
                r.labels.insert(label, add);
            }
            other => bad.push(format!("{id}: unknown change kind {other}")),
        }
    }
    let added: BTreeSet<&String> = replay
        .iter()
        .filter(|(_, r)| r.adds > 0)
        .map(|(k, _)| k)
        .collect();
    let stored_ids: BTreeSet<&String> = stored.keys().collect();
    if added != stored_ids {
        bad.push(format!(
            "ids with an `added` change {:?} differ from stored rows {:?}",
            added.difference(&stored_ids).collect::<Vec<_>>(),
            stored_ids.difference(&added).collect::<Vec<_>>()
        ));
    }
    for (id, is_live) in &stored {
        let replay_live = replay.get(id).is_some_and(|r| r.live);
        if replay_live != *is_live {
            bad.push(format!(
                "{id}: replay says live={replay_live}, the row says live={is_live}"
            ));
        }
    }
    for (id, labels) in &live {
        if let Some(r) = replay.get(id) {
            for (label, present) in &r.labels {
                if labels.contains(label) != *present {
                    bad.push(format!(
                        "{id}: last change of {label} says present={present}, stored labels {labels:?}"
                    ));
                }
            }
        }
    }
    bad
}

/// `message_labels` of live messages equals their `label_ids` (no duplicate
/// or missing membership rows).
pub(crate) async fn label_rows_violations(w: &World, m: &MailboxAddress) -> Vec<String> {
    let mut rows = w
        .ctx
        .store
        .query_first_column(&format!(
            "SELECT ml.gmail_id || ' ' || ml.label_id FROM message_labels ml \
             JOIN messages x ON x.mailbox = ml.mailbox AND x.gmail_id = ml.gmail_id \
             WHERE ml.mailbox = '{m}' AND x.deleted_at IS NULL"
        ))
        .await
        .expect("message_labels readable");
    rows.sort();
    let mut want: Vec<String> = w
        .db(m)
        .await
        .into_iter()
        .flat_map(|(id, _, labels)| labels.into_iter().map(move |l| format!("{id} {l}")))
        .collect();
    want.sort();
    if rows == want {
        Vec::new()
    } else {
        vec![format!(
            "message_labels rows differ from label_ids: {} rows vs {} expected",
            rows.len(),
            want.len()
        )]
    }
}

/// The real binary, built by cargo for this test run.
pub(crate) fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gmail-ingest"))
}

/// Writes `settings` (the parts the binary needs) as a TOML config file.
pub(crate) fn write_config(w: &World, path: &Path, extra: &str) {
    let s = &w.settings;
    let toml = format!(
        r#"[database]
url = "{db}"
max_connections = 4

[google]
service_account_key_file = "{key}"
admin_subject = "{admin}"
gmail_base_url = "{base}"
directory_base_url = "{base}"
initial_backoff = "5ms"
max_backoff = "200ms"
max_attempts = 8

[http]
listen = "127.0.0.1:0"
shutdown_grace = "5s"

{extra}
"#,
        db = s.database.url.expose(),
        key = s.google.service_account_key_file.display(),
        admin = s.google.admin_subject,
        base = s.google.gmail_base_url,
    );
    std::fs::write(path, toml).expect("config written");
}

/// Polls `f` until it is true or `timeout` passes.
pub(crate) async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The binary with a config pointing at the world's emulator and database.
pub(crate) struct WorldCli {
    pub(crate) config: PathBuf,
    dir: PathBuf,
}

impl WorldCli {
    pub(crate) fn new(w: &World, extra: &str) -> WorldCli {
        let config = w
            .dir
            .path()
            .join(format!("cli-{}.toml", uuid::Uuid::new_v4()));
        write_config(w, &config, extra);
        WorldCli {
            config,
            dir: w.dir.path().to_owned(),
        }
    }

    /// `gmail-ingest sync` in a child whose peak RSS (`VmHWM`, KiB) is
    /// sampled while it runs, so that a memory bound is the child's alone
    /// (not this test process's, which other tests share). Its stderr is
    /// drained meanwhile: a child blocked on a full pipe would hang with
    /// its transaction open. glibc keeps freed 12–24 MB buffers in its
    /// arenas unless the mmap threshold is fixed (docs/operations.md).
    pub(crate) async fn sync_measured(&self) -> (std::process::ExitStatus, String, u64) {
        let mut child = Command::new(binary())
            .current_dir(&self.dir)
            .args(["--config", self.config.to_str().unwrap(), "sync"])
            .env_remove("RUST_LOG")
            .env("MALLOC_MMAP_THRESHOLD_", "4194304")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sync starts");
        let pid = child.id();
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let mut peak_kib = 0;
        let status = loop {
            peak_kib = peak_kib.max(proc_status_kib(pid, "VmHWM:"));
            if let Some(status) = child.try_wait().expect("child waits") {
                break status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        (status, stderr.join().unwrap_or_default(), peak_kib)
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .current_dir(&self.dir)
            .args([&["--config", self.config.to_str().unwrap()], args].concat())
            .env_remove("RUST_LOG")
            .output()
            .expect("binary runs")
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// Exit code 2 with exactly one `error:` line containing `needle`.
    pub(crate) fn refused(&self, args: &[&str], needle: &str) {
        let line = self.refused_line(args);
        assert!(line.contains(needle), "{args:?}: {line}");
    }

    /// Exit code 2 with exactly one `error:` line, which it returns.
    pub(crate) fn refused_line(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: one error line expected: {stderr}"
        );
        lines[0].to_owned()
    }

    pub(crate) async fn run_async(&self, args: &[&str]) -> Output {
        let this = WorldCli {
            config: self.config.clone(),
            dir: self.dir.clone(),
        };
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            this.run(&a)
        })
        .await
        .unwrap()
    }
}

/// A `/proc/<pid>/status` field in KiB (0 once the process is gone).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
