//! The consent pages, on their own listener (`oauth.listen`), apart from the
//! health and metrics port: only these need to be reachable from browsers.
//!
//! `GET /oauth/authorize?mailbox=…` → Google; `GET /oauth/callback` ← Google,
//! which acts and answers `303 → /oauth/result` with the result page sealed in
//! a cookie, so that the URL the owner is left on (and their history) holds no
//! code and no state; `GET /oauth/result` shows it;
//! `GET /oauth/disconnect?mailbox=…&consent=…&token=…` shows a confirmation
//! form that `POST /oauth/disconnect` acts on (a GET never changes anything:
//! mail scanners follow links). A disconnect link acts only on an OAuth
//! subscription and only on the consent it was issued for; otherwise its
//! page says why it changes nothing. Pages are plain HTML, never cached, never framed,
//! and send no referrer (the callback URL carries the code). The listener's
//! bounds (timeouts, connection cap, body limit) are `listener::serve`'s.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{ConsentError, DisconnectError, OAuthService, owner};
use crate::domain::{AuthMode, MailboxAddress, SubscriptionStatus};
use crate::events;

/// The flow cookie: the nonce that binds a consent to the browser that began it.
const COOKIE: &str = "gmail_ingest_oauth";
/// The sealed result page, from the callback to `/oauth/result`.
const RESULT_COOKIE: &str = "gmail_ingest_oauth_result";
/// How long the result page can be reloaded.
const RESULT_MAX_AGE_S: u32 = 600;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A page; `body` is already-escaped HTML.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.5}}\
         code{{word-break:break-all}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    resp
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
}

fn error_page(e: &ConsentError) -> Response {
    ResultPage::refused(e).render()
}

/// A page's status, title and (escaped HTML) body: what the callback seals
/// into the result cookie.
#[derive(serde::Serialize, serde::Deserialize)]
struct ResultPage {
    status: u16,
    title: String,
    body: String,
}

impl ResultPage {
    fn refused(e: &ConsentError) -> ResultPage {
        ResultPage {
            status: e.status(),
            title: "Not connected".to_owned(),
            body: format!("<p>{}</p>", escape(&e.to_string())),
        }
    }

    fn render(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        page(status, &self.title, &self.body)
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `; Secure` when the pages are served over https (`oauth.public_base_url`).
fn secure_attr(svc: &OAuthService) -> &'static str {
    if svc.public_base.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

async fn authorize(
    State(svc): State<Arc<OAuthService>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mailbox = q.get("mailbox").map(String::as_str).unwrap_or("");
    let start = match svc.begin(mailbox) {
        Ok(s) => s,
        Err(e) => return error_page(&e),
    };
    let secure = secure_attr(&svc);
    let set_cookie = format!(
        "{COOKIE}={}; Path=/oauth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        start.nonce,
        svc.state_ttl().num_seconds()
    );
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    secure_headers(h);
    if let (Ok(loc), Ok(c)) = (
        HeaderValue::from_str(&start.location),
        HeaderValue::from_str(&set_cookie),
    ) {
        h.insert(header::LOCATION, loc);
        h.insert(header::SET_COOKIE, c);
        resp
    } else {
        page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not connected",
            "<p>Could not build the authorization link.</p>",
        )
    }
}

async fn callback(
    State(svc): State<Arc<OAuthService>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let nonce = cookie(&headers, COOKIE);
    let result = svc
        .complete(
            state,
            nonce.as_deref(),
            q.get("code").map(String::as_str),
            q.get("error").map(String::as_str),
        )
        .await;
    let page = consent_result(result);
    // Post/redirect/get: the page is shown at /oauth/result, so the code and
    // the state leave the address bar and the history; the flow cookie is
    // spent either way.
    let Ok(json) = serde_json::to_vec(&page) else {
        return page.render();
    };
    let secure = secure_attr(&svc);
    let sealed = svc.seal_result(&json);
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    secure_headers(h);
    let cookies = [
        format!("{COOKIE}=; Path=/oauth; Max-Age=0; HttpOnly; SameSite=Lax{secure}"),
        format!(
            "{RESULT_COOKIE}={sealed}; Path=/oauth/result; Max-Age={RESULT_MAX_AGE_S}; HttpOnly; SameSite=Lax{secure}"
        ),
    ];
    for c in cookies {
        match HeaderValue::from_str(&c) {
            Ok(v) => {
                h.append(header::SET_COOKIE, v);
            }
            Err(_) => return page.render(),
        }
    }
    // Relative, so that a reverse proxy's path prefix is kept.
    h.insert(header::LOCATION, HeaderValue::from_static("result"));
    resp
}

/// The page a consent's outcome shows (and its event).
fn consent_result(result: Result<super::ConsentOutcome, ConsentError>) -> ResultPage {
    match result {
        Ok(done) => {
            let m = &done.subscription.mailbox;
            events::OAuthConsent {
                mailbox: Some(m),
                outcome: "stored",
                detail: "",
            }
            .emit();
            let link = escape(&done.disconnect_link);
            if done.subscription.auth_mode == AuthMode::Delegated {
                return ResultPage {
                    status: 200,
                    title: "Consent kept, not used".to_owned(),
                    body: format!(
                        "<p><b>{m}</b> is read under your organisation's domain-wide delegation, \
                         as its operators approved. Your consent has been kept but is not used: \
                         nothing changes in how this mailbox is read unless an operator switches \
                         it to your consent.</p>\
                         <p>Should they do so, this link withdraws it: <a href=\"{link}\"><code>{link}</code></a>. \
                         You can also remove the app in your Google Account under Security → Third-party apps.</p>",
                        m = escape(m.as_str()),
                    ),
                };
            }
            let next = match done.subscription.status {
                SubscriptionStatus::Active => "Ingestion continues with this authorization.",
                SubscriptionStatus::Paused => {
                    "The subscription is paused: an operator must resume it before ingestion starts again."
                }
                _ => "An operator must approve the subscription before anything is read.",
            };
            ResultPage {
                status: 200,
                title: "Connected".to_owned(),
                body: format!(
                    "<p><b>{}</b> has given gmail-ingest read-only access to its mail.</p><p>{}</p>\
                     <p>To withdraw this access later, keep this link: <a href=\"{link}\"><code>{link}</code></a>. \
                     It works for this authorization only: if you authorize again, use the new link. \
                     You can also remove the app in your Google Account under Security → Third-party apps.</p>",
                    escape(m.as_str()),
                    escape(next),
                ),
            }
        }
        Err(e) => {
            events::OAuthConsent {
                mailbox: None,
                outcome: e.outcome(),
                detail: &e.to_string(),
            }
            .emit();
            ResultPage::refused(&e)
        }
    }
}

/// `GET /oauth/result`: the page the callback sealed into the result cookie.
async fn result(State(svc): State<Arc<OAuthService>>, headers: HeaderMap) -> Response {
    let page = cookie(&headers, RESULT_COOKIE)
        .and_then(|sealed| svc.open_result(&sealed))
        .and_then(|json| serde_json::from_slice::<ResultPage>(&json).ok());
    match page {
        Some(p) => p.render(),
        None => page_nothing_to_show(),
    }
}

fn page_nothing_to_show() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Nothing to show",
        "<p>This page shows the result of an authorization for a few minutes after it, in the \
         browser that made it. To authorize again, open the link you were sent.</p>",
    )
}

