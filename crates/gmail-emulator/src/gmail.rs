//! Gmail API v1 handlers: profile, labels (list/get), messages (list/get), threads (list/get),
//! attachments, history, and push (`users.watch`/`users.stop`).
//!
//! Handlers run inside [`serve_api`], which has already authenticated, admitted and charged
//! the call. They copy what they need out of the world under the lock and build bodies
//! (rendering generated mail, encoding JSON) after releasing it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use google_gmail1::api::{
    History, HistoryLabelAdded, HistoryLabelRemoved, HistoryMessageAdded, HistoryMessageDeleted,
    Label, ListHistoryResponse, ListLabelsResponse, ListMessagesResponse, ListThreadsResponse,
    Message, Profile, Thread,
};

use super::errors::GoogleError;
use super::generate;
use super::model::{
    ApiMethod, ChangeKind, ListFilter, Msg, Source, SourceContext, User, Watch, World,
};
use super::payload;
use super::pipeline::{Caller, Shared, serve_api};
use super::pubsub::{GMAIL_PUSH_ACCOUNT, PROJECT};
use super::search::Query;
use super::util::{json_response, param, params, query_pairs};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/gmail/v1/users/{user_id}/profile", get(profile))
        .route("/gmail/v1/users/{user_id}/labels", get(labels))
        .route("/gmail/v1/users/{user_id}/labels/{id}", get(get_label))
        .route("/gmail/v1/users/{user_id}/threads", get(list_threads))
        .route("/gmail/v1/users/{user_id}/threads/{id}", get(get_thread))
        .route("/gmail/v1/users/{user_id}/messages", get(list_messages))
        .route("/gmail/v1/users/{user_id}/messages/{id}", get(get_message))
        .route(
            "/gmail/v1/users/{user_id}/messages/{id}/attachments/{attachment_id}",
            get(get_attachment),
        )
        .route("/gmail/v1/users/{user_id}/history", get(list_history))
        .route("/gmail/v1/users/{user_id}/watch", post(watch))
        .route("/gmail/v1/users/{user_id}/stop", post(stop))
}

fn ok<T: serde::Serialize>(body: &T) -> Result<Response, GoogleError> {
    Ok(json_response(StatusCode::OK, body, true))
}

fn mailbox_user<'w>(world: &'w World, caller: &Caller) -> Result<&'w User, GoogleError> {
    world.user(&caller.email).ok_or_else(GoogleError::not_found)
}

async fn profile(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::GetProfile,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let world = shared.lock();
            let user = mailbox_user(&world, caller)?;
            let profile = Profile {
                email_address: Some(user.email.clone()),
                messages_total: Some(i32::try_from(user.mailbox.live_count()).unwrap_or(i32::MAX)),
                threads_total: Some(i32::try_from(user.mailbox.thread_count()).unwrap_or(i32::MAX)),
                history_id: Some(user.mailbox.history_id),
            };
            drop(world);
            ok(&profile)
        },
    )
    .await
}

async fn labels(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::LabelsList,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let world = shared.lock();
            let user = mailbox_user(&world, caller)?;
            let labels = user
                .mailbox
                .labels()
                .map(|(id, name, system)| Label {
                    id: Some(id.to_owned()),
                    name: Some(name.to_owned()),
                    type_: Some(if system { "system" } else { "user" }.to_owned()),
                    message_list_visibility: (!system).then(|| "show".to_owned()),
                    label_list_visibility: (!system).then(|| "labelShow".to_owned()),
                    ..Label::default()
                })
                .collect();
            drop(world);
            ok(&ListLabelsResponse {
                labels: Some(labels),
            })
        },
    )
    .await
}

fn page_size(pairs: &[(String, String)], name: &str, max: usize) -> Result<usize, GoogleError> {
    match param(pairs, name) {
        None => Ok(100.min(max)),
        Some(text) => text.parse::<usize>().map(|n| n.clamp(1, max)).map_err(|_| {
            GoogleError::invalid_argument(format!("Invalid value for {name}: {text}"))
        }),
    }
}

fn page_token(pairs: &[(String, String)]) -> Result<Option<usize>, GoogleError> {
    param(pairs, "pageToken")
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| GoogleError::invalid_argument("Invalid pageToken"))
        })
        .transpose()
}

fn parse_bool(pairs: &[(String, String)], name: &str) -> Result<bool, GoogleError> {
    match param(pairs, name) {
        None => Ok(false),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(GoogleError::invalid_argument(format!(
            "Invalid value for {name}: {other}"
        ))),
    }
}

