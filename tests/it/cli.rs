//! The real binary: exit codes, one-line errors, operator commands.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::helpers::{Backend, database_url};

struct Cli {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cli {
    fn new(db_url: &str, extra: &str) -> Cli {
        Self::in_dir(tempfile::tempdir().unwrap(), db_url, extra)
    }

    /// A CLI whose SQLite database lives in its own temporary directory.
    fn sqlite() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gi.db").display());
        Self::in_dir(dir, &url, "")
    }

    fn in_dir(dir: tempfile::TempDir, db_url: &str, extra: &str) -> Cli {
        let config = dir.path().join("test.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\nurl = {db_url:?}\n[google]\nservice_account_key_file = {:?}\n{extra}",
                dir.path().join("missing-sa.json").display().to_string()
            ),
        )
        .unwrap();
        Cli { _dir: dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        run_bin(
            &[&["--config", self.config.to_str().unwrap()], args].concat(),
            &[],
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gmail-ingest"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn stderr_line(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {s}");
    lines[0].to_owned()
}

#[test]
fn an_unknown_config_key_is_refused_by_name_with_exit_code_2() {
    let cli = Cli::new("sqlite::memory:", "[sync]\npoll_intervall = \"5s\"\n");
    let out = cli.run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("poll_intervall"));
}

#[test]
fn a_malformed_duration_is_refused_with_exit_code_2() {
    let cli = Cli::new("sqlite::memory:", "[http]\nshutdown_grace = \"soon\"\n");
    let out = cli.run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("shutdown_grace"));
}

