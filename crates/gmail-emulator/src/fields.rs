//! Google's system parameters on every Gmail method: `fields=` partial responses (`a,b`,
//! `a/b`, `a(b,c)`, nested, `*`), `prettyPrint` and `alt=json`, applied by one middleware
//! around the Gmail routes.
//!
//! It only trims successful JSON bodies after the handler ran; it must not know any handler,
//! and error bodies pass through whole, as Google sends them.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::errors::GoogleError;
use super::util::{param, query_pairs};

/// A parsed selector: each selected member, with its own sub-selection or `None` for all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selection(BTreeMap<String, Option<Selection>>);

/// Every member name of the Gmail v1 resources the emulator serves; a selector naming
/// anything else is refused as Google refuses it.
const KNOWN: &[&str] = &[
    "*",
    // Message, MessagePart, MessagePartBody, MessagePartHeader.
    "id",
    "threadId",
    "labelIds",
    "snippet",
    "historyId",
    "internalDate",
    "payload",
    "sizeEstimate",
    "raw",
    "classificationLabelValues",
    "partId",
    "mimeType",
    "filename",
    "headers",
    "body",
    "parts",
    "name",
    "value",
    "attachmentId",
    "size",
    "data",
    // Label and its colour.
    "messageListVisibility",
    "labelListVisibility",
    "type",
    "messagesTotal",
    "messagesUnread",
    "threadsTotal",
    "threadsUnread",
    "color",
    "textColor",
    "backgroundColor",
    // Thread, Profile, the list responses and history.
    "messages",
    "emailAddress",
    "threads",
    "labels",
    "history",
    "nextPageToken",
    "resultSizeEstimate",
    "messagesAdded",
    "messagesDeleted",
    "labelsAdded",
    "labelsRemoved",
    "message",
];

fn invalid(selector: &str) -> GoogleError {
    GoogleError::invalid_parameter("fields", format!("Invalid field selection {selector}"))
}

impl Selection {
    /// Parses a `fields` value; a syntax error or an unknown member is Google's 400.
    pub(crate) fn parse(text: &str) -> Result<Selection, GoogleError> {
        let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut at = 0;
        let selection = parse_list(&chars, &mut at, text)?;
        if at != chars.len() {
            return Err(invalid(text));
        }
        Ok(selection)
    }

    fn add(&mut self, name: String, sub: Option<Selection>) {
        match (self.0.get_mut(&name), sub) {
            (None, sub) => {
                self.0.insert(name, sub);
            }
            // All of a member already wins over part of it, and all of it replaces a part.
            (Some(None), _) => {}
            (Some(slot), None) => *slot = None,
            (Some(Some(existing)), Some(sub)) => {
                for (n, s) in sub.0 {
                    existing.add(n, s);
                }
            }
        }
    }

