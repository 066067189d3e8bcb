//! The emulator's per-user OAuth 2.0 web-server flow (the daemon's per-mailbox consent mode),
//! driven by raw HTTP the way a web application drives Google: authorize, follow no redirect,
//! exchange the code with PKCE, call Gmail with the bearer token, refresh, revoke.

use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use gmail_emulator::OAuthClientInfo;
use google_gmail1::Gmail;
use google_gmail1::api::Scope;
use google_gmail1::hyper_rustls::HttpsConnectorBuilder;
use google_gmail1::hyper_util::client::legacy::Client;
use google_gmail1::hyper_util::rt::TokioExecutor;
use reqwest::Method;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::emulator_helpers::{GMAIL_METADATA, GMAIL_READONLY, TestEmulator, start};

const SUPPORT: &str = "support@example.com";
const BILLING: &str = "billing@example.com";
/// A registered-looking callback that already carries a query, which must survive.
const REDIRECT: &str = "https://ingest.example.net/oauth/callback?tenant=7";
const EMAIL: &str = "https://www.googleapis.com/auth/userinfo.email";
const VERIFIER: &str = "a-verifier-of-the-right-length-0123456789-abcdefghijklmnop";

fn challenge(verifier: &str) -> String {
    BASE64_URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An emulator plus a client that never follows redirects, like a browser seen from the app.
struct Flow {
    env: TestEmulator,
    client: OAuthClientInfo,
    http: reqwest::Client,
}

/// The authorization endpoint's answer.
struct Authorized {
    status: u16,
    /// The query of the redirect, when it redirected to `REDIRECT`.
    query: Vec<(String, String)>,
    body: String,
}

impl Authorized {
    fn get(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        assert_eq!(self.status, 302, "no redirect: {}", self.body);
        assert_eq!(self.get("error"), None, "refused: {:?}", self.query);
        self.get("code").expect("a code").to_owned()
    }
}

async fn flow() -> Flow {
    let env = start(1, 3, 5).await;
    Flow {
        client: env.emulator.oauth_client(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        env,
    }
}

impl Flow {
    fn accounts(&self, path: &str) -> String {
        format!("{}{path}", self.env.emulator.accounts_base_url())
    }

    /// The parameters a daemon sends for `login_hint`, with S256 PKCE and offline access.
    fn params(&self, login_hint: &str, scope: &str) -> Vec<(&'static str, String)> {
        vec![
            ("client_id", self.client.client_id.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("response_type", "code".to_owned()),
            ("scope", scope.to_owned()),
            ("state", "st/a te+1".to_owned()),
            ("code_challenge", challenge(VERIFIER)),
            ("code_challenge_method", "S256".to_owned()),
            ("access_type", "offline".to_owned()),
            ("include_granted_scopes", "true".to_owned()),
            ("login_hint", login_hint.to_owned()),
        ]
    }

    async fn authorize(&self, params: &[(&'static str, String)]) -> Authorized {
        let response = self
            .http
            .get(self.accounts("/o/oauth2/v2/auth"))
            .query(params)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        let query = location
            .map(|l| {
                let url = url::Url::parse(&l).unwrap();
                assert_eq!(
                    url.as_str().split('?').next(),
                    Some("https://ingest.example.net/oauth/callback")
                );
                url.query_pairs().into_owned().collect()
            })
            .unwrap_or_default();
        Authorized {
            status,
            query,
            body,
        }
    }

    async fn code(&self, login_hint: &str, scope: &str) -> String {
        self.authorize(&self.params(login_hint, scope)).await.code()
    }

    /// POSTs a form to `/token`: `(status, body)`.
    async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(self.env.emulator.token_url())
            .form(form)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn exchange(&self, code: &str, verifier: Option<&str>) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", self.client.client_id.as_str()),
            ("client_secret", self.client.client_secret.as_str()),
        ];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier));
        }
        self.token_request(&form).await
    }

    async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", &self.client.client_id),
            ("client_secret", &self.client.client_secret),
        ])
        .await
    }

    /// The whole flow for `user` with `scope`: the token response.
    async fn consent(&self, user: &str, scope: &str) -> Value {
        let code = self.code(user, scope).await;
        let (status, tokens) = self.exchange(&code, Some(VERIFIER)).await;
        assert_eq!(status, 200, "exchange refused: {tokens}");
        tokens
    }

    async fn revoke(&self, token: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.accounts("/revoke"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn userinfo(&self, token: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.accounts("/oauth2/v3/userinfo"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn tokeninfo(&self, token: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.accounts("/tokeninfo"))
            .query(&[("access_token", token)])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn profile_status(&self, token: &str) -> u16 {
        self.env.get(token, "gmail/v1/users/me/profile").await.0
    }
}

fn access(tokens: &Value) -> &str {
    tokens["access_token"].as_str().expect("an access token")
}

fn refresh_token(tokens: &Value) -> &str {
    tokens["refresh_token"].as_str().expect("a refresh token")
}

fn error(body: &Value) -> (&str, &str) {
    (
        body["error"].as_str().unwrap_or_default(),
        body["error_description"].as_str().unwrap_or_default(),
    )
}

/// Checks an ID token's RS256 signature against the emulator's JWKS and returns its claims.
async fn verified_claims(flow: &Flow, jwt: &str) -> Value {
    let jwks: Value = flow
        .http
        .get(flow.accounts("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value =
        serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], jwk["kid"]);
    let n = BASE64_URL_SAFE_NO_PAD
        .decode(jwk["n"].as_str().unwrap())
        .unwrap();
    let e = BASE64_URL_SAFE_NO_PAD
        .decode(jwk["e"].as_str().unwrap())
        .unwrap();
    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .unwrap();
    let signature =
        Signature::try_from(BASE64_URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
    VerifyingKey::<Sha256>::new(key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the ID token verifies against /oauth2/v3/certs");
    serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn the_full_flow_gives_tokens_that_read_the_consenting_users_mailbox() {
    let flow = flow().await;
    let scope = format!("openid email {GMAIL_READONLY}");

    let authorized = flow.authorize(&flow.params(SUPPORT, &scope)).await;
    let code = authorized.code();
    let (status, tokens) = flow.exchange(&code, Some(VERIFIER)).await;

    assert_eq!(
        authorized.get("tenant"),
        Some("7"),
        "the callback's query survives"
    );
    assert_eq!(authorized.get("state"), Some("st/a te+1"));
    assert_eq!(authorized.get("iss"), Some("https://accounts.google.com"));
    assert_eq!(
        authorized.get("scope"),
        Some(format!("openid {EMAIL} {GMAIL_READONLY}").as_str())
    );
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3599);
    assert_eq!(
        tokens["scope"].as_str(),
        Some(format!("openid {EMAIL} {GMAIL_READONLY}").as_str())
    );
    assert!(refresh_token(&tokens).starts_with("1//"));

    // The real Gmail client, with the bearer token as its whole authentication.
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let mut hub = Gmail::new(
        Client::builder(TokioExecutor::new()).build(connector),
        access(&tokens).to_owned(),
    );
    hub.base_url(flow.env.emulator.base_url());
    hub.root_url(flow.env.emulator.base_url());
    let (_, profile) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(profile.email_address.as_deref(), Some(SUPPORT));

    let (status, info) = flow.userinfo(access(&tokens)).await;
    assert_eq!(status, 200);
    assert_eq!(info["email"], SUPPORT);
    assert_eq!(info["email_verified"], true);
    assert_eq!(info["hd"], "example.com");
    let sub = info["sub"].as_str().unwrap();
    assert!(sub.bytes().all(|b| b.is_ascii_digit()));

    let claims = verified_claims(&flow, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], "https://accounts.google.com");
    assert_eq!(claims["aud"], flow.client.client_id.as_str());
    assert_eq!(claims["sub"], sub);
    assert_eq!(claims["email"], SUPPORT);
    assert_eq!(claims["hd"], "example.com");

    let (status, details) = flow.tokeninfo(access(&tokens)).await;
    assert_eq!(status, 200);
    assert_eq!(details["aud"], flow.client.client_id.as_str());
    assert_eq!(details["azp"], flow.client.client_id.as_str());
    assert_eq!(details["sub"], sub);
    assert_eq!(details["email"], SUPPORT);
    assert_eq!(details["email_verified"], "true");
    assert_eq!(details["access_type"], "offline");
    let expires_in: i64 = details["expires_in"].as_str().unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    assert!(details["exp"].as_str().unwrap().parse::<i64>().is_ok());

    let oauth = flow.env.control_ok(Method::GET, "oauth", None).await;
    assert_eq!(
        oauth["grants"],
        json!([{"user": SUPPORT, "scopes": ["openid", EMAIL, GMAIL_READONLY], "active": true}])
    );
    assert_eq!(
        flow.env.control_ok(Method::GET, "stats", None).await["tokens_issued"][SUPPORT],
        1
    );
}

#[tokio::test]
async fn a_code_works_once_and_its_reuse_revokes_what_it_gave() {
    let flow = flow().await;
    let code = flow.code(SUPPORT, GMAIL_READONLY).await;
    let (status, tokens) = flow.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(status, 200);
    assert_eq!(flow.profile_status(access(&tokens)).await, 200);

    let (status, body) = flow.exchange(&code, Some(VERIFIER)).await;

    assert_eq!(
        (status, error(&body)),
        (400, ("invalid_grant", "Bad Request"))
    );
    assert_eq!(flow.profile_status(access(&tokens)).await, 401);
    let (status, body) = flow.refresh(refresh_token(&tokens)).await;
    assert_eq!(
        (status, error(&body)),
        (400, ("invalid_grant", "Token has been expired or revoked."))
    );
    let (status, body) = flow.exchange("4/0Anot-a-code", Some(VERIFIER)).await;
    assert_eq!(
        (status, error(&body)),
        (400, ("invalid_grant", "Malformed auth code."))
    );
}

#[tokio::test]
async fn pkce_refuses_a_missing_or_wrong_verifier() {
    let flow = flow().await;
    let code = flow.code(SUPPORT, GMAIL_READONLY).await;

    let (missing, missing_body) = flow.exchange(&code, None).await;
    let wrong_verifier = VERIFIER.replace('a', "b");
    let (wrong, wrong_body) = flow.exchange(&code, Some(&wrong_verifier)).await;

    assert_eq!(
        (missing, error(&missing_body)),
        (400, ("invalid_grant", "Missing code verifier."))
    );
    assert_eq!(
        (wrong, error(&wrong_body)),
        (400, ("invalid_grant", "Invalid code verifier."))
    );
    assert_eq!(flow.exchange(&code, Some(VERIFIER)).await.0, 200);

    // A code requested without a challenge takes no verifier, as Google insists.
    let mut params = flow.params(SUPPORT, GMAIL_READONLY);
    params.retain(|(k, _)| !k.starts_with("code_challenge"));
    let code = flow.authorize(&params).await.code();
    let (status, body) = flow.exchange(&code, Some(VERIFIER)).await;
    assert_eq!(
        (status, error(&body)),
        (
            400,
            ("invalid_grant", "code_verifier or verifier is not needed.")
        )
    );
    assert_eq!(flow.exchange(&code, None).await.0, 200);

    // `plain` compares the verifier itself.
    let mut params = flow.params(SUPPORT, GMAIL_READONLY);
    for (k, v) in &mut params {
        match *k {
            "code_challenge" => *v = VERIFIER.to_owned(),
            "code_challenge_method" => *v = "plain".to_owned(),
            _ => {}
        }
    }
    let code = flow.authorize(&params).await.code();
    assert_eq!(flow.exchange(&code, Some(VERIFIER)).await.0, 200);
}

#[tokio::test]
async fn the_redirect_uri_must_be_valid_and_repeated_exactly() {
    let flow = flow().await;
    let code = flow.code(SUPPORT, GMAIL_READONLY).await;

    let (status, body) = flow
        .token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://ingest.example.net/oauth/callback"),
            ("client_id", &flow.client.client_id),
            ("client_secret", &flow.client.client_secret),
            ("code_verifier", VERIFIER),
        ])
        .await;

    assert_eq!(
        (status, error(&body)),
        (400, ("redirect_uri_mismatch", "Bad Request"))
    );
    for bad in [
        None,
        Some("/oauth/callback"),
        Some("https://x.example/cb#f"),
    ] {
        let mut params = flow.params(SUPPORT, GMAIL_READONLY);
        params.retain(|(k, _)| *k != "redirect_uri");
        if let Some(bad) = bad {
            params.push(("redirect_uri", bad.to_owned()));
        }
        let page = flow.authorize(&params).await;
        assert_eq!(page.status, 400, "{bad:?}");
        assert!(page.query.is_empty(), "an error page, not a redirect");
        assert!(page.body.contains("redirect_uri_mismatch"), "{}", page.body);
    }
    assert_eq!(flow.exchange(&code, Some(VERIFIER)).await.0, 200);
}

#[tokio::test]
async fn the_client_is_authenticated_by_form_or_http_basic() {
    let flow = flow().await;
    let code = flow.code(SUPPORT, GMAIL_READONLY).await;
    let form = |secret: &'static str| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("client_id", flow.client.client_id.clone()),
            ("client_secret", secret.to_owned()),
            ("code_verifier", VERIFIER.to_owned()),
        ]
    };

    let (status, body) = flow
        .token_request(
            &form("GOCSPX-wrong")
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    let basic = |secret: &str| {
        flow.http
            .post(flow.env.emulator.token_url())
            .basic_auth(&flow.client.client_id, Some(secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ])
            .send()
    };
    let wrong_basic = basic("GOCSPX-wrong").await.unwrap().status().as_u16();
    let right_basic = basic(&flow.client.client_secret).await.unwrap();

    assert_eq!(
        (status, error(&body)),
        (401, ("invalid_client", "Unauthorized"))
    );
    assert_eq!(wrong_basic, 401);
    assert_eq!(right_basic.status().as_u16(), 200);
    let mut params = flow.params(SUPPORT, GMAIL_READONLY);
    params[0].1 = "999999999999-other.apps.googleusercontent.com".to_owned();
    let page = flow.authorize(&params).await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("invalid_client"));
    assert!(page.query.is_empty());
}

