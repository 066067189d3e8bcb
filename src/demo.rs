//! `demo`: the new user's first five minutes, offline.
//!
//! Starts the emulator in-process with a seeded domain, writes a key, uses a
//! SQLite file in a directory, subscribes and approves the shared mailboxes
//! (and shows one outside the approved OU being refused), runs a full sync,
//! injects a few changes, runs an incremental pass; then shows the second
//! mode: the invitation link for one more mailbox, its owner's consent on the
//! emulator's consent screen (driven over HTTP, as a browser would), the
//! subscription waiting for an operator, approved, synced; and prints what
//! was ingested. Its output is its own sections and tables: the CLI keeps the
//! daemon's logs at WARN for it, and the full sync's progress line goes to
//! stderr on a terminal only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use gmail_emulator::{Emulator, EmulatorConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::{DatabaseUrl, Settings};
use crate::domain::{MailboxAddress, Operator};
use crate::output;
use crate::subscriptions::Subscriptions;

async fn call(method: http::Method, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// One HTTP exchange as a browser makes it, without following redirects:
/// status, headers and body text.
async fn fetch(
    method: http::Method,
    url: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, String)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(c) = cookie {
        req = req.header(http::header::COOKIE, c);
    }
    if form.is_some() {
        req = req.header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    let req = req.body(Full::new(Bytes::from(form.unwrap_or_default())))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("calling {url}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn location(url: &str, headers: &http::HeaderMap) -> anyhow::Result<String> {
    let to = headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .with_context(|| format!("{url} did not redirect"))?;
    Ok(url::Url::parse(url)?.join(to)?.to_string())
}

/// The `name=value` of the cookie `name` that a response sets.
fn set_cookie(headers: &http::HeaderMap, name: &str) -> anyhow::Result<String> {
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
        .with_context(|| format!("no {name} cookie was set"))
}

/// The text of the first `<tag>…</tag>` of a page, tags inside removed.
fn element_text(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let Some(start) = html.find(&open).map(|i| i + open.len()) else {
        return String::new();
    };
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .map_or(html.len(), |i| start + i);
    let mut text = String::new();
    let mut in_tag = false;
    for c in html[start..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&#39;", "'").replace("&amp;", "&")
}

/// The owner's side of a consent, as their browser does it: the invitation
/// link, the emulator's sign-in and consent page (signed in as the owner,
/// Allow), the callback and its result page. Returns the result page's title
/// and its first paragraphs.
async fn consent_as_owner(invitation: &str, owner: &str) -> anyhow::Result<(String, String)> {
    let (status, headers, _) = fetch(http::Method::GET, invitation, None, None).await?;
    anyhow::ensure!(
        status == http::StatusCode::FOUND,
        "the invitation link answered {status}"
    );
    let flow_cookie = set_cookie(&headers, "gmail_ingest_oauth")?;
    let google = location(invitation, &headers)?;
    let (status, _, screen) = fetch(http::Method::GET, &google, None, None).await?;
    anyhow::ensure!(
        status == http::StatusCode::OK && screen.contains("name=\"decision\" value=\"allow\""),
        "the emulator's consent screen answered {status}"
    );
    // What its form sends: the request, the account signed in with, the
    // scopes left ticked (all), and Allow.
    let request = url::Url::parse(&google)?;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("request", request.query().unwrap_or_default());
    form.append_pair("account", owner);
    for (k, v) in request.query_pairs() {
        if k == "scope" {
            for scope in v.split_whitespace() {
                form.append_pair("scope", scope);
            }
        }
    }
    form.append_pair("decision", "allow");
    let action = request.join(request.path())?.to_string();
    let (status, headers, _) =
        fetch(http::Method::POST, &action, None, Some(form.finish())).await?;
    anyhow::ensure!(
        status == http::StatusCode::FOUND,
        "the consent screen's Allow answered {status}"
    );
    let callback = location(&action, &headers)?;
    let (status, headers, _) =
        fetch(http::Method::GET, &callback, Some(&flow_cookie), None).await?;
    anyhow::ensure!(
        status == http::StatusCode::SEE_OTHER,
        "the callback answered {status}"
    );
    let result_cookie = set_cookie(&headers, "gmail_ingest_oauth_result")?;
    let result = location(&callback, &headers)?;
    let (_, _, page) = fetch(http::Method::GET, &result, Some(&result_cookie), None).await?;
    Ok((element_text(&page, "h1"), element_text(&page, "p")))
}

/// A 32-byte token key, base64, in a file only its owner can read.
fn write_token_key(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let key: [u8; 32] = rand::random();
    let text = format!(
        "# gmail-ingest demo token key\n{}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn print_reports(reports: &[crate::sync::engine::SyncReport]) {
    output::table(app::REPORT_HEADERS, &app::report_rows(reports));
}

/// What `gmail-ingest demo` was asked for (the CLI's flags, parsed).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to keep the SQLite file and key; `None`: a temporary directory.
    pub dir: Option<PathBuf>,
    /// Messages per generated mailbox.
    pub messages: usize,
    pub seed: u64,
}

/// The file the demo writes into a `--dir` it uses: a directory holding it
/// was made by an earlier demo and may be reused.
pub const DEMO_MARKER: &str = ".gmail-ingest-demo";

/// What a demo directory may hold besides [`DEMO_MARKER`]: the keys the
/// demo writes (the service account's, the OAuth web client's, the token
/// key) and the SQLite database with its side files.
const DEMO_FILES: &[&str] = &[
    "sa.json",
    "oauth-client.json",
    "token.key",
    "gmail-ingest.db",
    "gmail-ingest.db-wal",
    "gmail-ingest.db-shm",
    "gmail-ingest.db-journal",
    "gmail-ingest.db.lock",
];

/// Makes `dir` the demo's own, or refuses it untouched: the demo writes
/// `sa.json` and a database into it, so a directory holding anything the
/// demo did not create (with `--dir /etc/gmail-ingest`, the production key)
/// is refused with the first foreign entry named. An absent or empty
/// directory is taken (and marked); a previous demo's is reused, its files
/// removed first so that the run starts afresh.
fn prepare_demo_dir(dir: &Path) -> anyhow::Result<()> {
    let refuse = |why: String| -> anyhow::Error {
        app::UsageError(format!(
            "demo --dir {}: {why}; the demo writes keys and a database there, so it only uses an empty directory or one an earlier demo made (holding {DEMO_MARKER})",
            dir.display()
        ))
        .into()
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(format!("cannot be read ({e})"))),
        Ok(meta) if !meta.is_dir() => return Err(refuse("is not a directory".to_owned())),
        Ok(_) => {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| refuse(format!("cannot be listed ({e})")))?
                .map(|entry| {
                    entry
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .map_err(|e| refuse(format!("cannot be listed ({e})")))
                })
                .collect::<anyhow::Result<_>>()?;
            names.sort();
            let ours = names.iter().any(|n| n == DEMO_MARKER);
            let foreign = names.iter().find(|n| {
                !ours || (n.as_str() != DEMO_MARKER && !DEMO_FILES.contains(&n.as_str()))
            });
            if let Some(name) = foreign {
                return Err(refuse(if ours {
                    format!("holds {name}, which the demo did not create")
                } else {
                    format!("is not empty and was not made by the demo (it holds {name})")
                }));
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // An earlier demo's files go: each run starts from the seeded emulator,
    // which knows nothing of the consents, tokens and checkpoints a kept
    // database would hold (a consent sealed under the last run's token key
    // could not even be opened).
    for name in DEMO_FILES {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(refuse(format!(
                    "cannot remove the last demo's {name} ({e})"
                )));
            }
            _ => {}
        }
    }
    std::fs::write(
        dir.join(DEMO_MARKER),
        "Made by `gmail-ingest demo`: it may reuse and overwrite this directory.\n",
    )
    .with_context(|| format!("marking {} as the demo's", dir.display()))?;
    Ok(())
}

pub async fn run(mut settings: Settings, args: DemoOptions) -> anyhow::Result<()> {
    let (tmp, dir): (Option<tempfile::TempDir>, PathBuf) = match args.dir {
        Some(d) => {
            prepare_demo_dir(&d)?;
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().context("creating a temporary directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    output::line(format!(
        "== Starting the local Google emulator (seed {}, {} messages per mailbox)",
        args.seed, args.messages
    ));
    let emulator = Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse()?,
        seed: args.seed,
        users: 6,
        messages: args.messages,
        domain: "example.com".to_owned(),
    })
    .await?;
    let base = emulator.base_url();
    let key_path = dir.join("sa.json");
    let sa = emulator.write_service_account_key(&key_path)?;
    output::line(format!(
        "   emulator at {base}; service account {} (client ID {})",
        sa.client_email, sa.client_id
    ));

    let db_path = dir.join("gmail-ingest.db");
    settings.database.url = DatabaseUrl::new(format!("sqlite://{}", db_path.display()));
    settings.google.service_account_key_file = key_path;
    settings.google.gmail_base_url = base.clone();
    settings.google.directory_base_url = base.clone();
    settings.google.admin_subject = emulator.admin_email();
    settings.policy.allowed_domains = vec!["example.com".to_owned()];
    settings.policy.approved_org_units = vec!["/Shared Mailboxes".to_owned()];
    settings.google.initial_backoff = std::time::Duration::from_millis(50);
    // The demo shows the product, not the 2026 quota ceiling: both the
    // emulator's quota and our own limiter are lifted (the limiter would
    // otherwise hold each mailbox to 5 messages/s, 40 s for 200 messages).
    settings.sync.user_quota_units_per_minute = 100_000_000;
    call(
        http::Method::PUT,
        &format!("{base}emulator/v1/quota"),
        Some(json!({"enforce": false})),
    )
    .await?;
    output::line(format!("   database sqlite://{}", db_path.display()));

    // The second mode, per-mailbox consent: the emulator's web client, a
    // token key, and the consent pages on a port of their own.
    emulator.set_consent_screen(true);
    let client_path = dir.join("oauth-client.json");
    let client = emulator.write_oauth_client(&client_path)?;
    let key_file = dir.join("token.key");
    write_token_key(&key_file)?;
    let consent_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the consent pages' port")?;
    let consent_base = format!("http://{}", consent_listener.local_addr()?);
    settings.oauth.enabled = true;
    settings.oauth.client_id = client.client_id;
    settings.oauth.client_secret_file = client_path.display().to_string();
    settings.oauth.token_encryption_key_file = key_file.display().to_string();
    settings.oauth.public_base_url = consent_base.clone();
    settings.oauth.listen = consent_base.trim_start_matches("http://").to_owned();
    settings.oauth.accounts_base_url = emulator.accounts_base_url();

    let state = call(http::Method::GET, &format!("{base}emulator/v1/state"), None).await?;
    let users: Vec<(String, String)> = state["users"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|u| !u["is_admin"].as_bool().unwrap_or(false))
                .map(|u| {
                    (
                        u["email"].as_str().unwrap_or_default().to_owned(),
                        u["org_unit"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // Two shared mailboxes and one outside the approved org units (which
    // delegation refuses) are subscribed; a second one outside them is kept
    // for the second mode, where its owner authorizes it; the rest are left
    // alone, as most of a domain is.
    let (shared, others): (Vec<_>, Vec<_>) = users
        .into_iter()
        .partition(|(_, ou)| ou.starts_with("/Shared Mailboxes"));
    let mut others = others.into_iter();
    let mut shared = shared.into_iter();
    let users: Vec<(String, String)> = shared.by_ref().take(2).chain(others.next()).collect();
    let consenting = others.next();
    let unsubscribed: Vec<String> = shared.chain(others).map(|(m, _)| m).collect();

    output::line(
        "\n== Subscribing mailboxes (requested by ops-alice, approved by ops-bob: four-eyes)",
    );
    let ctx = app::context(settings.clone()).await?;
    let pages_stop = CancellationToken::new();
    let limits = settings.oauth.limits(settings.http.shutdown_grace);
    let pages = ctx.oauth.clone().map(|svc| {
        let stop = pages_stop.clone();
        tokio::spawn(crate::oauth::web::serve(
            consent_listener,
            svc,
            limits,
            async move {
                stop.cancelled().await;
            },
        ))
    });
    let policy = settings.policy()?;
    let subs = Subscriptions::new(&ctx.store, &policy);
    let alice = Operator::parse("ops-alice")?;
    let bob = Operator::parse("ops-bob")?;
    for (email, ou) in &users {
        let m = MailboxAddress::parse(email)?;
        if ctx.store.get_subscription(&m).await?.is_none() {
            subs.add(
                m.clone(),
                alice.clone(),
                &[],
                Some(format!("demo mailbox in {ou}")),
                crate::domain::AuthMode::Delegated,
            )
            .await?;
        }
        let verdict = app::org_unit_verdict(&settings, &policy, &m).await;
        match subs.approve(&m, bob.clone(), verdict).await {
            Ok(s) => output::line(format!("   {m} ({ou}): {}", s.status)),
            Err(e) => output::line(format!("   {m} ({ou}): refused: {e}")),
        }
    }

    if !unsubscribed.is_empty() {
        output::line(format!(
            "   not subscribed, so never read: {}",
            unsubscribed.join(", ")
        ));
    }

    output::line(
        "\n== Full sync (then an incremental pass; quota lifted here — against Google's 2026 quota a mailbox syncs ~5 messages/s)",
    );
    let cancel = CancellationToken::new();
    let reports = app::sync_with(&ctx, None, false, output::is_terminal(), &cancel).await?;
    print_reports(&reports);

    let active: Vec<MailboxAddress> = reports.iter().map(|r| r.mailbox.clone()).collect();
    if let Some(first) = active.first() {
        output::line(format!(
            "\n== Injecting changes into {first}: one new message, one deletion, one relabel"
        ));
        let raw = "From: Tenant <tenant@residents.example>\r\nTo: support@example.com\r\nSubject: Leaking radiator in flat 12B\r\nMessage-ID: <demo-1@residents.example>\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, the radiator in flat 12B is leaking onto the parquet. Could maintenance come today?\r\n";
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        call(
            http::Method::POST,
            &format!("{base}emulator/v1/users/{first}/messages"),
            Some(json!({"raw": enc, "label_ids": ["INBOX", "UNREAD"]})),
        )
        .await?;
        let truth = call(
            http::Method::GET,
            &format!("{base}emulator/v1/users/{first}/messages"),
            None,
        )
        .await?;
        let ids: Vec<String> = truth
            .as_array()
            .or_else(|| truth["messages"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() > 2 {
            call(
                http::Method::DELETE,
                &format!(
                    "{base}emulator/v1/users/{first}/messages/{}",
                    ids[ids.len() - 1]
                ),
                None,
            )
            .await?;
            call(
                http::Method::POST,
                &format!(
                    "{base}emulator/v1/users/{first}/messages/{}/labels",
                    ids[ids.len() - 2]
                ),
                Some(json!({"add": ["Label_99"], "remove": ["INBOX"]})),
            )
            .await?;
        }
        let reports = app::sync_with(&ctx, None, false, false, &cancel).await?;
        print_reports(&reports);
    }

    if let (Some((owner, ou)), Some(svc)) = (&consenting, &ctx.oauth) {
        let m = MailboxAddress::parse(owner)?;
        output::line(format!(
            "\n== Second mode: {m} ({ou}) is read with its owner's consent (OAuth), not by delegation"
        ));
        let invitation = svc.authorize_link(&m);
        output::line(format!(
            "   1. An operator sends the owner this invitation link:\n      {invitation}"
        ));
        let (title, text) = consent_as_owner(&invitation, m.as_str()).await?;
        output::line(format!(
            "   2. The owner opens it, signs in on Google's consent screen (here the emulator's) and clicks Allow.\n      The page they land on says: \"{title}\" — {text}"
        ));
        let show = |s: &crate::store::Subscription| {
            vec![
                s.mailbox.to_string(),
                s.auth_mode.to_string(),
                s.status.to_string(),
                s.requested_by.to_string(),
                s.approved_by
                    .as_ref()
                    .map_or("-".to_owned(), ToString::to_string),
            ]
        };
        const HEADERS: &[&str] = &["MAILBOX", "MODE", "STATUS", "REQUESTED BY", "APPROVED BY"];
        let sub = ctx
            .store
            .get_subscription(&m)
            .await?
            .context("the consent created no subscription")?;
        output::line(
            "   3. The consent alone reads nothing: the subscription waits for an operator.",
        );
        output::table(HEADERS, &[show(&sub)]);
        let approved = app::approve_one(&settings, &ctx.store, &policy, &m, bob.clone()).await?;
        output::line(
            "   4. ops-bob approves it; the next pass reads the mailbox with the owner's token.",
        );
        output::table(HEADERS, &[show(&approved.subscription)]);
        let reports = app::sync_with(&ctx, Some(m.clone()), false, false, &cancel).await?;
        print_reports(&reports);
    }

    output::line("\n== What is in the database");
    let statuses = ctx.store.mailbox_statuses().await?;
    output::table(
        &["MAILBOX", "SUBSCRIPTION", "PHASE", "MESSAGES"],
        &statuses
            .iter()
            .map(|s| {
                vec![
                    s.mailbox.to_string(),
                    s.status.to_string(),
                    s.phase.map_or("-".to_owned(), |p| p.to_string()),
                    s.messages.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    for m in &active {
        output::line(format!("\n   latest subjects in {m}:"));
        for hit in ctx.store.recent_messages(m, 3).await? {
            output::line(format!("     - {}", hit.subject.unwrap_or_default()));
        }
    }
    output::line("\n== Full-text search for \"radiator\"");
    for hit in ctx.store.search(None, "radiator", 5).await? {
        output::line(format!(
            "   {}  {}  {}",
            hit.mailbox,
            hit.gmail_id,
            hit.subject.unwrap_or_default()
        ));
    }
    if tmp.is_some() {
        output::line(
            "\nDone. The temporary database is removed on exit; pass --dir DIR to keep it and query it with sqlite3.",
        );
    } else {
        output::line(format!(
            "\nDone. Query the data yourself: sqlite3 {} 'select subject from messages limit 5'",
            db_path.display()
        ));
    }
    pages_stop.cancel();
    if let Some(task) = pages {
        let _ = task.await;
    }
    ctx.store.close().await;
    emulator.shutdown().await;
    Ok(())
}