    /// Keeps only the selected members of `value` (each element of an array alike).
    pub(crate) fn apply(&self, value: &Value) -> Value {
        match value {
            Value::Array(items) => Value::Array(items.iter().map(|v| self.apply(v)).collect()),
            Value::Object(map) => {
                let every = self.0.get("*");
                let mut out = serde_json::Map::new();
                for (key, member) in map {
                    let chosen = self.0.get(key.as_str()).or(every);
                    match chosen {
                        Some(None) => {
                            out.insert(key.clone(), member.clone());
                        }
                        Some(Some(sub)) => {
                            out.insert(key.clone(), sub.apply(member));
                        }
                        None => {}
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}

/// `item (',' item)*`, up to the end or a `)` (left for the caller).
fn parse_list(chars: &[char], at: &mut usize, text: &str) -> Result<Selection, GoogleError> {
    let mut selection = Selection::default();
    loop {
        let (name, sub) = parse_item(chars, at, text)?;
        selection.add(name, sub);
        match chars.get(*at) {
            Some(',') => *at += 1,
            None | Some(')') => return Ok(selection),
            Some(_) => return Err(invalid(text)),
        }
    }
}

/// `name`, `name/item` or `name(list)`.
fn parse_item(
    chars: &[char],
    at: &mut usize,
    text: &str,
) -> Result<(String, Option<Selection>), GoogleError> {
    let start = *at;
    while chars
        .get(*at)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '*')
    {
        *at += 1;
    }
    let name: String = chars[start..*at].iter().collect();
    if name.is_empty() || !KNOWN.contains(&name.as_str()) {
        return Err(invalid(if name.is_empty() { text } else { &name }));
    }
    match chars.get(*at) {
        Some('/') => {
            *at += 1;
            let (child, sub) = parse_item(chars, at, text)?;
            let mut inner = Selection::default();
            inner.add(child, sub);
            Ok((name, Some(inner)))
        }
        Some('(') => {
            *at += 1;
            let inner = parse_list(chars, at, text)?;
            if chars.get(*at) != Some(&')') {
                return Err(invalid(text));
            }
            *at += 1;
            Ok((name, Some(inner)))
        }
        _ => Ok((name, None)),
    }
}

/// `true`/`false` (or `1`/`0`) for a boolean system parameter; absent is `default`.
fn system_bool(
    pairs: &[(String, String)],
    name: &'static str,
    default: bool,
) -> Result<bool, GoogleError> {
    match param(pairs, name) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(GoogleError::invalid_parameter(
            name,
            format!("Invalid value for {name}: {other}"),
        )),
    }
}

/// The middleware: validates `alt`, `prettyPrint` and `fields` before the call (a bad one is
/// a 400 that reaches neither quota nor handler), then trims a successful JSON answer.
pub(crate) async fn system_parameters(request: Request, next: Next) -> Response {
    let pairs = query_pairs(request.uri().query());
    let checked = (|| {
        if let Some(alt) = param(&pairs, "alt")
            && !alt.eq_ignore_ascii_case("json")
        {
            return Err(GoogleError::invalid_parameter(
                "alt",
                format!("Invalid value for alt: {alt}"),
            ));
        }
        system_bool(&pairs, "prettyPrint", true)?;
        param(&pairs, "fields")
            .filter(|f| !f.trim().is_empty())
            .map(Selection::parse)
            .transpose()
    })();
    let selection = match checked {
        Ok(Some(selection)) => selection,
        Ok(None) => return next.run(request).await,
        Err(refusal) => return refusal.into_response(),
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return GoogleError::backend_error().into_response();
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let trimmed = serde_json::to_vec(&selection.apply(&value)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(trimmed))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn trim(fields: &str, value: Value) -> Value {
        Selection::parse(fields).unwrap().apply(&value)
    }

    #[test]
    fn the_forms_clients_send_select_what_google_selects() {
        let message = json!({"id": "a", "threadId": "t", "labelIds": ["INBOX"], "snippet": "s",
            "payload": {"mimeType": "text/plain", "headers": [{"name": "Subject", "value": "x"}],
                "body": {"size": 1}}});
        assert_eq!(
            trim("id,labelIds", message.clone()),
            json!({"id": "a", "labelIds": ["INBOX"]})
        );
        assert_eq!(
            trim("payload/headers", message.clone()),
            json!({"payload": {"headers": [{"name": "Subject", "value": "x"}]}})
        );
        assert_eq!(
            trim("id,payload(mimeType,headers(name))", message.clone()),
            json!({"id": "a", "payload": {"mimeType": "text/plain", "headers": [{"name": "Subject"}]}})
        );
        let list = json!({"messages": [{"id": "a", "threadId": "t"}, {"id": "b", "threadId": "u"}],
            "nextPageToken": "9", "resultSizeEstimate": 2});
        assert_eq!(
            trim("nextPageToken,messages/id", list),
            json!({"messages": [{"id": "a"}, {"id": "b"}], "nextPageToken": "9"})
        );
        let labels = json!({"labels": [{"id": "INBOX", "name": "INBOX", "type": "system", "messagesTotal": 3}]});
        assert_eq!(
            trim("labels(name,id,type)", labels),
            json!({"labels": [{"id": "INBOX", "name": "INBOX", "type": "system"}]})
        );
        assert_eq!(trim("*", message.clone()), message);
        assert_eq!(
            trim("id,payload,payload/body", message.clone()),
            trim("id,payload", message)
        );
    }

    #[test]
    fn malformed_or_unknown_selectors_are_refused() {
        for bad in [
            "",
            "id,",
            "(id)",
            "labels(name",
            "labels(name))",
            "nosuch",
            "id/",
            "id,,x",
            "a b",
            "labels(nme)",
        ] {
            assert!(Selection::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
