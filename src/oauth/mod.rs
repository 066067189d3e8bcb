//! Per-mailbox OAuth consent: the second way to authorize a mailbox, beside
//! domain-wide delegation.
//!
//! The mailbox owner opens `/oauth/authorize?mailbox=…` on the daemon's
//! consent listener, approves Google's consent screen, and comes back to
//! `/oauth/callback`; the refresh token is sealed with the key from
//! `oauth.token_encryption_key_file` and stored in `oauth_tokens`. The
//! subscription (created pending if there was none) still needs an
//! operator's approval: consent alone never starts ingestion, and it never
//! switches a subscription's mode (a consent for a delegated mailbox is kept,
//! not used, until an operator's `subscriptions set-auth`). The sync engine
//! then asks [`tokens::OAuthTokens`] instead of the DWD token source.
//!
//! A refused consent revokes nothing (revoking any token of a user ends
//! their whole authorization of the client, a working consent included);
//! another Google account with the same address (a different `sub`)
//! replaces no stored consent until an operator forgets it; a disconnect
//! link is signed over the consent it was issued for and acts on no other.
//!
//! - [`keys`]: sealing and signing with the at-rest key (rotation-aware).
//! - [`accounts`]: Google's authorization, token, revocation and userinfo calls.
//! - [`tokens`]: per-mailbox access-token cache and the google-gmail1 adapter.
//! - [`web`]: the consent pages.

pub mod accounts;
pub mod keys;
pub mod tokens;
pub mod web;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use self::accounts::{AccountsClient, Endpoints};
use self::keys::{Purpose, TokenKeys};
use self::tokens::OAuthTokens;
use crate::config::{Policy, Settings};
use crate::domain::{AuthMode, MailboxAddress, Operator};
use crate::events;
use crate::google::error::{ErrorClass, GoogleError};
use crate::store::{
    ConsentRemoval, ConsentWrite, OAuthConsent, OAuthToken, PurgeCounts, Store, StoreError,
    Subscription,
};

/// Scopes asked for besides the Gmail ones: the identity check needs them.
pub const IDENTITY_SCOPES: &[&str] = &["openid", "email"];

/// The consent flow and the OAuth token source of one replica.
pub struct OAuthService {
    client: Arc<AccountsClient>,
    keys: Arc<TokenKeys>,
    tokens: Arc<OAuthTokens>,
    store: Store,
    policy: Arc<Policy>,
    public_base: String,
    gmail_scopes: Vec<String>,
    state_ttl: chrono::Duration,
    link_ttl: chrono::Duration,
    /// `integration.enabled`: when false no new consent is taken (disconnecting still works).
    integration_enabled: bool,
}

impl std::fmt::Debug for OAuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthService")
            .field("client", &self.client)
            .field("keys", &self.keys)
            .field("public_base", &self.public_base)
            .finish_non_exhaustive()
    }
}

/// The consent flow's `state`: sealed (encrypted and authenticated), so the
/// PKCE verifier inside stays secret and nothing in it can be altered.
#[derive(Serialize, Deserialize)]
struct FlowState {
    /// The mailbox the link was made for.
    m: String,
    /// PKCE code verifier.
    v: String,
    /// Browser binding: must equal the cookie set when the flow began.
    n: String,
    /// Expiry, Unix seconds.
    e: i64,
}

