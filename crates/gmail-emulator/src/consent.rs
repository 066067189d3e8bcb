//! Google's OAuth 2.0 web-server flow for the emulator's one registered web client: the
//! authorization endpoint (which consents at once, as the control API's `consent_user` or the
//! request's `login_hint`; or, with the control API's `consent_screen` on, shows a sign-in and
//! consent page whose form `POST`s the owner's answer back to it), the `authorization_code` and `refresh_token` grants of `POST /token`,
//! `POST /revoke`, `/tokeninfo`, `/oauth2/v3/userinfo` and `/oauth2/v3/certs`.
//!
//! Shapes follow Google's "Using OAuth 2.0 for Web Server Applications": errors Google shows
//! as a page are an HTML page (no redirect); errors it reports to the client are a 302 to
//! `redirect_uri` with `error` and `state`; the token endpoint answers with the flat
//! `{"error","error_description"}` body. Access tokens from these grants go through the same
//! Gmail pipeline as service-account tokens. Codes and tokens are never logged or echoed.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use base64::Engine as _;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::clock::wall_ms;
use super::errors::oauth_error;
use super::grants::{
    AuthCode, CODE_LIFETIME_MS, ChallengeMethod, Pkce, Session, canonical_scope, valid_pkce_string,
};
use super::model::{ApiMethod, IssuedToken, User, World};
use super::pipeline::{Shared, bearer};
use super::scopes::{OPENID, USERINFO_EMAIL};
use super::tokens::{
    TOKEN_LIFETIME_S, issue_access_token, process_key, process_key_id, random_string,
};
use super::util::{STANDARD_LENIENT, URL_SAFE_LENIENT, json_response, param, params, query_pairs};

/// The issuer Google names in redirects (`iss`, RFC 9207) and in ID tokens.
const ISSUER: &str = "https://accounts.google.com";
const EXPIRED_OR_REVOKED: &str = "Token has been expired or revoked.";

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/o/oauth2/v2/auth", get(authorize).post(answer))
        .route("/o/oauth2/auth", get(authorize).post(answer))
        .route("/revoke", axum::routing::post(revoke))
        .route("/tokeninfo", get(tokeninfo).post(tokeninfo))
        .route("/oauth2/v3/tokeninfo", get(tokeninfo).post(tokeninfo))
        .route("/oauth2/v3/userinfo", get(userinfo).post(userinfo))
        .route("/oauth2/v3/certs", get(certs))
}

/// Fault injection reaches these endpoints as latency only, like the token endpoint.
async fn injected_latency(shared: &Shared) {
    let latency = shared.lock().roll_fault_latency_only();
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
}

fn recorded(shared: &Shared, method: ApiMethod, response: Response) -> Response {
    shared
        .lock()
        .record(method, response.status().as_u16(), None);
    response
}

fn not_empty(value: &&str) -> bool {
    !value.is_empty()
}

// ---------------------------------------------------------------------------------------------
// The authorization endpoint.

/// Where an authorization request stands: asked for (`GET`), or answered on the consent
/// screen (`POST`) by an account that allowed or denied it.
enum Step<'a> {
    Request { raw: &'a str },
    Answer { account: String, allow: bool },
}

/// `GET /o/oauth2/v2/auth`.
async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    injected_latency(&shared).await;
    let raw = query.unwrap_or_default();
    let pairs = query_pairs(Some(&raw));
    let response = authorization(&shared, &pairs, Step::Request { raw: &raw });
    recorded(&shared, ApiMethod::Authorize, response)
}

