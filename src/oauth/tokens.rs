//! Access tokens for OAuth mailboxes: the sealed refresh token is read from
//! the store, opened, and exchanged for an access token that is cached in
//! memory until a minute before it expires. One refresh at a time per
//! mailbox, however many fetches ask at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use super::accounts::{AccountsClient, TOKEN};
use super::keys::{Purpose, TokenKeys};
use crate::domain::MailboxAddress;
use crate::google::auth::{AccessTokenFuture, ConsentTokens};
use crate::google::error::{AuthCause, ErrorClass, GoogleError};
use crate::store::Store;

/// Refresh this long before Google's expiry, so no request carries a token
/// that expires in flight.
const EARLY_REFRESH: Duration = Duration::from_secs(60);

struct Cached {
    token: SecretString,
    good_until: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// The per-replica cache of OAuth access tokens.
pub struct OAuthTokens {
    store: Store,
    keys: Arc<TokenKeys>,
    client: Arc<AccountsClient>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokens").finish_non_exhaustive()
    }
}

impl OAuthTokens {
    pub fn new(store: Store, keys: Arc<TokenKeys>, client: Arc<AccountsClient>) -> OAuthTokens {
        OAuthTokens {
            store,
            keys,
            client,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, mailbox: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(mailbox.to_owned()).or_default().clone()
    }

    /// Forgets the cached access token (after a new consent, a disconnect or a 401).
    pub fn evict(&self, mailbox: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mailbox);
    }

    /// An access token for `mailbox`, refreshed when due.
    pub async fn access_token(&self, mailbox: &MailboxAddress) -> Result<String, GoogleError> {
        let slot = self.slot(mailbox.as_str());
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.good_until
        {
            return Ok(c.token.expose_secret().to_owned());
        }
        let stored = self
            .store
            .oauth_token(mailbox)
            .await
            .map_err(|e| GoogleError::new(ErrorClass::Retryable, TOKEN, format!("database: {e}")))?
            .ok_or_else(|| {
                GoogleError::auth(
                    TOKEN,
                    AuthCause::ConsentMissing,
                    format!("no OAuth consent stored for {mailbox}"),
                )
            })?;
        let refresh = self
            .keys
            .open(
                Purpose::RefreshToken,
                mailbox.as_str(),
                &stored.refresh_token_ciphertext,
            )
            .map_err(|e| {
                GoogleError::auth(
                    TOKEN,
                    AuthCause::ConsentUnreadable,
                    format!("the stored refresh token cannot be opened: {e}"),
                )
            })?;
        let refresh = SecretString::from(String::from_utf8(refresh).map_err(|_| {
            GoogleError::new(ErrorClass::Fatal, TOKEN, "stored refresh token is not text")
        })?);
        let fresh = self.client.refresh(&refresh).await?;
        let token = fresh.token.expose_secret().to_owned();
        *cached = Some(Cached {
            token: fresh.token,
            good_until: Instant::now() + fresh.expires_in.saturating_sub(EARLY_REFRESH),
        });
        Ok(token)
    }
}

impl ConsentTokens for OAuthTokens {
    fn access_token<'a>(&'a self, mailbox: &'a MailboxAddress) -> AccessTokenFuture<'a> {
        Box::pin(OAuthTokens::access_token(self, mailbox))
    }

    fn evict(&self, mailbox: &str) {
        OAuthTokens::evict(self, mailbox);
    }
}
