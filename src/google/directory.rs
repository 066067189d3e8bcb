//! Admin SDK Directory look-ups, for the approved-OU gate.
//!
//! No maintained crate covers the Directory API, so this is a small client for
//! the one call we need (`users.get`), on the same HTTP stack, token source,
//! error classification and retry loop as Gmail. It impersonates
//! `google.admin_subject` with the `admin.directory.user.readonly` scope.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Deserialize;

use super::auth::Connector;
use super::error::{ErrorClass, GoogleError, classify_http};
use super::retry::call_with_retry;
use super::{DIRECTORY_SCOPE, Google};
use crate::domain::{MailboxAddress, OrgUnitPath};
use crate::events;

pub type HttpClient = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

pub const USERS_GET: &str = "directory.users.get";

/// The fields of a Directory user that decide whether we may impersonate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub primary_email: String,
    pub org_unit: OrgUnitPath,
    pub suspended: bool,
    pub archived: bool,
    pub is_mailbox_setup: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserResource {
    primary_email: Option<String>,
    org_unit_path: Option<String>,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    archived: bool,
    is_mailbox_setup: Option<bool>,
}

/// Percent-encodes a path segment (user keys contain `@` and `+`).
fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Google {
    /// Looks a user up; `Ok(None)` when the directory does not know it.
    pub async fn directory_user(
        self: &Arc<Self>,
        mailbox: &MailboxAddress,
    ) -> Result<Option<DirectoryUser>, GoogleError> {
        let url = format!(
            "{}admin/directory/v1/users/{}?projection=basic&viewType=admin_view",
            self.directory_base_url(),
            encode_segment(mailbox.as_str())
        );
        let scopes = vec![DIRECTORY_SCOPE.to_owned()];
        let result = call_with_retry(&self.retry, USERS_GET, || async {
            let token = self.tokens()?.token(self.admin_subject(), &scopes).await?;
            let req = http::Request::get(&url)
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .header(http::header::ACCEPT, "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| GoogleError::new(ErrorClass::Fatal, USERS_GET, e.to_string()))?;
            let resp = self.directory_http().request(req).await.map_err(|e| {
                GoogleError::new(ErrorClass::Retryable, USERS_GET, format!("transport: {e}"))
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    GoogleError::new(ErrorClass::Retryable, USERS_GET, format!("transport: {e}"))
                })?
                .to_bytes();
            if (200..300).contains(&status) {
                events::GoogleRequest {
                    method: USERS_GET,
                    outcome: "ok",
                }
                .emit();
                return Ok(Some(body));
            }
            let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            let err = classify_http(USERS_GET, Some(status), json.as_ref(), retry_after);
            events::GoogleRequest {
                method: USERS_GET,
                outcome: err.class.as_str(),
            }
            .emit();
            match err.class {
                ErrorClass::NotFound => Ok(None),
                _ => Err(err),
            }
        })
        .await?;
        let Some(body) = result else { return Ok(None) };
        let user: UserResource = serde_json::from_slice(&body).map_err(|e| {
            GoogleError::new(
                ErrorClass::Fatal,
                USERS_GET,
                format!("malformed user resource: {e}"),
            )
        })?;
        let org_unit = OrgUnitPath::parse(user.org_unit_path.as_deref().unwrap_or("/"))
            .map_err(|e| GoogleError::new(ErrorClass::Fatal, USERS_GET, e.to_string()))?;
        Ok(Some(DirectoryUser {
            primary_email: user.primary_email.unwrap_or_default().to_ascii_lowercase(),
            org_unit,
            suspended: user.suspended,
            archived: user.archived,
            // Absent means unknown; only an explicit false says "no mailbox".
            is_mailbox_setup: user.is_mailbox_setup.unwrap_or(true),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_are_encoded_as_one_path_segment() {
        assert_eq!(encode_segment("a+b@example.com"), "a%2Bb%40example.com");
        assert_eq!(encode_segment("x/y"), "x%2Fy");
    }
}