/// `POST /o/oauth2/v2/auth`: the consent screen's form. `request` is the original query;
/// `account` the email the owner signed in with; `scope` the scopes left ticked (the identity
/// scopes come as hidden fields); `decision` is `allow` or `deny`.
async fn answer(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    injected_latency(&shared).await;
    let form = query_pairs(Some(&String::from_utf8_lossy(&body)));
    let mut pairs = query_pairs(param(&form, "request"));
    let ticked = params(&form, "scope").join(" ");
    let allow = param(&form, "decision") == Some("allow") && !ticked.is_empty();
    // Granular consent: what the owner left ticked is what the request asks for.
    pairs.retain(|(k, _)| k != "scope");
    pairs.push(("scope".to_owned(), ticked));
    let account = param(&form, "account")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let response = authorization(&shared, &pairs, Step::Answer { account, allow });
    recorded(&shared, ApiMethod::Authorize, response)
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What Google's consent screen says a scope lets the app do.
fn scope_description(scope: &str) -> &str {
    match scope {
        super::scopes::GMAIL_READONLY => "View your email messages and settings",
        super::scopes::GMAIL_METADATA => {
            "View your email message metadata such as labels and headers, but not the email body"
        }
        super::scopes::GMAIL_MODIFY => "Read, compose, and send emails from your Gmail account",
        super::scopes::GMAIL_FULL => {
            "Read, compose, send, and permanently delete all your email from Gmail"
        }
        OPENID => "Associate you with your personal info on Google",
        USERINFO_EMAIL => "See your primary Google Account email address",
        other => other,
    }
}

/// The sign-in and consent page (the control API's `consent_screen`): the account to sign in
/// with (pre-filled from `consent_user` or `login_hint`), each sensitive scope as a box the
/// owner may untick (granular consent; the identity scopes are always granted, as at Google),
/// and Cancel / Allow. It echoes the request only HTML-escaped, runs no script, and may not be
/// framed.
fn consent_page(
    raw: &str,
    account: Option<&str>,
    scopes: &[String],
    redirect: &url::Url,
) -> Response {
    let app = redirect.host_str().unwrap_or_default();
    let mut boxes = String::new();
    for scope in scopes {
        let s = html_escape(scope);
        let d = html_escape(scope_description(scope));
        if scope == OPENID || scope == USERINFO_EMAIL {
            boxes.push_str(&format!(
                "<input type=\"hidden\" name=\"scope\" value=\"{s}\"><li>{d}</li>"
            ));
        } else {
            boxes.push_str(&format!(
                "<li><label><input type=\"checkbox\" name=\"scope\" value=\"{s}\" checked> {d}</label></li>"
            ));
        }
    }
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Sign in - Google Accounts (emulator)</title>\
         <style>body{{font-family:sans-serif;background:#f0f4f9;margin:0}}\
         main{{background:#fff;max-width:30em;margin:3em auto;padding:2em 2.5em;border-radius:1.5em}}\
         .brand{{color:#5f6368;font-size:1.1em}}h1{{font-weight:400;font-size:1.6em}}\
         label.account{{display:block;margin:1em 0 .3em;color:#444}}\
         input[type=email]{{width:100%;box-sizing:border-box;padding:.7em;font-size:1em;border:1px solid #747775;border-radius:.3em}}\
         ul{{padding-left:1.2em;line-height:1.8}}.note{{color:#5f6368;font-size:.9em}}\
         .buttons{{text-align:right;margin-top:1.5em}}\
         button{{font-size:1em;padding:.6em 1.5em;border-radius:1.5em;border:0;margin-left:.5em;cursor:pointer}}\
         #allow{{background:#0b57d0;color:#fff}}#cancel{{background:none;color:#0b57d0}}</style></head>\
         <body><main><p class=\"brand\">Google <small>(emulator)</small></p>\
         <h1>Sign in to continue to {app}</h1>\
         <form method=\"post\" action=\"/o/oauth2/v2/auth\">\
         <input type=\"hidden\" name=\"request\" value=\"{raw}\">\
         <label class=\"account\" for=\"account\">Email</label>\
         <input id=\"account\" name=\"account\" type=\"email\" value=\"{account}\" required autocomplete=\"username\">\
         <p><b>{app}</b> wants to access your Google Account. It will be able to:</p><ul>{boxes}</ul>\
         <p class=\"note\">Make sure you trust {app}. You can remove its access in your Google Account under Security.</p>\
         <p class=\"buttons\"><button id=\"cancel\" type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Cancel</button>\
         <button id=\"allow\" type=\"submit\" name=\"decision\" value=\"allow\">Allow</button></p>\
         </form></main></body></html>\n",
        app = html_escape(app),
        raw = html_escape(raw),
        account = html_escape(account.unwrap_or_default()),
    );
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

/// An error Google shows the user instead of redirecting. It never echoes the request.
fn error_page(status: StatusCode, error: &str, description: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error {code}: {error}</title></head>\n<body><h1>Access blocked: this app's request is invalid</h1>\n<p>Error {code}: {error}</p>\n<p>{description}</p></body></html>\n",
        code = status.as_u16(),
    );
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// A redirect URI Google would accept for a web client: absolute http(s) with a host, no
/// fragment, no user info. (The emulator has no list of registered URIs; see the module docs.)
fn valid_redirect(uri: &str) -> Option<url::Url> {
    let url = url::Url::parse(uri).ok()?;
    let fine = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    fine.then_some(url)
}

/// A 302 to `redirect` with `pairs` appended to whatever query it already has.
fn redirect_to(redirect: &url::Url, pairs: &[(&str, Option<&str>)]) -> Response {
    let mut target = redirect.clone();
    {
        let mut query = target.query_pairs_mut();
        for (name, value) in pairs {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
    }
    let mut response = StatusCode::FOUND.into_response();
    match HeaderValue::from_str(target.as_str()) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What `prompt` asked for (space-separated `none`, `consent`, `select_account`).
struct Prompt {
    none: bool,
    consent: bool,
}

fn parse_prompt(value: Option<&str>) -> Option<Prompt> {
    let mut prompt = Prompt {
        none: false,
        consent: false,
    };
    let mut count = 0;
    for word in value.unwrap_or_default().split_whitespace() {
        count += 1;
        match word {
            "none" => prompt.none = true,
            "consent" => prompt.consent = true,
            "select_account" => {}
            _ => return None,
        }
    }
    // `none` may not be combined with anything else.
    (!prompt.none || count == 1).then_some(prompt)
}

fn authorization(shared: &Shared, q: &[(String, String)], step: Step<'_>) -> Response {
    let Some(client_id) = param(q, "client_id").filter(not_empty) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: client_id",
        );
    };
    if client_id != shared.oauth_client.client_id {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        );
    }
    let Some(redirect_uri) = param(q, "redirect_uri").filter(not_empty) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            "Missing required parameter: redirect_uri",
        );
    };
    let Some(redirect) = valid_redirect(redirect_uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            "The redirect URI in the request does not match the ones authorized for the OAuth client.",
        );
    };
    let state = param(q, "state");
    let refuse = |error: &str, description: &str| {
        redirect_to(
            &redirect,
            &[
                ("error", Some(error)),
                ("error_description", Some(description)),
                ("state", state),
                ("iss", Some(ISSUER)),
            ],
        )
    };

    if param(q, "response_type") != Some("code") {
        return refuse(
            "unsupported_response_type",
            "Only response_type=code is supported for web server applications.",
        );
    }
    let requested: Vec<&str> = param(q, "scope")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if requested.is_empty() {
        return refuse("invalid_request", "Missing required parameter: scope");
    }
    let mut scopes: Vec<String> = Vec::new();
    for scope in requested {
        match canonical_scope(scope) {
            Some(canonical) if !scopes.iter().any(|s| s == canonical) => {
                scopes.push(canonical.to_owned());
            }
            Some(_) => {}
            None => {
                return refuse(
                    "invalid_scope",
                    &format!("Some requested scopes were invalid. {{invalid=[{scope}]}}"),
                );
            }
        }
    }
    let offline = match param(q, "access_type") {
        None | Some("online") => false,
        Some("offline") => true,
        Some(_) => return refuse("invalid_request", "Invalid access_type."),
    };
    let Some(prompt) = parse_prompt(param(q, "prompt")) else {
        return refuse("invalid_request", "Invalid prompt.");
    };
    let pkce = match param(q, "code_challenge") {
        None => None,
        Some(challenge) => {
            let method = ChallengeMethod::parse(param(q, "code_challenge_method"));
            match method {
                Some(method)
                    if valid_pkce_string(challenge)
                        && (method == ChallengeMethod::Plain || challenge.len() == 43) =>
                {
                    Some(Pkce {
                        challenge: challenge.to_owned(),
                        method,
                    })
                }
                Some(_) => return refuse("invalid_request", "Invalid code_challenge."),
                None => return refuse("invalid_request", "Invalid code_challenge_method."),
            }
        }
    };
    let include_granted = param(q, "include_granted_scopes") == Some("true");

    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let proposed = world
        .oauth
        .consent_user
        .clone()
        .or_else(|| param(q, "login_hint").map(str::to_owned))
        .filter(|a| !a.is_empty());
    let account = match step {
        Step::Request { raw } if world.oauth.consent_screen && !prompt.none => {
            drop(world);
            return consent_page(raw, proposed.as_deref(), &scopes, &redirect);
        }
        Step::Request { .. } => proposed,
        Step::Answer { allow: false, .. } => {
            return refuse("access_denied", "The user denied access.");
        }
        Step::Answer { account, .. } => Some(account).filter(|a| !a.is_empty()),
    };
    let Some(account) = account else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no account: the emulator consents as the control API's consent_user, else as login_hint, and neither was given",
        );
    };
    let user = world
        .user(&account)
        .or_else(|| world.users.values().find(|u| u.id == account));
    let Some(user) = user else {
        return refuse("access_denied", "unknown_account");
    };
    let email = user.email.to_ascii_lowercase();
    let hosted_domain = user.hosted_domain.clone();
    if world.oauth.blocked(&email) {
        return refuse("access_denied", "admin_policy_enforced");
    }
    if user.suspended || user.archived {
        return refuse("access_denied", "account_disabled");
    }
    if let Some(error) = &user.token_error {
        return refuse("access_denied", error);
    }
    let grant = world.oauth.grants.get(&email).filter(|g| g.active);
    let already_granted = grant.is_some_and(|g| scopes.iter().all(|s| g.scopes.contains(s)));
    let refresh_issued = grant.is_some_and(|g| g.refresh_issued);
    if prompt.none && !already_granted {
        return refuse("consent_required", "The user has not granted these scopes.");
    }
    let consent_shown = prompt.consent || !already_granted;
    let all_granted = world.oauth.consent(&email, &scopes);
    let scopes = if include_granted { all_granted } else { scopes };
    let code = format!("4/0A{}", random_string(72));
    world.oauth.prune_codes(now);
    world.oauth.codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            user: email.clone(),
            scopes: scopes.clone(),
            pkce,
            offline,
            issue_refresh: offline && (consent_shown || !refresh_issued),
            nonce: param(q, "nonce").map(str::to_owned),
            expires_at_ms: now + CODE_LIFETIME_MS,
            revoked: false,
            redeemed: None,
        },
    );
    drop(world);
    let domain = hosted_domain;
    redirect_to(
        &redirect,
        &[
            ("state", state),
            ("iss", Some(ISSUER)),
            ("code", Some(&code)),
            ("scope", Some(&scopes.join(" "))),
            ("authuser", Some("0")),
            ("hd", domain.as_deref()),
            (
                "prompt",
                Some(if consent_shown { "consent" } else { "none" }),
            ),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// The token endpoint's grants for the web client.

/// Client authentication: HTTP Basic (RFC 6749 §2.3.1, form-encoded parts) or form fields.
fn authenticate_client(
    shared: &Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(), Refusal> {
    let basic = basic_credentials(headers);
    let (id, secret) = match &basic {
        Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
        None => (param(form, "client_id"), param(form, "client_secret")),
    };
    let Some(id) = id.filter(not_empty) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Could not determine client ID from request.",
        ));
    };
    let client = &shared.oauth_client;
    if id != client.client_id {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        ));
    }
    let Some(secret) = secret.filter(not_empty) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_secret is missing.",
        ));
    };
    if secret != client.client_secret {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Unauthorized",
        ));
    }
    Ok(())
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD_LENIENT.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// `application/x-www-form-urlencoded` decoding of one value (`+` is a space).
fn form_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some((high, low)), _) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a successful grant produced: the JSON body, and the claims of an ID token to sign
/// outside the lock (RSA signing takes a moment).
struct Issued {
    body: Value,
    id_token: Option<Value>,
}

