//! Admin SDK Directory API: `users.get` and `members.list`, as an admin impersonated through DWD.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::errors::GoogleError;
use super::model::{ApiMethod, User};
use super::pipeline::{Shared, serve_api};
use super::util::{json_response, param, query_pairs};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/directory/v1/users/{user_key}", get(get_user))
        .route(
            "/admin/directory/v1/groups/{group_key}/members",
            get(list_members),
        )
}

fn not_found(what: &str) -> GoogleError {
    GoogleError::new(404, "notFound", format!("Resource Not Found: {what}"))
}

/// The Directory `User` resource (basic projection).
pub(crate) fn user_resource(user: &User) -> Value {
    let local = user.email.split('@').next().unwrap_or_default();
    let mut resource = json!({
        "kind": "admin#directory#user",
        "id": user.id,
        "etag": format!("\"emu-{}\"", user.id),
        "primaryEmail": user.email,
        "name": {"givenName": local, "familyName": "Mailbox", "fullName": format!("{local} Mailbox")},
        "isAdmin": user.is_admin,
        "isDelegatedAdmin": false,
        "orgUnitPath": user.org_unit,
        "suspended": user.suspended,
        "archived": user.archived,
        "isMailboxSetup": user.mailbox_enabled,
        "customerId": "C0emulator",
    });
    if user.suspended {
        resource["suspensionReason"] = json!("ADMIN");
    }
    resource
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::DirectoryUsersGet,
        &headers,
        None,
        |shared, _caller| {
            let world = shared.lock();
            let user = world
                .user(&user_key)
                .or_else(|| world.users.values().find(|u| u.id == user_key))
                .ok_or_else(|| not_found("userKey"))?;
            let body = user_resource(user);
            drop(world);
            Ok(json_response(StatusCode::OK, &body, false))
        },
    )
    .await
}

async fn list_members(
    State(shared): State<Arc<Shared>>,
    Path(group_key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(shared, ApiMethod::DirectoryMembersList, &headers, None, |shared, _caller| {
        let pairs = query_pairs(query.as_deref());
        let max = match param(&pairs, "maxResults") {
            None => 200,
            Some(text) => text
                .parse::<usize>()
                .map(|n| n.clamp(1, 200))
                .map_err(|_| GoogleError::invalid_argument(format!("Invalid value for maxResults: {text}")))?,
        };
        let start = match param(&pairs, "pageToken").filter(|t| !t.is_empty()) {
            None => 0,
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| GoogleError::invalid_argument("Invalid pageToken"))?,
        };
        let world = shared.lock();
        let members = world
            .groups
            .get(&group_key.to_ascii_lowercase())
            .ok_or_else(|| not_found("groupKey"))?;
        let page: Vec<Value> = members
            .iter()
            .skip(start)
            .take(max)
            .map(|email| {
                let id = world.user(email).map(|u| u.id.clone()).unwrap_or_default();
                json!({"kind": "admin#directory#member", "etag": format!("\"emu-{id}\""), "id": id, "email": email,
                       "role": "MEMBER", "type": "USER", "status": "ACTIVE"})
            })
            .collect();
        let mut body = json!({"kind": "admin#directory#members", "etag": "\"emu-members\"", "members": page});
        if start + max < members.len() {
            body["nextPageToken"] = json!((start + max).to_string());
        }
        drop(world);
        Ok(json_response(StatusCode::OK, &body, true))
    })
    .await
}