fn link_not_valid() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        "<p>This disconnect link is not valid or has expired. Ask an operator for a new one.</p>",
    )
}

/// The page for a disconnect that changes nothing, and why.
fn not_disconnected(m: &MailboxAddress, e: &DisconnectError) -> Response {
    let m = escape(m.as_str());
    match e {
        DisconnectError::NotOAuth(_) => page(
            StatusCode::CONFLICT,
            "Nothing to disconnect",
            &format!(
                "<p><b>{m}</b> is read under your organisation's domain-wide delegation, not under your \
                 consent, so this link changes nothing. Your consent is kept but not used; you can \
                 remove it in your Google Account under Security → Third-party apps. To stop the \
                 mailbox being read, ask its operators.</p>"
            ),
        ),
        DisconnectError::Superseded(_) => page(
            StatusCode::CONFLICT,
            "Link replaced",
            &format!(
                "<p>This link was issued for an earlier authorization of <b>{m}</b>, which has since been \
                 replaced or removed, so it changes nothing. Use the link shown after your latest \
                 authorization, or ask an operator for a current one.</p>"
            ),
        ),
        DisconnectError::Revoke(_) | DisconnectError::Store(_) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not disconnected",
            "<p>Google or the database could not be reached; nothing was changed. Try again in a few minutes.</p>",
        ),
        e => page(
            StatusCode::BAD_REQUEST,
            "Not disconnected",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ),
    }
}

fn link_fields(q: &HashMap<String, String>) -> (&str, &str, &str) {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    (get("mailbox"), get("consent"), get("token"))
}

async fn disconnect_form(
    State(svc): State<Arc<OAuthService>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (mailbox, consent, token) = link_fields(&q);
    let Some((m, consent)) = svc.verify_disconnect_link(mailbox, consent, token) else {
        return link_not_valid();
    };
    if let Err(e) = svc.check_disconnect(&m, Some(&consent)).await {
        return not_disconnected(&m, &e);
    }
    page(
        StatusCode::OK,
        "Disconnect",
        &format!(
            "<p>Stop gmail-ingest from reading <b>{m}</b>? The authorization is revoked at Google and the stored token deleted.</p>\
             <form method=\"post\" action=\"/oauth/disconnect\">\
             <input type=\"hidden\" name=\"mailbox\" value=\"{m}\"><input type=\"hidden\" name=\"consent\" value=\"{c}\">\
             <input type=\"hidden\" name=\"token\" value=\"{t}\">\
             <button type=\"submit\">Disconnect</button></form>",
            m = escape(m.as_str()),
            c = escape(&consent),
            t = escape(token),
        ),
    )
}

async fn disconnect(
    State(svc): State<Arc<OAuthService>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let (mailbox, consent, token) = link_fields(&f);
    let Some((m, consent)) = svc.verify_disconnect_link(mailbox, consent, token) else {
        return link_not_valid();
    };
    match svc.disconnect(&m, &owner(&m), Some(&consent), false).await {
        Ok(_) => page(
            StatusCode::OK,
            "Disconnected",
            &format!(
                "<p>gmail-ingest no longer has access to <b>{}</b>: the authorization was revoked at Google.</p>",
                escape(m.as_str())
            ),
        ),
        Err(e) => not_disconnected(&m, &e),
    }
}

pub fn router(svc: Arc<OAuthService>) -> Router {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/callback", get(callback))
        .route("/oauth/result", get(result))
        .route("/oauth/disconnect", get(disconnect_form).post(disconnect))
        .with_state(svc)
}

/// Serves the consent pages until `shutdown` resolves, within `limits`
/// (`[oauth]`: browser-facing, so its body limit is small).
pub async fn serve(
    listener: TcpListener,
    svc: Arc<OAuthService>,
    limits: crate::config::ListenerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve(listener, router(svc), "oauth", limits, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_echo() {
        assert_eq!(escape("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
    }

    #[test]
    fn the_flow_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; gmail_ingest_oauth=NONCE; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("NONCE"));
        assert_eq!(cookie(&HeaderMap::new(), COOKIE), None);
    }
}
