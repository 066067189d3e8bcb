//! The emulator's Gmail push: `users.watch`/`users.stop` through google-gmail1, and the Cloud
//! Pub/Sub REST subset a subscriber pulls from (as the service account itself, no
//! impersonation), with Google's validation, at-least-once delivery, ack deadlines on the
//! emulator's clock, the one-per-second limit and the label filter.

use base64::Engine as _;
use google_gmail1::api::WatchRequest;
use serde_json::{Value, json};

use crate::emulator_helpers::{GMAIL_READONLY, TestEmulator, google_error, start, unix_now};

const PUBSUB: &str = "https://www.googleapis.com/auth/pubsub";
const TOPIC: &str = "projects/emulator-project/topics/gmail";
const SUB: &str = "projects/emulator-project/subscriptions/ingest";
const GMAIL_PUSH: &str = "serviceAccount:gmail-api-push@system.gserviceaccount.com";
const MAILBOX: &str = "support@example.com";

/// A token for the service account as itself (no `sub`): what a Pub/Sub subscriber uses.
async fn own_token(e: &TestEmulator, scope: &str) -> String {
    let now = unix_now();
    let claims = json!({"iss": e.info.client_email, "aud": e.emulator.token_url(), "scope": scope, "iat": now, "exp": now + 3600});
    let (status, body) = e.exchange(&e.assertion(&claims)).await;
    assert_eq!(status, 200, "token refused: {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// Topic granting publish to Gmail, and a pull subscription the service account may consume.
async fn set_up(e: &TestEmulator) {
    let put = reqwest::Method::PUT;
    e.control_ok(put.clone(), &format!("pubsub/{TOPIC}"), None)
        .await;
    e.control_ok(
        put.clone(),
        &format!("pubsub/{TOPIC}/publishers/{GMAIL_PUSH}"),
        None,
    )
    .await;
    e.control_ok(
        put.clone(),
        &format!("pubsub/{SUB}"),
        Some(json!({"topic": TOPIC, "ack_deadline_seconds": 10})),
    )
    .await;
    let me = format!("serviceAccount:{}", e.info.client_email);
    e.control_ok(put, &format!("pubsub/{SUB}/subscribers/{me}"), None)
        .await;
}

async fn post(e: &TestEmulator, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = e
        .http
        .post(e.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// `(ackId, decoded data, deliveryAttempt)` of what one immediate pull returns.
async fn pull(e: &TestEmulator, token: &str) -> Vec<(String, Value, i64)> {
    let (status, body) = post(
        e,
        token,
        &format!("v1/{SUB}:pull"),
        json!({"maxMessages": 100, "returnImmediately": true}),
    )
    .await;
    assert_eq!(status, 200, "pull: {body}");
    body["receivedMessages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["message"]["data"].as_str().unwrap())
                .unwrap();
            (
                m["ackId"].as_str().unwrap().to_owned(),
                serde_json::from_slice(&data).unwrap(),
                m["deliveryAttempt"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

async fn insert(e: &TestEmulator, labels: &[&str]) -> (String, u64) {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        "From: a@outside.example\r\nTo: support@example.com\r\nSubject: hi\r\n\r\nhello\r\n",
    );
    let v = e
        .control_ok(
            reqwest::Method::POST,
            &format!("users/{MAILBOX}/messages"),
            Some(json!({"raw": raw, "label_ids": labels})),
        )
        .await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["historyId"].as_str().unwrap().parse().unwrap(),
    )
}

async fn advance(e: &TestEmulator, seconds: u64) {
    e.control_ok(
        reqwest::Method::POST,
        "clock/advance",
        Some(json!({"seconds": seconds})),
    )
    .await;
}

fn watch_request(topic: &str, labels: &[&str]) -> WatchRequest {
    WatchRequest {
        topic_name: Some(topic.to_owned()),
        label_ids: (!labels.is_empty()).then(|| labels.iter().map(|l| (*l).to_owned()).collect()),
        label_filter_behavior: (!labels.is_empty()).then(|| "include".to_owned()),
        ..WatchRequest::default()
    }
}

#[tokio::test]
async fn a_watched_mailbox_publishes_each_change_and_pubsub_redelivers_until_acked() {
    let e = start(11, 3, 20).await;
    set_up(&e).await;
    let hub = e.hub(MAILBOX).await;
    let (_, watched) = hub
        .users()
        .watch(watch_request(TOPIC, &[]), "me")
        .add_scope(GMAIL_READONLY)
        .doit()
        .await
        .expect("watch accepted");
    let expiration: i64 = watched.expiration.expect("expiration");
    let in_a_week = (unix_now() + 7 * 24 * 3600) * 1000;
    assert!(
        (expiration - in_a_week).abs() < 60_000,
        "expiration {expiration}"
    );
    let token = own_token(&e, PUBSUB).await;
    assert!(pull(&e, &token).await.is_empty(), "nothing changed yet");

    // A new message: one notification naming the mailbox and its new historyId.
    let (_, history) = insert(&e, &["INBOX"]).await;
    let first = pull(&e, &token).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1["emailAddress"], MAILBOX);
    assert_eq!(first[0].1["historyId"].as_u64(), Some(history));
    assert_eq!(first[0].2, 1);

    // Not acknowledged within the 10 s deadline: delivered again.
    assert!(
        pull(&e, &token).await.is_empty(),
        "outstanding, not due yet"
    );
    advance(&e, 11).await;
    let again = pull(&e, &token).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, first[0].1);
    assert_eq!(again[0].2, 2, "second delivery");
    let (status, _) = post(
        &e,
        &token,
        &format!("v1/{SUB}:acknowledge"),
        json!({"ackIds": [again[0].0]}),
    )
    .await;
    assert_eq!(status, 200);
    advance(&e, 11).await;
    assert!(pull(&e, &token).await.is_empty(), "acknowledged for good");

    // Two changes within one second: Gmail sends one notification.
    advance(&e, 2).await;
    insert(&e, &["INBOX"]).await;
    insert(&e, &["INBOX"]).await;
    let burst = pull(&e, &token).await;
    assert_eq!(burst.len(), 1, "at most one per second: {burst:?}");
    let state = e.control_ok(reqwest::Method::GET, "pubsub", None).await;
    assert_eq!(state["stats"]["rate_limited"], 1, "{state}");

    // users.stop: later changes publish nothing.
    hub.users()
        .stop("me")
        .add_scope(GMAIL_READONLY)
        .doit()
        .await
        .expect("stop");
    advance(&e, 2).await;
    insert(&e, &["INBOX"]).await;
    assert!(
        pull(&e, &token).await.is_empty(),
        "a stopped watch published"
    );
    let state = e.control_ok(reqwest::Method::GET, "pubsub", None).await;
    assert_eq!(state["watches"], json!([]), "{state}");
}

#[tokio::test]
async fn watch_refuses_a_foreign_missing_or_ungranted_topic_and_lapses_after_a_week() {
    let e = start(12, 3, 20).await;
    let hub = e.hub(MAILBOX).await;
    let refused = |topic: &str, labels: &'static [&'static str]| {
        let hub = hub.clone();
        let request = watch_request(topic, labels);
        async move {
            let err = hub
                .users()
                .watch(request, "me")
                .add_scope(GMAIL_READONLY)
                .doit()
                .await
                .expect_err("watch must be refused");
            google_error(&err)
        }
    };
    let (code, _, message) = refused("projects/other-project/topics/gmail", &[]).await;
    assert_eq!(code, 400, "{message}");
    assert!(
        message.contains("projects/emulator-project/topics/*"),
        "{message}"
    );
    let (code, _, message) = refused(TOPIC, &[]).await;
    assert_eq!(code, 404, "a topic that does not exist: {message}");
    e.control_ok(reqwest::Method::PUT, &format!("pubsub/{TOPIC}"), None)
        .await;
    let (code, _, message) = refused(TOPIC, &[]).await;
    assert_eq!(code, 403, "no publish grant for Gmail: {message}");
    assert!(message.contains("not authorized"), "{message}");
    set_up(&e).await;
    let (code, _, message) = refused(TOPIC, &["NO_SUCH_LABEL"]).await;
    assert_eq!(code, 400, "{message}");

    // With a label filter, only changes on those labels are published.
    hub.users()
        .watch(watch_request(TOPIC, &["STARRED"]), "me")
        .add_scope(GMAIL_READONLY)
        .doit()
        .await
        .expect("watch");
    let token = own_token(&e, PUBSUB).await;
    let (id, _) = insert(&e, &["INBOX"]).await;
    assert!(
        pull(&e, &token).await.is_empty(),
        "INBOX is outside the filter"
    );
    advance(&e, 2).await;
    e.control_ok(
        reqwest::Method::POST,
        &format!("users/{MAILBOX}/messages/{id}/labels"),
        Some(json!({"add": ["STARRED"]})),
    )
    .await;
    assert_eq!(pull(&e, &token).await.len(), 1, "starring is inside it");

    // A week later the watch has lapsed: nothing more is published.
    advance(&e, 7 * 24 * 3600 + 1).await;
    let token = own_token(&e, PUBSUB).await; // the old one expired with the week
    insert(&e, &["STARRED"]).await;
    let due: Vec<_> = pull(&e, &token).await;
    assert!(
        due.iter().all(|(_, _, attempt)| *attempt > 1),
        "a lapsed watch published: {due:?}"
    );
}

#[tokio::test]
async fn only_a_granted_subscriber_with_the_pubsub_scope_may_pull() {
    let e = start(13, 3, 5).await;
    set_up(&e).await;
    // A token as the service account itself needs no delegation grant, but the Pub/Sub scope.
    let gmail_only = own_token(&e, GMAIL_READONLY).await;
    let (status, _) = post(
        &e,
        &gmail_only,
        &format!("v1/{SUB}:pull"),
        json!({"maxMessages": 1, "returnImmediately": true}),
    )
    .await;
    assert_eq!(status, 403, "no Pub/Sub scope");
    let token = own_token(&e, PUBSUB).await;
    let me = format!("serviceAccount:{}", e.info.client_email);
    e.control_ok(
        reqwest::Method::DELETE,
        &format!("pubsub/{SUB}/subscribers/{me}"),
        None,
    )
    .await;
    let (status, body) = post(
        &e,
        &token,
        &format!("v1/{SUB}:pull"),
        json!({"maxMessages": 1, "returnImmediately": true}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED", "{body}");
    let (status, body) = post(
        &e,
        &token,
        &format!("v1/{SUB}:testIamPermissions"),
        json!({"permissions": ["pubsub.subscriptions.consume"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["permissions"], json!([]), "{body}");
    // The topic's policy shows Gmail's publish grant to whoever checks the set-up.
    let (status, _, policy) = e.get(&token, &format!("v1/{TOPIC}:getIamPolicy")).await;
    assert_eq!(status, 200);
    assert_eq!(policy["bindings"][0]["role"], "roles/pubsub.publisher");
    assert_eq!(policy["bindings"][0]["members"], json!([GMAIL_PUSH]));
    let (status, _, missing) = e
        .get(&token, "v1/projects/emulator-project/subscriptions/nope")
        .await;
    assert_eq!(status, 404, "{missing}");
}
