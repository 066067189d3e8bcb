//! Google's OAuth 2.0 endpoints for the per-mailbox (web-server) flow: the
//! authorization URL, the `authorization_code` and `refresh_token` grants,
//! revocation and the userinfo identity check.
//!
//! yup-oauth2's authorized-user flow has Google's token URL built in, so it
//! cannot be pointed at the emulator, and its installed-app flow runs its own
//! redirect listener: neither fits a daemon that serves the callback itself.
//! These four calls are small, so they are written here on the same HTTP
//! stack (connector, timeouts) and error classification as the rest of
//! `google`. No token ever appears in an error or a log line.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::google::auth::connector;
use crate::google::directory::HttpClient;
use crate::google::error::{AuthCause, ErrorClass, GoogleError, classify_token_error};

pub const AUTHORIZE: &str = "oauth2.authorize";
pub const TOKEN: &str = "oauth2.token";
pub const REVOKE: &str = "oauth2.revoke";
pub const USERINFO: &str = "oauth2.userinfo";

/// Google's endpoints, or the emulator's when `oauth.accounts_base_url` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorization: String,
    pub token: String,
    pub revocation: String,
    pub userinfo: String,
}

impl Endpoints {
    pub fn new(accounts_base_url: &str) -> Endpoints {
        let base = accounts_base_url.trim().trim_end_matches('/');
        if base.is_empty() {
            return Endpoints {
                authorization: "https://accounts.google.com/o/oauth2/v2/auth".to_owned(),
                token: "https://oauth2.googleapis.com/token".to_owned(),
                revocation: "https://oauth2.googleapis.com/revoke".to_owned(),
                userinfo: "https://openidconnect.googleapis.com/v1/userinfo".to_owned(),
            };
        }
        Endpoints {
            authorization: format!("{base}/o/oauth2/v2/auth"),
            token: format!("{base}/token"),
            revocation: format!("{base}/revoke"),
            userinfo: format!("{base}/oauth2/v3/userinfo"),
        }
    }
}

/// The answer to a code exchange. `Debug` hides the tokens.
pub struct CodeGrant {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for CodeGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeGrant")
            .field("scopes", &self.scopes)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A fresh access token and when to stop using it.
pub struct AccessToken {
    pub token: SecretString,
    pub expires_in: Duration,
}

/// The identity behind an access token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserInfo {
    pub sub: String,
    pub email: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub email_verified: bool,
    pub hd: Option<String>,
}

fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        B(bool),
        S(String),
    }
    Ok(match B::deserialize(d)? {
        B::B(b) => b,
        B::S(s) => s == "true",
    })
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    scope: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The client for one registered OAuth web client.
pub struct AccountsClient {
    endpoints: Endpoints,
    client_id: String,
    client_secret: SecretString,
    http: HttpClient,
    timeout: Duration,
}

