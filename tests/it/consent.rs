//! A consent never overrides an approval (issue 13, point 3), on SQLite and
//! PostgreSQL, through the real binary and the consent pages over HTTP:
//! governance changes (`relabel`, `set-auth`) go back to four-eyes approval,
//! a consent leaves a delegated mailbox's mode alone, a disconnect link acts
//! only on the OAuth consent it was issued for, a refused consent revokes
//! nothing, and another Google account with the same address needs an
//! operator (`forget-consent`).

use std::path::PathBuf;
use std::process::Output;

use gmail_ingest::domain::{AuthMode, MailboxAddress, Operator, SubscriptionStatus};
use gmail_ingest::store::{OAuthToken, Subscription};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, World, both_backends, small, world};
use crate::oauth::{
    Browser, Daemon, active_grants, approve, consent, consent_with, eventually, follow_result,
    location, no_redirects, oauth_control, oauth_world,
};

/// The real binary, configured for this world (and its consent client when enabled).
struct Cli {
    config: PathBuf,
}

impl Cli {
    fn new(w: &World) -> Cli {
        let config = w.dir.path().join("consent-cli.toml");
        let o = &w.settings.oauth;
        let extra = if o.enabled {
            format!(
                "[oauth]\nenabled = true\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\npublic_base_url = \"{}\"\ntoken_encryption_key_file = \"{}\"\naccounts_base_url = \"{}\"\n",
                o.client_id,
                o.client_secret_file,
                o.public_base_url,
                o.token_encryption_key_file,
                o.accounts_base_url
            )
        } else {
            String::new()
        };
        crate::chaos_helpers::write_config(w, &config, &extra);
        Cli { config }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config".to_owned(), self.config.display().to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
                .args(&all)
                .env_remove("RUST_LOG")
                .output()
                .expect("binary runs")
        })
        .await
        .unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must be refused as bad input: exit code 2 and one
    /// error line, which is returned.
    async fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: expected one error line: {stderr}"
        );
        lines[0].to_owned()
    }
}

/// What an operator command could change about a mailbox.
#[derive(Debug, PartialEq)]
struct Snapshot {
    subscription: Option<Subscription>,
    events: usize,
    consent: Option<OAuthToken>,
}

async fn snapshot(w: &World, m: &MailboxAddress) -> Snapshot {
    Snapshot {
        subscription: w.ctx.store.get_subscription(m).await.unwrap(),
        events: w.ctx.store.subscription_events(m).await.unwrap().len(),
        consent: w.ctx.store.oauth_token(m).await.unwrap(),
    }
}

async fn sub(w: &World, m: &MailboxAddress) -> Subscription {
    w.ctx
        .store
        .get_subscription(m)
        .await
        .unwrap()
        .expect("subscribed")
}

async fn last_event(w: &World, m: &MailboxAddress) -> gmail_ingest::store::SubscriptionEvent {
    w.ctx
        .store
        .subscription_events(m)
        .await
        .unwrap()
        .pop()
        .expect("an event")
}

