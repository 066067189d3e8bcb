//! The consent pages in a real browser (issue 15, point 6): headless Chromium
//! driven through chromedriver (W3C WebDriver) against the daemon's consent
//! listener and the emulator's sign-in and consent screen — the pages a
//! mailbox owner sees, on SQLite and PostgreSQL.
//!
//! Without Chromium or chromedriver these tests say so and do not run, unless
//! `GMAIL_INGEST_REQUIRE_BROWSER=1` (CI), which turns that into a failure.
//! `GMAIL_INGEST_WRITE_SCREENSHOTS=1` rewrites the screenshots under
//! `docs/images/` that docs/operations.md shows.
//!
//! The WebDriver client is the few W3C commands these tests use, over the
//! `reqwest` the suite already has (see `Session`): fantoccini, the usual
//! crate, pins `webdriver` 0.53 and with it a second ICU 1.5 stack, `http`
//! 0.2 and two `cookie` versions, and the checks here need Chromium's own
//! `goog/cdp/execute` (every cookie whatever its path) anyway.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use gmail_ingest::domain::{MailboxAddress, SubscriptionStatus};
use gmail_ingest::oauth::keys::{Purpose, TokenKeys};
use serde_json::{Value, json};

use crate::helpers::{Backend, World, both_backends};
use crate::oauth::{Daemon, KEY, active_grants, approve, eventually, oauth_control, oauth_world};

/// Where Chromium and chromedriver are: `GMAIL_INGEST_CHROMIUM` /
/// `GMAIL_INGEST_CHROMEDRIVER`, else Debian's `/usr/bin/chromium` and
/// `/usr/bin/chromedriver`. `None` (the test is skipped) when either is
/// missing, a failure under `GMAIL_INGEST_REQUIRE_BROWSER=1`.
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, default: &str| {
        let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
        p.is_file().then_some(p)
    };
    let chromium = find("GMAIL_INGEST_CHROMIUM", "/usr/bin/chromium");
    let driver = find("GMAIL_INGEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    if let (Some(c), Some(d)) = (&chromium, &driver) {
        return Some((c.clone(), d.clone()));
    }
    let missing = [("chromium", &chromium), ("chromedriver", &driver)]
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(" and ");
    if std::env::var("GMAIL_INGEST_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!(
            "GMAIL_INGEST_REQUIRE_BROWSER=1 but {missing} is not installed: \
             apt-get install chromium chromium-driver (or set GMAIL_INGEST_CHROMIUM / GMAIL_INGEST_CHROMEDRIVER)"
        );
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{missing} not installed: this browser test did not run");
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A chromedriver process on a free port, killed when dropped.
struct Driver {
    child: Child,
    base: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Option<Driver> {
        let (chromium, chromedriver) = browser_binaries()?;
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            chromium,
        };
        let http = reqwest::Client::new();
        eventually("chromedriver answers", || async {
            let r = http.get(format!("{}/status", driver.base)).send().await;
            match r {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        Some(driver)
    }

    /// A new headless browser. It resolves no name but 127.0.0.1, so that it
    /// reaches nothing beyond this machine.
    async fn session(&self) -> Session {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1000,760", "--lang=en-US", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-default-apps", "--disable-extensions", "--disable-sync",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    "--no-proxy-server",
                ],
            },
        }}});
        let r: Value = http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session: {r}"))
            .to_owned();
        Session {
            url: format!("{}/session/{id}", self.base),
            http,
        }
    }
}