#[tokio::test]
async fn a_blocked_user_or_app_is_refused_and_loses_its_grant() {
    let flow = flow().await;
    let support = flow.consent(SUPPORT, GMAIL_READONLY).await;
    let billing = flow.consent(BILLING, GMAIL_READONLY).await;

    let policy = flow
        .env
        .control_ok(
            Method::PUT,
            "oauth",
            Some(json!({"blocked_users": ["Support@Example.com"]})),
        )
        .await;

    assert_eq!(policy["blocked_users"], json!([SUPPORT]));
    let (status, body) = flow.refresh(refresh_token(&support)).await;
    assert_eq!((status, error(&body).0), (400, "invalid_grant"));
    assert_eq!(flow.profile_status(access(&support)).await, 401);
    let refused = flow.authorize(&flow.params(SUPPORT, GMAIL_READONLY)).await;
    assert_eq!(refused.status, 302);
    assert_eq!(refused.get("error"), Some("access_denied"));
    assert_eq!(
        refused.get("error_description"),
        Some("admin_policy_enforced")
    );
    assert_eq!(refused.get("state"), Some("st/a te+1"));
    assert_eq!(refused.get("code"), None);
    assert_eq!(flow.refresh(refresh_token(&billing)).await.0, 200);

    // Blocking the app ends every grant.
    let policy = flow
        .env
        .control_ok(
            Method::PUT,
            "oauth",
            Some(json!({"blocked_users": [], "app_blocked": true})),
        )
        .await;
    assert_eq!(
        policy["grants"],
        json!([
            {"user": BILLING, "scopes": [GMAIL_READONLY], "active": false},
            {"user": SUPPORT, "scopes": [GMAIL_READONLY], "active": false},
        ])
    );
    assert_eq!(flow.refresh(refresh_token(&billing)).await.0, 400);
    let refused = flow.authorize(&flow.params(BILLING, GMAIL_READONLY)).await;
    assert_eq!(refused.get("error"), Some("access_denied"));
    flow.env
        .control_ok(Method::PUT, "oauth", Some(json!({"app_blocked": false})))
        .await;
    flow.consent(BILLING, GMAIL_READONLY).await;
}