/// Why a consent was not stored, phrased for the person in front of the browser.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("this service is switched off by its administrator; nothing can be authorized now")]
    Disabled,
    #[error("this mailbox address is not valid: {0}")]
    BadMailbox(String),
    #[error("{0} is not in a domain this service may read")]
    ForeignDomain(String),
    #[error("this authorization link is not valid (it was altered or is not ours); start again")]
    InvalidState,
    #[error("this authorization link has expired; start again")]
    ExpiredState,
    #[error("this authorization was started in another browser; start again in this one")]
    OtherBrowser,
    #[error("Google did not grant access ({0})")]
    Refused(String),
    #[error(
        "you signed in as {got}, but this link is for {expected}: sign in as {expected} and start again"
    )]
    WrongAccount { expected: String, got: String },
    #[error("Google did not confirm the account's email address")]
    Unverified,
    #[error("{}", wrong_workspace(expected, got.as_deref()))]
    WrongWorkspace {
        /// The mailbox's domain.
        expected: String,
        /// The account's Workspace domain (`hd`), `None` for an account of no Workspace.
        got: Option<String>,
    },
    #[error(
        "{0} is already authorized by a different Google account with this address; \
         nothing was changed: an operator must remove that authorization first \
         (`subscriptions forget-consent`)"
    )]
    OtherAccount(MailboxAddress),
    #[error("the read-only Gmail permission was not granted; start again and allow it")]
    ScopeMissing,
    #[error("Google returned no refresh token; start again")]
    NoRefreshToken,
    #[error("Google could not be reached ({0}); try again in a few minutes")]
    Google(GoogleError),
    #[error("the consent could not be saved; try again in a few minutes")]
    Store(#[from] StoreError),
}

impl ConsentError {
    /// Bounded label for the consent metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::BadMailbox(_) => "bad_mailbox",
            Self::ForeignDomain(_) => "foreign_domain",
            Self::InvalidState => "invalid_state",
            Self::ExpiredState => "expired_state",
            Self::OtherBrowser => "other_browser",
            Self::Refused(_) => "refused",
            Self::WrongAccount { .. } => "wrong_account",
            Self::Unverified => "unverified",
            Self::WrongWorkspace { .. } => "wrong_workspace",
            Self::OtherAccount(_) => "other_account",
            Self::ScopeMissing => "scope_missing",
            Self::NoRefreshToken => "no_refresh_token",
            Self::Google(_) => "google_error",
            Self::Store(_) => "store_error",
        }
    }

    /// The HTTP status of the page that shows it.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadMailbox(_) | Self::InvalidState | Self::ExpiredState | Self::OtherBrowser => {
                400
            }
            Self::ForeignDomain(_)
            | Self::Refused(_)
            | Self::WrongAccount { .. }
            | Self::Unverified
            | Self::WrongWorkspace { .. }
            | Self::OtherAccount(_)
            | Self::ScopeMissing => 403,
            Self::NoRefreshToken | Self::Google(_) => 502,
            Self::Store(_) | Self::Disabled => 503,
        }
    }
}

fn wrong_workspace(expected: &str, got: Option<&str>) -> String {
    match got {
        Some(got) => format!(
            "you signed in with an account of the {got} Google Workspace, but this mailbox belongs to {expected}: sign in with your {expected} account"
        ),
        None => format!(
            "you signed in with an account that belongs to no Google Workspace (a personal Google Account with this address?), but this mailbox belongs to the {expected} Workspace: sign in with your {expected} work account"
        ),
    }
}

/// Where a consent flow begins: the browser goes to `location` carrying
/// `nonce` in a cookie.
#[derive(Debug)]
pub struct FlowStart {
    pub location: String,
    pub nonce: String,
}

/// What a completed consent did.
#[derive(Debug)]
pub struct ConsentOutcome {
    pub subscription: Subscription,
    pub disconnect_link: String,
}

/// What a disconnect did.
#[derive(Debug)]
pub struct DisconnectOutcome {
    pub subscription: Subscription,
    /// False when no token was stored (nothing to revoke).
    pub revoked: bool,
    pub purged: Option<PurgeCounts>,
}

/// Why a disconnect was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    #[error("no subscription for {0}")]
    NotFound(MailboxAddress),
    #[error(
        "{0} is read under domain-wide delegation, not an OAuth consent, so disconnecting changes nothing: use `subscriptions pause`, or `subscriptions forget-consent` to delete a consent kept for it"
    )]
    NotOAuth(MailboxAddress),
    #[error("no OAuth consent stored for {0}")]
    NoConsent(MailboxAddress),
    #[error(
        "this link was issued for an earlier authorization of {0}, which has since been replaced or removed: it changes nothing"
    )]
    Superseded(MailboxAddress),
    #[error("revoking the token at Google failed ({0}); nothing was changed, try again")]
    Revoke(GoogleError),
    #[error("the stored token cannot be opened ({0}); nothing was changed")]
    Sealed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn now_unix() -> i64 {
    Utc::now().timestamp()
}

fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a disconnect link signs: the mailbox, the consent it was issued for
/// and its expiry (`v2`: links of the first format named no consent).
fn disconnect_message(mailbox: &str, consent_id: &str, expires: i64) -> Vec<u8> {
    format!("disconnect/v2\0{mailbox}\0{consent_id}\0{expires}").into_bytes()
}

/// The client secret from `oauth.client_secret_file`: the bare secret, or the
/// client's JSON as Google Cloud's console downloads it (and `gmail-ingest
/// emulator --write-oauth-client` writes it): `{"web": {"client_id",
/// "client_secret", …}}`, whose client must be `oauth.client_id`.
fn client_secret(text: SecretString, client_id: &str) -> anyhow::Result<SecretString> {
    let raw = text.expose_secret();
    if !raw.starts_with('{') {
        return Ok(text);
    }
    let json: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| anyhow::anyhow!("oauth.client_secret_file is not valid JSON: {e}"))?;
    let client = json
        .get("web")
        .or_else(|| json.get("installed"))
        .unwrap_or(&json);
    let Some(secret) = client["client_secret"].as_str().filter(|s| !s.is_empty()) else {
        anyhow::bail!("oauth.client_secret_file holds JSON without a client_secret");
    };
    match client["client_id"].as_str() {
        Some(id) if id != client_id => anyhow::bail!(
            "oauth.client_secret_file is for the client {id}, not oauth.client_id {client_id}"
        ),
        _ => Ok(SecretString::from(secret.to_owned())),
    }
}

impl OAuthService {
    /// Builds the service when `oauth.enabled`; reads the client secret and
    /// the key file (both must be private files).
    pub fn from_settings(
        settings: &Settings,
        store: Store,
        policy: Arc<Policy>,
    ) -> anyhow::Result<Option<Arc<OAuthService>>> {
        let o = &settings.oauth;
        if !o.enabled {
            return Ok(None);
        }
        let secret = client_secret(
            crate::secret_file::read_secret(
                Path::new(&o.client_secret_file),
                "oauth.client_secret_file",
            )?,
            o.client_id.trim(),
        )?;
        let keys = Arc::new(TokenKeys::load(Path::new(&o.token_encryption_key_file))?);
        let client = Arc::new(AccountsClient::new(
            Endpoints::new(&o.accounts_base_url),
            o.client_id.trim().to_owned(),
            secret,
            settings.google.request_timeout,
        ));
        let tokens = Arc::new(OAuthTokens::new(
            store.clone(),
            keys.clone(),
            client.clone(),
        ));
        Ok(Some(Arc::new(OAuthService {
            client,
            keys,
            tokens,
            store,
            policy,
            public_base: o.public_base_url.trim().trim_end_matches('/').to_owned(),
            gmail_scopes: settings.google.scopes.clone(),
            state_ttl: chrono::Duration::from_std(o.state_ttl)
                .context("oauth.state_ttl is too large")?,
            link_ttl: chrono::Duration::from_std(o.disconnect_link_ttl)
                .context("oauth.disconnect_link_ttl is too large")?,
            integration_enabled: settings.integration.enabled,
        })))
    }

    pub fn tokens(&self) -> &Arc<OAuthTokens> {
        &self.tokens
    }

    pub fn accounts(&self) -> &AccountsClient {
        &self.client
    }

