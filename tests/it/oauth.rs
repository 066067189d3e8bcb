//! Per-mailbox OAuth consent end to end: the daemon's consent pages, the
//! emulator's authorization server, ingestion with the owner's refresh token,
//! disconnect, and revocation — on SQLite and PostgreSQL.

use std::time::Duration;

use gmail_ingest::app::Application;
use gmail_ingest::domain::{AuthMode, MailboxAddress, Operator, SubscriptionStatus, SyncPhase};
use gmail_ingest::oauth::keys::{Purpose, TokenKeys};
use gmail_ingest::subscriptions::{OrgUnitVerdict, Subscriptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::{Backend, World, both_backends, small, world_with};

/// A 32-byte key, base64: what `head -c 32 /dev/urandom | base64` prints.
pub(crate) const KEY: &str = "q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0Vng=";

fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A world whose daemon has per-mailbox consent enabled against the emulator.
pub(crate) async fn oauth_world(backend: Backend, state_ttl: Duration) -> Option<(World, u16)> {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("token.key");
    write_private(&key_file, &format!("# test key\n{KEY}\n"));
    // The emulator's client is known only once it runs: fill it in below.
    let w = world_with(backend, small(4, 30), |s| {
        s.oauth.enabled = false;
        s.oauth.listen = format!("127.0.0.1:{port}");
        s.oauth.public_base_url = format!("http://127.0.0.1:{port}");
        s.oauth.token_encryption_key_file = key_file.display().to_string();
        s.oauth.state_ttl = state_ttl;
    })
    .await?;
    let secret = w.dir.path().join("client_secret");
    let client = w.emulator.write_oauth_client_secret(&secret).unwrap();
    let mut settings = w.settings.clone();
    settings.oauth.enabled = true;
    settings.oauth.client_id = client.client_id;
    settings.oauth.client_secret_file = secret.display().to_string();
    settings.oauth.accounts_base_url = w.emulator.accounts_base_url();
    settings.validate().expect("oauth settings are valid");
    let ctx = gmail_ingest::app::context(settings.clone())
        .await
        .expect("context");
    // Keep the key file's directory alive as long as the world.
    std::mem::forget(dir);
    Some((World { settings, ctx, ..w }, port))
}

pub(crate) struct Daemon {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    pub(crate) consent: String,
}

impl Daemon {
    pub(crate) async fn start(w: &World) -> Daemon {
        let app = Application::build(w.settings.clone())
            .await
            .expect("daemon builds");
        let port = app.oauth_port().expect("consent listener bound");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Daemon {
            stop: Some(tx),
            task,
            consent: format!("http://127.0.0.1:{port}"),
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().expect("clean shutdown");
    }
}

pub(crate) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(reqwest::header::LOCATION)
        .unwrap_or_else(|| panic!("no Location on {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Where the callback is opened: in the browser that began the flow (with
/// its cookie), the same one after a pause, or another one (no cookie).
pub(crate) enum Browser {
    Same,
    SameAfter(Duration),
    Other,
}

/// The browser's side of a consent: authorize → Google (emulator) → callback.
/// `tamper` may rewrite the callback URL.
pub(crate) struct Consent {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
}

pub(crate) async fn consent_with(
    base: &str,
    mailbox: &str,
    tamper: impl FnOnce(String) -> String,
    browser: Browser,
) -> Consent {
    let http = no_redirects();
    let r = http
        .get(format!("{base}/oauth/authorize"))
        .query(&[("mailbox", mailbox)])
        .send()
        .await
        .unwrap();
    if r.status() != StatusCode::FOUND {
        let status = r.status();
        return Consent {
            status,
            body: r.text().await.unwrap(),
        };
    }
    let cookie = r
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .expect("flow cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let google = location(&r);
    let r = http.get(&google).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "the emulator redirects back");
    let callback = tamper(location(&r));
    let mut req = http.get(&callback);
    match browser {
        Browser::Same => req = req.header(reqwest::header::COOKIE, cookie),
        Browser::SameAfter(wait) => {
            tokio::time::sleep(wait).await;
            req = req.header(reqwest::header::COOKIE, cookie);
        }
        Browser::Other => {}
    }
    let r = follow_result(&callback, req.send().await.unwrap()).await;
    Consent {
        status: r.status(),
        body: r.text().await.unwrap(),
    }
}

/// The browser's step after the callback: it answers 303 to the result page
/// with that page sealed in a cookie, which the browser sends back.
pub(crate) async fn follow_result(callback: &str, r: reqwest::Response) -> reqwest::Response {
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the callback redirects to its result page"
    );
    let result = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gmail_ingest_oauth_result="))
        .expect("the result cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let to = url::Url::parse(callback)
        .unwrap()
        .join(&location(&r))
        .unwrap();
    assert_eq!(to.path(), "/oauth/result");
    assert_eq!(to.query(), None, "the result page's URL carries nothing");
    no_redirects()
        .get(to)
        .header(reqwest::header::COOKIE, result)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn consent(base: &str, mailbox: &MailboxAddress) -> Consent {
    consent_with(base, mailbox.as_str(), |u| u, Browser::Same).await
}

pub(crate) async fn oauth_control(
    w: &World,
    method: reqwest::Method,
    body: Option<Value>,
) -> Value {
    w.control(method, "oauth", body).await
}

pub(crate) async fn active_grants(w: &World, m: &MailboxAddress) -> usize {
    oauth_control(w, reqwest::Method::GET, None).await["grants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["user"] == m.as_str() && g["active"] == true)
        .count()
}

pub(crate) async fn approve(w: &World, m: &MailboxAddress) {
    let policy = w.settings.policy().unwrap();
    Subscriptions::new(&w.ctx.store, &policy)
        .approve(
            m,
            Operator::parse("ops-b").unwrap(),
            OrgUnitVerdict::NotApplicable,
        )
        .await
        .unwrap();
}

pub(crate) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn phase(w: &World, m: &MailboxAddress) -> Option<SyncPhase> {
    w.ctx.store.sync_state(m).await.unwrap().map(|s| s.phase)
}

/// Consent creates a pending oauth subscription (consent alone ingests
/// nothing), the refresh token is stored sealed, and once an operator approves
/// the daemon ingests with the owner's token — without any DWD grant.
async fn consent_then_approval_then_ingestion(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, Duration::from_secs(600)).await else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    // No domain-wide delegation at all: only the owner's consent can work.
    let client_id = w.ctx.google.account().unwrap().client_id().to_owned();
    w.control(
        reqwest::Method::PUT,
        "delegation",
        Some(json!({"client_id": client_id, "scopes": []})),
    )
    .await;
    let d = Daemon::start(&w).await;

    let c = consent(&d.consent, &m).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    assert!(
        c.body.contains("Connected") && c.body.contains("approve"),
        "{}",
        c.body
    );
    assert!(
        c.body.contains("/oauth/disconnect?"),
        "the page gives the owner a disconnect link"
    );
    let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Pending);
    assert_eq!(sub.auth_mode, AuthMode::OAuth);
    assert!(sub.requested_by.as_str().contains(m.as_str()));

    // Sealed at rest: the column is not the token and does not contain it.
    let stored = w
        .ctx
        .store
        .oauth_token(&m)
        .await
        .unwrap()
        .expect("token stored");
    let keys = TokenKeys::parse(KEY).unwrap();
    let plain = String::from_utf8(
        keys.open(
            Purpose::RefreshToken,
            m.as_str(),
            &stored.refresh_token_ciphertext,
        )
        .unwrap(),
    )
    .unwrap();
    assert!(plain.len() >= 16, "a real refresh token");
    let raw_column: Vec<String> = w
        .ctx
        .store
        .query_first_column("SELECT refresh_token_ciphertext FROM oauth_tokens")
        .await
        .unwrap();
    assert_eq!(raw_column.len(), 1);
    assert!(
        !raw_column[0].contains(&plain),
        "the refresh token is stored in clear"
    );
    assert!(!raw_column[0].contains(&plain[plain.len() - 12..]));

    // Pending: nothing is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.ctx.store.count_messages(&m).await.unwrap(), 0);

    approve(&w, &m).await;
    eventually("the OAuth mailbox converges", || async {
        w.db(&m).await == w.truth(&m).await && !w.truth(&m).await.is_empty()
    })
    .await;
    let id = w.insert_message(&m, "after consent", &["INBOX"]).await;
    eventually("new mail arrives incrementally", || async {
        w.db(&m).await.iter().any(|(gid, _, _)| *gid == id)
    })
    .await;
    d.stop().await;
}
both_backends!(
    consent_then_approval_then_ingestion_on,
    consent_then_approval_then_ingestion
);

/// Every way a consent can go wrong is refused with a page naming the cause,
/// stores nothing, and leaves no live grant at Google.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_foreign_and_wrong_account_consents_are_refused() {
    let Some((w, _)) = oauth_world(Backend::Sqlite, Duration::from_secs(2)).await else {
        return;
    };
    let users = w.users().await;
    let m = users[0].0.clone();
    let other = users[1].0.clone();
    let d = Daemon::start(&w).await;

    // A foreign domain never reaches Google.
    let c = consent_with(&d.consent, "someone@evil.example", |u| u, Browser::Same).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.body.contains("not in a domain"), "{}", c.body);
    let c = consent_with(&d.consent, "not an address", |u| u, Browser::Same).await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST);

    // A tampered state.
    let c = consent_with(
        &d.consent,
        m.as_str(),
        |u| {
            let mut url = url::Url::parse(&u).unwrap();
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "state" {
                        let mut chars: Vec<char> = v.chars().collect();
                        let i = chars.len() - 5;
                        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
                        chars.into_iter().collect()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
            url.to_string()
        },
        Browser::Same,
    )
    .await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST);
    assert!(c.body.contains("not valid"), "{}", c.body);

    // Another browser (no flow cookie).
    let c = consent_with(&d.consent, m.as_str(), |u| u, Browser::Other).await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST);
    assert!(c.body.contains("another browser"), "{}", c.body);

    // An expired state (state_ttl is 2 s here).
    let c = consent_with(
        &d.consent,
        m.as_str(),
        |u| u,
        Browser::SameAfter(Duration::from_millis(3100)),
    )
    .await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST);
    assert!(c.body.contains("expired"), "{}", c.body);

    // The owner signs in as someone else: refused; that grant is discarded,
    // not revoked (revoking would end whatever `other` granted before).
    oauth_control(
        &w,
        reqwest::Method::PUT,
        Some(json!({"consent_user": other.as_str()})),
    )
    .await;
    let c = consent(&d.consent, &m).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(
        c.body.contains(&format!("signed in as {other}")),
        "{}",
        c.body
    );
    assert_eq!(
        w.stats().await["requests"]["oauth2.revoke"],
        serde_json::Value::Null,
        "a refused grant is not revoked at Google"
    );

    // Google (an admin's block) refuses.
    oauth_control(
        &w,
        reqwest::Method::PUT,
        Some(json!({"consent_user": null, "blocked_users": [m.as_str()]})),
    )
    .await;
    let c = consent(&d.consent, &m).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.body.contains("Google did not grant access"), "{}", c.body);

    // The admin's off switch: no consent is taken while integration.enabled is false.
    d.stop().await;
    let mut off = w.settings.clone();
    off.integration.enabled = false;
    let w = World { settings: off, ..w };
    let d = Daemon::start(&w).await;
    oauth_control(&w, reqwest::Method::PUT, Some(json!({"blocked_users": []}))).await;
    let c = consent(&d.consent, &m).await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(c.body.contains("switched off"), "{}", c.body);

    // Nothing was stored by any of them.
    assert!(w.ctx.store.list_oauth_tokens().await.unwrap().is_empty());
    assert!(w.ctx.store.list_subscriptions().await.unwrap().is_empty());
    d.stop().await;
}

