//! The OAuth 2.0 token endpoint (the JWT-bearer grant here, the web client's grants handed to
//! `consent`) and the service-account key file whose key is the process key of `tokens`.
//!
//! The endpoint checks an assertion the way Google does for domain-wide delegation: RS256
//! signature against the registered key, `aud`, `iat`/`exp`, `scope` against the DWD grant of the
//! client ID, and `sub` against the users; refusals use Google's flat error body. Access tokens
//! are random and opaque; they are never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use rsa::signature::Verifier as _;
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::clock::wall_ms;
use super::consent;
use super::errors::oauth_error;
use super::model::{ApiMethod, IssuedToken, ServiceAccount};
use super::pipeline::Shared;
use super::scopes::{DIRECTORY_GROUP_READONLY, DIRECTORY_USER_READONLY, GMAIL_READONLY};
use super::tokens::{TOKEN_LIFETIME_S, issue_access_token, process_key, process_key_id};
use super::util::{URL_SAFE_LENIENT, hash, json_response, param, query_pairs, write_private_file};

/// Scopes a service account may ask for as itself without any delegation grant.
const PUBSUB_SELF_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/pubsub",
    "https://www.googleapis.com/auth/cloud-platform",
];

const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Tolerated difference between the signer's clock and ours, in seconds.
const CLOCK_SKEW_S: i64 = 300;
/// Google refuses assertions valid for longer than 65 minutes.
const MAX_ASSERTION_LIFETIME_S: i64 = 3900;

const UNAUTHORIZED_CLIENT: &str = "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.";
const SHORT_LIVED: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your 'iat' and 'exp' values in the JWT claim.";
const BAD_SIGNATURE: &str = "Invalid JWT Signature.";

/// A service-account key written by [`Emulator::write_service_account_key`].
///
/// [`Emulator::write_service_account_key`]: crate::Emulator::write_service_account_key
#[derive(Debug, Clone)]
pub struct ServiceAccountInfo {
    /// The numeric client ID the DWD grant is keyed by.
    pub client_id: String,
    pub client_email: String,
    pub key_path: PathBuf,
}

/// Writes a service-account key file (mode 0600) and registers its DWD grant.
pub(crate) fn write_service_account_key(
    shared: &Shared,
    path: &Path,
) -> anyhow::Result<ServiceAccountInfo> {
    let key = process_key()?;
    let public_key = RsaPublicKey::from(key);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the emulator's key as PKCS#8")?;
    let seed = shared.lock().seeding.seed;
    let client_id = format!("1{:020}", hash(&[seed, 0x5341]));
    let client_email = "gmail-ingest@emulator-project.iam.gserviceaccount.com".to_owned();
    let key_id = process_key_id()?;
    let document = json!({
        "type": "service_account",
        "project_id": "emulator-project",
        "private_key_id": key_id,
        "private_key": pem.as_str(),
        "client_email": client_email,
        "client_id": client_id,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": shared.token_url,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/gmail-ingest%40emulator-project.iam.gserviceaccount.com",
        "universe_domain": "googleapis.com",
    });
    let text = serde_json::to_string_pretty(&document).context("encoding the key file")?;
    write_private_file(path, text.as_bytes())
        .with_context(|| format!("writing the key file {}", path.display()))?;
    let scopes: std::collections::BTreeSet<String> = [
        GMAIL_READONLY,
        DIRECTORY_USER_READONLY,
        DIRECTORY_GROUP_READONLY,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut world = shared.lock();
    world.accounts.insert(
        client_email.clone(),
        ServiceAccount {
            client_id: client_id.clone(),
            public_key,
        },
    );
    world
        .registered_grants
        .insert(client_id.clone(), scopes.clone());
    world.grants.insert(client_id.clone(), scopes);
    Ok(ServiceAccountInfo {
        client_id,
        client_email,
        key_path: path.to_path_buf(),
    })
}

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    aud: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    iat: i64,
    exp: i64,
}

struct Assertion {
    header: JwtHeader,
    claims: Claims,
    signed_part: String,
    signature: Vec<u8>,
}

fn decode_assertion(assertion: &str) -> Option<Assertion> {
    let mut pieces = assertion.trim().split('.');
    let (header, claims, signature) = (pieces.next()?, pieces.next()?, pieces.next()?);
    if pieces.next().is_some() {
        return None;
    }
    Some(Assertion {
        header: serde_json::from_slice(&URL_SAFE_LENIENT.decode(header).ok()?).ok()?,
        claims: serde_json::from_slice(&URL_SAFE_LENIENT.decode(claims).ok()?).ok()?,
        signed_part: format!("{header}.{claims}"),
        signature: URL_SAFE_LENIENT.decode(signature).ok()?,
    })
}