/// The selection `messages.list` and `threads.list` share: `labelIds`, `includeSpamTrash`
/// and `q` (refused under the metadata scope, as Google does).
fn list_filter(
    pairs: &[(String, String)],
    caller: &Caller,
    world: &World,
    user: &User,
    now_ms: i64,
) -> Result<ListFilter, GoogleError> {
    let mailbox = &user.mailbox;
    let q = param(pairs, "q").filter(|q| !q.trim().is_empty());
    if q.is_some() && caller.has_metadata_scope() {
        return Err(GoogleError::forbidden(
            "Metadata scope does not support 'q' parameter",
        ));
    }
    let mut filter = ListFilter {
        include_spam_trash: parse_bool(pairs, "includeSpamTrash")?,
        ..ListFilter::default()
    };
    for label in params(pairs, "labelIds") {
        filter.all_of |= mailbox
            .label_bit(label)
            .ok_or_else(|| GoogleError::invalid_argument(format!("Invalid label: {label}")))?;
    }
    if let Some(q) = q {
        let query = Query::parse(q, mailbox, now_ms);
        filter.include_spam_trash |= query.includes_spam_trash();
        filter.only = Some(query.matching(mailbox, &source_context(world, user)));
    }
    Ok(filter)
}

async fn list_messages(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::MessagesList,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let pairs = query_pairs(query.as_deref());
            let max = page_size(&pairs, "maxResults", 500)?;
            let token = page_token(&pairs)?;
            let now = shared.clock.now_ms();
            let world = shared.lock();
            let user = mailbox_user(&world, caller)?;
            let filter = list_filter(&pairs, caller, &world, user, now)?;
            let (page, next, estimate) = user.mailbox.list(&filter, token, max);
            drop(world);
            let messages = page
                .into_iter()
                .map(|(id, thread)| Message {
                    id: Some(format!("{id:016x}")),
                    thread_id: Some(format!("{thread:016x}")),
                    ..Message::default()
                })
                .collect();
            ok(&ListMessagesResponse {
                messages: Some(messages),
                next_page_token: next.map(|n| n.to_string()),
                result_size_estimate: Some(u32::try_from(estimate).unwrap_or(u32::MAX)),
            })
        },
    )
    .await
}

async fn get_label(
    State(shared): State<Arc<Shared>>,
    Path((user_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::LabelsGet,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let world = shared.lock();
            let mailbox = &mailbox_user(&world, caller)?.mailbox;
            let (name, system) = mailbox
                .labels()
                .find(|(label, _, _)| *label == id)
                .map(|(_, name, system)| (name.to_owned(), system))
                .ok_or_else(GoogleError::not_found)?;
            let bit = mailbox.label_bit(&id).ok_or_else(GoogleError::not_found)?;
            let (messages, unread, threads, unread_threads) = mailbox.label_counts(bit);
            drop(world);
            let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
            ok(&Label {
                id: Some(id.clone()),
                name: Some(name),
                type_: Some(if system { "system" } else { "user" }.to_owned()),
                message_list_visibility: (!system).then(|| "show".to_owned()),
                label_list_visibility: (!system).then(|| "labelShow".to_owned()),
                messages_total: count(messages),
                messages_unread: count(unread),
                threads_total: count(threads),
                threads_unread: count(unread_threads),
                ..Label::default()
            })
        },
    )
    .await
}

async fn list_threads(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::ThreadsList,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let pairs = query_pairs(query.as_deref());
            let max = page_size(&pairs, "maxResults", 500)?;
            let token = page_token(&pairs)?;
            let now = shared.clock.now_ms();
            let world = shared.lock();
            let user = mailbox_user(&world, caller)?;
            let filter = list_filter(&pairs, caller, &world, user, now)?;
            let (page, next, estimate) = user.mailbox.list_threads(&filter, token, max);
            // Each thread's snippet is its newest message's; its history ID the highest.
            let heads: Vec<(u64, u64, Source)> = page
                .iter()
                .filter_map(|&thread| {
                    let messages = user.mailbox.thread_messages(thread);
                    let newest = messages.last()?;
                    let history = messages.iter().map(|m| m.history_id).max()?;
                    Some((
                        thread,
                        history,
                        user.mailbox.source(newest, &source_context(&world, user)),
                    ))
                })
                .collect();
            drop(world);
            let threads = heads
                .into_iter()
                .map(|(thread, history_id, source)| Thread {
                    id: Some(format!("{thread:016x}")),
                    snippet: Some(materialise(source).1),
                    history_id: Some(history_id),
                    messages: None,
                })
                .collect();
            ok(&ListThreadsResponse {
                threads: Some(threads),
                next_page_token: next.map(|n| n.to_string()),
                result_size_estimate: Some(u32::try_from(estimate).unwrap_or(u32::MAX)),
            })
        },
    )
    .await
}

