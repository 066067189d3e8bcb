//! Gmail's batch endpoint (`POST /batch` and `POST /batch/gmail/v1`): a `multipart/mixed` body
//! of `application/http` parts, each one whole HTTP request, answered by a `multipart/mixed`
//! body of the whole HTTP responses, in order.
//!
//! Each inner request is dispatched to the Gmail router `server` hands in, so it takes the same
//! fault → auth → concurrency cap → quota → handler path as if it had been sent alone and is
//! counted the same way. The batch itself is never faulted, charged or counted. This module must
//! not import a route handler: it knows the API only as the router it is given.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tower::ServiceExt as _;

use super::errors::GoogleError;
use super::pipeline::ResetConnection;
use super::util::hash;

/// Google's limit on calls in one batch request.
pub(crate) const MAX_CALLS: usize = 100;

/// The largest batch body accepted (100 small requests fit many times over).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The batch routes over `api`, the router that serves the inner requests.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(api: Router) -> Router<S> {
    let for_short = api.clone();
    Router::new()
        .route(
            "/batch",
            post(move |headers: HeaderMap, body: Bytes| batch(for_short.clone(), headers, body)),
        )
        .route(
            "/batch/gmail/v1",
            post(move |headers: HeaderMap, body: Bytes| batch(api.clone(), headers, body)),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// One inner request as its part carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InnerRequest {
    pub(crate) content_id: Option<String>,
    pub(crate) method: String,
    /// The path and query (an absolute URL is reduced to them).
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

async fn batch(api: Router, outer: HeaderMap, body: Bytes) -> Response {
    let parsed = outer
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(boundary)
        .ok_or_else(|| {
            GoogleError::invalid_argument("Invalid multipart request with 0 mime parts.")
        })
        .and_then(|boundary| parse_batch(&String::from_utf8_lossy(&body), &boundary));
    let inner = match parsed {
        Ok(inner) => inner,
        Err(refusal) => return refusal.into_response(),
    };
    let calls = inner.iter().map(|request| {
        let api = api.clone();
        let request = build_request(request, &outer);
        async move {
            match request {
                Ok(request) => match api.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                Err(refusal) => refusal.into_response(),
            }
        }
    });
    // Polled together: inner calls overlap whenever one of them waits (injected latency), so
    // they meet the per-user concurrency cap as parallel requests would.
    let responses = futures_util::future::join_all(calls).await;
    let mut parts = Vec::with_capacity(responses.len());
    for (request, response) in inner.iter().zip(responses) {
        if response.extensions().get::<ResetConnection>().is_some() {
            // A dropped connection cannot be one part of an answer: the whole exchange is lost.
            let mut reset = StatusCode::INTERNAL_SERVER_ERROR.into_response();
            reset.extensions_mut().insert(ResetConnection);
            return reset;
        }
        let (head, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        parts.push((request.content_id.as_deref(), head, body));
    }
    let boundary = next_boundary();
    let mut out = Vec::new();
    for (content_id, head, body) in parts {
        write_part(&mut out, &boundary, content_id, &head, &body);
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut response = Response::new(Body::from(out));
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A fresh boundary per answer, in Google's `batch_…` form.
fn next_boundary() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("batch_{:016x}{:08x}", hash(&[n, 0xba7c4]), n)
}

/// `<x>` (or a bare `x`) becomes `<response-x>`, as Google answers it.
pub(crate) fn response_content_id(request_id: &str) -> String {
    let inner = request_id
        .trim()
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(request_id.trim());
    format!("<response-{inner}>")
}

fn write_part(
    out: &mut Vec<u8>,
    boundary: &str,
    content_id: Option<&str>,
    head: &axum::http::response::Parts,
    body: &[u8],
) {
    let mut text = format!("--{boundary}\r\nContent-Type: application/http\r\n");
    if let Some(id) = content_id {
        text.push_str(&format!("Content-ID: {}\r\n", response_content_id(id)));
    }
    text.push_str("\r\n");
    let status = head.status;
    text.push_str(&format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown")
    ));
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if let Ok(value) = value.to_str() {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// The `boundary` parameter of a `multipart/mixed` content type, quoted or not.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params
        .find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim().eq_ignore_ascii_case("boundary").then(|| {
                let value = value.trim();
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
                    .to_owned()
            })
        })
        .filter(|b| !b.is_empty())
}

/// Splits a batch body into its inner requests. Line ends may be CRLF or LF; the preamble
/// before the first delimiter and the epilogue after the last are ignored.
pub(crate) fn parse_batch(body: &str, boundary: &str) -> Result<Vec<InnerRequest>, GoogleError> {
    let delimiter = format!("--{boundary}");
    let mut parts: Vec<Vec<&str>> = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix(&delimiter) {
            let rest = rest.trim_end();
            if rest.is_empty() || rest == "--" {
                if let Some(part) = current.take() {
                    parts.push(part);
                }
                if rest == "--" {
                    break;
                }
                current = Some(Vec::new());
                continue;
            }
        }
        if let Some(part) = current.as_mut() {
            part.push(line);
        }
    }
    if let Some(part) = current.take() {
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(GoogleError::invalid_argument(
            "Invalid multipart request with 0 mime parts.",
        ));
    }
    if parts.len() > MAX_CALLS {
        return Err(GoogleError::invalid_argument(format!(
            "Too many requests in batch: {} (the limit is {MAX_CALLS}).",
            parts.len()
        )));
    }
    parts.iter().map(|lines| parse_part(lines)).collect()
}

