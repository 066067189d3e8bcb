//! Domain-wide-delegation token source.
//!
//! The service-account key is read once. Each mailbox's access token
//! (`subject` = the mailbox) is cached, and fetched through a yup-oauth2
//! authenticator built over one shared HTTP client, so a thousand mailboxes
//! share one connection pool. Tokens are requested for the configured scopes
//! explicitly. The service account's own token (no `subject`, for Cloud
//! Pub/Sub) is cached apart. Nothing here logs a token or the key:
//! [`ServiceAccount`]'s `Debug` shows only the public identity.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::client::legacy::connect::HttpConnector;
use yup_oauth2::{
    AccessToken, CustomHyperClientBuilder, HyperClientBuilder, ServiceAccountAuthenticator,
    ServiceAccountKey,
};

use super::error::{ErrorClass, GoogleError, classify_auth_error};
use crate::domain::MailboxAddress;

/// The HTTPS (and, for the emulator, plain HTTP) connector every Google call uses.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub const TOKEN_METHOD: &str = "oauth2.token";

/// Builds the connector: webpki roots, HTTP/1.1 and HTTP/2, plain HTTP allowed
/// (only the emulator is reached that way; Google's URLs are https).
pub fn connector() -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// A loaded service-account key. `Debug` never shows the private key.
#[derive(Clone)]
pub struct ServiceAccount {
    key: ServiceAccountKey,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.key.client_email)
            .field("client_id", &self.key.client_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccount {
    /// Reads and checks the key file: it must exist, be readable by its owner
    /// only (like ssh and gcloud, we refuse a key others can read), and be a
    /// service-account key.
    pub fn load(path: &Path) -> anyhow::Result<ServiceAccount> {
        crate::secret_file::check_private(path, "service-account key file")?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading service-account key file {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("service-account key file {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> anyhow::Result<ServiceAccount> {
        let key: ServiceAccountKey = serde_json::from_slice(bytes).map_err(|e| {
            // serde's message may quote a fragment of the input: keep only its position.
            anyhow::anyhow!(
                "not a service-account JSON key (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if key
            .key_type
            .as_deref()
            .is_some_and(|t| t != "service_account")
        {
            bail!("key type is not \"service_account\"");
        }
        if !key.private_key.contains("PRIVATE KEY") {
            bail!("private_key is not a PEM private key");
        }
        Ok(ServiceAccount { key })
    }

    pub fn client_email(&self) -> &str {
        &self.key.client_email
    }

    /// The numeric client ID the Workspace admin authorizes for DWD.
    pub fn client_id(&self) -> &str {
        self.key
            .client_id
            .as_deref()
            .unwrap_or("(missing client_id in key file)")
    }

    pub fn token_uri(&self) -> &str {
        &self.key.token_uri
    }
}

/// The access tokens one subject holds, by the scopes they were asked for.
type SubjectTokens = tokio::sync::Mutex<Vec<(Vec<String>, AccessToken)>>;

/// Access tokens per impersonated subject, over one HTTP client.
///
/// What is kept per mailbox is its token, not an authenticator: a yup-oauth2
/// authenticator holds its own copy of the key, parsed (about 6 KiB), and a
/// replica that meets 30,000 mailboxes kept 30,000 of them (BENCHMARKS.md
/// §6). An authenticator is built when a subject needs a token (the first
/// time, then about once an hour, when the token is within a minute of its
/// expiry) and dropped once it has one.
pub struct TokenSource {
    account: ServiceAccount,
    http: yup_oauth2::HttpClient<Connector>,
    scopes: Vec<String>,
    /// Per subject (`""`: the service account as itself, without `sub`,
    /// which is what Cloud Pub/Sub is called as), behind a lock of its own:
    /// one subject's concurrent requests wait for one JWT, not one each.
    cache: Mutex<HashMap<String, Arc<SubjectTokens>>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Why no token came: the authenticator could not be built (a key yup-oauth2
/// cannot use), the token endpoint refused or failed, or it answered without
/// an access token.
enum TokenFailure {
    Build(std::io::Error),
    Token(yup_oauth2::Error),
    Missing,
}

impl TokenFailure {
    fn classify(&self) -> GoogleError {
        match self {
            TokenFailure::Build(e) => GoogleError::new(
                ErrorClass::Fatal,
                TOKEN_METHOD,
                format!("building authenticator: {e}"),
            ),
            TokenFailure::Token(e) => classify_auth_error(TOKEN_METHOD, e),
            TokenFailure::Missing => GoogleError::new(
                ErrorClass::Retryable,
                TOKEN_METHOD,
                "token response without access_token",
            ),
        }
    }
}

impl TokenSource {
    pub fn new(account: ServiceAccount, scopes: Vec<String>, timeout: Duration) -> TokenSource {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build::<_, String>(connector());
        let http = match CustomHyperClientBuilder::from(client)
            .with_timeout(timeout)
            .build_hyper_client()
        {
            Ok(h) => h,
            // SAFETY of the unreachable: a custom builder only wraps the client it was given.
            Err(e) => unreachable!("wrapping an existing client cannot fail: {e}"),
        };
        TokenSource {
            account,
            http,
            scopes,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn account(&self) -> &ServiceAccount {
        &self.account
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Forgets `subject`'s tokens (after a 401 or a revocation), so the next
    /// call signs a fresh JWT.
    pub fn evict(&self, subject: &str) {
        self.lock().remove(subject);
    }

    /// An access token for `subject` with the given scopes.
    pub async fn token(&self, subject: &str, scopes: &[String]) -> Result<String, GoogleError> {
        self.access_token(Some(subject), scopes)
            .await
            .map_err(|f| f.classify())
    }

    /// The cached token of `subject` (`None`: the service account itself)
    /// for `scopes`, fetched when missing or within a minute of expiry.
    async fn access_token(
        &self,
        subject: Option<&str>,
        scopes: &[String],
    ) -> Result<String, TokenFailure> {
        let key = subject.unwrap_or("");
        let slot = {
            let mut cache = self.lock();
            match cache.get(key) {
                Some(s) => s.clone(),
                None => cache.entry(key.to_owned()).or_default().clone(),
            }
        };
        let mut held = slot.lock().await;
        if let Some((_, t)) = held.iter().find(|(s, t)| s == scopes && !t.is_expired())
            && let Some(token) = t.token()
        {
            return Ok(token.to_owned());
        }
        let fresh = self.fetch(subject, scopes).await?;
        // An answer without a token is not kept: the next call asks again.
        let token = fresh.token().ok_or(TokenFailure::Missing)?.to_owned();
        held.retain(|(s, _)| s != scopes);
        held.push((scopes.to_vec(), fresh));
        Ok(token)
    }

    /// One JWT signed and exchanged, through an authenticator made for it.
    async fn fetch(
        &self,
        subject: Option<&str>,
        scopes: &[String],
    ) -> Result<AccessToken, TokenFailure> {
        let mut builder =
            ServiceAccountAuthenticator::with_client(self.account.key.clone(), self.http.clone());
        if let Some(s) = subject {
            builder = builder.subject(s);
        }
        let auth = builder.build().await.map_err(TokenFailure::Build)?;
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        auth.token(&scopes).await.map_err(TokenFailure::Token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SubjectTokens>>> {
        // A poisoned cache only means a panic elsewhere mid-insert; the map is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What google-gmail1's `GetToken::get_token` returns.
pub(crate) type GetTokenFuture<'a> = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Option<String>, Box<dyn std::error::Error + Send + Sync>>,
            > + Send
            + 'a,
    >,
>;

/// Adapter handing a google-apis hub (Gmail, Pub/Sub) a token for one
/// subject with our scopes, whatever scopes the generated call builder asks
/// for. A token endpoint's error is handed on as yup-oauth2's, so the call
/// classifies it under its own method.
#[derive(Clone)]
pub struct HubAuth {
    pub(crate) tokens: Arc<TokenSource>,
    /// `None`: the service account as itself (Pub/Sub).
    pub(crate) subject: Option<MailboxAddress>,
    pub(crate) scopes: Arc<Vec<String>>,
}

impl google_gmail1::common::GetToken for HubAuth {
    fn get_token<'a>(&'a self, _requested: &'a [&str]) -> GetTokenFuture<'a> {
        Box::pin(async move {
            let subject = self.subject.as_ref().map(MailboxAddress::as_str);
            match self.tokens.access_token(subject, &self.scopes).await {
                Ok(t) => Ok(Some(t)),
                Err(TokenFailure::Token(e)) => Err(Box::new(e) as _),
                Err(other) => Err(Box::new(other.classify()) as _),
            }
        })
    }
}

/// What an access token for a consented mailbox costs to get: a boxed future,
/// so that [`ConsentTokens`] stays object-safe.
pub type AccessTokenFuture<'a> =
    Pin<Box<dyn std::future::Future<Output = Result<String, GoogleError>> + Send + 'a>>;

/// Access tokens of mailboxes whose owner consented (`auth_mode = oauth`).
///
/// `google` does not know where consents are kept or how they are sealed;
/// `oauth::tokens::OAuthTokens` implements this over the store. An
/// implementation caches tokens and refreshes them when due; `evict` drops a
/// cached one after a 401, a new consent or a disconnect.
pub trait ConsentTokens: Send + Sync {
    fn access_token<'a>(&'a self, mailbox: &'a MailboxAddress) -> AccessTokenFuture<'a>;
    fn evict(&self, mailbox: &str);
}

/// Hands google-gmail1 a consented mailbox's access token (the scopes were
/// fixed at consent; the ones the call builder asks for do not matter).
#[derive(Clone)]
pub struct ConsentHubAuth {
    pub(crate) tokens: Arc<dyn ConsentTokens>,
    pub(crate) mailbox: MailboxAddress,
}

impl google_gmail1::common::GetToken for ConsentHubAuth {
    fn get_token<'a>(&'a self, _requested: &'a [&str]) -> GetTokenFuture<'a> {
        Box::pin(async move {
            match self.tokens.access_token(&self.mailbox).await {
                Ok(t) => Ok(Some(t)),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// Seconds by which our clock is ahead (+) or behind (−) the token endpoint's,
/// from its `Date` header; `None` when it sends none.
pub async fn server_clock_skew(token_uri: &str) -> Result<Option<i64>, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<hyper::body::Bytes>>(connector());
    let uri: http::Uri = token_uri
        .parse()
        .map_err(|e| format!("token_uri {token_uri:?}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| "no answer within 10s".to_owned())?
        .map_err(|e| e.to_string())?;
    let Some(date) = resp
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
    else {
        return Ok(None);
    };
    let server = chrono::DateTime::parse_from_rfc2822(date)
        .map_err(|e| format!("Date header {date:?}: {e}"))?;
    Ok(Some(chrono::Utc::now().timestamp() - server.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_private_key() {
        let json = br#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n","client_email":"sa@p.iam.gserviceaccount.com","client_id":"123","token_uri":"http://127.0.0.1:1/token"}"#;
        let sa = ServiceAccount::parse(json).unwrap();
        let dbg = format!("{sa:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("sa@p.iam.gserviceaccount.com"));
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_content() {
        let err = ServiceAccount::parse(b"{\"private_key\": \"SECRET")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET"), "{err}");
        assert!(ServiceAccount::parse(br#"{"type":"authorized_user","private_key":"x","client_email":"a","token_uri":"t"}"#).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ServiceAccount::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by group or others"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }
}
