//! Everything that talks to Google: the DWD token source, the Gmail and
//! Directory clients, the Pub/Sub client Gmail push is pulled with, error
//! classification, the retry loop and the quota limiters.
//!
//! [`Google`] is built once per process and shared by every worker: one HTTP
//! connection pool, one token cache, one set of limiters. It never touches
//! the database.

pub mod auth;
pub mod daily;
pub mod directory;
pub mod error;
pub mod gmail;
pub mod pubsub;
pub mod quota;
pub mod retry;

use std::sync::Arc;

use google_gmail1::Gmail;

use self::auth::{Connector, ConsentHubAuth, ConsentTokens, HubAuth, ServiceAccount, TokenSource};
use self::gmail::{CallStats, MailboxGmail};
use self::quota::QuotaLimiter;
use self::retry::RetryPolicy;
use crate::config::Settings;
use crate::domain::{MailboxAddress, MessageFormat};

pub const GMAIL_URL: &str = "https://gmail.googleapis.com/";
pub const DIRECTORY_URL: &str = "https://admin.googleapis.com/";
pub const DIRECTORY_SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.user.readonly";
/// Google Groups: `groups.list` and `members.list`. Optional: without it
/// group subscriptions are refused and review says memberships are unknown.
pub const DIRECTORY_GROUP_SCOPE: &str =
    "https://www.googleapis.com/auth/admin.directory.group.readonly";

/// Shared Google clients of one replica.
pub struct Google {
    /// `None` in an OAuth-only deployment (no service-account key).
    pub(crate) tokens: Option<Arc<TokenSource>>,
    pub(crate) quota: QuotaLimiter,
    pub(crate) retry: RetryPolicy,
    pub(crate) scopes: Vec<String>,
    pub(crate) message_format: MessageFormat,
    gmail_base_url: String,
    directory_base_url: String,
    admin_subject: String,
    gmail_client: google_gmail1::common::Client<Connector>,
    directory_client: directory::HttpClient,
    /// `scopes`, shared by every mailbox's token requests.
    hub_scopes: Arc<Vec<String>>,
}

fn with_slash(url: &str, default: &str) -> String {
    let url = if url.trim().is_empty() {
        default
    } else {
        url.trim()
    };
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

impl Google {
    /// Loads the key (refusing loose permissions) and builds the clients.
    /// An empty `google.service_account_key_file` means an OAuth-only
    /// deployment: delegated mailboxes and the Directory are unavailable.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Google>> {
        let path = &settings.google.service_account_key_file;
        let account = if path.as_os_str().is_empty() {
            None
        } else {
            Some(ServiceAccount::load(path)?)
        };
        Ok(Self::build(account, settings))
    }

    pub fn new(account: ServiceAccount, settings: &Settings) -> Arc<Google> {
        Self::build(Some(account), settings)
    }

    fn build(account: Option<ServiceAccount>, settings: &Settings) -> Arc<Google> {
        let g = &settings.google;
        let tokens =
            account.map(|a| Arc::new(TokenSource::new(a, g.scopes.clone(), g.request_timeout)));
        let executor = hyper_util::rt::TokioExecutor::new();
        let gmail_client = hyper_util::client::legacy::Client::builder(executor.clone())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(auth::connector());
        let directory_client =
            hyper_util::client::legacy::Client::builder(executor).build(auth::connector());
        Arc::new(Google {
            tokens,
            quota: QuotaLimiter::new(&settings.sync),
            retry: RetryPolicy {
                max_attempts: g.max_attempts,
                initial_backoff: g.initial_backoff,
                max_backoff: g.max_backoff,
                request_timeout: g.request_timeout,
            },
            scopes: g.scopes.clone(),
            message_format: settings.sync.message_format,
            gmail_base_url: with_slash(&g.gmail_base_url, GMAIL_URL),
            directory_base_url: with_slash(&g.directory_base_url, DIRECTORY_URL),
            admin_subject: g.admin_subject.clone(),
            gmail_client,
            directory_client,
            hub_scopes: Arc::new(g.scopes.clone()),
        })
    }

    /// The service account, unless this is an OAuth-only deployment.
    pub fn account(&self) -> Option<&ServiceAccount> {
        self.tokens.as_deref().map(TokenSource::account)
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    pub fn quota_limiter(&self) -> &QuotaLimiter {
        &self.quota
    }

    /// The domain-wide-delegation token source; an error naming the missing
    /// key in an OAuth-only deployment.
    pub fn tokens(&self) -> Result<&Arc<TokenSource>, error::GoogleError> {
        self.tokens.as_ref().ok_or_else(|| {
            error::GoogleError::new(
                error::ErrorClass::Fatal,
                auth::TOKEN_METHOD,
                "google.service_account_key_file is empty: domain-wide delegation (and the Directory) is not configured",
            )
        })
    }

    pub(crate) fn directory_base_url(&self) -> &str {
        &self.directory_base_url
    }

    pub(crate) fn directory_http(&self) -> &directory::HttpClient {
        &self.directory_client
    }

    pub fn admin_subject(&self) -> &str {
        &self.admin_subject
    }

    /// The Gmail API impersonating `mailbox`, counting into `stats`. A hub is
    /// cheap to make (the connection pool and the token cache are shared), so
    /// none is kept per mailbox.
    pub async fn gmail(
        self: &Arc<Self>,
        mailbox: &MailboxAddress,
        stats: Arc<CallStats>,
    ) -> Result<MailboxGmail, error::GoogleError> {
        let auth = HubAuth {
            tokens: self.tokens()?.clone(),
            subject: Some(mailbox.clone()),
            scopes: self.hub_scopes.clone(),
        };
        Ok(MailboxGmail::new(
            self.clone(),
            mailbox.clone(),
            Arc::new(self.hub(auth)),
            stats,
        ))
    }

    /// The Gmail API for a mailbox its owner authorized: tokens come from the
    /// stored consent. Quota, retry and classification are the same as for
    /// delegated mailboxes; only the token source differs.
    pub fn gmail_oauth(
        self: &Arc<Self>,
        mailbox: &MailboxAddress,
        tokens: Arc<dyn ConsentTokens>,
        stats: Arc<CallStats>,
    ) -> MailboxGmail {
        let auth = ConsentHubAuth {
            tokens: tokens.clone(),
            mailbox: mailbox.clone(),
        };
        MailboxGmail::new(
            self.clone(),
            mailbox.clone(),
            Arc::new(self.hub(auth)),
            stats,
        )
        .with_oauth(tokens)
    }

    fn hub(&self, auth: impl google_gmail1::common::GetToken + 'static) -> Gmail<Connector> {
        let mut hub = Gmail::new(self.gmail_client.clone(), auth);
        hub.base_url(self.gmail_base_url.clone());
        hub.root_url(self.gmail_base_url.clone());
        hub
    }

    /// Forgets the cached token and quota state of a mailbox (after
    /// revocation or when it is no longer subscribed).
    pub fn forget(&self, mailbox: &MailboxAddress) {
        if let Some(t) = &self.tokens {
            t.evict(mailbox.as_str());
        }
        self.quota.forget(mailbox.as_str());
    }
}