#[tokio::test]
async fn consent_user_overrides_login_hint_and_without_either_there_is_no_account() {
    let flow = flow().await;
    flow.env
        .control_ok(Method::PUT, "oauth", Some(json!({"consent_user": BILLING})))
        .await;

    let tokens = flow
        .consent(SUPPORT, &format!("email {GMAIL_READONLY}"))
        .await;

    let (_, _, profile) = flow
        .env
        .get(access(&tokens), "gmail/v1/users/me/profile")
        .await;
    assert_eq!(profile["emailAddress"], BILLING);
    assert_eq!(flow.userinfo(access(&tokens)).await.1["email"], BILLING);
    let oauth = flow
        .env
        .control_ok(Method::PUT, "oauth", Some(json!({"consent_user": null})))
        .await;
    assert_eq!(oauth["consent_user"], Value::Null);
    let mut params = flow.params(SUPPORT, GMAIL_READONLY);
    params.retain(|(k, _)| *k != "login_hint");
    let page = flow.authorize(&params).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("no account"), "{}", page.body);
    assert!(page.query.is_empty());
}

#[tokio::test]
async fn refresh_works_until_the_user_revokes_access() {
    let flow = flow().await;
    let tokens = flow.consent(SUPPORT, GMAIL_READONLY).await;

    let (status, refreshed) = flow.refresh(refresh_token(&tokens)).await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["token_type"], "Bearer");
    assert_eq!(refreshed["expires_in"], 3599);
    assert_eq!(refreshed["scope"], GMAIL_READONLY);
    assert!(refreshed.get("refresh_token").is_none());
    assert_eq!(flow.profile_status(access(&refreshed)).await, 200);

    let revoked = flow
        .env
        .control_ok(Method::POST, &format!("users/{SUPPORT}/oauth/revoke"), None)
        .await;

    assert_eq!(revoked, json!({"revoked": 1}));
    let (status, body) = flow.refresh(refresh_token(&tokens)).await;
    assert_eq!(
        (status, error(&body)),
        (400, ("invalid_grant", "Token has been expired or revoked."))
    );
    assert_eq!(flow.profile_status(access(&tokens)).await, 401);
    assert_eq!(flow.profile_status(access(&refreshed)).await, 401);
    assert_eq!(
        flow.env
            .control_ok(Method::POST, &format!("users/{SUPPORT}/oauth/revoke"), None)
            .await,
        json!({"revoked": 0})
    );
    assert_eq!(
        flow.env
            .control(Method::POST, "users/nobody@example.com/oauth/revoke", None)
            .await
            .0,
        404
    );
    // A suspended user's refresh token stops working too.
    let tokens = flow.consent(SUPPORT, GMAIL_READONLY).await;
    flow.env
        .control_ok(
            Method::PATCH,
            &format!("users/{SUPPORT}"),
            Some(json!({"suspended": true})),
        )
        .await;
    assert_eq!(
        error(&flow.refresh(refresh_token(&tokens)).await.1).0,
        "invalid_grant"
    );
}