/// `grant_type=authorization_code` or `grant_type=refresh_token`.
pub(crate) async fn token_grant(
    shared: &Shared,
    grant_type: &str,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Response {
    let issued = if grant_type == "authorization_code" {
        redeem_code(shared, headers, form)
    } else {
        refresh(shared, headers, form)
    };
    let Issued { mut body, id_token } = match issued {
        Ok(issued) => issued,
        Err(refusal) => return *refusal,
    };
    if let Some(claims) = id_token {
        match tokio::task::spawn_blocking(move || sign_id_token(&claims)).await {
            Ok(Ok(jwt)) => body["id_token"] = json!(jwt),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "The emulator could not sign an ID token.");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            Err(e) => {
                tracing::error!(error = %e, "The emulator's ID-token signer panicked.");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    }
    let mut response = json_response(StatusCode::OK, &body, false);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal from the token endpoint, boxed to keep `Result`s small.
type Refusal = Box<Response>;

fn refusal(status: StatusCode, error: &str, description: &str) -> Refusal {
    Box::new(oauth_error(status, error, description))
}

fn invalid_grant(description: &str) -> Refusal {
    refusal(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// Whether the user may still hold tokens for the app: exists, can sign in, not blocked.
fn user_in_good_standing<'w>(world: &'w World, email: &str) -> Option<&'w User> {
    world
        .user(email)
        .filter(|u| !u.suspended && !u.archived && !world.oauth.blocked(email))
}

fn redeem_code(
    shared: &Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<Issued, Refusal> {
    authenticate_client(shared, headers, form)?;
    let Some(code) = param(form, "code").filter(not_empty) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: code",
        ));
    };
    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let Some(entry) = world.oauth.codes.get(code).cloned() else {
        return Err(invalid_grant("Malformed auth code."));
    };
    if let Some(session) = entry.redeemed {
        // RFC 6749 §4.1.2: a code used twice revokes what it was first exchanged for.
        if let Some(session) = world.oauth.sessions.get_mut(&session) {
            session.revoked = true;
        }
        return Err(invalid_grant("Bad Request"));
    }
    if entry.revoked
        || entry.expires_at_ms <= now
        || entry.client_id != shared.oauth_client.client_id
    {
        return Err(invalid_grant("Bad Request"));
    }
    let Some(redirect_uri) = param(form, "redirect_uri") else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing parameter: redirect_uri",
        ));
    };
    if redirect_uri != entry.redirect_uri {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            "Bad Request",
        ));
    }
    match (&entry.pkce, param(form, "code_verifier")) {
        (Some(_), None) => return Err(invalid_grant("Missing code verifier.")),
        (Some(pkce), Some(verifier)) if !pkce.verifies(verifier) => {
            return Err(invalid_grant("Invalid code verifier."));
        }
        (None, Some(_)) => return Err(invalid_grant("code_verifier or verifier is not needed.")),
        _ => {}
    }
    let Some(user) = user_in_good_standing(&world, &entry.user) else {
        return Err(invalid_grant("Bad Request"));
    };
    let user_id = user.id.clone();
    let hosted_domain = user.hosted_domain.clone();
    let session = Session {
        user: entry.user.clone(),
        client_id: entry.client_id.clone(),
        scopes: entry.scopes.clone(),
        offline: entry.offline,
        nonce: entry.nonce.clone(),
        revoked: false,
    };
    let id = world.oauth.new_session(session.clone());
    if let Some(code) = world.oauth.codes.get_mut(code) {
        code.redeemed = Some(id);
    }
    let access_token = issue_access_token(
        &mut world,
        now,
        IssuedToken {
            subject: Some(entry.user.clone()),
            scopes: entry.scopes.clone(),
            expires_at_ms: 0,
            client_id: entry.client_id.clone(),
            session: Some(id),
        },
    );
    let mut body = token_body(&access_token, &entry.scopes);
    if entry.issue_refresh {
        let refresh_token = format!("1//0e{}", random_string(96));
        world.oauth.refresh_tokens.insert(refresh_token.clone(), id);
        if let Some(grant) = world.oauth.grants.get_mut(&entry.user) {
            grant.refresh_issued = true;
        }
        body["refresh_token"] = json!(refresh_token);
    }
    drop(world);
    let id_token = id_token_claims(&session, &user_id, hosted_domain.as_deref(), &access_token);
    Ok(Issued { body, id_token })
}

