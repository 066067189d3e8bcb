//! The control API under `/emulator/v1`: inspect and steer the emulated world from tests,
//! benchmarks and external checks. JSON in, JSON out; bad input is a 400 with a one-line
//! `{"error": …}`, an unknown user or message a 404. Faults and quota never apply here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, patch, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::errors::control_error;
use super::model::{
    FaultConfig, Group, GroupMember, INBOX, LabelMask, Mailbox, UNREAD, User, World,
};
use super::pipeline::Shared;
use super::util::{SplitMix, decode_base64_any, json_response};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/emulator/v1/state", get(state))
        .route("/emulator/v1/users", post(add_user))
        .route("/emulator/v1/users/{email}", patch(patch_user))
        .route(
            "/emulator/v1/users/{email}/messages",
            post(insert_message).get(ground_truth),
        )
        .route(
            "/emulator/v1/users/{email}/messages/{id}",
            delete(delete_message),
        )
        .route(
            "/emulator/v1/users/{email}/messages/{id}/labels",
            post(relabel),
        )
        .route(
            "/emulator/v1/users/{email}/labels/{id}",
            patch(rename_label),
        )
        .route(
            "/emulator/v1/users/{email}/history/expire",
            post(expire_history),
        )
        .route(
            "/emulator/v1/groups/{email}",
            put(put_group).delete(delete_group),
        )
        .route("/emulator/v1/delegation", put(delegation))
        .route("/emulator/v1/oauth", get(oauth).put(oauth_policy))
        .route(
            "/emulator/v1/users/{email}/oauth/revoke",
            post(revoke_user_grant),
        )
        .route("/emulator/v1/faults", put(faults))
        .route("/emulator/v1/quota", put(quota))
        .route("/emulator/v1/stats", get(stats))
        .route("/emulator/v1/reset", post(reset))
        .route("/emulator/v1/clock/advance", post(advance_clock))
        // Gmail accepts messages up to 150 MB through messages.import; the
        // control API takes them base64-encoded in JSON (axum's default
        // limit of 2 MB refused any large message).
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
}

/// A refusal, boxed to keep `Result`s small.
type Refusal = Box<Response>;

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body, false)
}

fn bad_request(message: impl Into<String>) -> Response {
    control_error(StatusCode::BAD_REQUEST, message)
}

fn unknown_user(email: &str) -> Response {
    control_error(StatusCode::NOT_FOUND, format!("unknown user {email}"))
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(bad_request(format!("invalid JSON body: {e}"))))
}

fn user_json(user: &User) -> Value {
    json!({
        "email": user.email,
        "id": user.id,
        "org_unit": user.org_unit,
        "suspended": user.suspended,
        "archived": user.archived,
        "mailbox_enabled": user.mailbox_enabled,
        "is_admin": user.is_admin,
        "token_error": user.token_error,
        "hosted_domain": user.hosted_domain,
        "message_count": user.mailbox.live_count(),
        "history_id": user.mailbox.history_id.to_string(),
    })
}

fn parse_id(id: &str) -> Option<u64> {
    (!id.is_empty() && id.len() <= 16)
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

fn group_json(email: &str, group: &Group) -> Value {
    let members: Vec<Value> = group
        .members
        .iter()
        .map(|m| json!({"email": m.email, "type": m.kind, "status": m.status}))
        .collect();
    json!({"email": email, "id": group.id, "members": members})
}

async fn state(State(shared): State<Arc<Shared>>) -> Response {
    let world = shared.lock();
    let users: Vec<Value> = world.users.values().map(user_json).collect();
    let groups: Vec<Value> = world
        .groups
        .iter()
        .map(|(email, group)| group_json(email, group))
        .collect();
    let body = json!({
        "domain": world.seeding.domain,
        "seed": world.seeding.seed,
        "now_ms": shared.clock.now_ms(),
        "users": users,
        "groups": groups,
    });
    drop(world);
    ok(&body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    #[serde(default = "root_ou")]
    org_unit: String,
    #[serde(default)]
    suspended: bool,
    #[serde(default = "yes")]
    mailbox_enabled: bool,
    #[serde(default)]
    archived: bool,
    #[serde(default)]
    is_admin: bool,
    /// Extension: how many generated messages the new mailbox starts with.
    #[serde(default)]
    messages: usize,
}

fn root_ou() -> String {
    "/".to_owned()
}

fn yes() -> bool {
    true
}

fn valid_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)
    })
}