async fn get_thread(
    State(shared): State<Arc<Shared>>,
    Path((user_id, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::ThreadsGet,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let pairs = query_pairs(query.as_deref());
            let format = message_format(&pairs, caller, false)?;
            let thread = parse_message_id(&id)?;
            let world = shared.lock();
            let user = mailbox_user(&world, caller)?;
            let fetched: Vec<Fetched> = user
                .mailbox
                .thread_messages(thread)
                .into_iter()
                .map(|msg| fetched_of(&world, user, msg))
                .collect();
            drop(world);
            if fetched.is_empty() {
                return Err(GoogleError::not_found());
            }
            let wanted = params(&pairs, "metadataHeaders");
            let messages: Vec<Message> = fetched
                .into_iter()
                .map(|f| message_resource(f, &format, &wanted))
                .collect();
            ok(&Thread {
                id: Some(format!("{thread:016x}")),
                snippet: messages.last().and_then(|m| m.snippet.clone()),
                history_id: messages.iter().filter_map(|m| m.history_id).max(),
                messages: Some(messages),
            })
        },
    )
    .await
}

fn parse_message_id(id: &str) -> Result<u64, GoogleError> {
    if id.is_empty() || id.len() > 16 {
        return Err(GoogleError::invalid_argument("Invalid id value"));
    }
    u64::from_str_radix(id, 16).map_err(|_| GoogleError::invalid_argument("Invalid id value"))
}

/// A message's descriptor fields and the recipe for its bytes, copied out under the lock.
struct Fetched {
    id: u64,
    thread_id: u64,
    internal_date: i64,
    history_id: u64,
    label_ids: Vec<String>,
    source: Source,
}

fn source_context<'w>(world: &'w World, user: &'w User) -> SourceContext<'w> {
    SourceContext {
        seed: world.seeding.seed,
        user_index: user.index,
        email: &user.email,
        domain: &world.seeding.domain,
    }
}

fn fetched_of(world: &World, user: &User, msg: &Msg) -> Fetched {
    Fetched {
        id: msg.id,
        thread_id: msg.thread_id,
        internal_date: msg.internal_date,
        history_id: msg.history_id,
        label_ids: user.mailbox.label_names_of(msg.labels),
        source: user.mailbox.source(msg, &source_context(world, user)),
    }
}

fn fetch(shared: &Shared, caller: &Caller, id: u64) -> Result<Fetched, GoogleError> {
    let world = shared.lock();
    let user = mailbox_user(&world, caller)?;
    let msg = user.mailbox.get(id).ok_or_else(GoogleError::not_found)?;
    Ok(fetched_of(&world, user, msg))
}

/// The raw bytes and snippet of a message (rendered outside the lock).
fn materialise(source: Source) -> (Vec<u8>, String) {
    match source {
        Source::Generated(spec) => {
            let rendered = generate::render(&spec);
            (rendered.raw, rendered.snippet)
        }
        Source::Inserted(raw) => {
            let snippet = payload::snippet(&raw);
            (raw.to_vec(), snippet)
        }
    }
}

/// The `format` parameter, checked against what the caller's scopes allow; `raw` only where
/// the method has it (`messages.get`, not `threads.get`).
fn message_format(
    pairs: &[(String, String)],
    caller: &Caller,
    raw_allowed: bool,
) -> Result<String, GoogleError> {
    let format = param(pairs, "format")
        .unwrap_or("full")
        .to_ascii_lowercase();
    let known = matches!(format.as_str(), "minimal" | "full" | "metadata")
        || (raw_allowed && format == "raw");
    if !known {
        return Err(GoogleError::invalid_argument(format!(
            "Invalid value at 'format' (type.googleapis.com/google.apps.gmail.v1.MessageFormat), \"{format}\""
        )));
    }
    if caller.metadata_only() && matches!(format.as_str(), "full" | "raw") {
        return Err(GoogleError::forbidden(format!(
            "Metadata scope doesn't allow format {}",
            format.to_ascii_uppercase()
        )));
    }
    Ok(format)
}