fn refresh(
    shared: &Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<Issued, Refusal> {
    authenticate_client(shared, headers, form)?;
    let Some(refresh_token) = param(form, "refresh_token").filter(not_empty) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        ));
    };
    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let Some(&id) = world.oauth.refresh_tokens.get(refresh_token) else {
        return Err(invalid_grant(EXPIRED_OR_REVOKED));
    };
    let Some(session) = world
        .oauth
        .sessions
        .get(&id)
        .filter(|s| !s.revoked)
        .cloned()
    else {
        return Err(invalid_grant(EXPIRED_OR_REVOKED));
    };
    if session.client_id != shared.oauth_client.client_id {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Unauthorized",
        ));
    }
    let Some(user) = user_in_good_standing(&world, &session.user) else {
        return Err(invalid_grant(EXPIRED_OR_REVOKED));
    };
    let user_id = user.id.clone();
    let hosted_domain = user.hosted_domain.clone();
    // An optional `scope` may narrow the new token to part of the grant, never widen it.
    let scopes = match param(form, "scope").map(str::split_whitespace) {
        None => session.scopes.clone(),
        Some(requested) => {
            let mut narrowed: Vec<String> = Vec::new();
            for scope in requested {
                match canonical_scope(scope).filter(|c| session.scopes.iter().any(|s| s == c)) {
                    Some(c) => {
                        if !narrowed.iter().any(|s| s == c) {
                            narrowed.push(c.to_owned());
                        }
                    }
                    None => {
                        return Err(refusal(
                            StatusCode::BAD_REQUEST,
                            "invalid_scope",
                            "Bad Request",
                        ));
                    }
                }
            }
            if narrowed.is_empty() {
                session.scopes.clone()
            } else {
                narrowed
            }
        }
    };
    let access_token = issue_access_token(
        &mut world,
        now,
        IssuedToken {
            subject: Some(session.user.clone()),
            scopes: scopes.clone(),
            expires_at_ms: 0,
            client_id: session.client_id.clone(),
            session: Some(id),
        },
    );
    drop(world);
    let body = token_body(&access_token, &scopes);
    let session = Session { scopes, ..session };
    let id_token = id_token_claims(&session, &user_id, hosted_domain.as_deref(), &access_token);
    Ok(Issued { body, id_token })
}