async fn add_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let new: NewUser = match parse_body(&body) {
        Ok(new) => new,
        Err(refusal) => return *refusal,
    };
    if !valid_email(&new.email) {
        return bad_request(format!("invalid email address {:?}", new.email));
    }
    if !new.org_unit.starts_with('/') {
        return bad_request("org_unit must start with /");
    }
    if new.messages > 1_000_000 {
        return bad_request("messages must be at most 1000000");
    }
    let mut world = shared.lock();
    if world.user(&new.email).is_some() {
        return control_error(
            StatusCode::CONFLICT,
            format!("user {} already exists", new.email),
        );
    }
    let user = world.add_user(&new.email.to_ascii_lowercase(), &new.org_unit, new.messages);
    user.suspended = new.suspended;
    user.mailbox_enabled = new.mailbox_enabled;
    user.archived = new.archived;
    user.is_admin = new.is_admin;
    let body = user_json(user);
    drop(world);
    json_response(StatusCode::CREATED, &body, false)
}

async fn patch_user(
    State(shared): State<Arc<Shared>>,
    Path(email): Path<String>,
    body: Bytes,
) -> Response {
    let changes: Map<String, Value> = match parse_body(&body) {
        Ok(changes) => changes,
        Err(refusal) => return *refusal,
    };
    let mut world = shared.lock();
    if let Some(id) = changes.get("id").and_then(Value::as_str)
        && world
            .users
            .values()
            .any(|u| u.id == id && !u.email.eq_ignore_ascii_case(&email))
    {
        return control_error(
            StatusCode::CONFLICT,
            format!("account id {id} belongs to another user"),
        );
    }
    let Some(user) = world.user_mut(&email) else {
        return unknown_user(&email);
    };
    // Validate everything before changing anything.
    for (key, value) in &changes {
        let valid = match key.as_str() {
            "org_unit" => value.as_str().is_some_and(|ou| ou.starts_with('/')),
            "suspended" | "mailbox_enabled" | "archived" | "is_admin" => value.is_boolean(),
            "id" => value.as_str().is_some_and(|id| {
                (1..=30).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
            }),
            "hosted_domain" => {
                value.is_null()
                    || value
                        .as_str()
                        .is_some_and(|d| d.contains('.') && !d.contains('@'))
            }
            "token_error" => {
                value.is_null()
                    || matches!(
                        value.as_str(),
                        Some("admin_policy_enforced" | "access_denied")
                    )
            }
            _ => return bad_request(format!("unknown field {key:?}")),
        };
        if !valid {
            return bad_request(format!("invalid value for {key}: {value}"));
        }
    }
    let mut new_account = false;
    for (key, value) in changes {
        match key.as_str() {
            "id" => {
                let id = value.as_str().unwrap_or_default().to_owned();
                new_account |= id != user.id;
                user.id = id;
            }
            "hosted_domain" => {
                user.hosted_domain = value.as_str().map(str::to_ascii_lowercase);
            }
            "org_unit" => user.org_unit = value.as_str().unwrap_or("/").to_owned(),
            "suspended" => user.suspended = value.as_bool().unwrap_or_default(),
            "mailbox_enabled" => user.mailbox_enabled = value.as_bool().unwrap_or_default(),
            "archived" => user.archived = value.as_bool().unwrap_or_default(),
            "is_admin" => user.is_admin = value.as_bool().unwrap_or_default(),
            _ => user.token_error = value.as_str().map(str::to_owned),
        }
    }
    let body = user_json(user);
    // Another account now holds the address: the old account's consents end with it.
    if new_account {
        let email = email.to_ascii_lowercase();
        world.oauth.revoke_user(&email);
    }
    drop(world);
    ok(&body)
}

