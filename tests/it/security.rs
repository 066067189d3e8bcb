//! Security properties through the real binary and the real HTTP surface:
//! no token, key material or mail text in logs at any level; a key readable
//! by others is refused; a mailbox outside policy is never impersonated;
//! operator input is stored verbatim; /metrics and /readyz leak no mail.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use gmail_ingest::domain::MailboxAddress;
use serde_json::{Value, json};

use crate::chaos_helpers::{binary, write_config};
use crate::helpers::{Backend, World, small, world, world_with};

const PHRASE: &str = "Quixotic-Marmalade-7731 confidential body text";

fn run(w: &World, config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.current_dir(w.dir.path())
        .args([&["--config", config.to_str().unwrap()], args].concat())
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The base64 lines of the private key PEM (long enough to be unambiguous).
fn pem_body_lines(w: &World) -> Vec<String> {
    let key: Value = serde_json::from_slice(
        &std::fs::read(&w.settings.google.service_account_key_file).unwrap(),
    )
    .unwrap();
    key["private_key"]
        .as_str()
        .expect("private_key in the key file")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

async fn subscribed_shared(w: &World) -> MailboxAddress {
    let m = w.shared_mailboxes().await.into_iter().next().unwrap();
    w.subscribe(&m).await;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_key_material_or_body_text_reaches_the_logs_at_trace_level() {
    // Arrange: a mailbox holding a message with a unique body phrase.
    let w = world(Backend::Sqlite, small(2, 5)).await.unwrap();
    let m = subscribed_shared(&w).await;
    let raw = format!(
        "From: a@outside.example\r\nTo: {m}\r\nSubject: Quarterly figures\r\nMessage-ID: <sec1@outside.example>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{PHRASE}\r\n"
    );
    w.insert_raw(&m, raw.as_bytes(), &["INBOX"]).await;
    let config = w.dir.path().join("sec.toml");
    write_config(
        &w,
        &config,
        "[sync]\nuser_quota_units_per_minute = 100000000\n",
    );
    let env = [
        ("RUST_LOG", "trace"),
        ("GMAIL_INGEST__LOG__FORMAT", "json"),
        ("GMAIL_INGEST__LOG__LEVEL", "trace"),
    ];

    // Act: a sync, a check, then the daemon for a few seconds, all at trace.
    let sync = run(&w, &config, &["sync"], &env);
    let check = run(&w, &config, &["check"], &env);
    let daemon_log = w.dir.path().join("daemon.log");
    let log = std::fs::File::create(&daemon_log).unwrap();
    let mut daemon = Command::new(binary())
        .current_dir(w.dir.path())
        .args(["--config", config.to_str().unwrap(), "run"])
        .envs(env)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    daemon.wait().unwrap();
    let logs = format!(
        "{}\n{}\n{}",
        text(&sync),
        text(&check),
        std::fs::read_to_string(&daemon_log).unwrap()
    );

    // Assert: the runs did real work at trace level, and no secret is there.
    assert!(sync.status.success(), "sync failed: {}", text(&sync));
    assert!(check.status.success(), "check failed: {}", text(&check));
    w.assert_converged(&m).await;
    let issued = w.stats().await["tokens_issued"][m.as_str()]
        .as_u64()
        .unwrap_or(0);
    assert!(
        issued > 0,
        "no token was issued: the scan would prove nothing"
    );
    // Dependencies are capped (telemetry::FORCED_DIRECTIVES); the product's
    // own spans and events still log at every level asked for.
    assert!(
        logs.lines().filter(|l| l.starts_with('{')).count() >= 5,
        "JSON logging did not happen; the scan would prove nothing: {logs}"
    );
    for needle in [
        "ya29.",
        "Bearer ",
        "bearer ",
        "BEGIN PRIVATE KEY",
        PHRASE,
        "Quixotic-Marmalade",
    ] {
        let hit = logs.lines().find(|l| l.contains(needle));
        assert!(
            hit.is_none(),
            "{needle:?} appears in the logs: {}",
            hit.unwrap_or_default()
        );
    }
    for line in pem_body_lines(&w) {
        assert!(
            !logs.contains(&line),
            "a line of the private key appears in the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_readable_by_others_is_refused_with_a_clear_message_and_no_token_request() {
    use std::os::unix::fs::PermissionsExt;
    // Arrange: the key made world-readable.
    let w = world(Backend::Sqlite, small(2, 3)).await.unwrap();
    subscribed_shared(&w).await;
    let config = w.dir.path().join("sec.toml");
    write_config(&w, &config, "");
    let key = &w.settings.google.service_account_key_file;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Act.
    let outs = [
        run(&w, &config, &["sync"], &[]),
        run(&w, &config, &["check"], &[]),
        run(&w, &config, &["run"], &[]),
    ];

    // Assert.
    for out in &outs {
        assert!(
            !out.status.success(),
            "a 0644 key was accepted: {}",
            text(out)
        );
        let stderr = text(out);
        assert!(
            stderr.contains("readable by group or others") && stderr.contains("chmod 600"),
            "unclear refusal ({:?}): {stderr} / {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let requests = &w.stats().await["token_requests"];
    assert!(
        requests.as_object().is_none_or(serde_json::Map::is_empty),
        "tokens were requested with a refused key: {requests}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_outside_the_allowed_domain_or_approved_ou_is_never_impersonated() {
    // Arrange: three active subscriptions, approved under a laxer policy:
    // a shared mailbox (in policy), a staff mailbox (wrong OU) and a mailbox
    // of a domain the binary's policy no longer allows.
    let Some(w) = world_with(Backend::Sqlite, small(4, 3), |s| {
        s.policy.allowed_domains = vec!["example.com".into(), "other.org".into()];
    })
    .await
    else {
        return;
    };
    let good = subscribed_shared(&w).await;
    let staff = w
        .users()
        .await
        .into_iter()
        .find(|(_, ou)| !ou.starts_with("/Shared Mailboxes"))
        .map(|(m, _)| m)
        .expect("a staff mailbox");
    w.subscribe(&staff).await;
    w.control(
        reqwest::Method::POST,
        "users",
        Some(json!({"email": "ops@other.org", "org_unit": "/Shared Mailboxes", "messages": 3})),
    )
    .await;
    let foreign = MailboxAddress::parse("ops@other.org").unwrap();
    w.subscribe(&foreign).await;
    let config = w.dir.path().join("sec.toml");
    write_config(&w, &config, "[sync]\npoll_interval = \"1s\"\n");

    // Act: sync, check, and the daemon for a few seconds.
    let sync = run(&w, &config, &["sync"], &[]);
    let _check = run(&w, &config, &["check"], &[]);
    let mut daemon = Command::new(binary())
        .current_dir(w.dir.path())
        .args(["--config", config.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    daemon.wait().unwrap();

    // Assert: the in-policy mailbox was impersonated, the others never.
    let stats = w.stats().await;
    let requested = |m: &MailboxAddress| stats["token_requests"][m.as_str()].as_u64().unwrap_or(0);
    assert!(
        requested(&good) > 0,
        "the in-policy mailbox was not synced: {}",
        text(&sync)
    );
    assert_eq!(requested(&staff), 0, "the staff mailbox was impersonated");
    assert_eq!(
        requested(&foreign),
        0,
        "the foreign-domain mailbox was impersonated"
    );
    assert_eq!(w.db(&staff).await.len(), 0);
    assert_eq!(w.db(&foreign).await.len(), 0);
}

#[test]
fn sql_metacharacters_in_every_operator_input_are_stored_verbatim() {
    // Arrange.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[policy]\nfour_eyes = true\n",
            dir.path().join("x.db").display()
        ),
    )
    .unwrap();
    let hostile_by = "o'brien\"; DROP TABLE subscriptions; --";
    let hostile_approver = "x') OR 1=1; --";
    let hostile_note = "note'); DELETE FROM subscription_events; -- %_ \\ \"";
    let hostile_label = "Label_1'--";
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .args([&["--config", config.to_str().unwrap()], args].concat())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    // Act.
    cli(&[
        "subscriptions",
        "add",
        "shared@example.com",
        "--by",
        hostile_by,
        "--note",
        hostile_note,
        "--labels",
        &format!("INBOX,{hostile_label}"),
    ]);
    // Its labels cannot be resolved without the Directory (no key here):
    // that approval is refused; the one without labels goes through.
    let refused = Command::new(binary())
        .args([
            "--config",
            config.to_str().unwrap(),
            "subscriptions",
            "approve",
            "shared@example.com",
            "--by",
            hostile_approver,
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    cli(&[
        "subscriptions",
        "add",
        "other@example.com",
        "--by",
        hostile_by,
        "--note",
        hostile_note,
    ]);
    cli(&[
        "subscriptions",
        "approve",
        "other@example.com",
        "--by",
        hostile_approver,
    ]);
    cli(&[
        "subscriptions",
        "pause",
        "other@example.com",
        "--by",
        hostile_by,
    ]);
    let list: Value =
        serde_json::from_str(&cli(&["subscriptions", "list", "--format", "json"])).unwrap();

    // Assert (listed by mailbox: other@, then shared@).
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let (other, shared) = (&list[0], &list[1]);
    assert_eq!(other["note"], hostile_note);
    assert_eq!(other["requested_by"], hostile_by);
    assert_eq!(other["approved_by"], hostile_approver);
    assert_eq!(other["status"], "paused");
    assert_eq!(shared["note"], hostile_note);
    assert_eq!(shared["requested_by"], hostile_by);
    assert_eq!(shared["label_filter"][1], hostile_label);
    assert_eq!(shared["status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readyz_expose_no_mailbox_address_or_subject() {
    // Arrange: a synced mailbox and a running daemon.
    let w = world(Backend::Sqlite, small(2, 10)).await.unwrap();
    let m = subscribed_shared(&w).await;
    w.insert_message(&m, "Zanzibar merger terms", &["INBOX"])
        .await;
    let app = gmail_ingest::app::Application::build(w.settings.clone())
        .await
        .unwrap();
    let port = app.http_port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    crate::chaos_helpers::eventually("the daemon syncs", Duration::from_secs(30), || async {
        w.db(&m).await == w.truth(&m).await
    })
    .await;
    let subjects = w
        .ctx
        .store
        .query_first_column(&format!(
            "SELECT subject FROM messages WHERE mailbox = '{m}' AND subject IS NOT NULL"
        ))
        .await
        .unwrap();
    assert!(subjects.iter().any(|s| s == "Zanzibar merger terms"));

    // Act.
    let mut bodies = Vec::new();
    for path in ["/metrics", "/readyz", "/healthz"] {
        let r = w
            .http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .unwrap();
        bodies.push((path, r.text().await.unwrap()));
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();

    // Assert.
    assert!(bodies[0].1.contains("gmail_ingest_"), "metrics are empty");
    for (path, body) in &bodies {
        assert!(!body.contains('@'), "{path} exposes an address: {body}");
        assert!(!body.contains(m.as_str()), "{path} exposes {m}");
        for s in subjects.iter().filter(|s| s.len() >= 6) {
            assert!(
                !body.contains(s.as_str()),
                "{path} exposes the subject {s:?}"
            );
        }
    }
}
