//! The local Google: OAuth (service-account token endpoint and the per-user web-server flow),
//! Gmail API v1 and Admin SDK Directory on one port, for tests, benchmarks and demos.
//!
//! Tests, benchmarks and `gmail-ingest demo` run the real client libraries (yup-oauth2's
//! service-account flow, the google-gmail1 hub) against it unchanged; gmail-ingest's per-mailbox
//! consent mode runs its own code against the authorization, token, revocation and userinfo
//! endpoints. Mailboxes are generated lazily and deterministically from a seed; history, quota,
//! the per-user concurrency cap and fault injection follow Google's documented behaviour, and
//! the control API under `/emulator/v1` steers it (see the crate's README).
//!
//! It must not be reachable from production code paths: gmail-ingest uses it only behind its
//! `emulator` feature, it imports nothing of gmail-ingest, and it never talks to the network
//! beyond its own listener.
//!
//! # Layout
//!
//! Modules are layered; a module imports only from the layers below it, inside its own layer
//! only where "uses" or "then" says so here, and never from `lib.rs` (the `layout_tests` unit
//! test checks this).
//!
//! 1. Foundations: `util` (JSON responses, query parsing, lenient base64, hashing, private
//!    files), `clock` and `scopes` (the scope names) import nothing of the crate; `errors`
//!    (Google's error bodies) uses `util`, then `fields` (the system parameters `fields`,
//!    `prettyPrint` and `alt` as a middleware; uses `util` and `errors`).
//! 2. Content: `generate` (RFC 822 rendering from the seed), then `payload` (Gmail's parsed
//!    view of a message; uses `generate`).
//! 3. State: `grants` (the registered web client and its per-user grants, codes and sessions)
//!    and `pubsub` (Cloud Pub/Sub's topics, subscriptions and at-least-once delivery),
//!    then `model` (users, mailboxes, history, quota windows, faults, counters; holds the
//!    `grants` state).
//! 4. Services over the state: `tokens` (access-token issuing and the process key),
//!    `pipeline` (`Shared`, the one lock, and the auth → quota → handler path every Gmail and
//!    Directory call takes) and `search` (Gmail's `q` syntax over a mailbox).
//! 5. Route handlers: `gmail`, `batch` (the batch endpoint; it reaches the Gmail handlers only
//!    through the router `server` hands it), `directory`, `control`, `consent` (authorize, the web client's
//!    code and refresh grants, revoke, userinfo, tokeninfo, certs), `pubsub_api` (the Pub/Sub
//!    REST subset and its control routes), and `oauth` (the token
//!    endpoint: it keeps the JWT-bearer grant and hands the web client's grants to `consent`,
//!    the one import inside this layer).
//! 6. `server`: the router over all handlers and the accept loop.
//! 7. `lib.rs`: the public API (`Emulator`, `EmulatorConfig`, the info types) over all of it.

mod batch;
mod clock;
mod consent;
mod control;
mod directory;
mod errors;
mod fields;
mod generate;
mod gmail;
mod grants;
mod model;
mod oauth;
mod payload;
mod pipeline;
mod pubsub;
mod pubsub_api;
mod scopes;
mod search;
mod server;
mod tokens;
mod util;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::grants::OAuthClientInfo;
use self::model::{Seeding, World};
pub use self::oauth::ServiceAccountInfo;
use self::pipeline::Shared;

/// How to start an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Seed for every generated mailbox, ID and fault sequence.
    pub seed: u64,
    /// Mailboxes besides the admin: about two thirds shared mailboxes, the rest staff.
    pub users: usize,
    /// Generated messages per mailbox.
    pub messages: usize,
    pub domain: String,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            seed: 1,
            users: 3,
            messages: 500,
            domain: "example.com".to_owned(),
        }
    }
}