/// Disconnect: by the owner's signed link (a GET only shows a form) and by an
/// operator with and without --purge: revoked at Google, token deleted,
/// subscription paused, event recorded.
async fn disconnect_with_and_without_purge(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, Duration::from_secs(600)).await else {
        return;
    };
    let shared = w.shared_mailboxes().await;
    let (a, b) = (shared[0].clone(), shared[1].clone());
    let d = Daemon::start(&w).await;
    for m in [&a, &b] {
        assert_eq!(consent(&d.consent, m).await.status, StatusCode::OK);
        approve(&w, m).await;
    }
    for m in [&a, &b] {
        eventually("both mailboxes ingested", || async {
            w.ctx.store.count_messages(m).await.unwrap() > 0
        })
        .await;
    }
    let cfg = w.dir.path().join("oauth.toml");
    let o = &w.settings.oauth;
    crate::chaos_helpers::write_config(
        &w,
        &cfg,
        &format!(
            "[oauth]\nenabled = true\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\npublic_base_url = \"{}\"\ntoken_encryption_key_file = \"{}\"\naccounts_base_url = \"{}\"\n",
            o.client_id,
            o.client_secret_file,
            o.public_base_url,
            o.token_encryption_key_file,
            o.accounts_base_url
        ),
    );
    // `check` refreshes each OAuth mailbox's token and reads its profile.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
        .args(["--config", cfg.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{a}: OAuth token from the owner's consent")),
        "{text}"
    );
    assert!(text.contains(&format!("{b}: profile (")), "{text}");
    let oauth = w.ctx.oauth.clone().expect("oauth service");

    // The owner's link: GET shows a form and changes nothing; POST disconnects.
    let link = oauth
        .current_disconnect_link(&a)
        .await
        .unwrap()
        .expect("a consent is stored");
    let link = url::Url::parse(&link).unwrap();
    let link = format!("{}{}?{}", d.consent, link.path(), link.query().unwrap());
    let http = no_redirects();
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("<form method=\"post\""));
    assert!(
        w.ctx.store.oauth_token(&a).await.unwrap().is_some(),
        "a GET changes nothing"
    );
    let q: Vec<(String, String)> = url::Url::parse(&link)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let mut forged = q.clone();
    forged[0].1 = b.to_string();
    let r = http
        .post(format!("{}/oauth/disconnect", d.consent))
        .form(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a's link cannot disconnect b"
    );
    let r = http
        .post(format!("{}/oauth/disconnect", d.consent))
        .form(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("no longer has access"));
    assert!(w.ctx.store.oauth_token(&a).await.unwrap().is_none());
    assert_eq!(active_grants(&w, &a).await, 0, "revoked at Google");
    let sub = w.ctx.store.get_subscription(&a).await.unwrap().unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Paused);
    let events = w.ctx.store.subscription_events(&a).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("disconnect", format!("owner {a}").as_str())
    );
    assert!(
        w.ctx.store.count_messages(&a).await.unwrap() > 0,
        "without --purge the mail is kept"
    );

    // The operator, with --purge, through the CLI.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "subscriptions",
            "disconnect",
            b.as_str(),
            "--by",
            "ops-c",
            "--purge",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("paused") && text.contains("purged"), "{text}");
    assert_eq!(w.ctx.store.count_messages(&b).await.unwrap(), 0);
    assert_eq!(active_grants(&w, &b).await, 0);
    assert_eq!(
        w.ctx
            .store
            .get_subscription(&b)
            .await
            .unwrap()
            .unwrap()
            .status,
        SubscriptionStatus::Paused
    );
    // A delegated mailbox cannot be "disconnected": exit 2, nothing changed.
    let c = w
        .users()
        .await
        .into_iter()
        .map(|(m, _)| m)
        .find(|m| m != &a && m != &b)
        .unwrap();
    w.subscribe(&c).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "subscriptions",
            "disconnect",
            c.as_str(),
            "--by",
            "ops-c",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain-wide delegation"));
    // Nothing changed (the running daemon may itself suspend c if it sits
    // outside the approved org units, so compare the audit log, not the status).
    let events = w.ctx.store.subscription_events(&c).await.unwrap();
    assert!(
        events.iter().all(|e| e.action != "disconnect"),
        "{events:#?}"
    );
    assert_ne!(
        w.ctx
            .store
            .get_subscription(&c)
            .await
            .unwrap()
            .unwrap()
            .status,
        SubscriptionStatus::Paused
    );
    d.stop().await;
}
both_backends!(
    disconnect_with_and_without_purge_on,
    disconnect_with_and_without_purge
);