    /// `public_base_url` + `/oauth/callback`: must be registered as an
    /// authorized redirect URI of the OAuth client.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_base)
    }

    /// The link an operator sends a mailbox owner to start the consent.
    pub fn authorize_link(&self, mailbox: &MailboxAddress) -> String {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("mailbox", mailbox.as_str())
            .finish();
        format!("{}/oauth/authorize?{q}", self.public_base)
    }

    fn scopes(&self) -> Vec<String> {
        let mut s = self.gmail_scopes.clone();
        s.extend(IDENTITY_SCOPES.iter().map(|x| (*x).to_owned()));
        s
    }

    fn check_mailbox(&self, raw: &str) -> Result<MailboxAddress, ConsentError> {
        let mailbox =
            MailboxAddress::parse(raw).map_err(|e| ConsentError::BadMailbox(e.to_string()))?;
        if !self.policy.domain_allowed(&mailbox) {
            return Err(ConsentError::ForeignDomain(mailbox.to_string()));
        }
        Ok(mailbox)
    }

    /// Step 1: checks the mailbox and makes Google's authorization URL with
    /// a sealed state, a PKCE challenge and a browser-binding nonce.
    pub fn begin(&self, mailbox: &str) -> Result<FlowStart, ConsentError> {
        if !self.integration_enabled {
            return Err(ConsentError::Disabled);
        }
        let mailbox = self.check_mailbox(mailbox)?;
        let verifier = self.keys.random_token(32);
        let nonce = self.keys.random_token(16);
        let state = FlowState {
            m: mailbox.to_string(),
            v: verifier.clone(),
            n: nonce.clone(),
            e: now_unix() + self.state_ttl.num_seconds(),
        };
        // Serialising four strings and an integer cannot fail.
        let json = serde_json::to_vec(&state).unwrap_or_default();
        let sealed = self.keys.seal(Purpose::State, "", &json);
        let location = self.client.authorization_url(
            &self.redirect_uri(),
            &self.scopes(),
            &sealed,
            &pkce_challenge(&verifier),
            mailbox.as_str(),
        );
        Ok(FlowStart { location, nonce })
    }

    pub fn state_ttl(&self) -> chrono::Duration {
        self.state_ttl
    }

    /// Seals a consent's result page for the owner's browser (see `web`).
    fn seal_result(&self, page: &[u8]) -> String {
        self.keys.seal(Purpose::ResultPage, "", page)
    }

    fn open_result(&self, sealed: &str) -> Option<Vec<u8>> {
        self.keys.open(Purpose::ResultPage, "", sealed).ok()
    }

    fn open_state(
        &self,
        state: &str,
        cookie_nonce: Option<&str>,
    ) -> Result<FlowState, ConsentError> {
        let json = self
            .keys
            .open(Purpose::State, "", state)
            .map_err(|_| ConsentError::InvalidState)?;
        let st: FlowState =
            serde_json::from_slice(&json).map_err(|_| ConsentError::InvalidState)?;
        if st.e < now_unix() {
            return Err(ConsentError::ExpiredState);
        }
        match cookie_nonce {
            Some(n) if constant_time_eq(n.as_bytes(), st.n.as_bytes()) => Ok(st),
            _ => Err(ConsentError::OtherBrowser),
        }
    }

    /// Step 2, Google's redirect back: checks the state, exchanges the code,
    /// checks the identity, stores the sealed refresh token.
    pub async fn complete(
        &self,
        state: &str,
        cookie_nonce: Option<&str>,
        code: Option<&str>,
        error: Option<&str>,
    ) -> Result<ConsentOutcome, ConsentError> {
        if !self.integration_enabled {
            return Err(ConsentError::Disabled);
        }
        let st = self.open_state(state, cookie_nonce)?;
        let expected = self.check_mailbox(&st.m)?;
        if let Some(err) = error {
            return Err(ConsentError::Refused(err.chars().take(100).collect()));
        }
        let code = code.ok_or_else(|| ConsentError::Refused("no code".to_owned()))?;
        let grant = self
            .client
            .exchange_code(code, &st.v, &self.redirect_uri())
            .await
            .map_err(|e| match e.class {
                ErrorClass::AuthRevoked | ErrorClass::Fatal => {
                    ConsentError::Refused(e.reason.clone().unwrap_or_else(|| e.message.clone()))
                }
                _ => ConsentError::Google(e),
            })?;
        // A refused grant is discarded (dropped here), never revoked: at
        // Google, revoking any token of a user ends their whole authorization
        // of this client, so a consent that works today would die with it.
        self.accept(&expected, &grant).await
    }

    async fn accept(
        &self,
        expected: &MailboxAddress,
        grant: &accounts::CodeGrant,
    ) -> Result<ConsentOutcome, ConsentError> {
        // Google may let the user pick another account, and granular consent
        // lets them untick the Gmail scope.
        if !self.gmail_scopes.iter().all(|s| grant.scopes.contains(s)) {
            return Err(ConsentError::ScopeMissing);
        }
        let info = self
            .client
            .userinfo(&grant.access_token)
            .await
            .map_err(ConsentError::Google)?;
        let email = info.email.clone().unwrap_or_default();
        let got = MailboxAddress::parse(&email).map_err(|_| ConsentError::WrongAccount {
            expected: expected.to_string(),
            got: if email.is_empty() {
                "an account without an email address".to_owned()
            } else {
                email.clone()
            },
        })?;
        if &got != expected {
            return Err(ConsentError::WrongAccount {
                expected: expected.to_string(),
                got: got.to_string(),
            });
        }
        if !info.email_verified {
            return Err(ConsentError::Unverified);
        }
        // The Workspace the account belongs to: a personal Google Account can
        // carry a work address too, and has no `hd`.
        let hd = info
            .hd
            .as_deref()
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty());
        if hd.as_deref() != Some(expected.domain()) {
            return Err(ConsentError::WrongWorkspace {
                expected: expected.domain().to_owned(),
                got: hd,
            });
        }
        if !self.policy.domain_allowed(&got) {
            return Err(ConsentError::ForeignDomain(got.to_string()));
        }
        let refresh = grant
            .refresh_token
            .as_ref()
            .ok_or(ConsentError::NoRefreshToken)?;
        let sealed = self.keys.seal(
            Purpose::RefreshToken,
            expected.as_str(),
            refresh.expose_secret().as_bytes(),
        );
        let actor = owner(expected);
        let consent_id = self.keys.random_token(16);
        let written = self
            .store
            .record_oauth_consent(&OAuthConsent {
                mailbox: expected.clone(),
                refresh_token_ciphertext: sealed,
                key_id: self.keys.current_id().to_owned(),
                scopes: grant.scopes.join(" "),
                google_subject: Some(info.sub.clone()),
                consent_id: consent_id.clone(),
                actor,
            })
            .await?;
        let subscription = match written {
            ConsentWrite::Stored(s) => *s,
            ConsentWrite::OtherAccount { .. } => {
                return Err(ConsentError::OtherAccount(expected.clone()));
            }
        };
        self.tokens.evict(expected.as_str());
        Ok(ConsentOutcome {
            subscription,
            disconnect_link: self.disconnect_link(expected, &consent_id),
        })
    }

    /// A signed, expiring link with which the mailbox owner can withdraw the
    /// consent `consent_id` (and no other).
    pub fn disconnect_link(&self, mailbox: &MailboxAddress, consent_id: &str) -> String {
        let expires = now_unix() + self.link_ttl.num_seconds();
        let sig = self
            .keys
            .sign(&disconnect_message(mailbox.as_str(), consent_id, expires));
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("mailbox", mailbox.as_str())
            .append_pair("consent", consent_id)
            .append_pair("token", &format!("{expires}.{sig}"))
            .finish();
        format!("{}/oauth/disconnect?{q}", self.public_base)
    }

    /// The disconnect link for the consent stored now, if there is one.
    pub async fn current_disconnect_link(
        &self,
        mailbox: &MailboxAddress,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .oauth_token(mailbox)
            .await?
            .map(|t| self.disconnect_link(mailbox, &t.consent_id)))
    }

    /// Checks a disconnect link's `mailbox`, `consent` and `token`: the
    /// mailbox and the consent it was issued for.
    pub fn verify_disconnect_link(
        &self,
        mailbox: &str,
        consent_id: &str,
        token: &str,
    ) -> Option<(MailboxAddress, String)> {
        let mailbox = MailboxAddress::parse(mailbox).ok()?;
        if consent_id.is_empty() {
            return None;
        }
        let (expires, sig) = token.split_once('.')?;
        let expires: i64 = expires.parse().ok()?;
        if expires < now_unix() {
            return None;
        }
        self.keys
            .verify(
                &disconnect_message(mailbox.as_str(), consent_id, expires),
                sig,
            )
            .then(|| (mailbox, consent_id.to_owned()))
    }

    /// What a disconnect would act on, or why it would change nothing: the
    /// subscription must be an OAuth one and, for an owner's link, the
    /// stored consent the one the link was issued for. Changes nothing.
    pub async fn check_disconnect(
        &self,
        mailbox: &MailboxAddress,
        link_consent: Option<&str>,
    ) -> Result<(Subscription, Option<OAuthToken>), DisconnectError> {
        let sub = self
            .store
            .get_subscription(mailbox)
            .await?
            .ok_or_else(|| DisconnectError::NotFound(mailbox.clone()))?;
        if sub.auth_mode != AuthMode::OAuth {
            return Err(DisconnectError::NotOAuth(mailbox.clone()));
        }
        let stored = self.store.oauth_token(mailbox).await?;
        if let Some(id) = link_consent
            && stored.as_ref().is_none_or(|t| t.consent_id != id)
        {
            return Err(DisconnectError::Superseded(mailbox.clone()));
        }
        Ok((sub, stored))
    }

    /// Revokes a stored consent's refresh token at Google.
    async fn revoke_stored(&self, t: &OAuthToken) -> Result<(), DisconnectError> {
        let plain = self
            .keys
            .open(
                Purpose::RefreshToken,
                t.mailbox.as_str(),
                &t.refresh_token_ciphertext,
            )
            .map_err(|e| DisconnectError::Sealed(e.to_string()))?;
        let token = SecretString::from(String::from_utf8_lossy(&plain).into_owned());
        self.client
            .revoke(&token)
            .await
            .map_err(DisconnectError::Revoke)
    }

    /// `subscriptions forget-consent`: revokes the stored consent at Google
    /// and deletes it, audited, leaving the subscription's status and mode
    /// alone; afterwards a consent of another Google account with the same
    /// address may be stored. If Google cannot be told, nothing changes.
    pub async fn forget_consent(
        &self,
        mailbox: &MailboxAddress,
        actor: &Operator,
    ) -> Result<Subscription, DisconnectError> {
        if self.store.get_subscription(mailbox).await?.is_none() {
            return Err(DisconnectError::NotFound(mailbox.clone()));
        }
        let stored = self
            .store
            .oauth_token(mailbox)
            .await?
            .ok_or_else(|| DisconnectError::NoConsent(mailbox.clone()))?;
        self.revoke_stored(&stored).await?;
        let reason = format!(
            "stored OAuth consent (Google account {}) revoked at Google and deleted; a new consent may replace it",
            stored.google_subject.as_deref().unwrap_or("unknown")
        );
        let subscription = self
            .store
            .remove_oauth_consent(&ConsentRemoval {
                mailbox: mailbox.clone(),
                consent_id: Some(stored.consent_id.clone()),
                actor: actor.clone(),
                action: "forget-consent".to_owned(),
                reason,
                pause: false,
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => DisconnectError::NoConsent(mailbox.clone()),
                other => DisconnectError::Store(other),
            })?;
        self.tokens.evict(mailbox.as_str());
        Ok(subscription)
    }

    /// Revokes the mailbox's token at Google, deletes it, pauses the
    /// subscription and records the event; with `purge`, deletes the
    /// mailbox's ingested data too. If Google cannot be told, nothing changes.
    pub async fn disconnect(
        &self,
        mailbox: &MailboxAddress,
        actor: &Operator,
        link_consent: Option<&str>,
        purge: bool,
    ) -> Result<DisconnectOutcome, DisconnectError> {
        let by_owner = link_consent.is_some();
        let (_, stored) = self.check_disconnect(mailbox, link_consent).await?;
        if let Some(t) = &stored {
            self.revoke_stored(t).await?;
        }
        let revoked = stored.is_some();
        let reason = if by_owner {
            "disconnected by the mailbox owner; consent revoked at Google"
        } else {
            "disconnected by an operator; consent revoked at Google"
        };
        let subscription = self
            .store
            .remove_oauth_consent(&ConsentRemoval {
                mailbox: mailbox.clone(),
                consent_id: stored.as_ref().map(|t| t.consent_id.clone()),
                actor: actor.clone(),
                action: "disconnect".to_owned(),
                reason: reason.to_owned(),
                pause: true,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) | StoreError::NotFound(_) if by_owner => {
                    DisconnectError::Superseded(mailbox.clone())
                }
                other => DisconnectError::Store(other),
            })?;
        self.tokens.evict(mailbox.as_str());
        let purged = if purge {
            Some(self.store.purge_mailbox(mailbox).await?)
        } else {
            None
        };
        events::OAuthDisconnected {
            mailbox,
            by: if by_owner { "owner" } else { "operator" },
            purged: purge,
        }
        .emit();
        Ok(DisconnectOutcome {
            subscription,
            revoked,
            purged,
        })
    }

    /// Re-seals every stored token not sealed with the current key (after a
    /// key rotation). A token that cannot be opened (sealed under a key the
    /// key file no longer holds, or corrupted) is left as it is and reported,
    /// never a reason to fail: that one mailbox cannot be read until its key
    /// is put back or its owner authorizes again (its passes end in
    /// `auth_failed` with [`AuthCause::ConsentUnreadable`](crate::google::error::AuthCause)),
    /// and every other mailbox keeps going. Only a database error fails.
    pub async fn reseal_stale_tokens(&self) -> anyhow::Result<ResealReport> {
        let mut report = ResealReport::default();
        for t in self.store.list_oauth_tokens().await? {
            if TokenKeys::sealed_key_id(&t.refresh_token_ciphertext) == Some(self.keys.current_id())
            {
                // Sealed under the current key: a corrupted one is found by
                // its first pass, which puts it in auth_failed.
                continue;
            }
            let plain = match self.keys.open(
                Purpose::RefreshToken,
                t.mailbox.as_str(),
                &t.refresh_token_ciphertext,
            ) {
                Ok(p) => p,
                Err(e) => {
                    report.unreadable.push((t.mailbox.clone(), e));
                    continue;
                }
            };
            let sealed = self
                .keys
                .seal(Purpose::RefreshToken, t.mailbox.as_str(), &plain);
            if self
                .store
                .replace_oauth_ciphertext(
                    &t.mailbox,
                    &t.refresh_token_ciphertext,
                    &sealed,
                    self.keys.current_id(),
                )
                .await
                .with_context(|| format!("re-sealing the refresh token of {}", t.mailbox))?
            {
                report.resealed += 1;
            }
        }
        Ok(report)
    }
}