/// `POST /token`: the JWT-bearer grant here, the authorization-code and refresh-token grants of
/// the web client in `consent`.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let latency = shared.lock().roll_fault_latency_only();
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    let form = query_pairs(Some(&String::from_utf8_lossy(&body)));
    let response = match param(&form, "grant_type").unwrap_or_default() {
        JWT_BEARER => exchange(&shared, &form),
        grant @ ("authorization_code" | "refresh_token") => {
            consent::token_grant(&shared, grant, &headers, &form).await
        }
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {other}"),
        ),
    };
    shared
        .lock()
        .record(ApiMethod::Token, response.status().as_u16(), None);
    response
}

fn exchange(shared: &Shared, form: &[(String, String)]) -> Response {
    let Some(assertion) = param(form, "assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let Some(jwt) = decode_assertion(assertion) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", BAD_SIGNATURE);
    };
    let claims = &jwt.claims;
    let subject = claims.sub.as_deref().map(str::to_ascii_lowercase);
    let account = {
        let mut world = shared.lock();
        if let Some(sub) = &subject {
            *world.stats.token_requests.entry(sub.clone()).or_default() += 1;
        }
        world.accounts.get(&claims.iss).cloned()
    };
    let Some(account) = account else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", BAD_SIGNATURE);
    };
    let verified = jwt.header.alg == "RS256"
        && Signature::try_from(jwt.signature.as_slice()).is_ok_and(|sig| {
            VerifyingKey::<Sha256>::new(account.public_key)
                .verify(jwt.signed_part.as_bytes(), &sig)
                .is_ok()
        });
    if !verified {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", BAD_SIGNATURE);
    }
    let aud = claims.aud.as_deref().unwrap_or_default();
    if !audience_ok(shared, aud) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            &format!(
                "Invalid JWT: Failed audience check. The expected value was {GOOGLE_TOKEN_URL}, the actual value was {aud}."
            ),
        );
    }
    // The signer's clock is the wall clock: advancing the emulator's clock must not make a fresh
    // assertion look skewed.
    let now = wall_ms() / 1000;
    let timely = claims.exp > claims.iat
        && claims.exp - claims.iat <= MAX_ASSERTION_LIFETIME_S
        && claims.iat <= now + CLOCK_SKEW_S
        && claims.exp >= now - CLOCK_SKEW_S;
    if !timely {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", SHORT_LIVED);
    }
    let scopes: Vec<String> = claims
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let mut world = shared.lock();
    // Domain-wide delegation governs impersonation only: a service account asking for a token
    // as itself (no `sub`) for Pub/Sub is authorised by IAM on each resource instead.
    let as_itself_for_pubsub = subject.is_none()
        && scopes
            .iter()
            .all(|s| PUBSUB_SELF_SCOPES.contains(&s.as_str()));
    let granted = as_itself_for_pubsub
        || world
            .grants
            .get(&account.client_id)
            .is_some_and(|grant| scopes.iter().all(|s| grant.contains(s)));
    if !granted {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            UNAUTHORIZED_CLIENT,
        );
    }
    if let Some(sub) = &subject {
        let Some(user) = world.user(sub) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid email or User ID",
            );
        };
        if let Some(error) = user.token_error.clone() {
            let description = match error.as_str() {
                "admin_policy_enforced" => {
                    "The administrator's policy does not allow access to the requested scopes."
                }
                _ => "Requested client not authorized.",
            };
            return oauth_error(StatusCode::BAD_REQUEST, &error, description);
        }
    }
    let token = issue_access_token(
        &mut world,
        shared.clock.now_ms(),
        IssuedToken {
            subject,
            scopes: scopes.clone(),
            expires_at_ms: 0,
            client_id: account.client_id.clone(),
            session: None,
        },
    );
    drop(world);
    json_response(
        StatusCode::OK,
        &json!({"access_token": token, "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer", "scope": scopes.join(" ")}),
        false,
    )
}

fn audience_ok(shared: &Shared, aud: &str) -> bool {
    if aud == shared.token_url || aud == GOOGLE_TOKEN_URL {
        return true;
    }
    // The same port under another host name (e.g. a container name) is this emulator too.
    url::Url::parse(aud).is_ok_and(|u| u.path() == "/token" && u.port() == Some(shared.port))
}