impl std::fmt::Debug for AccountsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsClient")
            .field("endpoints", &self.endpoints)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl AccountsClient {
    pub fn new(
        endpoints: Endpoints,
        client_id: String,
        client_secret: SecretString,
        timeout: Duration,
    ) -> AccountsClient {
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(connector());
        AccountsClient {
            endpoints,
            client_id,
            client_secret,
            http,
            timeout,
        }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Where to send the mailbox owner's browser.
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        scopes: &[String],
        state: &str,
        code_challenge: &str,
        login_hint: &str,
    ) -> String {
        let query = form(&[
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("scope", &scopes.join(" ")),
            ("state", state),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("prompt", "consent"),
            ("login_hint", login_hint),
            ("include_granted_scopes", "false"),
        ]);
        format!("{}?{query}", self.endpoints.authorization)
    }

    /// One form POST; returns (status, body). Transport trouble is retryable.
    async fn post_form(
        &self,
        method: &'static str,
        url: &str,
        body: String,
    ) -> Result<(u16, Bytes), GoogleError> {
        let req = http::Request::post(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| GoogleError::new(ErrorClass::Fatal, method, e.to_string()))?;
        self.send(method, req).await
    }

    async fn send(
        &self,
        method: &'static str,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), GoogleError> {
        let call = async {
            let resp = self.http.request(req).await.map_err(|e| {
                GoogleError::new(ErrorClass::Retryable, method, format!("transport: {e}"))
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    GoogleError::new(ErrorClass::Retryable, method, format!("transport: {e}"))
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| GoogleError::timeout(method, self.timeout))?
    }

    fn token_failure(status: u16, body: &TokenBody) -> GoogleError {
        let mut e = match body.error.as_deref() {
            Some(code) => classify_token_error(TOKEN, code, body.error_description.as_deref()),
            None if status >= 500 => {
                GoogleError::new(ErrorClass::Retryable, TOKEN, "token endpoint unavailable")
            }
            None => GoogleError::new(
                ErrorClass::Fatal,
                TOKEN,
                "token endpoint refused the request",
            ),
        };
        e.status = Some(status);
        e
    }

    /// The `authorization_code` grant, with the PKCE verifier.
    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
    ) -> Result<CodeGrant, GoogleError> {
        let body = form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", code_verifier),
            ("redirect_uri", redirect_uri),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ]);
        let (status, bytes) = self.post_form(TOKEN, &self.endpoints.token, body).await?;
        let parsed: TokenBody = serde_json::from_slice(&bytes).map_err(|_| {
            GoogleError::new(
                ErrorClass::Retryable,
                TOKEN,
                format!("token endpoint answered {status} without JSON"),
            )
        })?;
        if !(200..300).contains(&status) || parsed.access_token.is_none() {
            return Err(Self::token_failure(status, &parsed));
        }
        Ok(CodeGrant {
            access_token: SecretString::from(parsed.access_token.unwrap_or_default()),
            refresh_token: parsed.refresh_token.map(SecretString::from),
            scopes: parsed
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }

    /// The `refresh_token` grant. `invalid_grant` means the consent is gone
    /// (revoked by the owner, a password reset, or an admin removing the app).
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<AccessToken, GoogleError> {
        let body = form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ]);
        let (status, bytes) = self.post_form(TOKEN, &self.endpoints.token, body).await?;
        let parsed: TokenBody = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(_) if status >= 500 || status == 429 => {
                return Err(GoogleError::new(
                    ErrorClass::Retryable,
                    TOKEN,
                    format!("token endpoint answered {status}"),
                ));
            }
            Err(_) => {
                return Err(GoogleError::new(
                    ErrorClass::Fatal,
                    TOKEN,
                    format!("token endpoint answered {status} without JSON"),
                ));
            }
        };
        if (200..300).contains(&status)
            && let Some(access) = parsed.access_token
        {
            return Ok(AccessToken {
                token: SecretString::from(access),
                expires_in: Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
            });
        }
        if parsed.error.as_deref() == Some("invalid_grant") {
            let mut e = GoogleError::auth(
                TOKEN,
                AuthCause::ConsentRevoked,
                parsed
                    .error_description
                    .as_deref()
                    .unwrap_or("Token has been expired or revoked."),
            );
            e.status = Some(status);
            e.reason = Some("invalid_grant".to_owned());
            return Err(e);
        }
        Err(Self::token_failure(status, &parsed))
    }

    /// Revokes a refresh (or access) token and with it the whole grant.
    /// A token Google no longer knows counts as revoked.
    pub async fn revoke(&self, token: &SecretString) -> Result<(), GoogleError> {
        let body = form(&[("token", token.expose_secret())]);
        let (status, bytes) = self
            .post_form(REVOKE, &self.endpoints.revocation, body)
            .await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let parsed: Option<TokenBody> = serde_json::from_slice(&bytes).ok();
        match parsed.as_ref().and_then(|p| p.error.as_deref()) {
            Some("invalid_token") => Ok(()),
            _ if status >= 500 || status == 429 => Err(GoogleError::new(
                ErrorClass::Retryable,
                REVOKE,
                format!("revocation endpoint answered {status}"),
            )),
            Some(code) => Err(GoogleError::new(
                ErrorClass::Fatal,
                REVOKE,
                format!("revocation refused: {code}"),
            )),
            None => Err(GoogleError::new(
                ErrorClass::Fatal,
                REVOKE,
                format!("revocation endpoint answered {status}"),
            )),
        }
    }

    /// Who the access token belongs to (needs the `openid email` scopes).
    pub async fn userinfo(&self, access_token: &SecretString) -> Result<UserInfo, GoogleError> {
        let req = http::Request::get(&self.endpoints.userinfo)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", access_token.expose_secret()),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| GoogleError::new(ErrorClass::Fatal, USERINFO, e.to_string()))?;
        let (status, bytes) = self.send(USERINFO, req).await?;
        if !(200..300).contains(&status) {
            let class = if status >= 500 || status == 429 {
                ErrorClass::Retryable
            } else {
                ErrorClass::Fatal
            };
            let mut e = GoogleError::new(class, USERINFO, format!("userinfo answered {status}"));
            e.status = Some(status);
            return Err(e);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            GoogleError::new(
                ErrorClass::Fatal,
                USERINFO,
                format!("malformed userinfo: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_endpoints_by_default_and_the_emulator_layout_otherwise() {
        let g = Endpoints::new("");
        assert_eq!(g.token, "https://oauth2.googleapis.com/token");
        assert!(g.authorization.starts_with("https://accounts.google.com/"));
        let e = Endpoints::new("http://127.0.0.1:8080/");
        assert_eq!(e.token, "http://127.0.0.1:8080/token");
        assert_eq!(e.revocation, "http://127.0.0.1:8080/revoke");
    }

    #[test]
    fn the_authorization_url_asks_for_offline_access_with_pkce() {
        let c = AccountsClient::new(
            Endpoints::new(""),
            "123.apps.googleusercontent.com".into(),
            SecretString::from("s3cret".to_owned()),
            Duration::from_secs(5),
        );
        let url = c.authorization_url(
            "https://ingest.example.com/oauth/callback",
            &["openid".into(), "email".into()],
            "STATE",
            "CHALLENGE",
            "support@example.com",
        );
        let parsed = url::Url::parse(&url).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["prompt"], "consent");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["scope"], "openid email");
        assert_eq!(q["login_hint"], "support@example.com");
        assert!(
            !url.contains("s3cret"),
            "the client secret never goes to the browser"
        );
    }

    #[test]
    fn userinfo_accepts_google_string_booleans() {
        let u: UserInfo =
            serde_json::from_str(r#"{"sub":"1","email":"a@b.c","email_verified":"true"}"#).unwrap();
        assert!(u.email_verified);
    }
}