#[tokio::test]
async fn revoking_a_refresh_or_access_token_ends_the_whole_grant() {
    let flow = flow().await;
    let tokens = flow.consent(SUPPORT, GMAIL_READONLY).await;
    let refreshed = flow.refresh(refresh_token(&tokens)).await.1;

    let (status, body) = flow.revoke(refresh_token(&tokens)).await;

    assert_eq!((status, body), (200, json!({})));
    assert_eq!(flow.refresh(refresh_token(&tokens)).await.0, 400);
    assert_eq!(flow.profile_status(access(&tokens)).await, 401);
    assert_eq!(flow.profile_status(access(&refreshed)).await, 401);
    let (status, body) = flow.revoke(refresh_token(&tokens)).await;
    assert_eq!(
        (status, error(&body)),
        (400, ("invalid_token", "Token expired or revoked"))
    );
    assert_eq!(flow.revoke("ya29.unknown").await.0, 400);

    // An access token (here as a query parameter) revokes its refresh token too.
    let tokens = flow.consent(BILLING, GMAIL_READONLY).await;
    let response = flow
        .http
        .post(flow.accounts("/revoke"))
        .query(&[("token", access(&tokens))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(flow.refresh(refresh_token(&tokens)).await.0, 400);
    let oauth = flow.env.control_ok(Method::GET, "oauth", None).await;
    assert!(
        oauth["grants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["active"] == false)
    );
}

#[tokio::test]
async fn a_token_reads_only_its_own_mailbox_and_only_with_the_granted_scopes() {
    let flow = flow().await;
    let tokens = flow.consent(SUPPORT, GMAIL_METADATA).await;

    let (status, _, body) = flow
        .env
        .get(
            access(&tokens),
            &format!("gmail/v1/users/{BILLING}/profile"),
        )
        .await;

    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["message"],
        format!("Delegation denied for {SUPPORT}")
    );
    let id = flow.env.ground_truth(SUPPORT).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = flow
        .env
        .get(
            access(&tokens),
            &format!("gmail/v1/users/me/messages/{id}?format=raw"),
        )
        .await;
    assert_eq!(status, 403, "gmail.metadata does not read bodies: {body}");
    let email_only = flow.consent(BILLING, "email").await;
    let (status, _, body) = flow
        .env
        .get(access(&email_only), "gmail/v1/users/me/profile")
        .await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (403, Some("insufficientPermissions"))
    );
}

#[tokio::test]
async fn userinfo_and_tokeninfo_show_the_email_only_with_the_email_scope() {
    let flow = flow().await;
    let mut params = flow.params(SUPPORT, GMAIL_READONLY);
    params.retain(|(k, _)| *k != "access_type");
    let code = flow.authorize(&params).await.code();
    let (_, tokens) = flow.exchange(&code, Some(VERIFIER)).await;

    let (status, info) = flow.userinfo(access(&tokens)).await;
    let (_, details) = flow.tokeninfo(access(&tokens)).await;

    assert_eq!(status, 200);
    assert!(info.get("email").is_none(), "{info}");
    assert!(info.get("email_verified").is_none());
    assert_eq!(info["hd"], "example.com");
    assert!(info["sub"].is_string());
    assert!(details.get("email").is_none(), "{details}");
    assert_eq!(details["scope"], GMAIL_READONLY);
    assert_eq!(details["access_type"], "online");
    assert!(tokens.get("refresh_token").is_none(), "online access");
    assert!(tokens.get("id_token").is_none(), "no openid scope");
    let (status, body) = flow.userinfo("ya29.bogus").await;
    assert_eq!(
        (status, error(&body)),
        (401, ("invalid_request", "Invalid Credentials"))
    );
    let (status, body) = flow.tokeninfo("ya29.bogus").await;
    assert_eq!(
        (status, error(&body)),
        (400, ("invalid_token", "Invalid Value"))
    );
}

#[tokio::test]
async fn authorization_errors_go_back_to_the_client_with_its_state() {
    let flow = flow().await;
    let with = |key: &'static str, value: &str| {
        let mut params = flow.params(SUPPORT, GMAIL_READONLY);
        params.retain(|(k, _)| *k != key);
        params.push((key, value.to_owned()));
        params
    };
    flow.env
        .control_ok(
            Method::PATCH,
            "users/billing@example.com",
            Some(json!({"suspended": true})),
        )
        .await;

    let cases = [
        (with("response_type", "token"), "unsupported_response_type"),
        (with("scope", "gmail.readonly"), "invalid_scope"),
        (
            with("scope", "https://www.googleapis.com/auth/drive"),
            "invalid_scope",
        ),
        (with("code_challenge_method", "S512"), "invalid_request"),
        (with("login_hint", "nobody@example.com"), "access_denied"),
        (with("login_hint", BILLING), "access_denied"),
    ];

    for (params, expected) in cases {
        let refused = flow.authorize(&params).await;
        assert_eq!(refused.status, 302);
        assert_eq!(refused.get("error"), Some(expected), "{:?}", refused.query);
        assert_eq!(refused.get("state"), Some("st/a te+1"));
        assert_eq!(refused.get("code"), None);
    }
}