fn token_body(access_token: &str, scopes: &[String]) -> Value {
    json!({
        "access_token": access_token,
        "expires_in": TOKEN_LIFETIME_S - 1,
        "scope": scopes.join(" "),
        "token_type": "Bearer",
    })
}

// ---------------------------------------------------------------------------------------------
// ID tokens.

/// The claims of an ID token when the session holds `openid`, else `None`.
fn id_token_claims(
    session: &Session,
    user_id: &str,
    hosted_domain: Option<&str>,
    access_token: &str,
) -> Option<Value> {
    if !session.scopes.iter().any(|s| s == OPENID) {
        return None;
    }
    // The client checks `iat`/`exp` against its own wall clock, which does not see the
    // emulator's offset.
    let now = wall_ms() / 1000;
    let digest = Sha256::digest(access_token.as_bytes());
    let mut claims = json!({
        "iss": ISSUER,
        "azp": session.client_id,
        "aud": session.client_id,
        "sub": user_id,
        "at_hash": URL_SAFE_LENIENT.encode(&digest[..16]),
        "iat": now,
        "exp": now + TOKEN_LIFETIME_S,
    });
    if let Some(domain) = hosted_domain {
        claims["hd"] = json!(domain);
    }
    if session.scopes.iter().any(|s| s == USERINFO_EMAIL) {
        claims["email"] = json!(session.user);
        claims["email_verified"] = json!(true);
    }
    if let Some(nonce) = &session.nonce {
        claims["nonce"] = json!(nonce);
    }
    Some(claims)
}

