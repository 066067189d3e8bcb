//! Cloud Pub/Sub's REST subset (`/v1/projects/{p}/topics/…`, `/v1/projects/{p}/subscriptions/…`:
//! get, `getIamPolicy`, `testIamPermissions`, `pull`, `acknowledge`, `modifyAckDeadline`) and
//! the control API that sets it up (`/emulator/v1/pubsub/…`: topics, subscriptions, IAM
//! grants, delivery faults, state).
//!
//! A caller is whoever the bearer token names: the service account itself (a token asked for
//! without `sub`, as `serviceAccount:EMAIL`) or a consenting user (`user:EMAIL`); it needs the
//! Pub/Sub or cloud-platform scope. Reading topics and subscriptions of the emulator's project
//! is open to its callers; pulling needs `roles/pubsub.subscriber` on the subscription. Pub/Sub
//! calls are not charged Gmail quota and do not take the Gmail fault dice.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::{GoogleError, control_error};
use super::pipeline::{Shared, bearer};
use super::pubsub::{PROJECT, PubSubError, PushFaults};
use super::util::json_response;

/// The scopes that admit a Pub/Sub call.
const PUBSUB_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/pubsub",
    "https://www.googleapis.com/auth/cloud-platform",
];
/// How long a `pull` without `returnImmediately` waits for a message when none is due.
const PULL_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1/projects/{project}/topics/{rest}",
            get(topic_get).post(topic_post),
        )
        .route(
            "/v1/projects/{project}/subscriptions/{rest}",
            get(subscription_get).post(subscription_post),
        )
        .route("/emulator/v1/pubsub", get(state))
        .route("/emulator/v1/pubsub/faults", put(faults))
        .route(
            "/emulator/v1/pubsub/projects/{project}/topics/{topic}",
            put(create_topic).delete(delete_topic),
        )
        .route(
            "/emulator/v1/pubsub/projects/{project}/topics/{topic}/publishers/{member}",
            put(publisher).delete(publisher),
        )
        .route(
            "/emulator/v1/pubsub/projects/{project}/subscriptions/{sub}",
            put(create_subscription).delete(delete_subscription),
        )
        .route(
            "/emulator/v1/pubsub/projects/{project}/subscriptions/{sub}/subscribers/{member}",
            put(subscriber).delete(subscriber),
        )
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body, false)
}

fn refusal(e: PubSubError) -> GoogleError {
    match e {
        PubSubError::NotFound(m) => GoogleError::new(404, "notFound", m),
        PubSubError::AlreadyExists(m) => GoogleError::new(409, "alreadyExists", m),
        PubSubError::InvalidArgument(m) => GoogleError::invalid_argument(m),
    }
}

fn denied() -> GoogleError {
    GoogleError::forbidden("User not authorized to perform this action.")
}

/// The caller's IAM member, or the refusal Google gives.
fn member(shared: &Shared, headers: &HeaderMap) -> Result<String, GoogleError> {
    let token = bearer(headers).ok_or_else(GoogleError::unauthenticated)?;
    let world = shared.lock();
    let issued = world
        .live_token(token, shared.clock.now_ms())
        .ok_or_else(GoogleError::unauthenticated)?;
    if !issued
        .scopes
        .iter()
        .any(|s| PUBSUB_SCOPES.contains(&s.as_str()))
    {
        return Err(GoogleError::insufficient_permissions());
    }
    if let Some(user) = &issued.subject {
        return Ok(format!("user:{user}"));
    }
    world
        .accounts
        .iter()
        .find(|(_, a)| a.client_id == issued.client_id)
        .map(|(email, _)| format!("serviceAccount:{email}"))
        .ok_or_else(GoogleError::unauthenticated)
}

/// Splits `name:verb` (the last path segment of a custom method).
fn verb(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once(':') {
        Some((name, verb)) => (name, Some(verb)),
        None => (rest, None),
    }
}