#[tokio::test]
async fn codes_and_access_tokens_expire_by_the_emulator_clock() {
    let flow = flow().await;
    let stale = flow.code(SUPPORT, GMAIL_READONLY).await;
    let tokens = flow.consent(SUPPORT, GMAIL_READONLY).await;

    flow.env
        .emulator
        .advance_clock(Duration::from_secs(11 * 60));
    let (status, body) = flow.exchange(&stale, Some(VERIFIER)).await;
    assert_eq!((status, error(&body).0), (400, "invalid_grant"));
    assert_eq!(flow.profile_status(access(&tokens)).await, 200);

    flow.env.emulator.advance_clock(Duration::from_secs(3600));
    assert_eq!(flow.profile_status(access(&tokens)).await, 401);
    assert_eq!(flow.userinfo(access(&tokens)).await.0, 401);
    let (status, refreshed) = flow.refresh(refresh_token(&tokens)).await;
    assert_eq!(status, 200);
    assert_eq!(flow.profile_status(access(&refreshed)).await, 200);
}

#[tokio::test]
async fn refresh_tokens_come_with_the_first_offline_consent_and_with_prompt_consent() {
    let flow = flow().await;

    let first = flow.consent(SUPPORT, GMAIL_READONLY).await;
    let again = flow.consent(SUPPORT, GMAIL_READONLY).await;
    let mut params = flow.params(SUPPORT, GMAIL_READONLY);
    params.push(("prompt", "consent".to_owned()));
    let authorized = flow.authorize(&params).await;
    let (_, forced) = flow.exchange(&authorized.code(), Some(VERIFIER)).await;

    assert!(first.get("refresh_token").is_some());
    assert!(again.get("refresh_token").is_none(), "{again}");
    assert_eq!(authorized.get("prompt"), Some("consent"));
    assert_ne!(refresh_token(&forced), refresh_token(&first));
    assert_eq!(flow.refresh(refresh_token(&first)).await.0, 200);
    assert_eq!(flow.refresh(refresh_token(&forced)).await.0, 200);
    // A new scope shows the consent screen again (incremental authorization).
    let wider = flow
        .consent(SUPPORT, &format!("email {GMAIL_READONLY}"))
        .await;
    assert!(wider.get("refresh_token").is_some());
}