fn key_id() -> anyhow::Result<&'static str> {
    static KEY_ID: OnceLock<String> = OnceLock::new();
    if let Some(kid) = KEY_ID.get() {
        return Ok(kid);
    }
    let kid = process_key_id()?;
    Ok(KEY_ID.get_or_init(|| kid))
}

/// An RS256 JWT over `claims`, signed with the process key (published at `/oauth2/v3/certs`).
fn sign_id_token(claims: &Value) -> anyhow::Result<String> {
    let key = process_key()?;
    let header = json!({"alg": "RS256", "kid": key_id()?, "typ": "JWT"});
    let signed = format!(
        "{}.{}",
        URL_SAFE_LENIENT.encode(serde_json::to_vec(&header)?),
        URL_SAFE_LENIENT.encode(serde_json::to_vec(claims)?)
    );
    let signature = SigningKey::<Sha256>::new(key.clone())
        .sign(signed.as_bytes())
        .to_bytes();
    Ok(format!("{signed}.{}", URL_SAFE_LENIENT.encode(signature)))
}

/// `GET /oauth2/v3/certs`: the JWKS that verifies ID tokens.
async fn certs() -> Response {
    let jwks = tokio::task::spawn_blocking(|| -> anyhow::Result<Value> {
        let key = process_key()?.to_public_key();
        Ok(json!({"keys": [{
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": key_id()?,
            "n": URL_SAFE_LENIENT.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_LENIENT.encode(key.e().to_bytes_be()),
        }]}))
    })
    .await;
    match jwks {
        Ok(Ok(jwks)) => json_response(StatusCode::OK, &jwks, false),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "The emulator could not publish its key.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "The emulator's key publisher panicked.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation, userinfo, tokeninfo.

/// Query parameters followed by form fields: these endpoints take either.
fn query_and_form(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut pairs = query_pairs(query);
    pairs.extend(query_pairs(Some(&String::from_utf8_lossy(body))));
    pairs
}

/// `POST /revoke`.
async fn revoke(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    injected_latency(&shared).await;
    let pairs = query_and_form(query.as_deref(), &body);
    let response = revocation(&shared, param(&pairs, "token").unwrap_or_default());
    recorded(&shared, ApiMethod::Revoke, response)
}

fn revocation(shared: &Shared, token: &str) -> Response {
    let invalid = || {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "Token expired or revoked",
        )
    };
    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let session = match world.oauth.refresh_tokens.get(token) {
        Some(&id) => Some(id),
        None => match world.live_token(token, now) {
            Some(issued) => issued.session,
            None => return invalid(),
        },
    };
    match session {
        // Revoking any token of a consent ends the user's whole authorization of the app.
        Some(id) => {
            let Some(user) = world
                .oauth
                .sessions
                .get(&id)
                .filter(|s| !s.revoked)
                .map(|s| s.user.clone())
            else {
                return invalid();
            };
            world.oauth.revoke_user(&user);
        }
        // A service-account token has no grant behind it: only the token ends.
        None => {
            world.tokens.remove(token);
        }
    }
    drop(world);
    json_response(StatusCode::OK, &json!({}), false)
}

/// `GET /oauth2/v3/userinfo`.
async fn userinfo(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    injected_latency(&shared).await;
    let pairs = query_pairs(query.as_deref());
    let token = bearer(&headers).or_else(|| param(&pairs, "access_token"));
    let response = user_profile(&shared, token.unwrap_or_default());
    recorded(&shared, ApiMethod::Userinfo, response)
}

fn user_profile(shared: &Shared, token: &str) -> Response {
    let now = shared.clock.now_ms();
    let world = shared.lock();
    let profile = world.live_token(token, now).and_then(|issued| {
        let user = world
            .user(issued.subject.as_deref()?)
            .filter(|u| !u.suspended)?;
        let mut body = json!({"sub": user.id});
        if issued.scopes.iter().any(|s| s == USERINFO_EMAIL) {
            body["email"] = json!(user.email);
            body["email_verified"] = json!(true);
        }
        if let Some(domain) = &user.hosted_domain {
            body["hd"] = json!(domain);
        }
        Some(body)
    });
    drop(world);
    match profile {
        Some(body) => json_response(StatusCode::OK, &body, false),
        None => {
            let mut response = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "Invalid Credentials",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
                ),
            );
            response
        }
    }
}

