//! The local Google: OAuth (service-account token endpoint and the per-user web-server flow),
//! Gmail API v1 and Admin SDK Directory on one port.
//!
//! Tests, benchmarks and `demo` run the real client libraries (yup-oauth2's service-account
//! flow, the google-gmail1 hub) against it unchanged; the daemon's per-mailbox consent mode
//! runs its own code against the authorization, token, revocation and userinfo endpoints. Mailboxes are generated lazily and
//! deterministically from a seed; history, quota, the per-user concurrency cap and fault
//! injection follow Google's documented behaviour (see `reference/gmail-api.md`), and the
//! control API under `/emulator/v1` steers it.
//!
//! It must not be reachable from production code paths: it exists behind the `emulator`
//! feature and never talks to the network beyond its own listener.
//!
//! # Layout
//!
//! - `server`: shared state, the request pipeline and the accept loop.
//! - `oauth`: the token endpoint and the service-account key.
//! - `consent` and `grants`: the web-server flow (authorize, code and refresh grants, revoke,
//!   userinfo, tokeninfo) of the one registered web client, and the grants it creates.
//! - `gmail`, `directory`, `control`: the three route families.
//! - `model`: users, mailboxes, history, quota windows, counters.
//! - `generate` and `payload`: RFC 822 rendering from the seed, and Gmail's parsed view of it.

mod clock;
mod consent;
mod control;
mod directory;
mod errors;
mod generate;
mod gmail;
mod grants;
mod model;
mod oauth;
mod payload;
mod server;
mod util;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::errors::GoogleError;
use self::model::{Seeding, World};
use self::server::Shared;

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

/// A service-account key written by [`Emulator::write_service_account_key`].
#[derive(Debug, Clone)]
pub struct ServiceAccountInfo {
    /// The numeric client ID the DWD grant is keyed by.
    pub client_id: String,
    pub client_email: String,
    pub key_path: PathBuf,
}

/// The emulator's registered OAuth web client (see [`Emulator::oauth_client`]).
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClientInfo {
    /// `<12 digits>-emulator.apps.googleusercontent.com`.
    pub client_id: String,
    /// `GOCSPX-` and 28 URL-safe characters; a secret, so `Debug` leaves it out.
    pub client_secret: String,
}

impl std::fmt::Debug for OAuthClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClientInfo")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
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
        let router = router(Arc::clone(&shared));
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
        oauth::write_private_file(path, client.client_secret.as_bytes())
            .with_context(|| format!("writing the client secret file {}", path.display()))?;
        Ok(client)
    }

    /// The seeded admin, to impersonate for Directory look-ups.
    pub fn admin_email(&self) -> String {
        format!("admin@{}", self.shared.lock().seeding.domain)
    }

    /// Writes a service-account key file (mode 0600) whose `token_uri` is this emulator, and
    /// grants it `gmail.readonly` + `admin.directory.user.readonly` by domain-wide delegation.
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

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/token", axum::routing::post(oauth::token))
        .merge(consent::router())
        .merge(gmail::router())
        .merge(directory::router())
        .merge(control::router())
        .fallback(|| async {
            let mut response = GoogleError::new(404, "notFound", "Not Found").into_response();
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        })
        .with_state(shared)
}

/// The `gmail-ingest emulator` command: start, optionally write a key, serve until `shutdown`.
pub async fn run_command(
    cfg: EmulatorConfig,
    write_key: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (users, messages, seed) = (cfg.users, cfg.messages, cfg.seed);
    let emulator = Emulator::start(cfg).await?;
    if let Some(path) = write_key {
        let info = emulator.write_service_account_key(&path)?;
        tracing::info!(
            key_path = %info.key_path.display(),
            client_id = %info.client_id,
            "Wrote a service-account key with a domain-wide delegation grant."
        );
    }
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