/// What [`OAuthService::reseal_stale_tokens`] did.
#[derive(Debug, Default)]
pub struct ResealReport {
    /// Tokens re-sealed under the current key.
    pub resealed: usize,
    /// Mailboxes whose stored token could not be opened, and why.
    pub unreadable: Vec<(MailboxAddress, keys::OpenError)>,
}

/// The actor recorded for a mailbox owner's own actions.
pub fn owner(mailbox: &MailboxAddress) -> Operator {
    // "owner " + an address of at most 254 characters can exceed the 200
    // characters an operator may have; fall back to the system name then.
    Operator::parse(&format!("owner {mailbox}")).unwrap_or_else(|_| Operator::system())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_the_rfc_7636_s256_transform() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_client_secret_file_is_a_bare_secret_or_googles_client_json() {
        let id = "1-x.apps.googleusercontent.com";
        let read = |text: &str| client_secret(SecretString::from(text.to_owned()), id);
        assert_eq!(read("GOCSPX-abc").unwrap().expose_secret(), "GOCSPX-abc");
        let json = format!(r#"{{"web":{{"client_id":"{id}","client_secret":"GOCSPX-def"}}}}"#);
        assert_eq!(read(&json).unwrap().expose_secret(), "GOCSPX-def");
        let other = r#"{"web":{"client_id":"2-y.apps.googleusercontent.com","client_secret":"GOCSPX-ghi"}}"#;
        let err = read(other).unwrap_err().to_string();
        assert!(err.contains("not oauth.client_id"), "{err}");
        assert!(
            !err.contains("GOCSPX"),
            "the secret is not in the error: {err}"
        );
        assert!(read(r#"{"web":{}}"#).is_err());
        assert!(read("{not json").is_err());
    }
}
