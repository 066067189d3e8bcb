//! Admin SDK Directory API: `users.get`, `groups.list` and `members.list`, as an admin
//! impersonated through DWD.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::errors::GoogleError;
use super::model::{ApiMethod, Group, User, World};
use super::pipeline::{Caller, Shared, serve_api};
use super::scopes::{DIRECTORY_GROUP_SCOPES, DIRECTORY_MEMBER_SCOPES};
use super::util::{json_response, param, query_pairs};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/directory/v1/users/{user_key}", get(get_user))
        .route("/admin/directory/v1/groups", get(list_groups))
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

/// The Directory `Group` resource.
fn group_resource(email: &str, group: &Group) -> Value {
    json!({
        "kind": "admin#directory#group",
        "id": group.id,
        "etag": format!("\"emu-{}\"", group.id),
        "email": email,
        "name": group.name,
        "directMembersCount": group.members.len().to_string(),
        "description": "",
        "adminCreated": true,
    })
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

/// `maxResults` (1..=200, default 200) and `pageToken` (an offset) of a Directory list.
fn page_params(query: Option<&str>) -> Result<(usize, usize), GoogleError> {
    let pairs = query_pairs(query);
    let max = match param(&pairs, "maxResults") {
        None => 200,
        Some(text) => text
            .parse::<usize>()
            .map(|n| n.clamp(1, 200))
            .map_err(|_| {
                GoogleError::invalid_argument(format!("Invalid value for maxResults: {text}"))
            })?,
    };
    let start = match param(&pairs, "pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| GoogleError::invalid_argument("Invalid pageToken"))?,
    };
    Ok((max, start))
}

/// A group by email or Directory ID.
fn find_group<'w>(world: &'w World, key: &str) -> Option<(&'w String, &'w Group)> {
    let key = key.to_ascii_lowercase();
    world
        .groups
        .get_key_value(&key)
        .or_else(|| world.groups.iter().find(|(_, g)| g.id == key))
}

/// `groups.list`: with `userKey`, the groups the user (or group) is a direct member of;
/// without, every group of the domain (`customer` or `domain` required, as at Google).
async fn list_groups(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::DirectoryGroupsList,
        &headers,
        None,
        |shared, caller: &Caller| {
            if !caller.has_any(&DIRECTORY_GROUP_SCOPES) {
                return Err(GoogleError::insufficient_permissions());
            }
            let (max, start) = page_params(query.as_deref())?;
            let pairs = query_pairs(query.as_deref());
            let user_key = param(&pairs, "userKey").map(|k| k.to_ascii_lowercase());
            let world = shared.lock();
            let matching: Vec<Value> = match &user_key {
                Some(key) => {
                    let email = world
                        .user(key)
                        .map(|u| u.email.clone())
                        .or_else(|| {
                            world
                                .users
                                .values()
                                .find(|u| &u.id == key)
                                .map(|u| u.email.clone())
                        })
                        .or_else(|| find_group(&world, key).map(|(e, _)| e.clone()))
                        .ok_or_else(|| not_found("userKey"))?;
                    world
                        .groups
                        .iter()
                        .filter(|(_, g)| g.members.iter().any(|m| m.email == email))
                        .map(|(e, g)| group_resource(e, g))
                        .collect()
                }
                None => {
                    if param(&pairs, "customer").is_none() && param(&pairs, "domain").is_none() {
                        return Err(GoogleError::new(400, "badRequest", "Bad Request"));
                    }
                    world
                        .groups
                        .iter()
                        .map(|(e, g)| group_resource(e, g))
                        .collect()
                }
            };
            drop(world);
            let total = matching.len();
            let page: Vec<Value> = matching.into_iter().skip(start).take(max).collect();
            let mut body = json!({"kind": "admin#directory#groups", "etag": "\"emu-groups\""});
            // Google leaves out an empty list.
            if !page.is_empty() {
                body["groups"] = json!(page);
            }
            if start + max < total {
                body["nextPageToken"] = json!((start + max).to_string());
            }
            Ok(json_response(StatusCode::OK, &body, true))
        },
    )
    .await
}

/// `members.list`: a group's direct members (nested groups are members of type `GROUP`).
async fn list_members(
    State(shared): State<Arc<Shared>>,
    Path(group_key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::DirectoryMembersList,
        &headers,
        None,
        |shared, caller: &Caller| {
            if !caller.has_any(&DIRECTORY_GROUP_SCOPES) && !caller.has_any(&DIRECTORY_MEMBER_SCOPES)
            {
                return Err(GoogleError::insufficient_permissions());
            }
            let (max, start) = page_params(query.as_deref())?;
            let world = shared.lock();
            let (_, group) = find_group(&world, &group_key).ok_or_else(|| not_found("groupKey"))?;
            let page: Vec<Value> = group
                .members
                .iter()
                .skip(start)
                .take(max)
                .map(|m| {
                    let id = match m.kind.as_str() {
                        "GROUP" => world.groups.get(&m.email).map(|g| g.id.clone()),
                        _ => world.user(&m.email).map(|u| u.id.clone()),
                    }
                    .unwrap_or_default();
                    json!({"kind": "admin#directory#member", "etag": format!("\"emu-{id}\""), "id": id,
                           "email": m.email, "role": "MEMBER", "type": m.kind, "status": m.status})
                })
                .collect();
            let mut body = json!({"kind": "admin#directory#members", "etag": "\"emu-members\""});
            if !page.is_empty() {
                body["members"] = json!(page);
            }
            if start + max < group.members.len() {
                body["nextPageToken"] = json!((start + max).to_string());
            }
            drop(world);
            Ok(json_response(StatusCode::OK, &body, true))
        },
    )
    .await
}