/// Headers up to the first empty line, as `(name, value)`; the rest of the lines after it.
fn split_headers<'a>(lines: &'a [&'a str]) -> (Vec<(String, String)>, &'a [&'a str]) {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            return (headers, &lines[i + 1..]);
        }
        if line.starts_with([' ', '\t']) {
            // A folded header continues the previous one.
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    (headers, &[])
}

fn parse_part(lines: &[&str]) -> Result<InnerRequest, GoogleError> {
    let (part_headers, rest) = split_headers(lines);
    let content_id = part_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-id"))
        .map(|(_, v)| v.clone());
    let start = rest
        .iter()
        .position(|l| !l.trim().is_empty())
        .ok_or_else(|| {
            GoogleError::invalid_argument("Failed to parse batch request, error: empty part.")
        })?;
    let mut words = rest[start].split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Err(GoogleError::invalid_argument(format!(
            "Failed to parse batch request, error: bad request line {:?}.",
            rest[start]
        )));
    };
    let (headers, body_lines) = split_headers(&rest[start + 1..]);
    let mut body = body_lines.join("\n");
    let trimmed = body.trim_end().len();
    body.truncate(trimmed);
    Ok(InnerRequest {
        content_id,
        method: method.to_ascii_uppercase(),
        target: path_of(target).to_owned(),
        headers,
        body,
    })
}

/// `https://host/path?q` → `/path?q`; a path stays as it is.
fn path_of(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return rest.find('/').map_or("/", |at| &rest[at..]);
        }
    }
    target
}

/// The inner request as the API router sees it: the outer headers except the `Content-`
/// ones, overridden by the part's own (so its `Authorization` wins), and its body.
fn build_request(inner: &InnerRequest, outer: &HeaderMap) -> Result<Request<Body>, GoogleError> {
    let bad = |what: &str| {
        GoogleError::invalid_argument(format!("Failed to parse batch request, error: {what}."))
    };
    let mut headers = HeaderMap::new();
    for (name, value) in outer {
        let lower = name.as_str();
        if !lower.starts_with("content-") && name != header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in &inner.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("bad header"))?;
        let value = HeaderValue::from_str(value).map_err(|_| bad("bad header value"))?;
        headers.insert(name, value);
    }
    headers.remove(header::CONTENT_LENGTH);
    if !inner.body.is_empty() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(inner.body.len()));
    }
    let mut request = Request::builder()
        .method(inner.method.as_str())
        .uri(inner.target.as_str())
        .body(Body::from(inner.body.clone()))
        .map_err(|_| bad("bad request line"))?;
    *request.headers_mut() = headers;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_read_quoted_or_not() {
        assert_eq!(
            boundary("multipart/mixed; boundary=\"===============7330845974216740156==\"")
                .as_deref(),
            Some("===============7330845974216740156==")
        );
        assert_eq!(
            boundary("Multipart/Mixed;boundary=batch_foobarbaz").as_deref(),
            Some("batch_foobarbaz")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/mixed"), None);
    }

    #[test]
    fn content_ids_get_googles_response_prefix() {
        assert_eq!(response_content_id("<abc + 1>"), "<response-abc + 1>");
        assert_eq!(response_content_id("<item1:1@x>"), "<response-item1:1@x>");
        assert_eq!(response_content_id("7"), "<response-7>");
    }

    #[test]
    fn lf_and_crlf_bodies_parse_alike() {
        let lf = "--b\nContent-Type: application/http\nContent-ID: <x+1>\n\nGET /gmail/v1/users/me/profile HTTP/1.1\nAuthorization: Bearer t\n\n\n--b\nContent-Type: application/http\n\nPOST https://gmail.googleapis.com/gmail/v1/x?y=1 HTTP/1.1\nContent-Type: application/json\n\n{\"a\": 1}\n--b--\n";
        let crlf = lf.replace('\n', "\r\n");
        for body in [lf.to_owned(), crlf] {
            let parsed = parse_batch(&body, "b").unwrap();
            assert_eq!(parsed.len(), 2);
            assert_eq!(parsed[0].content_id.as_deref(), Some("<x+1>"));
            assert_eq!(parsed[0].method, "GET");
            assert_eq!(parsed[0].target, "/gmail/v1/users/me/profile");
            assert_eq!(
                parsed[0].headers,
                [("Authorization".to_owned(), "Bearer t".to_owned())]
            );
            assert_eq!(parsed[0].body, "");
            assert_eq!(parsed[1].content_id, None);
            assert_eq!(parsed[1].target, "/gmail/v1/x?y=1");
            assert_eq!(parsed[1].body, "{\"a\": 1}");
        }
    }

    #[test]
    fn more_than_a_hundred_parts_or_none_are_refused() {
        let part = "--b\nContent-Type: application/http\n\nGET /x HTTP/1.1\n\n";
        assert!(parse_batch(&format!("{}--b--\n", part.repeat(100)), "b").is_ok());
        assert!(parse_batch(&format!("{}--b--\n", part.repeat(101)), "b").is_err());
        assert!(parse_batch("no parts here", "b").is_err());
    }
}