/// Calls of Google's revocation endpoint so far.
async fn revocations(w: &World) -> u64 {
    w.stats().await["requests"]["oauth2.revoke"]
        .as_object()
        .map(|by_status| by_status.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// The owner's disconnect link on a "Connected" page, pointed at the daemon.
fn disconnect_link(page: &str) -> String {
    let start = page
        .find("href=\"")
        .map(|i| i + 6)
        .filter(|i| page[*i..].contains("/oauth/disconnect?"))
        .unwrap_or_else(|| panic!("no disconnect link on the page: {page}"));
    let end = start + page[start..].find('"').unwrap();
    page[start..end].replace("&amp;", "&")
}

/// What the confirmation form would send: the link's own parameters.
async fn post_link(link: &str) -> (StatusCode, String) {
    let url = url::Url::parse(link).unwrap();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let r = no_redirects()
        .post(format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str()
                .zip(url.port())
                .map(|(h, p)| format!("{h}:{p}"))
                .unwrap(),
            url.path()
        ))
        .form(&pairs)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

async fn get_link(link: &str) -> (StatusCode, String) {
    let r = no_redirects().get(link).send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

/// A consent in which the owner unticks the Gmail permission on Google's
/// consent screen (granular consent): only `openid email` are granted.
async fn consent_without_gmail(base: &str, m: &MailboxAddress) -> (StatusCode, String) {
    let http = no_redirects();
    let r = http
        .get(format!("{base}/oauth/authorize"))
        .query(&[("mailbox", m.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let cookie = r.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut google = url::Url::parse(&location(&r)).unwrap();
    let pairs: Vec<(String, String)> = google
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "scope" {
                v.split(' ')
                    .filter(|s| !s.contains("gmail"))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    google.query_pairs_mut().clear().extend_pairs(pairs);
    let r = http.get(google.as_str()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let callback = location(&r);
    let r = http
        .get(&callback)
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let r = follow_result(&callback, r).await;
    let status = r.status();
    (status, r.text().await.unwrap())
}

/// relabel: back to pending, requested by whoever asked for the change (so
/// they cannot approve it), audited with old → new; every bad input is one
/// line, exit 2, and changes nothing.
async fn relabel_and_set_auth_go_back_to_four_eyes(backend: Backend) {
    let Some(w) = world(backend, small(4, 30)).await else {
        return;
    };
    let cli = Cli::new(&w);
    let shared = w.shared_mailboxes().await;
    let (m, gone) = (shared[0].clone(), shared[1].clone());
    let ms = m.as_str();
    cli.ok(&["subscriptions", "add", ms, "--by", "ops-a"]).await;
    cli.ok(&["subscriptions", "approve", ms, "--by", "ops-b"])
        .await;

    let out = cli
        .ok(&[
            "subscriptions",
            "relabel",
            ms,
            "--labels",
            "INBOX, STARRED",
            "--by",
            "ops-c",
        ])
        .await;
    assert!(out.contains("pending"), "{out}");
    let s = sub(&w, &m).await;
    assert_eq!(s.status, SubscriptionStatus::Pending);
    assert_eq!(
        s.label_filter,
        vec!["INBOX".to_owned(), "STARRED".to_owned()]
    );
    assert_eq!(s.requested_by.as_str(), "ops-c");
    assert_eq!(s.auth_mode, AuthMode::Delegated);
    let e = last_event(&w, &m).await;
    assert_eq!((e.action.as_str(), e.actor.as_str()), ("relabel", "ops-c"));
    assert_eq!(e.old_status, Some(SubscriptionStatus::Active));
    assert_eq!(e.new_status, SubscriptionStatus::Pending);
    let reason = e.reason.unwrap_or_default();
    assert!(reason.contains("all mail → INBOX,STARRED"), "{reason}");

    // Four-eyes compares with who asked for the change.
    let line = cli
        .refused(&["subscriptions", "approve", ms, "--by", "ops-c"])
        .await;
    assert!(line.contains("four-eyes"), "{line}");
    assert_eq!(sub(&w, &m).await.status, SubscriptionStatus::Pending);
    let out = cli
        .ok(&["subscriptions", "approve", ms, "--by", "ops-a"])
        .await;
    assert!(out.contains("active"), "{out}");

    // From paused, back to the whole mailbox.
    cli.ok(&["subscriptions", "pause", ms, "--by", "ops-a"])
        .await;
    cli.ok(&[
        "subscriptions",
        "relabel",
        ms,
        "--all-mail",
        "--by",
        "ops-a",
    ])
    .await;
    let s = sub(&w, &m).await;
    assert_eq!(s.status, SubscriptionStatus::Pending);
    assert!(s.label_filter.is_empty());
    let e = last_event(&w, &m).await;
    assert_eq!(e.old_status, Some(SubscriptionStatus::Paused));
    assert!(
        e.reason
            .unwrap_or_default()
            .contains("INBOX,STARRED → all mail"),
        "the reason names old and new"
    );
    cli.ok(&["subscriptions", "approve", ms, "--by", "ops-b"])
        .await;

    // From suspended (as the daemon's gate leaves it).
    let policy = w.settings.policy().unwrap();
    gmail_ingest::subscriptions::Subscriptions::new(&w.ctx.store, &policy)
        .transition(
            &m,
            Operator::system(),
            gmail_ingest::domain::SubscriptionAction::Suspend,
            Some("test".into()),
        )
        .await
        .unwrap();
    cli.ok(&[
        "subscriptions",
        "relabel",
        ms,
        "--labels",
        "INBOX",
        "--by",
        "ops-a",
    ])
    .await;
    assert_eq!(sub(&w, &m).await.status, SubscriptionStatus::Pending);
    assert_eq!(
        last_event(&w, &m).await.old_status,
        Some(SubscriptionStatus::Suspended)
    );

    // A removed subscription.
    cli.ok(&["subscriptions", "add", gone.as_str(), "--by", "ops-a"])
        .await;
    cli.ok(&["subscriptions", "remove", gone.as_str(), "--by", "ops-a"])
        .await;

    // Bad input: one line naming the cause, exit 2, nothing changed.
    let before = snapshot(&w, &m).await;
    let before_gone = snapshot(&w, &gone).await;
    for (args, cause) in [
        (
            vec!["relabel", ms, "--by", "ops-d"],
            "--labels or --all-mail",
        ),
        (
            vec![
                "relabel",
                ms,
                "--labels",
                "INBOX",
                "--all-mail",
                "--by",
                "ops-d",
            ],
            "--labels or --all-mail",
        ),
        (
            vec!["relabel", ms, "--labels", "IN\u{7}BOX", "--by", "ops-d"],
            "invalid label",
        ),
        (
            vec!["relabel", ms, "--labels", " , ", "--by", "ops-d"],
            "--labels or --all-mail",
        ),
        (
            vec!["relabel", ms, "--labels", "INBOX", "--by", "ops-d"],
            "already",
        ),
        (
            vec![
                "relabel",
                "nobody@example.com",
                "--all-mail",
                "--by",
                "ops-d",
            ],
            "no subscription for nobody@example.com",
        ),
        (
            vec!["relabel", gone.as_str(), "--all-mail", "--by", "ops-d"],
            "removed",
        ),
        (
            vec!["relabel", "not an address", "--all-mail", "--by", "ops-d"],
            "invalid email",
        ),
        (
            vec!["set-auth", ms, "delegated", "--by", "ops-d"],
            "already",
        ),
        (
            vec!["set-auth", ms, "oauth", "--by", "ops-d"],
            "no OAuth consent",
        ),
        (
            vec!["set-auth", "nobody@example.com", "oauth", "--by", "ops-d"],
            "no subscription for nobody@example.com",
        ),
        (
            vec!["set-auth", gone.as_str(), "oauth", "--by", "ops-d"],
            "removed",
        ),
        (
            vec!["forget-consent", ms, "--by", "ops-d"],
            "oauth.enabled is false",
        ),
    ] {
        let args: Vec<&str> = ["subscriptions"].into_iter().chain(args).collect();
        let line = cli.refused(&args).await;
        assert!(line.contains(cause), "{args:?}: {line}");
    }
    assert_eq!(snapshot(&w, &m).await, before, "bad input changed nothing");
    assert_eq!(snapshot(&w, &gone).await, before_gone);
}
both_backends!(
    relabel_and_set_auth_go_back_to_four_eyes_on,
    relabel_and_set_auth_go_back_to_four_eyes
);

/// A consent for a delegated subscription keeps its mode (and says so); its
/// owner's disconnect link changes nothing there; switching the mode is an
/// operator's `set-auth`, four-eyes approved, and switching back goes through
/// the org-unit gate again.
async fn a_consent_never_switches_a_delegated_subscription(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, std::time::Duration::from_secs(600)).await else {
        return;
    };
    let cli = Cli::new(&w);
    let m = w.shared_mailboxes().await[0].clone();
    let ms = m.as_str();
    cli.ok(&["subscriptions", "add", ms, "--by", "ops-a"]).await;
    cli.ok(&["subscriptions", "approve", ms, "--by", "ops-b"])
        .await;
    let d = Daemon::start(&w).await;
    eventually("the delegated mailbox converges", || async {
        !w.truth(&m).await.is_empty() && w.db(&m).await == w.truth(&m).await
    })
    .await;

    let c = consent(&d.consent, &m).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    assert!(
        c.body.contains("delegation") && c.body.contains("not used"),
        "the page tells the owner their consent is kept but not used: {}",
        c.body
    );
    let s = sub(&w, &m).await;
    assert_eq!(
        s.auth_mode,
        AuthMode::Delegated,
        "a consent never switches the mode"
    );
    assert_eq!(s.status, SubscriptionStatus::Active);
    assert!(
        w.ctx.store.oauth_token(&m).await.unwrap().is_some(),
        "the consent is kept"
    );
    let e = last_event(&w, &m).await;
    assert_eq!(e.action, "consent");
    assert!(e.reason.unwrap_or_default().contains("not used"));

    // The owner's link cannot pause a delegated subscription.
    let link = disconnect_link(&c.body);
    let (_, page) = get_link(&link).await;
    assert!(page.contains("delegation"), "{page}");
    assert!(
        !page.contains("<form"),
        "no button that would do nothing: {page}"
    );
    let (status, page) = post_link(&link).await;
    assert_ne!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("delegation") && page.contains("nothing"),
        "{page}"
    );
    assert_eq!(sub(&w, &m).await.status, SubscriptionStatus::Active);
    assert!(w.ctx.store.oauth_token(&m).await.unwrap().is_some());
    assert_eq!(revocations(&w).await, 0);

    // The operator switches it: pending, four-eyes, audited.
    let out = cli
        .ok(&["subscriptions", "set-auth", ms, "oauth", "--by", "ops-a"])
        .await;
    assert!(out.contains("pending"), "{out}");
    let s = sub(&w, &m).await;
    assert_eq!(
        (s.status, s.auth_mode),
        (SubscriptionStatus::Pending, AuthMode::OAuth)
    );
    assert_eq!(s.requested_by.as_str(), "ops-a");
    let e = last_event(&w, &m).await;
    assert_eq!((e.action.as_str(), e.actor.as_str()), ("set-auth", "ops-a"));
    assert!(
        e.reason.unwrap_or_default().contains("delegated → oauth"),
        "the reason names old and new"
    );
    let line = cli
        .refused(&["subscriptions", "approve", ms, "--by", "ops-a"])
        .await;
    assert!(line.contains("four-eyes"), "{line}");
    cli.ok(&["subscriptions", "approve", ms, "--by", "ops-b"])
        .await;

    // Read with the owner's consent now: delegation withdrawn, mail still arrives.
    let client_id = w.ctx.google.account().unwrap().client_id().to_owned();
    w.control(
        reqwest::Method::PUT,
        "delegation",
        Some(json!({"client_id": client_id, "scopes": []})),
    )
    .await;
    let id = w.insert_message(&m, "read under consent", &["INBOX"]).await;
    eventually("mail arrives under the owner's consent", || async {
        w.db(&m).await.iter().any(|(g, _, _)| *g == id)
    })
    .await;

    // Back to delegation: the approval asks the org-unit gate again.
    w.control(
        reqwest::Method::PUT,
        "delegation",
        Some(json!({"client_id": client_id, "scopes": [
            "https://www.googleapis.com/auth/gmail.readonly",
            "https://www.googleapis.com/auth/admin.directory.user.readonly",
        ]})),
    )
    .await;
    cli.ok(&[
        "subscriptions",
        "set-auth",
        ms,
        "delegated",
        "--by",
        "ops-c",
    ])
    .await;
    w.patch_user(&m, json!({"org_unit": "/Staff"})).await;
    let before = snapshot(&w, &m).await;
    let line = cli
        .refused(&["subscriptions", "approve", ms, "--by", "ops-b"])
        .await;
    assert!(line.contains("cannot approve"), "{line}");
    let after = snapshot(&w, &m).await;
    assert_eq!(
        after.subscription.as_ref().map(|s| s.status),
        Some(SubscriptionStatus::Pending)
    );
    assert_eq!(after.events, before.events);
    d.stop().await;
}
both_backends!(
    a_consent_never_switches_a_delegated_subscription_on,
    a_consent_never_switches_a_delegated_subscription
);

/// After a re-consent, the link of the earlier consent is refused with a
/// clear page; the current one disconnects.
async fn disconnect_links_act_only_on_their_own_consent(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, std::time::Duration::from_secs(600)).await else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    let d = Daemon::start(&w).await;
    let first = consent(&d.consent, &m).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    approve(&w, &m).await;
    let second = consent(&d.consent, &m).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let (old, new) = (disconnect_link(&first.body), disconnect_link(&second.body));
    assert_ne!(old, new);
    let stored = w.ctx.store.oauth_token(&m).await.unwrap();

    let (status, page) = get_link(&old).await;
    assert_ne!(status, StatusCode::OK, "{page}");
    assert!(page.contains("replaced"), "{page}");
    let (status, page) = post_link(&old).await;
    assert_ne!(status, StatusCode::OK, "{page}");
    assert!(page.contains("replaced"), "{page}");
    assert_eq!(
        w.ctx.store.oauth_token(&m).await.unwrap(),
        stored,
        "nothing changed"
    );
    assert_eq!(sub(&w, &m).await.status, SubscriptionStatus::Active);
    assert_eq!(revocations(&w).await, 0);

    let (status, page) = post_link(&new).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("no longer has access"), "{page}");
    assert!(w.ctx.store.oauth_token(&m).await.unwrap().is_none());
    assert_eq!(sub(&w, &m).await.status, SubscriptionStatus::Paused);
    assert_eq!(revocations(&w).await, 1);
    d.stop().await;
}
both_backends!(
    disconnect_links_act_only_on_their_own_consent_on,
    disconnect_links_act_only_on_their_own_consent
);

/// A mailbox syncing under consent; its owner follows a link meant for
/// someone else, unticks the Gmail permission, signs in with an account
/// outside the Workspace: each is refused, nothing is revoked at Google, and
/// the next sync still works.
async fn a_refused_consent_revokes_nothing(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, std::time::Duration::from_secs(600)).await else {
        return;
    };
    let shared = w.shared_mailboxes().await;
    let (o, p) = (shared[0].clone(), shared[1].clone());
    let d = Daemon::start(&w).await;
    assert_eq!(consent(&d.consent, &o).await.status, StatusCode::OK);
    approve(&w, &o).await;
    eventually("the OAuth mailbox converges", || async {
        !w.truth(&o).await.is_empty() && w.db(&o).await == w.truth(&o).await
    })
    .await;
    let stored = w.ctx.store.oauth_token(&o).await.unwrap();

    // A link meant for someone else.
    oauth_control(
        &w,
        reqwest::Method::PUT,
        Some(json!({"consent_user": o.as_str()})),
    )
    .await;
    let c = consent_with(&d.consent, p.as_str(), |u| u, Browser::Same).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.body.contains(&format!("signed in as {o}")), "{}", c.body);
    oauth_control(
        &w,
        reqwest::Method::PUT,
        Some(json!({"consent_user": null})),
    )
    .await;
    // The Gmail permission unticked.
    let (status, page) = consent_without_gmail(&d.consent, &o).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("Gmail permission was not granted"), "{page}");

    assert_eq!(
        revocations(&w).await,
        0,
        "a refused consent calls no revocation"
    );
    assert!(active_grants(&w, &o).await >= 1);
    assert_eq!(w.ctx.store.oauth_token(&o).await.unwrap(), stored);
    assert!(w.ctx.store.get_subscription(&p).await.unwrap().is_none());
    let id = w.insert_message(&o, "after the refusals", &["INBOX"]).await;
    eventually("the stored consent keeps working", || async {
        w.db(&o).await.iter().any(|(g, _, _)| *g == id)
    })
    .await;

    // An account of no Workspace (no `hd`) with the same address.
    w.patch_user(&o, json!({"hosted_domain": null})).await;
    let c = consent(&d.consent, &o).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.body.contains("Workspace"), "{}", c.body);
    w.patch_user(&o, json!({"hosted_domain": "elsewhere.example"}))
        .await;
    let c = consent(&d.consent, &o).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.body.contains("elsewhere.example"), "{}", c.body);
    assert_eq!(revocations(&w).await, 0);
    assert_eq!(w.ctx.store.oauth_token(&o).await.unwrap(), stored);
    d.stop().await;
}
both_backends!(
    a_refused_consent_revokes_nothing_on,
    a_refused_consent_revokes_nothing
);