/// A message resource in `format` (already checked), rendered outside the lock.
fn message_resource(fetched: Fetched, format: &str, metadata_headers: &[&str]) -> Message {
    let (raw, snippet) = materialise(fetched.source);
    let mut message = Message {
        id: Some(format!("{:016x}", fetched.id)),
        thread_id: Some(format!("{:016x}", fetched.thread_id)),
        label_ids: Some(fetched.label_ids),
        snippet: Some(snippet),
        history_id: Some(fetched.history_id),
        internal_date: Some(fetched.internal_date),
        size_estimate: Some(i32::try_from(raw.len()).unwrap_or(i32::MAX)),
        ..Message::default()
    };
    match format {
        "full" => message.payload = Some(payload::full_payload(fetched.id, &raw)),
        "metadata" => message.payload = Some(payload::metadata_payload(&raw, metadata_headers)),
        "raw" => message.raw = Some(raw),
        _ => {}
    }
    message
}

async fn get_message(
    State(shared): State<Arc<Shared>>,
    Path((user_id, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::MessagesGet,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let pairs = query_pairs(query.as_deref());
            let format = message_format(&pairs, caller, true)?;
            let fetched = fetch(shared, caller, parse_message_id(&id)?)?;
            ok(&message_resource(
                fetched,
                &format,
                &params(&pairs, "metadataHeaders"),
            ))
        },
    )
    .await
}