/// Runs a Pub/Sub call for an authenticated caller of this project.
fn api(
    shared: &Shared,
    headers: &HeaderMap,
    project: &str,
    call: impl FnOnce(&str) -> Result<Response, GoogleError>,
) -> Response {
    caller(shared, headers, project)
        .and_then(|member| call(&member))
        .unwrap_or_else(axum::response::IntoResponse::into_response)
}

/// The caller's IAM member, for a call on this project's resources.
fn caller(shared: &Shared, headers: &HeaderMap, project: &str) -> Result<String, GoogleError> {
    let member = member(shared, headers)?;
    if project != PROJECT {
        return Err(denied());
    }
    Ok(member)
}

async fn topic_get(
    State(shared): State<Arc<Shared>>,
    Path((project, rest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    api(&shared, &headers, &project, |_| {
        let (name, verb) = verb(&rest);
        let full = format!("projects/{project}/topics/{name}");
        let world = shared.lock();
        let topic = world.pubsub.topic(&full).map_err(refusal)?;
        match verb {
            None => Ok(ok(&json!({"name": full}))),
            Some("getIamPolicy") => {
                let members: Vec<&String> = topic.publishers.iter().collect();
                let bindings = if members.is_empty() {
                    json!([])
                } else {
                    json!([{"role": "roles/pubsub.publisher", "members": members}])
                };
                Ok(ok(&json!({"bindings": bindings, "etag": "BwE="})))
            }
            Some(_) => Err(GoogleError::new(404, "notFound", "Not Found")),
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Permissions {
    #[serde(default)]
    permissions: Vec<String>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GoogleError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| GoogleError::invalid_argument(format!("Invalid JSON payload received. {e}")))
}

async fn topic_post(
    State(shared): State<Arc<Shared>>,
    Path((project, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    api(&shared, &headers, &project, |member| {
        let (name, verb) = verb(&rest);
        let full = format!("projects/{project}/topics/{name}");
        let world = shared.lock();
        let topic = world.pubsub.topic(&full).map_err(refusal)?;
        match verb {
            Some("testIamPermissions") => {
                let asked: Permissions = parse(&body)?;
                let publisher = topic.publishers.contains(member);
                let granted: Vec<&String> = asked
                    .permissions
                    .iter()
                    .filter(|p| {
                        p.as_str() == "pubsub.topics.get"
                            || (publisher && p.as_str() == "pubsub.topics.publish")
                    })
                    .collect();
                Ok(ok(&json!({"permissions": granted})))
            }
            _ => Err(GoogleError::new(404, "notFound", "Not Found")),
        }
    })
}

async fn subscription_get(
    State(shared): State<Arc<Shared>>,
    Path((project, rest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    api(&shared, &headers, &project, |_| {
        let (name, verb) = verb(&rest);
        if verb.is_some() {
            return Err(GoogleError::new(404, "notFound", "Not Found"));
        }
        let full = format!("projects/{project}/subscriptions/{name}");
        let world = shared.lock();
        let sub = world.pubsub.subscription(&full).map_err(refusal)?;
        Ok(ok(&json!({
            "name": full,
            "topic": sub.topic,
            "ackDeadlineSeconds": sub.ack_deadline_seconds,
            "pushConfig": {},
            "messageRetentionDuration": "604800s",
        })))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullBody {
    #[serde(default)]
    max_messages: i64,
    #[serde(default)]
    return_immediately: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckBody {
    #[serde(default)]
    ack_ids: Vec<String>,
    #[serde(default)]
    ack_deadline_seconds: i64,
}

async fn subscription_post(
    State(shared): State<Arc<Shared>>,
    Path((project, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (name, verb) = verb(&rest);
    let full = format!("projects/{project}/subscriptions/{name}");
    if verb == Some("pull") {
        return pull(&shared, &headers, &project, &full, &body).await;
    }
    api(&shared, &headers, &project, |member| {
        let mut world = shared.lock();
        let now = shared.clock.now_ms();
        let sub = world.pubsub.subscription(&full).map_err(refusal)?;
        let subscriber = sub.subscribers.contains(member);
        match verb {
            Some("acknowledge") | Some("modifyAckDeadline") if !subscriber => Err(denied()),
            Some("acknowledge") => {
                let ack: AckBody = parse(&body)?;
                if ack.ack_ids.is_empty() {
                    return Err(GoogleError::invalid_argument("No ack ids specified."));
                }
                world
                    .pubsub
                    .acknowledge(&full, &ack.ack_ids)
                    .map_err(refusal)?;
                Ok(ok(&json!({})))
            }
            Some("modifyAckDeadline") => {
                let ack: AckBody = parse(&body)?;
                if ack.ack_ids.is_empty() {
                    return Err(GoogleError::invalid_argument("No ack ids specified."));
                }
                world
                    .pubsub
                    .modify_ack_deadline(&full, &ack.ack_ids, ack.ack_deadline_seconds, now)
                    .map_err(refusal)?;
                Ok(ok(&json!({})))
            }
            Some("testIamPermissions") => {
                let asked: Permissions = parse(&body)?;
                let granted: Vec<&String> = asked
                    .permissions
                    .iter()
                    .filter(|p| {
                        p.as_str() == "pubsub.subscriptions.get"
                            || (subscriber && p.as_str() == "pubsub.subscriptions.consume")
                    })
                    .collect();
                Ok(ok(&json!({"permissions": granted})))
            }
            _ => Err(GoogleError::new(404, "notFound", "Not Found")),
        }
    })
}

/// `pull`: due messages at once, or (without `returnImmediately`) waits up to [`PULL_WAIT`]
/// for one, answering `{}` when none came, as Pub/Sub does.
async fn pull(
    shared: &Shared,
    headers: &HeaderMap,
    project: &str,
    full: &str,
    body: &[u8],
) -> Response {
    let checked = caller(shared, headers, project).and_then(|member| {
        let request: PullBody = parse(body)?;
        if request.max_messages <= 0 {
            return Err(GoogleError::invalid_argument(
                "max_messages must be greater than 0",
            ));
        }
        let world = shared.lock();
        let sub = world.pubsub.subscription(full).map_err(refusal)?;
        if !sub.subscribers.contains(&member) {
            return Err(denied());
        }
        Ok(request)
    });
    let request = match checked {
        Ok(r) => r,
        Err(e) => return axum::response::IntoResponse::into_response(e),
    };
    let max = usize::try_from(request.max_messages.min(1000)).unwrap_or(1);
    let deadline = tokio::time::Instant::now() + PULL_WAIT;
    loop {
        let got = {
            let mut world = shared.lock();
            world.pubsub.pull(full, max, shared.clock.now_ms())
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => return axum::response::IntoResponse::into_response(refusal(e)),
        };
        if !got.is_empty() || request.return_immediately || tokio::time::Instant::now() >= deadline
        {
            if got.is_empty() {
                return ok(&json!({}));
            }
            let received: Vec<Value> = got
                .iter()
                .map(|r| {
                    let publish = chrono::DateTime::from_timestamp_millis(r.message.publish_time_ms)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    json!({
                        "ackId": r.ack_id,
                        "message": {
                            "data": base64::engine::general_purpose::STANDARD.encode(&r.message.data),
                            "messageId": r.message.id,
                            "publishTime": publish,
                        },
                        "deliveryAttempt": r.delivery_attempt,
                    })
                })
                .collect();
            return ok(&json!({"receivedMessages": received}));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- control API ----

fn control(result: Result<(), PubSubError>) -> Response {
    match result {
        Ok(()) => ok(&json!({})),
        Err(PubSubError::NotFound(m)) => control_error(StatusCode::NOT_FOUND, m),
        Err(PubSubError::AlreadyExists(m)) => control_error(StatusCode::CONFLICT, m),
        Err(PubSubError::InvalidArgument(m)) => control_error(StatusCode::BAD_REQUEST, m),
    }
}

async fn state(State(shared): State<Arc<Shared>>) -> Response {
    let world = shared.lock();
    let now = shared.clock.now_ms();
    let topics: Vec<Value> = world
        .pubsub
        .topics
        .iter()
        .map(|(name, t)| json!({"name": name, "publishers": t.publishers}))
        .collect();
    let subscriptions: Vec<Value> = world
        .pubsub
        .subscriptions
        .iter()
        .map(|(name, s)| {
            json!({
                "name": name,
                "topic": s.topic,
                "ack_deadline_seconds": s.ack_deadline_seconds,
                "subscribers": s.subscribers,
                "unacked": s.unacked(),
                "outstanding": s.outstanding(),
            })
        })
        .collect();
    let watches: Vec<Value> = world
        .users
        .values()
        .filter_map(|u| {
            u.watch.as_ref().map(|w| {
                json!({
                    "email": u.email,
                    "topic": w.topic,
                    "expiration_ms": w.expiration_ms,
                    "live": w.expiration_ms > now,
                    "label_ids": u.mailbox.label_names_of(w.labels),
                    "label_filter_behavior": if w.include { "include" } else { "exclude" },
                })
            })
        })
        .collect();
    let body = json!({
        "topics": topics,
        "subscriptions": subscriptions,
        "watches": watches,
        "faults": world.pubsub.faults,
        "stats": world.pubsub.stats,
    });
    drop(world);
    ok(&body)
}

async fn faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults: PushFaults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let rates = [faults.drop_rate, faults.duplicate_rate];
    if rates.iter().any(|r| !(0.0..=1.0).contains(r))
        || faults.delay_ms[0] > faults.delay_ms[1] && faults.delay_ms[1] != 0
    {
        return control_error(
            StatusCode::BAD_REQUEST,
            "rates must be in [0, 1] and delay_ms a [low, high] range",
        );
    }
    let mut world = shared.lock();
    let seed = world.seeding.seed;
    world.pubsub.set_faults(faults, seed);
    drop(world);
    ok(&json!({}))
}

async fn create_topic(
    State(shared): State<Arc<Shared>>,
    Path((project, topic)): Path<(String, String)>,
) -> Response {
    let full = format!("projects/{project}/topics/{topic}");
    let mut world = shared.lock();
    if world.pubsub.topics.contains_key(&full) {
        return ok(&json!({}));
    }
    control(world.pubsub.create_topic(&full))
}

async fn delete_topic(
    State(shared): State<Arc<Shared>>,
    Path((project, topic)): Path<(String, String)>,
) -> Response {
    let full = format!("projects/{project}/topics/{topic}");
    control(shared.lock().pubsub.delete_topic(&full))
}

/// `PUT` grants `roles/pubsub.publisher` on the topic to the member, `DELETE` revokes it.
async fn publisher(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((project, topic, member)): Path<(String, String, String)>,
) -> Response {
    let full = format!("projects/{project}/topics/{topic}");
    let granted = method == Method::PUT;
    control(shared.lock().pubsub.set_publisher(&full, &member, granted))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    /// `projects/P/topics/T`.
    topic: String,
    #[serde(default = "default_deadline")]
    ack_deadline_seconds: i64,
}

fn default_deadline() -> i64 {
    10
}

async fn create_subscription(
    State(shared): State<Arc<Shared>>,
    Path((project, sub)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let new: NewSubscription = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let full = format!("projects/{project}/subscriptions/{sub}");
    control(
        shared
            .lock()
            .pubsub
            .create_subscription(&full, &new.topic, new.ack_deadline_seconds),
    )
}

async fn delete_subscription(
    State(shared): State<Arc<Shared>>,
    Path((project, sub)): Path<(String, String)>,
) -> Response {
    let full = format!("projects/{project}/subscriptions/{sub}");
    control(shared.lock().pubsub.delete_subscription(&full))
}

/// `PUT` grants `roles/pubsub.subscriber` on the subscription to the member, `DELETE`
/// revokes it.
async fn subscriber(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path((project, sub, member)): Path<(String, String, String)>,
) -> Response {
    let full = format!("projects/{project}/subscriptions/{sub}");
    let granted = method == Method::PUT;
    control(shared.lock().pubsub.set_subscriber(&full, &member, granted))
}