/// A running emulator; it owns its server task.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Stops the accept loop and every open connection.
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Emulator {
    /// Binds, seeds the world and starts serving.
    pub async fn start(cfg: EmulatorConfig) -> anyhow::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding the emulator to {}", cfg.listen))?;
        let bound = listener
            .local_addr()
            .context("reading the emulator's address")?;
        let addr = if bound.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()))
        } else {
            bound
        };
        let seeding = Seeding {
            seed: cfg.seed,
            users: cfg.users,
            messages: cfg.messages,
            domain: cfg.domain.to_ascii_lowercase(),
        };
        let world = tokio::task::spawn_blocking(move || World::seeded(seeding))
            .await
            .context("generating the emulator's mailboxes")?;
        let oauth_client = grants::client_for_seed(cfg.seed);
        let shared = Arc::new(Shared::new(
            world,
            format!("http://{addr}/token"),
            addr.port(),
            oauth_client,
        ));
        let router = server::router(Arc::clone(&shared));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server::accept_loop(listener, router, cancel.clone()));
        Ok(Emulator {
            shared,
            addr,
            cancel,
            task,
        })
    }

    /// `http://127.0.0.1:PORT/`: the base for Gmail (`gmail/v1/…`), Directory and the control API.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The OAuth token endpoint, `base_url() + "token"`.
    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the base of Google's account endpoints as
    /// the emulator serves them: `/o/oauth2/v2/auth`, `/token`, `/revoke`, `/tokeninfo` and
    /// `/oauth2/v3/userinfo`.
    pub fn accounts_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The one web OAuth client registered at start; the same for the same seed.
    pub fn oauth_client(&self) -> OAuthClientInfo {
        self.shared.oauth_client.clone()
    }

    /// Writes the web client's secret (nothing else, no newline) to a file with mode 0600, for
    /// a `client_secret_file` setting.
    pub fn write_oauth_client_secret(&self, path: &Path) -> anyhow::Result<OAuthClientInfo> {
        let client = self.oauth_client();
        util::write_private_file(path, client.client_secret.as_bytes())
            .with_context(|| format!("writing the client secret file {}", path.display()))?;
        Ok(client)
    }

    /// Writes the web client as Google's console downloads it (`{"web": {"client_id",
    /// "client_secret", "auth_uri", "token_uri", …}}`, endpoints at this emulator) to a file
    /// with mode 0600: for people, who have only the command line (`--write-oauth-client`).
    pub fn write_oauth_client(&self, path: &Path) -> anyhow::Result<OAuthClientInfo> {
        let client = self.oauth_client();
        let base = self.accounts_base_url();
        let json = serde_json::json!({"web": {
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "project_id": "gmail-emulator",
            "auth_uri": format!("{base}/o/oauth2/v2/auth"),
            "token_uri": format!("{base}/token"),
            "revoke_uri": format!("{base}/revoke"),
        }});
        let mut text = serde_json::to_vec_pretty(&json)?;
        text.push(b'\n');
        util::write_private_file(path, &text)
            .with_context(|| format!("writing the OAuth client file {}", path.display()))?;
        Ok(client)
    }

    /// Shows (or stops showing) the sign-in and consent page on the authorization endpoint;
    /// the same as the control API's `PUT /emulator/v1/oauth {"consent_screen": …}`.
    pub fn set_consent_screen(&self, on: bool) {
        self.shared.lock().oauth.consent_screen = on;
    }

    /// The seeded admin, to impersonate for Directory look-ups.
    pub fn admin_email(&self) -> String {
        format!("admin@{}", self.shared.lock().seeding.domain)
    }

    /// Writes a service-account key file (mode 0600) whose `token_uri` is this emulator, and
    /// grants it `gmail.readonly`, `admin.directory.user.readonly` and
    /// `admin.directory.group.readonly` by domain-wide delegation.
    pub fn write_service_account_key(&self, path: &Path) -> anyhow::Result<ServiceAccountInfo> {
        oauth::write_service_account_key(&self.shared, path)
    }

    /// Moves the emulator's clock forward (token expiry, quota windows).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Stops serving and closes every connection.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "The emulator's server task ended abnormally.");
        }
    }
}

/// The command-line options of the `gmail-emulator` binary and of `gmail-ingest emulator`:
/// one definition, so both take the same flags with the same defaults and help.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    #[arg(long, default_value = "127.0.0.1:8085")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mailboxes to generate (plus one admin).
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Messages per mailbox.
    #[arg(long, default_value_t = 500)]
    pub messages: usize,
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// Write a service-account key (token_uri = this emulator) with a DWD grant.
    #[arg(long, value_name = "FILE")]
    pub write_key: Option<PathBuf>,
    /// Write the registered OAuth web client (client ID and secret, as the JSON Google's
    /// console downloads), mode 0600, for per-mailbox consent (`oauth.client_secret_file`).
    #[arg(long, value_name = "FILE")]
    pub write_oauth_client: Option<PathBuf>,
    /// Show a sign-in and consent page on the authorization endpoint, as Google does, instead
    /// of consenting at once as `login_hint` (the control API's `consent_screen`).
    #[arg(long)]
    pub consent_screen: bool,
}