#[tokio::test]
async fn stats_count_every_oauth_endpoint() {
    let flow = flow().await;
    let tokens = flow
        .consent(SUPPORT, &format!("email {GMAIL_READONLY}"))
        .await;
    flow.refresh(refresh_token(&tokens)).await;
    flow.refresh("1//unknown").await;
    flow.userinfo(access(&tokens)).await;
    flow.tokeninfo(access(&tokens)).await;
    flow.tokeninfo("bogus").await;
    flow.revoke(refresh_token(&tokens)).await;

    let stats = flow.env.control_ok(Method::GET, "stats", None).await;

    let requests = &stats["requests"];
    assert_eq!(requests["oauth2.authorize"]["302"], 1);
    assert_eq!(requests["oauth2.token"]["200"], 2);
    assert_eq!(requests["oauth2.token"]["400"], 1);
    assert_eq!(requests["oauth2.userinfo"]["200"], 1);
    assert_eq!(requests["oauth2.tokeninfo"]["200"], 1);
    assert_eq!(requests["oauth2.tokeninfo"]["400"], 1);
    assert_eq!(requests["oauth2.revoke"]["200"], 1);
    assert_eq!(stats["tokens_issued"][SUPPORT], 2);
}

#[tokio::test]
async fn reset_forgets_grants_and_policy_but_keeps_the_client() {
    let flow = flow().await;
    let tokens = flow.consent(SUPPORT, GMAIL_READONLY).await;
    flow.env
        .control_ok(
            Method::PUT,
            "oauth",
            Some(json!({"consent_user": SUPPORT, "blocked_users": [BILLING]})),
        )
        .await;

    flow.env.control_ok(Method::POST, "reset", None).await;

    let oauth = flow.env.control_ok(Method::GET, "oauth", None).await;
    assert_eq!(
        oauth,
        json!({
            "client_id": flow.client.client_id,
            "client_secret": flow.client.client_secret,
            "consent_user": null,
            "blocked_users": [],
            "app_blocked": false,
            "consent_screen": false,
            "grants": [],
        })
    );
    assert_eq!(flow.profile_status(access(&tokens)).await, 401);
    assert_eq!(flow.refresh(refresh_token(&tokens)).await.0, 400);
    assert_eq!(flow.env.emulator.oauth_client(), flow.client);
}