async fn get_attachment(
    State(shared): State<Arc<Shared>>,
    Path((user_id, id, attachment_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::AttachmentsGet,
        &headers,
        Some(&user_id),
        |shared, caller| {
            if caller.metadata_only() {
                return Err(GoogleError::insufficient_permissions());
            }
            let fetched = fetch(shared, caller, parse_message_id(&id)?)?;
            let (raw, _) = materialise(fetched.source);
            let body = payload::attachment(fetched.id, &raw, &attachment_id)
                .ok_or_else(|| GoogleError::invalid_argument("Invalid attachment token"))?;
            ok(&body)
        },
    )
    .await
}

async fn list_history(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_api(shared, ApiMethod::HistoryList, &headers, Some(&user_id), |shared, caller| {
        let pairs = query_pairs(query.as_deref());
        let start = param(&pairs, "startHistoryId")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| GoogleError::invalid_argument("Missing/invalid parameter: startHistoryId"))?;
        let kinds = params(&pairs, "historyTypes")
            .into_iter()
            .map(|t| {
                ChangeKind::from_history_type(t).ok_or_else(|| {
                    GoogleError::invalid_argument(format!(
                        "Invalid value at 'history_types' (type.googleapis.com/google.apps.gmail.v1.ListHistoryRequest.HistoryTypes), \"{t}\""
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max = page_size(&pairs, "maxResults", 500)?;
        let token = page_token(&pairs)?;
        let mut world = shared.lock();
        let empty_page = world.roll_empty_page();
        let user = mailbox_user(&world, caller)?;
        let mailbox = &user.mailbox;
        let label = param(&pairs, "labelId")
            .map(|l| {
                mailbox
                    .label_bit(l)
                    .ok_or_else(|| GoogleError::invalid_argument(format!("Invalid label: {l}")))
            })
            .transpose()?;
        let (records, next) = mailbox
            .history_page(start, &kinds, label, token, max)
            .map_err(|_| GoogleError::not_found())?;
        let current = mailbox.history_id;
        if empty_page && !records.is_empty() {
            // A page without records that still points at the same place: nothing is lost.
            let resume = token.unwrap_or_else(|| mailbox.history_position(start));
            drop(world);
            return ok(&ListHistoryResponse {
                history: None,
                history_id: Some(current),
                next_page_token: Some(resume.to_string()),
            });
        }
        let history: Vec<History> = records
            .iter()
            .map(|r| {
                let brief = Message {
                    id: Some(format!("{:016x}", r.message)),
                    thread_id: Some(format!("{:016x}", r.thread)),
                    ..Message::default()
                };
                let detailed = Message {
                    label_ids: Some(mailbox.label_names_of(r.labels)),
                    ..brief.clone()
                };
                let changed = Some(mailbox.label_names_of(r.changed));
                let mut entry = History {
                    id: Some(r.id),
                    messages: Some(vec![brief]),
                    ..History::default()
                };
                match r.kind {
                    ChangeKind::Added => entry.messages_added = Some(vec![HistoryMessageAdded { message: Some(detailed) }]),
                    ChangeKind::Deleted => {
                        entry.messages_deleted = Some(vec![HistoryMessageDeleted { message: Some(detailed) }]);
                    }
                    ChangeKind::LabelsAdded => {
                        entry.labels_added = Some(vec![HistoryLabelAdded {
                            message: Some(detailed),
                            label_ids: changed,
                        }]);
                    }
                    ChangeKind::LabelsRemoved => {
                        entry.labels_removed = Some(vec![HistoryLabelRemoved {
                            message: Some(detailed),
                            label_ids: changed,
                        }]);
                    }
                }
                entry
            })
            .collect();
        drop(world);
        ok(&ListHistoryResponse {
            history: Some(history),
            history_id: Some(current),
            next_page_token: next.map(|n| n.to_string()),
        })
    })
    .await
}

/// How long a watch lasts: Google's seven days.
const WATCH_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchBody {
    topic_name: Option<String>,
    #[serde(default)]
    label_ids: Vec<String>,
    label_filter_behavior: Option<String>,
    /// Deprecated spelling of `labelFilterBehavior`, still accepted by Google.
    label_filter_action: Option<String>,
}

/// `users.watch`: validates the topic as Google does (this project's, existing, granting
/// publish to Gmail's push account), then replaces the mailbox's watch. Changes to the mailbox
/// then publish `{"emailAddress","historyId"}` to the topic, at most once a second.
async fn watch(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve_api(
        shared,
        ApiMethod::Watch,
        &headers,
        Some(&user_id),
        move |shared, caller| {
            let request: WatchBody = serde_json::from_slice(&body).map_err(|e| {
                GoogleError::invalid_argument(format!("Invalid JSON payload received. {e}"))
            })?;
            let topic = request.topic_name.unwrap_or_default();
            let pattern = format!("projects/{PROJECT}/topics/");
            let valid = topic
                .strip_prefix(&pattern)
                .is_some_and(|t| !t.is_empty() && !t.contains('/'));
            if !valid {
                return Err(GoogleError::invalid_argument(format!(
                    "Invalid topicName does not match projects/{PROJECT}/topics/*"
                )));
            }
            let include = match request
                .label_filter_behavior
                .or(request.label_filter_action)
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("include") => true,
                Some("exclude") => false,
                Some(other) => {
                    return Err(GoogleError::invalid_argument(format!(
                        "Invalid value for labelFilterBehavior: {other}"
                    )));
                }
            };
            let now = shared.clock.now_ms();
            let mut world = shared.lock();
            match world.pubsub.topic(&topic) {
                Err(_) => {
                    let short = topic.rsplit('/').next().unwrap_or_default();
                    return Err(GoogleError::new(
                        404,
                        "notFound",
                        format!("Resource not found (resource={short})."),
                    ));
                }
                Ok(t) if !t.publishers.contains(GMAIL_PUSH_ACCOUNT) => {
                    return Err(GoogleError::forbidden(format!(
                        "Error sending test message to Cloud PubSub {topic} : User not authorized to perform this action."
                    )));
                }
                Ok(_) => {}
            }
            let user = world
                .user_mut(&caller.email)
                .ok_or_else(GoogleError::not_found)?;
            let mut labels = 0;
            for id in &request.label_ids {
                labels |= user.mailbox.label_bit(id).ok_or_else(|| {
                    GoogleError::invalid_argument(format!("Invalid label: {id}"))
                })?;
            }
            let expiration = now + WATCH_LIFETIME_MS;
            user.watch = Some(Watch {
                topic,
                labels,
                include,
                expiration_ms: expiration,
            });
            let history_id = user.mailbox.history_id;
            drop(world);
            ok(&serde_json::json!({
                "historyId": history_id.to_string(),
                "expiration": expiration.to_string(),
            }))
        },
    )
    .await
}

/// `users.stop`: ends the mailbox's watch (204, empty body, whether or not there was one).
async fn stop(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_api(
        shared,
        ApiMethod::Stop,
        &headers,
        Some(&user_id),
        |shared, caller| {
            let mut world = shared.lock();
            if let Some(user) = world.user_mut(&caller.email) {
                user.watch = None;
            }
            drop(world);
            Ok(StatusCode::NO_CONTENT.into_response())
        },
    )
    .await
}
