//! Admin SDK Directory look-ups, for the approved-OU gate, group
//! subscriptions and the review.
//!
//! No maintained crate covers the Directory API, so this is a small client for
//! the calls we need (`users.get`; `groups.list?userKey=` and `members.list`,
//! paginated), on the same HTTP stack, token source, error classification and
//! retry loop as Gmail. It impersonates `google.admin_subject`: users with the
//! `admin.directory.user.readonly` scope, groups with
//! `admin.directory.group.readonly` in a token of its own, so a deployment
//! whose admin did not grant the group scope keeps its user look-ups and gets
//! [`GroupsError::ScopeNotGranted`] for groups.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Deserialize;

use super::auth::Connector;
use super::error::{AuthCause, ErrorClass, GoogleError, classify_http};
use super::retry::call_with_retry;
use super::{DIRECTORY_GROUP_SCOPE, DIRECTORY_SCOPE, Google};
use crate::domain::{MailboxAddress, OrgUnitPath};
use crate::events;

pub type HttpClient = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

pub const USERS_GET: &str = "directory.users.get";
pub const GROUPS_LIST: &str = "directory.groups.list";
pub const MEMBERS_LIST: &str = "directory.members.list";

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
    /// One Directory GET as `google.admin_subject` with `scope`: the body, or
    /// `None` on a 404. Retried and classified like every Google call.
    async fn directory_get(
        self: &Arc<Self>,
        method: &'static str,
        url: &str,
        scope: &str,
    ) -> Result<Option<Bytes>, GoogleError> {
        let scopes = vec![scope.to_owned()];
        call_with_retry(&self.retry, method, || async {
            let token = self.tokens()?.token(self.admin_subject(), &scopes).await?;
            let req = http::Request::get(url)
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .header(http::header::ACCEPT, "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| GoogleError::new(ErrorClass::Fatal, method, e.to_string()))?;
            let resp = self.directory_http().request(req).await.map_err(|e| {
                GoogleError::new(ErrorClass::Retryable, method, format!("transport: {e}"))
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
                    GoogleError::new(ErrorClass::Retryable, method, format!("transport: {e}"))
                })?
                .to_bytes();
            if (200..300).contains(&status) {
                events::GoogleRequest {
                    method,
                    outcome: "ok",
                }
                .emit();
                return Ok(Some(body));
            }
            let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            let err = classify_http(method, Some(status), json.as_ref(), retry_after);
            events::GoogleRequest {
                method,
                outcome: err.class.as_str(),
            }
            .emit();
            match err.class {
                ErrorClass::NotFound => Ok(None),
                _ => Err(err),
            }
        })
        .await
    }

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
        let Some(body) = self.directory_get(USERS_GET, &url, DIRECTORY_SCOPE).await? else {
            return Ok(None);
        };
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

    /// Every page of one Directory list: `items` picks a page's entries.
    async fn directory_list<T: serde::de::DeserializeOwned>(
        self: &Arc<Self>,
        method: &'static str,
        base: &str,
        not_found: &str,
    ) -> Result<Vec<T>, GroupsError> {
        let mut out = Vec::new();
        let mut page_token: Option<String> = None;
        // Bounded: a group of 200,000 members is 1,000 pages.
        for _ in 0..MAX_DIRECTORY_PAGES {
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = match &page_token {
                Some(t) => format!("{base}{sep}maxResults=200&pageToken={}", encode_segment(t)),
                None => format!("{base}{sep}maxResults=200"),
            };
            let body = match self
                .directory_get(method, &url, DIRECTORY_GROUP_SCOPE)
                .await
            {
                Ok(Some(b)) => b,
                Ok(None) => return Err(GroupsError::NotFound(not_found.to_owned())),
                Err(e) if e.auth_cause == Some(AuthCause::ScopeNotGranted) => {
                    return Err(GroupsError::ScopeNotGranted);
                }
                Err(e) => return Err(GroupsError::Google(e)),
            };
            let page: ListPage<T> = serde_json::from_slice(&body).map_err(|e| {
                GroupsError::Google(GoogleError::new(
                    ErrorClass::Fatal,
                    method,
                    format!("malformed list page: {e}"),
                ))
            })?;
            out.extend(page.groups.into_iter().chain(page.members));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => page_token = Some(t),
                None => return Ok(out),
            }
        }
        Err(GroupsError::Google(GoogleError::new(
            ErrorClass::Fatal,
            method,
            format!("more than {MAX_DIRECTORY_PAGES} pages"),
        )))
    }

    /// The groups `key` (a user or a group) is a direct member of (`groups.list?userKey=`).
    pub async fn directory_groups_of(
        self: &Arc<Self>,
        key: &str,
    ) -> Result<Vec<DirectoryGroup>, GroupsError> {
        let base = format!(
            "{}admin/directory/v1/groups?userKey={}",
            self.directory_base_url(),
            encode_segment(key)
        );
        let groups: Vec<GroupResource> = self.directory_list(GROUPS_LIST, &base, key).await?;
        let mut out: Vec<DirectoryGroup> = groups
            .into_iter()
            .filter_map(|g| {
                Some(DirectoryGroup {
                    email: g.email?.to_ascii_lowercase(),
                    id: g.id.unwrap_or_default(),
                    name: g.name.unwrap_or_default(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.email.cmp(&b.email));
        out.dedup_by(|a, b| a.email == b.email);
        Ok(out)
    }

    /// A group's direct members (`members.list`), nested groups as members of kind `GROUP`.
    pub async fn directory_group_members(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<Vec<GroupMember>, GroupsError> {
        let base = format!(
            "{}admin/directory/v1/groups/{}/members",
            self.directory_base_url(),
            encode_segment(group)
        );
        let members: Vec<MemberResource> = self.directory_list(MEMBERS_LIST, &base, group).await?;
        Ok(members
            .into_iter()
            .filter_map(|m| {
                Some(GroupMember {
                    email: m.email?.to_ascii_lowercase(),
                    kind: m.kind.unwrap_or_default(),
                    status: m.status.unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// At most this many pages are read of one Directory list.
const MAX_DIRECTORY_PAGES: usize = 1_000;

/// A group as `groups.list` names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirectoryGroup {
    pub email: String,
    pub id: String,
    pub name: String,
}

/// A direct member of a group as `members.list` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Lower case.
    pub email: String,
    /// `USER`, `GROUP` or `CUSTOMER`.
    pub kind: String,
    /// `ACTIVE`, `SUSPENDED`, … (empty when Google leaves it out).
    pub status: String,
}

/// Why a group look-up gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    /// The admin did not authorize the group scope for the client ID.
    #[error("scope not granted: authorize {DIRECTORY_GROUP_SCOPE} for the client ID")]
    ScopeNotGranted,
    /// The directory knows no such group or user (Google's 404).
    #[error("{0} is not a group or user in the directory")]
    NotFound(String),
    #[error(transparent)]
    Google(GoogleError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage<T> {
    #[serde(default = "Vec::new")]
    groups: Vec<T>,
    #[serde(default = "Vec::new")]
    members: Vec<T>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct GroupResource {
    email: Option<String>,
    id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct MemberResource {
    email: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
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