#[tokio::test]
async fn the_client_is_registered_at_start_and_its_secret_file_is_private() {
    let flow = flow().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client_secret");

    let written = flow.env.emulator.write_oauth_client_secret(&path).unwrap();

    assert_eq!(written, flow.client);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        flow.client.client_secret
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (digits, rest) = flow.client.client_id.split_once('-').unwrap();
    assert_eq!(
        (digits.len(), rest),
        (12, "emulator.apps.googleusercontent.com")
    );
    assert!(flow.client.client_secret.starts_with("GOCSPX-"));
    assert_eq!(flow.client.client_secret.len(), 7 + 28);
    assert!(!format!("{:?}", flow.client).contains(&flow.client.client_secret));
    let base = flow.env.emulator.accounts_base_url();
    assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with('/'));
    let oauth = flow
        .env
        .control(
            Method::PUT,
            "oauth",
            Some(json!({"consent_user": "not-an-address"})),
        )
        .await;
    assert_eq!(oauth.0, 400);
    let again = start(1, 3, 5).await;
    assert_eq!(
        again.emulator.oauth_client(),
        flow.client,
        "same seed, same client"
    );
}

/// `PATCH /users/{email}` gives an address another Google account (`id`):
/// userinfo, ID tokens and tokeninfo report the new `sub` and the old
/// account's grants end; `hosted_domain` is the `hd` they report (`null`: an
/// account of no Workspace). Bad values change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_account_id_and_hosted_domain_show_in_the_identity_claims() {
    let flow = flow().await;
    let scope = format!("openid {EMAIL} {GMAIL_READONLY}");
    let old = flow.consent(SUPPORT, &scope).await;
    let (_, info) = flow.userinfo(access(&old)).await;
    let old_sub = info["sub"].as_str().unwrap().to_owned();

    for bad in [
        json!({"id": "12ab"}),
        json!({"id": ""}),
        json!({"hosted_domain": "not a domain"}),
        json!({"hosted_domain": 7}),
    ] {
        let (status, _) = flow
            .env
            .control(
                Method::PATCH,
                &format!("users/{SUPPORT}"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}");
    }
    let billing_id = flow.env.control_ok(Method::GET, "state", None).await["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == BILLING)
        .unwrap()["id"]
        .clone();
    let (status, _) = flow
        .env
        .control(
            Method::PATCH,
            &format!("users/{SUPPORT}"),
            Some(json!({"id": billing_id})),
        )
        .await;
    assert_eq!(status, 409, "an account ID is one account's");
    assert_eq!(flow.userinfo(access(&old)).await.1["sub"], old_sub.as_str());

    let user = flow
        .env
        .control_ok(
            Method::PATCH,
            &format!("users/{SUPPORT}"),
            Some(json!({"id": "100000000000000000042", "hosted_domain": null})),
        )
        .await;
    assert_eq!(user["id"], "100000000000000000042");
    assert_eq!(user["hosted_domain"], Value::Null);
    let (status, body) = flow.refresh(refresh_token(&old)).await;
    assert_eq!(
        (status, error(&body).0),
        (400, "invalid_grant"),
        "the old account's grant ended with it"
    );

    let new = flow.consent(SUPPORT, &scope).await;
    let (status, info) = flow.userinfo(access(&new)).await;
    assert_eq!(status, 200);
    assert_eq!(info["sub"], "100000000000000000042");
    assert!(info.get("hd").is_none(), "{info}");
    let claims = verified_claims(&flow, new["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], "100000000000000000042");
    assert!(claims.get("hd").is_none(), "{claims}");
    assert_eq!(
        flow.tokeninfo(access(&new)).await.1["sub"],
        "100000000000000000042"
    );

    flow.env
        .control_ok(
            Method::PATCH,
            &format!("users/{SUPPORT}"),
            Some(json!({"hosted_domain": "Other.Example"})),
        )
        .await;
    let tokens = flow.consent(SUPPORT, &scope).await;
    assert_eq!(
        flow.userinfo(access(&tokens)).await.1["hd"],
        "other.example"
    );
}

/// With `consent_screen` on, the authorization endpoint asks: a page with the
/// account (pre-filled from `login_hint`, escaped), a box per Gmail scope and
/// Cancel / Allow, and no script; its form's answer is what a consent by that
/// account for the scopes left ticked would be, Cancel is `access_denied`.
#[tokio::test]
async fn the_consent_screen_asks_who_signs_in_and_what_to_allow() {
    let flow = flow().await;
    flow.env
        .control_ok(Method::PUT, "oauth", Some(json!({"consent_screen": true})))
        .await;
    let scope = format!("openid email {GMAIL_READONLY}");
    let params = flow.params(SUPPORT, &scope);
    let page = flow.authorize(&params).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("value=\"{SUPPORT}\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!(
        "type=\"checkbox\" name=\"scope\" value=\"{GMAIL_READONLY}\" checked"
    )));
    assert!(
        page.body
            .contains("type=\"hidden\" name=\"scope\" value=\"openid\"")
    );
    assert!(!page.body.contains("<script"));
    let raw = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let answer = |account: &str, scopes: &[&str], decision: &str| {
        let mut form = vec![
            ("request", raw.clone()),
            ("account", account.to_owned()),
            ("decision", decision.to_owned()),
        ];
        form.extend(scopes.iter().map(|s| ("scope", (*s).to_owned())));
        let http = flow.http.clone();
        let url = flow.accounts("/o/oauth2/v2/auth");
        async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            let status = r.status().as_u16();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let query: Vec<(String, String)> = url::Url::parse(&location)
                .map(|u| u.query_pairs().into_owned().collect())
                .unwrap_or_default();
            (status, query)
        }
    };
    let get = |q: &[(String, String)], k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    // Allowed, signed in as another account than the hint: that account's grant.
    let (status, q) = answer(BILLING, &["openid", "email", GMAIL_READONLY], "allow").await;
    assert_eq!(status, 302);
    assert!(get(&q, "code").starts_with("4/0A"), "{q:?}");
    assert_eq!(get(&q, "state"), "st/a te+1");
    let grants = flow.env.control_ok(Method::GET, "oauth", None).await["grants"].clone();
    assert_eq!(
        grants,
        json!([{"user": BILLING, "scopes": ["openid", EMAIL, GMAIL_READONLY], "active": true}])
    );

    // The Gmail box unticked: granted without it.
    let (_, q) = answer(SUPPORT, &["openid", "email"], "allow").await;
    assert_eq!(get(&q, "scope"), format!("openid {EMAIL}"), "{q:?}");

    // Cancel: access_denied, the state kept, no code.
    let (status, q) = answer(SUPPORT, &["openid", "email", GMAIL_READONLY], "deny").await;
    assert_eq!(status, 302);
    assert_eq!(get(&q, "error"), "access_denied");
    assert_eq!(get(&q, "state"), "st/a te+1");
    assert_eq!(get(&q, "code"), "");

    // What it echoes is escaped.
    let evil = flow.params("\"><script>alert(1)</script>@example.com", &scope);
    let page = flow.authorize(&evil).await;
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(
        page.body.contains("&quot;&gt;&lt;script&gt;"),
        "{}",
        page.body
    );

    // Off again: consents at once, as before.
    flow.env
        .control_ok(Method::PUT, "oauth", Some(json!({"consent_screen": false})))
        .await;
    flow.authorize(&params).await.code();
}