#[test]
fn an_unreadable_config_file_is_refused_with_exit_code_2() {
    let out = run_bin(&["--config", "/nonexistent/gi.toml", "status"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("/nonexistent/gi.toml"));
}

#[test]
fn an_unknown_environment_variable_is_refused_by_name() {
    let out = run_bin(&["status"], &[("GMAIL_INGEST__DATABASE__URLL", "x")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("GMAIL_INGEST__DATABASE__URLL"));
}

#[test]
fn a_database_url_with_a_wrong_scheme_names_the_scheme() {
    let cli = Cli::new("mysql://root@localhost/mail", "");
    let out = cli.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("mysql"));
}

#[test]
fn postgresql_down_is_a_clear_runtime_error_that_hides_the_password() {
    let cli = Cli::new("postgres://app:hunter2@127.0.0.1:1/mail", "");
    let out = cli.run(&[
        "subscriptions",
        "add",
        "support@example.com",
        "--by",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");
}

#[test]
fn malformed_and_foreign_addresses_are_refused_and_change_nothing() {
    let cli = Cli::sqlite();
    for bad in [
        "not-an-address",
        "a@b",
        "x'; DROP TABLE subscriptions; --@example.com",
    ] {
        let out = cli.run(&["subscriptions", "add", bad, "--by", "alice"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr_line(&out).contains("invalid email address"), "{bad}");
    }
    let out = cli.run(&[
        "subscriptions",
        "add",
        "ceo@competitor.example",
        "--by",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("allowed domain"));
    let list = cli.ok(&["subscriptions", "list", "--format", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list).unwrap(),
        serde_json::json!([])
    );
}

fn lifecycle(cli: &Cli) {
    let out = cli.ok(&[
        "subscriptions",
        "add",
        "Support@Example.com",
        "--by",
        "alice",
        "--note",
        "ticket 42'; DELETE FROM subscriptions; --",
    ]);
    assert!(out.contains("support@example.com is pending"), "{out}");

    // Four-eyes: the requester cannot approve.
    let out = cli.run(&[
        "subscriptions",
        "approve",
        "support@example.com",
        "--by",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("four-eyes"));

    let out = cli.ok(&[
        "subscriptions",
        "approve",
        "support@example.com",
        "--by",
        "bob",
    ]);
    assert!(out.contains("is active"), "{out}");
    // Illegal transitions are refused.
    let out = cli.run(&[
        "subscriptions",
        "resume",
        "support@example.com",
        "--by",
        "bob",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("cannot resume"));

    cli.ok(&[
        "subscriptions",
        "pause",
        "support@example.com",
        "--by",
        "bob",
    ]);
    cli.ok(&[
        "subscriptions",
        "resume",
        "support@example.com",
        "--by",
        "bob",
    ]);

    let list: serde_json::Value =
        serde_json::from_str(&cli.ok(&["subscriptions", "list", "--format", "json"])).unwrap();
    let row = &list[0];
    assert_eq!(row["mailbox"], "support@example.com");
    assert_eq!(row["status"], "active");
    assert_eq!(row["note"], "ticket 42'; DELETE FROM subscriptions; --");
    assert_eq!(row["label_scope"], serde_json::json!([]));

    let review: serde_json::Value =
        serde_json::from_str(&cli.ok(&["subscriptions", "review", "--format", "json"])).unwrap();
    assert!(review.to_string().contains("never synced"), "{review}");
    let out = cli.ok(&[
        "subscriptions",
        "review",
        "--mark-reviewed",
        "--by",
        "carol",
    ]);
    assert!(out.contains("1 subscription"), "{out}");

    let status: serde_json::Value =
        serde_json::from_str(&cli.ok(&["status", "--format", "json"])).unwrap();
    assert_eq!(status["mailboxes"][0]["mailbox"], "support@example.com");
    assert_eq!(status["integration_enabled"], true);

    let out = cli.run(&[
        "subscriptions",
        "remove",
        "nobody@example.com",
        "--by",
        "bob",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("no subscription for nobody@example.com"));

    let out = cli.ok(&[
        "subscriptions",
        "remove",
        "support@example.com",
        "--by",
        "bob",
        "--purge",
    ]);
    assert!(out.contains("removed") && out.contains("purged"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&cli.ok(&["subscriptions", "list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["status"], "removed");

    // Labels are stored verbatim; resolving them needs the mailbox's labels,
    // which are not read while the org unit cannot be verified (no key here):
    // the approval is refused and the subscription stays pending.
    cli.ok(&[
        "subscriptions",
        "add",
        "labels@example.com",
        "--by",
        "alice",
        "--labels",
        "INBOX,Robert'); DROP TABLE messages;--",
    ]);
    let out = cli.run(&[
        "subscriptions",
        "approve",
        "labels@example.com",
        "--by",
        "bob",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("org unit"));
    let list: serde_json::Value =
        serde_json::from_str(&cli.ok(&["subscriptions", "list", "--format", "json"])).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == "labels@example.com")
        .unwrap();
    assert_eq!(row["status"], "pending");
    assert_eq!(row["label_filter"][1], "Robert'); DROP TABLE messages;--");
    assert_eq!(row["label_scope"], serde_json::Value::Null);
}

#[test]
fn the_subscription_lifecycle_works_on_sqlite() {
    lifecycle(&Cli::sqlite());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_subscription_lifecycle_works_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    let cli = Cli::new(&url, "");
    tokio::task::spawn_blocking(move || lifecycle(&cli))
        .await
        .unwrap();
}

#[test]
fn migrate_is_idempotent() {
    let cli = Cli::sqlite();
    cli.ok(&["migrate"]);
    let out = cli.ok(&["migrate"]);
    assert!(out.contains("0 migration(s) applied"), "{out}");
}

#[test]
fn check_explains_a_missing_key_file() {
    let cli = Cli::sqlite();
    let out = cli.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[FAIL]") && stdout.contains("missing-sa.json"),
        "{stdout}"
    );
}

/// `demo` in a temporary directory with `env`: its stdout and stderr.
fn demo(env: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bin(
        &[
            "demo",
            "--messages",
            "25",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        env,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "demo failed: {stderr}\n{stdout}");
    assert!(dir.path().join("gmail-ingest.db").exists());
    (stdout, stderr)
}

/// The demo is for a person: its own sections and tables, both modes (the
/// second one through the emulator's consent screen), and none of the
/// daemon's INFO lines or colour codes when its output is not a terminal.
#[test]
fn the_demo_shows_both_modes_in_its_own_sections_without_log_lines() {
    let (stdout, stderr) = demo(&[]);
    assert!(
        stdout.contains("refused"),
        "the mailbox outside the approved OU is refused: {stdout}"
    );
    assert!(stdout.contains("full+incremental"), "{stdout}");
    assert!(
        stdout.contains("radiator"),
        "the full-text query finds the injected message: {stdout}"
    );
    let mut at = 0;
    for section in [
        "== Starting the local Google emulator",
        "== Subscribing mailboxes",
        "== Full sync",
        "== Injecting changes",
        "== Second mode:",
        "invitation link",
        "/oauth/authorize?mailbox=",
        "The page they land on says: \"Connected\"",
        "waits for an operator",
        "  oauth  pending",
        "ops-bob approves it",
        "  oauth  active",
        "== What is in the database",
        "== Full-text search",
        "Done.",
    ] {
        let found = stdout[at..]
            .find(section)
            .unwrap_or_else(|| panic!("{section:?} missing or out of order in:\n{stdout}"));
        at += found + section.len();
    }
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains('\x1b'), "colour codes on {name}: {text}");
        let logs: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" INFO ") || l.contains("DEBUG") || l.contains("TRACE"))
            .collect();
        assert!(logs.is_empty(), "log lines on {name}: {logs:#?}");
    }
}

/// Asked for (`RUST_LOG=info`, JSON), the demo's logs say what happened: a
/// pass that did a full sync completes as `kind: full` (the incremental
/// replay after it does not rename it), later passes as `incremental`.
#[test]
fn a_full_sync_completes_as_kind_full_in_the_logs() {
    let (_, stderr) = demo(&[("RUST_LOG", "info"), ("GMAIL_INGEST__LOG__FORMAT", "json")]);
    let completed: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "Mailbox sync completed.")
        .collect();
    let mut first_pass = std::collections::HashMap::new();
    for event in &completed {
        let mailbox = event["mailbox"].as_str().unwrap().to_owned();
        let kind = event["kind"].as_str().unwrap().to_owned();
        let expected = if first_pass.contains_key(&mailbox) {
            "incremental"
        } else {
            "full"
        };
        assert_eq!(kind, expected, "{mailbox}'s pass: {event}");
        *first_pass.entry(mailbox).or_insert(0) += 1;
    }
    assert!(
        first_pass.len() >= 3 && first_pass.values().any(|n| *n >= 2),
        "full and incremental passes were logged: {completed:#?}"
    );
}

/// In the pretty format a pass's span names its phase once (it used to
/// print `phase=full phase=incremental`), and colours only on a terminal.
#[test]
fn a_pass_names_its_phase_once_in_pretty_logs() {
    let (_, stderr) = demo(&[("RUST_LOG", "info")]);
    let completed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Mailbox sync completed."))
        .collect();
    assert!(completed.len() >= 3, "{stderr}");
    for line in completed {
        assert!(line.matches("phase=").count() <= 1, "{line}");
        assert!(!line.contains('\x1b'), "{line}");
    }
    assert!(stderr.contains("phase=\"full\""), "{stderr}");
}