/// `GET /tokeninfo?access_token=…` (or the same as a form).
async fn tokeninfo(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    injected_latency(&shared).await;
    let pairs = query_and_form(query.as_deref(), &body);
    let response = token_details(&shared, param(&pairs, "access_token").unwrap_or_default());
    recorded(&shared, ApiMethod::Tokeninfo, response)
}

fn token_details(shared: &Shared, token: &str) -> Response {
    let now = shared.clock.now_ms();
    let world = shared.lock();
    let details = world.live_token(token, now).map(|issued| {
        let offline = issued
            .session
            .and_then(|id| world.oauth.sessions.get(&id))
            .is_some_and(|s| s.offline);
        let mut body = json!({
            "azp": issued.client_id,
            "aud": issued.client_id,
            "scope": issued.scopes.join(" "),
            "exp": (issued.expires_at_ms / 1000).to_string(),
            "expires_in": ((issued.expires_at_ms - now) / 1000).max(0).to_string(),
            "access_type": if offline { "offline" } else { "online" },
        });
        if let Some(user) = issued.subject.as_deref().and_then(|s| world.user(s)) {
            body["sub"] = json!(user.id);
            if issued.scopes.iter().any(|s| s == USERINFO_EMAIL) {
                body["email"] = json!(user.email);
                body["email_verified"] = json!("true");
            }
        }
        body
    });
    drop(world);
    match details {
        Some(body) => json_response(StatusCode::OK, &body, false),
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_token", "Invalid Value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_percent_and_stray_percent_signs() {
        assert_eq!(form_decode("a+b%2Bc%3A"), "a b+c:");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
        assert_eq!(form_decode("GOCSPX-abc_DEF"), "GOCSPX-abc_DEF");
    }

    #[test]
    fn redirect_uris_must_be_absolute_http_without_fragment_or_user_info() {
        assert!(valid_redirect("https://app.example.com/oauth/callback").is_some());
        assert!(valid_redirect("http://127.0.0.1:8080/cb?x=1").is_some());
        assert!(valid_redirect("/oauth/callback").is_none());
        assert!(valid_redirect("https://app.example.com/cb#frag").is_none());
        assert!(valid_redirect("https://user:pw@app.example.com/cb").is_none());
        assert!(valid_redirect("ftp://app.example.com/cb").is_none());
    }

    #[test]
    fn prompt_none_stands_alone_and_unknown_values_are_refused() {
        assert!(parse_prompt(None).is_some_and(|p| !p.none && !p.consent));
        assert!(parse_prompt(Some("consent select_account")).is_some_and(|p| p.consent));
        assert!(parse_prompt(Some("none")).is_some_and(|p| p.none));
        assert!(parse_prompt(Some("none consent")).is_none());
        assert!(parse_prompt(Some("login")).is_none());
    }
}