/// `write_oauth_client` (the command line's `--write-oauth-client`): the
/// client as Google's console downloads it, endpoints at the emulator, 0600.
#[tokio::test]
async fn the_oauth_client_file_is_googles_json_and_private() {
    let flow = flow().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oauth-client.json");
    let written = flow.env.emulator.write_oauth_client(&path).unwrap();
    assert_eq!(written, flow.client);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let web = &json["web"];
    assert_eq!(web["client_id"], flow.client.client_id.as_str());
    assert_eq!(web["client_secret"], flow.client.client_secret.as_str());
    assert_eq!(
        web["token_uri"],
        format!("{}/token", flow.env.emulator.accounts_base_url())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// `gmail-ingest emulator --write-oauth-client FILE --consent-screen`: a
/// newcomer gets the web client from the command line, and the consent
/// screen is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_command_writes_its_oauth_client_and_shows_the_consent_screen() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oauth-client.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gmail-ingest"))
        .args(["emulator", "--users", "2", "--messages", "3", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--write-oauth-client")
        .arg(&file)
        .arg("--consent-screen")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/emulator/v1/oauth");
    let mut oauth = Value::Null;
    // The flags take effect just after the listener opens: wait for them.
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(&url).await {
            oauth = r.json().await.unwrap();
            if oauth["consent_screen"] == true && file.exists() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(oauth["consent_screen"], true, "{oauth}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json["web"]["client_id"], oauth["client_id"]);
    assert_eq!(json["web"]["client_secret"], oauth["client_secret"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