/// The owner revokes access mid-run: that mailbox goes to auth_failed with
/// the cause, counted in /metrics and shown by review; a delegated mailbox
/// beside it keeps syncing; a new consent brings it back by itself.
async fn revocation_mid_run(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, Duration::from_secs(600)).await else {
        return;
    };
    let shared = w.shared_mailboxes().await;
    let (o, dwd) = (shared[0].clone(), shared[1].clone());
    w.subscribe(&dwd).await;
    let mut settings = w.settings.clone();
    settings.sync.auth_failed_retry = Duration::from_secs(1);
    let w = World { settings, ..w };
    let d = Daemon::start(&w).await;
    assert_eq!(consent(&d.consent, &o).await.status, StatusCode::OK);
    approve(&w, &o).await;
    eventually("both converge", || async {
        w.db(&o).await == w.truth(&o).await && w.db(&dwd).await == w.truth(&dwd).await
    })
    .await;

    w.control(
        reqwest::Method::POST,
        &format!("users/{o}/oauth/revoke"),
        Some(json!({})),
    )
    .await;
    let id_o = w.insert_message(&o, "after revocation", &["INBOX"]).await;
    let id_d = w.insert_message(&dwd, "still flowing", &["INBOX"]).await;
    eventually("the OAuth mailbox is auth_failed", || async {
        phase(&w, &o).await == Some(SyncPhase::AuthFailed)
    })
    .await;
    let st = w.ctx.store.sync_state(&o).await.unwrap().unwrap();
    assert!(
        st.last_error
            .unwrap()
            .contains("consent revoked — the owner must authorize again")
    );
    eventually("the delegated mailbox keeps syncing", || async {
        w.db(&dwd).await.iter().any(|(g, _, _)| *g == id_d)
    })
    .await;
    assert!(!w.db(&o).await.iter().any(|(g, _, _)| *g == id_o));
    let policy = w.settings.policy().unwrap();
    let review = Subscriptions::new(&w.ctx.store, &policy)
        .review(chrono::Utc::now(), Duration::from_secs(3600))
        .await
        .unwrap();
    let item = review
        .iter()
        .find(|i| i.mailbox == o)
        .expect("review lists it");
    assert!(
        item.issues.iter().any(|i| i.contains("consent revoked")),
        "{:?}",
        item.issues
    );
    let metrics = gmail_ingest::telemetry::render_metrics();
    assert!(
        metrics.contains("gmail_ingest_auth_failures_total{cause=\"consent_revoked\"}"),
        "{metrics}"
    );

    // The owner authorizes again: ingestion resumes without an operator.
    assert_eq!(consent(&d.consent, &o).await.status, StatusCode::OK);
    eventually("it recovers and catches up", || async {
        w.db(&o).await.iter().any(|(g, _, _)| *g == id_o)
    })
    .await;
    d.stop().await;
}
both_backends!(revocation_mid_run_on, revocation_mid_run);