/// One browser: the W3C WebDriver commands these tests use.
struct Session {
    url: String,
    http: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Session {
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .json()
            .await
            .unwrap();
        if r["value"]["error"].is_string() {
            panic!("{method} {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn current_url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let e = self.element(css).await;
        self.command(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Replaces what a text field holds, as a person typing would.
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn execute(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Every cookie the browser holds, whatever its path, with its
    /// attributes (Chromium's DevTools `Network.getAllCookies`).
    async fn all_cookies(&self) -> Vec<Value> {
        let v = self
            .command(
                reqwest::Method::POST,
                "/goog/cdp/execute",
                Some(json!({"cmd": "Network.getAllCookies", "params": {}})),
            )
            .await;
        v["cookies"].as_array().cloned().unwrap_or_default()
    }

    async fn cookie(&self, name: &str) -> Option<Value> {
        self.all_cookies()
            .await
            .into_iter()
            .find(|c| c["name"] == name)
    }

    /// Forgets every cookie (WebDriver's own command only reaches those of
    /// the current page's path).
    async fn delete_cookies(&self) {
        self.command(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": "Network.clearBrowserCookies", "params": {}})),
        )
        .await;
    }

    async fn wait_for_path(&self, path: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let url = self.current_url().await;
            if url::Url::parse(&url).is_ok_and(|u| u.path() == path) {
                return url;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the browser stayed on {url}, not {path}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the page; written to `docs/images/NAME.png` when
    /// `GMAIL_INGEST_WRITE_SCREENSHOTS=1`.
    async fn screenshot(&self, name: &str) {
        let b64 = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: not a PNG");
        if std::env::var("GMAIL_INGEST_WRITE_SCREENSHOTS").as_deref() == Ok("1") {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}

/// Turns on the emulator's sign-in and consent page (Google's, in production).
async fn consent_screen(w: &World) {
    oauth_control(
        w,
        reqwest::Method::PUT,
        Some(json!({"consent_screen": true})),
    )
    .await;
}

/// Opens the invitation link and arrives on the emulator's consent screen.
async fn open_invitation(b: &Session, d: &Daemon, m: &MailboxAddress) {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("mailbox", m.as_str())
        .finish();
    b.goto(&format!("{}/oauth/authorize?{q}", d.consent)).await;
    b.wait_for_path("/o/oauth2/v2/auth").await;
}

/// Signs in as `account` on the consent screen and clicks Allow; returns
/// the URL the browser lands on (the result page).
async fn allow_as(b: &Session, account: &str) -> String {
    b.type_into("#account", account).await;
    b.click("#allow").await;
    b.wait_for_path("/oauth/result").await
}

/// Whether an inline script, added to the page through the DOM, runs; and
/// whether the page reported a CSP violation for it.
async fn inline_script_runs(b: &Session) -> (bool, bool) {
    let v = b
        .execute(
            "window.__violations = 0;\
             document.addEventListener('securitypolicyviolation', () => { window.__violations += 1; });\
             const s = document.createElement('script');\
             s.textContent = 'window.__injected = true;';\
             document.body.appendChild(s);\
             return new Promise(r => setTimeout(() => r([window.__injected === true, window.__violations > 0]), 200));",
        )
        .await;
    (v[0] == true, v[1] == true)
}

/// The owner's whole journey in the browser: invitation link → the
/// emulator's sign-in and consent page → Allow → the result page (its
/// message, a clean URL, no secret in it, the cookies' attributes, the CSP
/// enforced) → an operator approves and the mailbox is read → the owner
/// disconnects through the page's link and form, revoked at Google.
async fn an_owner_consents_and_disconnects_in_a_real_browser(backend: Backend) {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let Some((w, _)) = oauth_world(backend, Duration::from_secs(600)).await else {
        return;
    };
    consent_screen(&w).await;
    let m = w.shared_mailboxes().await[0].clone();
    let d = Daemon::start(&w).await;
    let b = driver.session().await;

    // The CSP probe itself works: on a page without a policy the script runs.
    b.goto("about:blank").await;
    assert_eq!(inline_script_runs(&b).await, (true, false));

    open_invitation(&b, &d, &m).await;
    let accounts = url::Url::parse(&w.emulator.accounts_base_url()).unwrap();
    let here = url::Url::parse(&b.current_url().await).unwrap();
    assert_eq!(
        here.port(),
        accounts.port(),
        "the invitation leads to Google"
    );
    let flow = b
        .cookie("gmail_ingest_oauth")
        .await
        .expect("the flow cookie");
    assert_eq!(flow["httpOnly"], true, "{flow}");
    assert_eq!(flow["sameSite"], "Lax", "{flow}");
    assert_eq!(flow["path"], "/oauth", "{flow}");
    assert_eq!(flow["secure"], false, "an http public URL: {flow}");
    assert!(
        b.text("h1").await.contains("Sign in"),
        "{}",
        b.source().await
    );
    b.screenshot("consent-1-sign-in").await;

    let landed = allow_as(&b, m.as_str()).await;
    assert_eq!(landed, format!("{}/oauth/result", d.consent));
    assert_eq!(b.text("h1").await, "Connected");
    let page = b.source().await;
    assert!(page.contains(&format!(
        "<b>{m}</b> has given gmail-ingest read-only access"
    )));
    assert!(page.contains("An operator must approve the subscription before anything is read."));
    b.screenshot("consent-2-connected").await;

    // Nothing secret in the page, its URL or the cookies left behind.
    let stored = w.ctx.store.oauth_token(&m).await.unwrap().expect("stored");
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
    let client_secret = std::fs::read_to_string(&w.settings.oauth.client_secret_file).unwrap();
    let cookies = serde_json::to_string(&b.all_cookies().await).unwrap();
    for (what, needle) in [
        ("the client secret", client_secret.trim()),
        ("the refresh token", refresh.as_str()),
        ("a refresh token", "1//0e"),
        ("an access token", "ya29."),
        ("an authorization code", "4/0A"),
        ("the token key", KEY),
        ("the sealed refresh token", &stored.refresh_token_ciphertext),
        ("the code parameter", "code="),
        ("the state parameter", "state="),
    ] {
        for (place, text) in [("page", &page), ("URL", &landed), ("cookies", &cookies)] {
            assert!(!text.contains(needle), "{what} is in the {place}: {text}");
        }
    }
    assert!(
        b.cookie("gmail_ingest_oauth").await.is_none(),
        "the spent flow cookie is cleared"
    );
    let result = b.cookie("gmail_ingest_oauth_result").await.expect("result");
    assert_eq!(
        (&result["httpOnly"], &result["sameSite"], &result["path"]),
        (&json!(true), &json!("Lax"), &json!("/oauth/result")),
        "{result}"
    );

    // The CSP is enforced: an inline script injected into the page never runs.
    assert_eq!(inline_script_runs(&b).await, (false, true));

    let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Pending);
    approve(&w, &m).await;
    eventually("the consented mailbox is read", || async {
        w.ctx.store.count_messages(&m).await.unwrap() > 0
    })
    .await;

    // Disconnect through the page: the link shows a form, its button acts.
    b.click("a[href*='/oauth/disconnect?']").await;
    b.wait_for_path("/oauth/disconnect").await;
    assert_eq!(b.text("h1").await, "Disconnect");
    assert!(
        w.ctx.store.oauth_token(&m).await.unwrap().is_some(),
        "opening the link changes nothing"
    );
    assert_eq!(inline_script_runs(&b).await, (false, true));
    b.screenshot("consent-3-disconnect").await;
    b.click("button[type=submit]").await;
    eventually("the page says it is done", || async {
        b.text("h1").await == "Disconnected"
    })
    .await;
    assert!(b.source().await.contains("no longer has access"));
    assert!(
        !b.current_url().await.contains("token="),
        "the form posts its link"
    );
    b.screenshot("consent-4-disconnected").await;
    assert!(w.ctx.store.oauth_token(&m).await.unwrap().is_none());
    assert_eq!(active_grants(&w, &m).await, 0, "revoked at Google");
    let sub = w.ctx.store.get_subscription(&m).await.unwrap().unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Paused);

    b.quit().await;
    d.stop().await;
}
both_backends!(
    an_owner_consents_and_disconnects_in_a_real_browser_on,
    an_owner_consents_and_disconnects_in_a_real_browser
);

/// What the owner sees when it goes wrong, in the browser: another account
/// signed in, a tampered state, an expired one, another browser, Cancel; a
/// consent for a mailbox read by delegation is kept, not used; a reflected
/// parameter is shown as text, and none of it stores a consent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_their_messages_in_a_real_browser() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let Some((w, _)) = oauth_world(Backend::Sqlite, Duration::from_secs(2)).await else {
        return;
    };
    consent_screen(&w).await;
    let users = w.users().await;
    let (m, other) = (users[0].0.clone(), users[1].0.clone());
    let d = Daemon::start(&w).await;
    let b = driver.session().await;

    // Signed in as someone else.
    open_invitation(&b, &d, &m).await;
    allow_as(&b, other.as_str()).await;
    assert_eq!(b.text("h1").await, "Not connected");
    let text = b.text("p").await;
    assert!(text.contains(&format!("signed in as {other}")), "{text}");
    assert_eq!(inline_script_runs(&b).await, (false, true));
    b.screenshot("consent-refused-wrong-account").await;

    // A tampered state: the request the consent screen carries is altered.
    open_invitation(&b, &d, &m).await;
    b.execute(
        "const f = document.querySelector('input[name=request]');\
         const q = new URLSearchParams(f.value);\
         const s = q.get('state');\
         q.set('state', s.slice(0, -5) + (s.at(-5) === 'A' ? 'B' : 'A') + s.slice(-4));\
         f.value = q.toString();",
    )
    .await;
    allow_as(&b, m.as_str()).await;
    let text = b.text("p").await;
    assert!(text.contains("not valid"), "{text}");

    // Another browser: the flow cookie is gone when Google sends the owner back.
    open_invitation(&b, &d, &m).await;
    b.delete_cookies().await;
    allow_as(&b, m.as_str()).await;
    let text = b.text("p").await;
    assert!(text.contains("another browser"), "{text}");

    // Expired (state_ttl is 2 s here): the owner waited on the consent screen.
    open_invitation(&b, &d, &m).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    allow_as(&b, m.as_str()).await;
    let text = b.text("p").await;
    assert!(text.contains("expired"), "{text}");
    b.screenshot("consent-refused-expired").await;

    // Cancel on Google's page.
    open_invitation(&b, &d, &m).await;
    b.click("#cancel").await;
    b.wait_for_path("/oauth/result").await;
    let text = b.text("p").await;
    assert!(
        text.contains("Google did not grant access (access_denied)"),
        "{text}"
    );

    // A reflected parameter is text, not markup (and the CSP would stop it).
    let evil = "<img src=x onerror=\"window.__xss=1\">@example.com";
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("mailbox", evil)
        .finish();
    b.goto(&format!("{}/oauth/authorize?{q}", d.consent)).await;
    assert_eq!(b.text("h1").await, "Not connected");
    assert_eq!(
        b.execute("return document.querySelectorAll('img').length + (window.__xss || 0);")
            .await,
        json!(0)
    );
    assert!(w.ctx.store.list_oauth_tokens().await.unwrap().is_empty());
    assert!(w.ctx.store.list_subscriptions().await.unwrap().is_empty());

    // A mailbox the operators read by delegation: the consent is kept, not used.
    let shared = w.shared_mailboxes().await[0].clone();
    w.subscribe(&shared).await;
    open_invitation(&b, &d, &shared).await;
    allow_as(&b, shared.as_str()).await;
    assert_eq!(b.text("h1").await, "Consent kept, not used");
    b.screenshot("consent-kept-delegated").await;
    let sub = w
        .ctx
        .store
        .get_subscription(&shared)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sub.auth_mode,
        gmail_ingest::domain::AuthMode::Delegated,
        "a consent never changes the mode"
    );

    // The result page later, in a browser without the result cookie.
    b.delete_cookies().await;
    b.goto(&format!("{}/oauth/result", d.consent)).await;
    assert_eq!(b.text("h1").await, "Nothing to show");

    b.quit().await;
    d.stop().await;
}

/// With an https public URL the cookies are also `Secure`. The test serves
/// plain http: the browser opens the invitation on http://127.0.0.1 (which
/// Chromium treats as a secure context, so it keeps a Secure cookie), the
/// daemon believes it is behind https, and the redirect it asks Google for
/// is the https callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_secure_when_the_public_url_is_https() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let Some((w, port)) = oauth_world(Backend::Sqlite, Duration::from_secs(600)).await else {
        return;
    };
    consent_screen(&w).await;
    let mut settings = w.settings.clone();
    settings.oauth.public_base_url = format!("https://127.0.0.1:{port}");
    let w = World { settings, ..w };
    let m = w.shared_mailboxes().await[0].clone();
    let d = Daemon::start(&w).await;
    let b = driver.session().await;
    open_invitation(&b, &d, &m).await;
    let flow = b
        .cookie("gmail_ingest_oauth")
        .await
        .expect("the flow cookie");
    assert_eq!(flow["secure"], true, "{flow}");
    assert_eq!(flow["httpOnly"], true, "{flow}");
    assert_eq!(flow["sameSite"], "Lax", "{flow}");
    let request = b
        .execute("return document.querySelector('input[name=request]').value;")
        .await;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(request.as_str().unwrap().as_bytes())
            .into_owned()
            .collect();
    assert!(
        pairs.contains(&(
            "redirect_uri".to_owned(),
            format!("https://127.0.0.1:{port}/oauth/callback")
        )),
        "{pairs:?}"
    );
    b.quit().await;
    d.stop().await;
}