impl EmulatorArgs {
    /// The emulator these options describe (everything but the files to write and
    /// `--consent-screen`).
    pub fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            listen: self.listen,
            seed: self.seed,
            users: self.users,
            messages: self.messages,
            domain: self.domain.clone(),
        }
    }
}

/// What both binaries run: start, optionally write a key, serve until `shutdown`.
///
/// It does not validate `--domain`; each binary refuses a malformed one before calling this.
pub async fn run_command(
    args: EmulatorArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cfg = args.config();
    let (users, messages, seed) = (cfg.users, cfg.messages, cfg.seed);
    let emulator = Emulator::start(cfg).await?;
    if let Some(path) = args.write_key {
        let info = emulator.write_service_account_key(&path)?;
        tracing::info!(
            key_path = %info.key_path.display(),
            client_id = %info.client_id,
            "Wrote a service-account key with a domain-wide delegation grant."
        );
    }
    if let Some(path) = args.write_oauth_client {
        let client = emulator.write_oauth_client(&path)?;
        tracing::info!(
            path = %path.display(),
            client_id = %client.client_id,
            "Wrote the OAuth web client (client ID and secret)."
        );
    }
    emulator.set_consent_screen(args.consent_screen);
    tracing::info!(
        url = %emulator.base_url(),
        token_url = %emulator.token_url(),
        accounts_url = %emulator.accounts_base_url(),
        oauth_client_id = %emulator.oauth_client().client_id,
        admin = %emulator.admin_email(),
        users,
        messages,
        seed,
        "The Google emulator is serving."
    );
    shutdown.await;
    emulator.shutdown().await;
    tracing::info!("The Google emulator stopped.");
    Ok(())
}

#[cfg(test)]
mod layout_tests {
    //! Keeps the `# Layout` above true: reads each module's `super::`/`crate::` paths (outside
    //! its test module and comments) and fails on an import that does not go down.

    /// Each module's place, bottom first; a module may import only from a lower rank. The
    /// ranks spell out the order inside the layers of `# Layout`.
    const RANKS: &[(&str, u8)] = &[
        ("util", 0),
        ("clock", 0),
        ("scopes", 0),
        ("errors", 1),
        ("fields", 2),
        ("generate", 2),
        ("payload", 3),
        ("grants", 4),
        ("pubsub", 4),
        ("model", 5),
        ("tokens", 6),
        ("pipeline", 6),
        ("search", 6),
        ("gmail", 7),
        ("batch", 7),
        ("directory", 7),
        ("control", 7),
        ("consent", 7),
        ("pubsub_api", 7),
        ("oauth", 8),
        ("server", 9),
    ];

    fn rank(module: &str) -> Option<u8> {
        RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
    }

    /// The first path segment after each `super::` or `crate::` in `line`, braces expanded.
    fn imported(line: &str) -> Vec<String> {
        let mut out = Vec::new();
        for prefix in ["super::", "crate::"] {
            let mut rest = line;
            while let Some(at) = rest.find(prefix) {
                rest = &rest[at + prefix.len()..];
                if let Some(inner) = rest.strip_prefix('{') {
                    let end = inner.find('}').unwrap_or(inner.len());
                    out.extend(inner[..end].split(',').filter_map(|item| {
                        let name = item.trim().split("::").next()?.trim();
                        (!name.is_empty() && name != "self").then(|| name.to_owned())
                    }));
                } else {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push(name);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn modules_import_only_from_lower_layers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        let mut wrong = Vec::new();
        for (module, own) in RANKS {
            let path = dir.join(format!("{module}.rs"));
            let text = std::fs::read_to_string(&path).expect("a module file");
            let body = text.split("#[cfg(test)]").next().unwrap_or_default();
            // A `use` may span lines; joining them keeps a brace group on one line.
            let code: String = body
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join(" ");
            for name in imported(&code) {
                match rank(&name) {
                    Some(r) if r < *own => {}
                    _ => wrong.push(format!("src/{module}.rs imports `{name}`")),
                }
            }
            checked += 1;
        }
        let listed = std::fs::read_dir(&dir)
            .expect("the src directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.ends_with(".rs") && f != "lib.rs" && f != "main.rs")
            .count();
        assert_eq!(checked, listed, "a module in src/ has no rank in RANKS");
        assert!(wrong.is_empty(), "upward or sideways imports: {wrong:#?}");
    }
}