/// The real binary at trace level through a whole consent, ingestion and
/// disconnect: neither the refresh token, the client secret, the token key,
/// nor any bearer token appears in its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_and_oauth_secrets_never_reach_the_logs_at_trace_level() {
    use std::process::{Command, Stdio};
    let Some((w, _)) = oauth_world(Backend::Sqlite, Duration::from_secs(600)).await else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    let port = free_port();
    let o = &w.settings.oauth;
    let cfg = w.dir.path().join("trace.toml");
    crate::chaos_helpers::write_config(
        &w,
        &cfg,
        &format!(
            "[sync]\nuser_quota_units_per_minute = 100000000\npoll_interval = \"1s\"\n\n[oauth]\nenabled = true\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\npublic_base_url = \"http://127.0.0.1:{port}\"\nlisten = \"127.0.0.1:{port}\"\ntoken_encryption_key_file = \"{}\"\naccounts_base_url = \"{}\"\n",
            o.client_id, o.client_secret_file, o.token_encryption_key_file, o.accounts_base_url
        ),
    );
    let log_path = w.dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("RUST_LOG", "trace")
        .env("GMAIL_INGEST__LOG__LEVEL", "trace")
        .env("GMAIL_INGEST__LOG__FORMAT", "json")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the consent listener is up", || async {
        reqwest::get(format!("{base}/oauth/authorize"))
            .await
            .is_ok()
    })
    .await;
    let c = consent(&base, &m).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    approve(&w, &m).await;
    eventually("the mailbox is ingested by the daemon", || async {
        w.ctx.store.count_messages(&m).await.unwrap() > 0
    })
    .await;
    let stored = w.ctx.store.oauth_token(&m).await.unwrap().unwrap();
    let refresh = String::from_utf8(
        TokenKeys::parse(KEY)
            .unwrap()
            .open(
                Purpose::RefreshToken,
                m.as_str(),
                &stored.refresh_token_ciphertext,
            )
            .unwrap(),
    )
    .unwrap();
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().filter(|l| l.starts_with('{')).count() >= 5,
        "no JSON logs: the scan would prove nothing"
    );
    assert!(
        logs.contains("OAuth consent stored"),
        "the consent was logged (without its token)"
    );
    let secret = std::fs::read_to_string(&o.client_secret_file).unwrap();
    for (what, needle) in [
        ("refresh token", refresh.as_str()),
        ("client secret", secret.trim()),
        ("token key", KEY),
        ("bearer", "Bearer "),
        ("sealed token", stored.refresh_token_ciphertext.as_str()),
    ] {
        let hit = logs.lines().find(|l| l.contains(needle));
        assert!(
            hit.is_none(),
            "the {what} appears in the logs: {}",
            hit.unwrap_or_default()
        );
    }
}
