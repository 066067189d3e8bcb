//! Domain-wide-delegation token source.
//!
//! The service-account key is read once. Each mailbox gets its own cached
//! yup-oauth2 authenticator (`subject` = the mailbox) built over one shared
//! HTTP client, so a thousand mailboxes share one connection pool. Tokens are
//! requested for the configured scopes explicitly. The service account's own
//! authenticator (no `subject`, for Cloud Pub/Sub) is cached apart. Nothing here logs a token
//! or the key: [`ServiceAccount`]'s `Debug` shows only the public identity.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::client::legacy::connect::HttpConnector;
use yup_oauth2::authenticator::Authenticator;
use yup_oauth2::{
    CustomHyperClientBuilder, HyperClientBuilder, ServiceAccountAuthenticator, ServiceAccountKey,
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

pub type MailboxAuthenticator = Authenticator<Connector>;

/// One cached authenticator per impersonated subject, over one HTTP client.
pub struct TokenSource {
    account: ServiceAccount,
    http: yup_oauth2::HttpClient<Connector>,
    scopes: Vec<String>,
    cache: Mutex<HashMap<String, Arc<MailboxAuthenticator>>>,
    /// The service account as itself (no `sub`): Pub/Sub's caller. Apart
    /// from `cache`, whose keys are impersonated mailboxes.
    own: tokio::sync::OnceCell<Arc<MailboxAuthenticator>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
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
            own: tokio::sync::OnceCell::new(),
        }
    }

    pub fn account(&self) -> &ServiceAccount {
        &self.account
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The cached authenticator impersonating `subject`, built on first use.
    pub async fn authenticator(
        &self,
        subject: &str,
    ) -> Result<Arc<MailboxAuthenticator>, GoogleError> {
        if let Some(a) = self.lock().get(subject) {
            return Ok(a.clone());
        }
        let built =
            ServiceAccountAuthenticator::with_client(self.account.key.clone(), self.http.clone())
                .subject(subject)
                .build()
                .await
                .map_err(|e| {
                    GoogleError::new(
                        ErrorClass::Fatal,
                        TOKEN_METHOD,
                        format!("building authenticator: {e}"),
                    )
                })?;
        let built = Arc::new(built);
        Ok(self
            .lock()
            .entry(subject.to_owned())
            .or_insert(built)
            .clone())
    }

    /// The cached authenticator of the service account as itself, without
    /// impersonating anyone (no `subject`, so no domain-wide delegation is
    /// involved): what Cloud Pub/Sub is called with.
    pub async fn own_authenticator(&self) -> Result<Arc<MailboxAuthenticator>, GoogleError> {
        self.own
            .get_or_try_init(|| async {
                ServiceAccountAuthenticator::with_client(
                    self.account.key.clone(),
                    self.http.clone(),
                )
                .build()
                .await
                .map(Arc::new)
                .map_err(|e| {
                    GoogleError::new(
                        ErrorClass::Fatal,
                        TOKEN_METHOD,
                        format!("building authenticator: {e}"),
                    )
                })
            })
            .await
            .cloned()
    }

    /// Forgets `subject`'s authenticator (after a 401 or a revocation), so the
    /// next call signs a fresh JWT.
    pub fn evict(&self, subject: &str) {
        self.lock().remove(subject);
    }

    /// An access token for `subject` with the given scopes.
    pub async fn token(&self, subject: &str, scopes: &[String]) -> Result<String, GoogleError> {
        let auth = self.authenticator(subject).await?;
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let tok = auth
            .token(&scopes)
            .await
            .map_err(|e| classify_auth_error(TOKEN_METHOD, &e))?;
        tok.token().map(str::to_owned).ok_or_else(|| {
            GoogleError::new(
                ErrorClass::Retryable,
                TOKEN_METHOD,
                "token response without access_token",
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<MailboxAuthenticator>>> {
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

/// Adapter handing google-gmail1 a token for one mailbox with our scopes,
/// whatever scopes the generated call builder asks for.
#[derive(Clone)]
pub struct HubAuth {
    pub(crate) auth: Arc<MailboxAuthenticator>,
    pub(crate) scopes: Arc<Vec<String>>,
}

impl google_gmail1::common::GetToken for HubAuth {
    fn get_token<'a>(&'a self, _requested: &'a [&str]) -> GetTokenFuture<'a> {
        Box::pin(async move {
            let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
            let tok = self.auth.token(&scopes).await?;
            Ok(tok.token().map(str::to_owned))
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