fn label_mask(mailbox: &mut Mailbox, ids: &[String]) -> Result<LabelMask, Refusal> {
    ids.iter().try_fold(0, |mask, id| {
        mailbox
            .label_bit_or_create(id)
            .map(|bit| mask | bit)
            .map_err(|e| Box::new(bad_request(e)))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    raw: String,
    /// Absent: `INBOX` + `UNREAD`, like newly arrived mail.
    label_ids: Option<Vec<String>>,
    /// Insert this many copies (each a new message and history record,
    /// sharing one body in memory); absent: one.
    count: Option<u32>,
}

/// Copies one `POST /users/{email}/messages` inserts, at most.
const MAX_INSERT_COPIES: u32 = 1_000_000;

async fn insert_message(
    State(shared): State<Arc<Shared>>,
    Path(email): Path<String>,
    body: Bytes,
) -> Response {
    let new: NewMessage = match parse_body(&body) {
        Ok(new) => new,
        Err(refusal) => return *refusal,
    };
    let Some(raw) = decode_base64_any(&new.raw).filter(|r| !r.is_empty()) else {
        return bad_request("raw must be a non-empty base64url RFC 822 message");
    };
    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let (seed, domain) = (world.seeding.seed, world.seeding.domain.clone());
    let Some(user) = world.user_mut(&email) else {
        return unknown_user(&email);
    };
    let labels = match &new.label_ids {
        None => INBOX | UNREAD,
        Some(ids) => match label_mask(&mut user.mailbox, ids) {
            Ok(mask) => mask,
            Err(refusal) => return *refusal,
        },
    };
    let index = user.index;
    let count = new.count.unwrap_or(1);
    if count == 0 || count > MAX_INSERT_COPIES {
        return bad_request(format!("count must be 1 to {MAX_INSERT_COPIES}"));
    }
    let raw: Arc<[u8]> = raw.into();
    let mut last = (0, 0, 0);
    let mut ids = Vec::new();
    for _ in 0..count {
        last = user
            .mailbox
            .insert(seed, index, &domain, now, raw.clone(), labels);
        if count > 1 {
            ids.push(format!("{:016x}", last.0));
        }
    }
    // One notification for the lot, as Gmail's limit of one a second would leave it.
    world.notify_change(&email, labels, last.2, now);
    drop(world);
    let (id, thread, history) = last;
    let mut answer = json!({"id": format!("{id:016x}"), "threadId": format!("{thread:016x}"), "historyId": history.to_string()});
    if count > 1 {
        answer["ids"] = json!(ids);
    }
    ok(&answer)
}

async fn ground_truth(State(shared): State<Arc<Shared>>, Path(email): Path<String>) -> Response {
    let world = shared.lock();
    let Some(user) = world.user(&email) else {
        return unknown_user(&email);
    };
    let mailbox = &user.mailbox;
    let messages: Vec<Value> = mailbox
        .msgs
        .iter()
        .rev()
        .filter(|m| !m.deleted)
        .map(|m| json!({"id": format!("{:016x}", m.id), "threadId": format!("{:016x}", m.thread_id), "labelIds": mailbox.label_names_of(m.labels)}))
        .collect();
    drop(world);
    ok(&json!({ "messages": messages }))
}

async fn delete_message(
    State(shared): State<Arc<Shared>>,
    Path((email, id)): Path<(String, String)>,
) -> Response {
    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let Some(user) = world.user_mut(&email) else {
        return unknown_user(&email);
    };
    let parsed = parse_id(&id);
    let touched = parsed
        .and_then(|m| user.mailbox.get(m))
        .map_or(0, |m| m.labels);
    match parsed.and_then(|m| user.mailbox.delete(m)) {
        Some(history) => {
            world.notify_change(&email, touched, history, now);
            ok(&json!({"id": id, "historyId": history.to_string()}))
        }
        None => control_error(StatusCode::NOT_FOUND, format!("unknown message {id}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Relabel {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn relabel(
    State(shared): State<Arc<Shared>>,
    Path((email, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let change: Relabel = match parse_body(&body) {
        Ok(change) => change,
        Err(refusal) => return *refusal,
    };
    let now = shared.clock.now_ms();
    let mut world = shared.lock();
    let Some(user) = world.user_mut(&email) else {
        return unknown_user(&email);
    };
    let mailbox = &mut user.mailbox;
    let Some(message_id) = parse_id(&id).filter(|&m| mailbox.get(m).is_some()) else {
        return control_error(StatusCode::NOT_FOUND, format!("unknown message {id}"));
    };
    let (add, remove) = match (
        label_mask(mailbox, &change.add),
        label_mask(mailbox, &change.remove),
    ) {
        (Ok(add), Ok(remove)) => (add, remove),
        (Err(refusal), _) | (_, Err(refusal)) => return *refusal,
    };
    let before = mailbox.get(message_id).map_or(0, |m| m.labels);
    let history_before = mailbox.history_id;
    match mailbox.relabel(message_id, add, remove) {
        Some((labels, history)) => {
            let thread = mailbox
                .get(message_id)
                .map(|m| m.thread_id)
                .unwrap_or_default();
            let body = json!({"id": id, "threadId": format!("{thread:016x}"), "labelIds": mailbox.label_names_of(labels), "historyId": history.to_string()});
            // Gmail records (and notifies) only an actual change.
            if mailbox.history_id != history_before {
                let current = mailbox.history_id;
                world.notify_change(&email, before | labels, current, now);
            }
            ok(&body)
        }
        None => control_error(StatusCode::NOT_FOUND, format!("unknown message {id}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameLabel {
    name: String,
}

async fn rename_label(
    State(shared): State<Arc<Shared>>,
    Path((email, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let rename: RenameLabel = match parse_body(&body) {
        Ok(rename) => rename,
        Err(refusal) => return *refusal,
    };
    let mut world = shared.lock();
    let Some(user) = world.user_mut(&email) else {
        return unknown_user(&email);
    };
    let mailbox = &mut user.mailbox;
    if !mailbox.labels().any(|(l, _, _)| l == id) {
        return control_error(StatusCode::NOT_FOUND, format!("unknown label {id}"));
    }
    match mailbox.rename_label(&id, &rename.name) {
        Ok(()) => ok(&json!({"id": id, "name": rename.name.trim()})),
        Err(e) => control_error(StatusCode::BAD_REQUEST, e),
    }
}

async fn expire_history(State(shared): State<Arc<Shared>>, Path(email): Path<String>) -> Response {
    let mut world = shared.lock();
    let Some(user) = world.user_mut(&email) else {
        return unknown_user(&email);
    };
    let expired_through = user.mailbox.history_id;
    user.mailbox.expire_history();
    ok(
        &json!({"expired_through": expired_through.to_string(), "historyId": user.mailbox.history_id.to_string()}),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    members: Vec<NewMember>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    email: String,
    #[serde(rename = "type", default = "user_type")]
    kind: String,
    #[serde(default = "active")]
    status: String,
}

fn user_type() -> String {
    "USER".to_owned()
}

fn active() -> String {
    "ACTIVE".to_owned()
}

/// `PUT /groups/{email}`: creates the group or replaces its members. A member need not exist
/// (Google Groups take outside addresses too); a group may contain groups, cycles included.
async fn put_group(
    State(shared): State<Arc<Shared>>,
    Path(email): Path<String>,
    body: Bytes,
) -> Response {
    let new: NewGroup = match parse_body(&body) {
        Ok(new) => new,
        Err(refusal) => return *refusal,
    };
    if !valid_email(&email) {
        return bad_request(format!("invalid group address {email:?}"));
    }
    let email = email.to_ascii_lowercase();
    let mut members: Vec<GroupMember> = Vec::new();
    for m in new.members {
        if !valid_email(&m.email) {
            return bad_request(format!("invalid member address {:?}", m.email));
        }
        if !matches!(m.kind.as_str(), "USER" | "GROUP") {
            return bad_request(format!("invalid member type {:?} (USER or GROUP)", m.kind));
        }
        if !matches!(
            m.status.as_str(),
            "ACTIVE" | "SUSPENDED" | "ARCHIVED" | "UNDEFINED"
        ) {
            return bad_request(format!(
                "invalid member status {:?} (ACTIVE, SUSPENDED, ARCHIVED or UNDEFINED)",
                m.status
            ));
        }
        let member = GroupMember {
            email: m.email.to_ascii_lowercase(),
            kind: m.kind,
            status: m.status,
        };
        if members.iter().any(|x| x.email == member.email) {
            return bad_request(format!("member {} listed twice", member.email));
        }
        members.push(member);
    }
    let mut world = shared.lock();
    if world.user(&email).is_some() {
        return control_error(
            StatusCode::CONFLICT,
            format!("{email} is a user, not a group"),
        );
    }
    let seed = world.seeding.seed;
    let created = !world.groups.contains_key(&email);
    let group = match world.groups.get_mut(&email) {
        Some(g) => {
            g.members = members;
            g.clone()
        }
        None => {
            let g = Group::new(seed, &email, members);
            world.groups.insert(email.clone(), g.clone());
            g
        }
    };
    drop(world);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(status, &group_json(&email, &group), false)
}

async fn delete_group(State(shared): State<Arc<Shared>>, Path(email): Path<String>) -> Response {
    let email = email.to_ascii_lowercase();
    match shared.lock().groups.remove(&email) {
        Some(_) => ok(&json!({"email": email, "deleted": true})),
        None => control_error(StatusCode::NOT_FOUND, format!("unknown group {email}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delegation {
    client_id: String,
    scopes: Vec<String>,
}

async fn delegation(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let grant: Delegation = match parse_body(&body) {
        Ok(grant) => grant,
        Err(refusal) => return *refusal,
    };
    if grant.client_id.trim().is_empty() {
        return bad_request("client_id must not be empty");
    }
    let mut world = shared.lock();
    if grant.scopes.is_empty() {
        world.grants.remove(&grant.client_id);
    } else {
        world.grants.insert(
            grant.client_id.clone(),
            grant.scopes.iter().cloned().collect(),
        );
    }
    drop(world);
    ok(&json!({"client_id": grant.client_id, "scopes": grant.scopes}))
}

/// The consent flow as the control API shows it. Never shows a code or token.
fn oauth_json(shared: &Shared, world: &World) -> Value {
    let oauth = &world.oauth;
    let grants: Vec<Value> = oauth
        .grants
        .iter()
        .map(|(user, grant)| json!({"user": user, "scopes": grant.scopes, "active": grant.active}))
        .collect();
    json!({
        "client_id": shared.oauth_client.client_id,
        "client_secret": shared.oauth_client.client_secret,
        "consent_user": oauth.consent_user,
        "blocked_users": oauth.blocked_users,
        "app_blocked": oauth.app_blocked,
        "consent_screen": oauth.consent_screen,
        "grants": grants,
    })
}

async fn oauth(State(shared): State<Arc<Shared>>) -> Response {
    let body = oauth_json(&shared, &shared.lock());
    ok(&body)
}

/// `Some(None)` for an explicit `null`, `None` (through `default`) for an absent member.
fn explicit_null<'de, D>(deserializer: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthPolicy {
    #[serde(default, deserialize_with = "explicit_null")]
    consent_user: Option<Option<String>>,
    blocked_users: Option<Vec<String>>,
    app_blocked: Option<bool>,
    consent_screen: Option<bool>,
}

/// `PUT /oauth`: a partial update. Blocking a user, or the whole app, revokes the grants it
/// covers, as a Workspace admin's block does: their refresh tokens then get `invalid_grant`.
async fn oauth_policy(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let change: OAuthPolicy = match parse_body(&body) {
        Ok(change) => change,
        Err(refusal) => return *refusal,
    };
    let emails = change
        .consent_user
        .iter()
        .flatten()
        .chain(change.blocked_users.iter().flatten());
    for email in emails {
        if !valid_email(email) {
            return bad_request(format!("invalid email address {email:?}"));
        }
    }
    let mut world = shared.lock();
    let oauth = &mut world.oauth;
    if let Some(consent_user) = change.consent_user {
        oauth.consent_user = consent_user.map(|e| e.to_ascii_lowercase());
    }
    if let Some(blocked) = change.blocked_users {
        oauth.blocked_users = blocked.iter().map(|e| e.to_ascii_lowercase()).collect();
        let blocked: Vec<String> = oauth.blocked_users.iter().cloned().collect();
        for user in blocked {
            oauth.revoke_user(&user);
        }
    }
    if let Some(screen) = change.consent_screen {
        oauth.consent_screen = screen;
    }
    if let Some(app_blocked) = change.app_blocked {
        oauth.app_blocked = app_blocked;
        if app_blocked {
            oauth.revoke_all();
        }
    }
    let body = oauth_json(&shared, &world);
    drop(world);
    ok(&body)
}

/// `POST /users/{email}/oauth/revoke`: the user removes the app's access (or resets their
/// password), so every grant of theirs ends.
async fn revoke_user_grant(
    State(shared): State<Arc<Shared>>,
    Path(email): Path<String>,
) -> Response {
    let mut world = shared.lock();
    if world.user(&email).is_none() {
        return unknown_user(&email);
    }
    let revoked = usize::from(world.oauth.revoke_user(&email));
    drop(world);
    ok(&json!({ "revoked": revoked }))
}

async fn faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let config: FaultConfig = match parse_body(&body) {
        Ok(config) => config,
        Err(refusal) => return *refusal,
    };
    let rates = [
        ("error_rate", config.error_rate),
        ("rate_limit_rate", config.rate_limit_rate),
        ("reset_rate", config.reset_rate),
        ("empty_page_rate", config.empty_page_rate),
    ];
    if let Some((name, _)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
        return bad_request(format!("{name} must be between 0 and 1"));
    }
    if config.error_rate + config.rate_limit_rate + config.reset_rate > 1.0 {
        return bad_request("error_rate + rate_limit_rate + reset_rate must not exceed 1");
    }
    if config.latency_ms[0] > config.latency_ms[1] || config.latency_ms[1] > 60_000 {
        return bad_request("latency_ms must be [min, max] with min <= max <= 60000");
    }
    let mut world = shared.lock();
    world.fault_rng = SplitMix::new(config.seed.unwrap_or(world.seeding.seed));
    world.faults = config;
    let body = serde_json::to_value(&world.faults).unwrap_or_default();
    drop(world);
    ok(&body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaChange {
    user_units_per_minute: Option<u64>,
    project_units_per_minute: Option<u64>,
    max_concurrent_per_user: Option<u32>,
    enforce: Option<bool>,
}

async fn quota(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let change: QuotaChange = match parse_body(&body) {
        Ok(change) => change,
        Err(refusal) => return *refusal,
    };
    if change.max_concurrent_per_user == Some(0) {
        return bad_request("max_concurrent_per_user must be at least 1");
    }
    let mut world = shared.lock();
    let quota = &mut world.quota;
    if let Some(v) = change.user_units_per_minute {
        quota.user_units_per_minute = v;
    }
    if let Some(v) = change.project_units_per_minute {
        quota.project_units_per_minute = v;
    }
    if let Some(v) = change.max_concurrent_per_user {
        quota.max_concurrent_per_user = v;
    }
    if let Some(v) = change.enforce {
        quota.enforce = v;
    }
    let body = serde_json::to_value(&*quota).unwrap_or_default();
    drop(world);
    ok(&body)
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let body = serde_json::to_value(&shared.lock().stats).unwrap_or_default();
    ok(&body)
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.lock().reset();
    ok(&json!({"reset": true}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: u64,
}

async fn advance_clock(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let advance: Advance = match parse_body(&body) {
        Ok(advance) => advance,
        Err(refusal) => return *refusal,
    };
    shared.clock.advance(Duration::from_secs(advance.seconds));
    ok(&json!({"now_ms": shared.clock.now_ms()}))
}