/// The address now belongs to another Google account (`sub` differs): its
/// consent replaces nothing until an operator runs `forget-consent`
/// (audited; revokes and deletes the stored one).
async fn another_account_with_the_same_address_needs_an_operator(backend: Backend) {
    let Some((w, _)) = oauth_world(backend, std::time::Duration::from_secs(600)).await else {
        return;
    };
    let cli = Cli::new(&w);
    let o = w.shared_mailboxes().await[0].clone();
    let d = Daemon::start(&w).await;
    assert_eq!(consent(&d.consent, &o).await.status, StatusCode::OK);
    approve(&w, &o).await;
    eventually("the OAuth mailbox converges", || async {
        !w.truth(&o).await.is_empty() && w.db(&o).await == w.truth(&o).await
    })
    .await;
    let stored = w.ctx.store.oauth_token(&o).await.unwrap().unwrap();
    let old_subject = stored
        .google_subject
        .clone()
        .expect("the account ID is kept");

    let new_subject = "100000000000000000042";
    assert_ne!(old_subject, new_subject);
    w.patch_user(&o, json!({"id": new_subject})).await;
    let c = consent(&d.consent, &o).await;
    assert_eq!(c.status, StatusCode::FORBIDDEN);
    assert!(c.body.contains("different Google account"), "{}", c.body);
    assert_eq!(
        w.ctx.store.oauth_token(&o).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(revocations(&w).await, 0);

    // The operator allows it.
    let line = cli
        .refused(&[
            "subscriptions",
            "forget-consent",
            "nobody@example.com",
            "--by",
            "ops-c",
        ])
        .await;
    assert!(
        line.contains("no subscription for nobody@example.com"),
        "{line}"
    );
    let out = cli
        .ok(&[
            "subscriptions",
            "forget-consent",
            o.as_str(),
            "--by",
            "ops-c",
        ])
        .await;
    assert!(out.contains(o.as_str()), "{out}");
    assert!(w.ctx.store.oauth_token(&o).await.unwrap().is_none());
    let e = last_event(&w, &o).await;
    assert_eq!(
        (e.action.as_str(), e.actor.as_str()),
        ("forget-consent", "ops-c")
    );
    assert_eq!(
        revocations(&w).await,
        1,
        "the stored consent is revoked at Google"
    );
    let line = cli
        .refused(&[
            "subscriptions",
            "forget-consent",
            o.as_str(),
            "--by",
            "ops-c",
        ])
        .await;
    assert!(line.contains("no OAuth consent stored"), "{line}");

    let c = consent(&d.consent, &o).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);
    let now = w.ctx.store.oauth_token(&o).await.unwrap().unwrap();
    assert_eq!(now.google_subject.as_deref(), Some(new_subject));
    let id = w
        .insert_message(&o, "the new account's consent", &["INBOX"])
        .await;
    eventually("ingestion goes on with the new consent", || async {
        w.db(&o).await.iter().any(|(g, _, _)| *g == id)
    })
    .await;
    d.stop().await;
}
both_backends!(
    another_account_with_the_same_address_needs_an_operator_on,
    another_account_with_the_same_address_needs_an_operator
);
