//! The emulator's wider read API (labels.get, threads.list/get, `fields=` partial responses
//! and Gmail's `q` syntax), checked against the control API's ground truth and through the
//! google-gmail1 hub where a client would parse the answer.

use std::collections::{BTreeMap, BTreeSet};

use google_gmail1::api::Scope;
use reqwest::Method;
use serde_json::{Value, json};

use crate::emulator_helpers::{GMAIL_READONLY, TestEmulator, start};

const SUPPORT: &str = "support@example.com";

fn has_label(message: &Value, label: &str) -> bool {
    message["labelIds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == label)
}

/// Distinct thread IDs in order of first appearance (the ground truth is newest first).
fn threads_in_order(messages: &[Value]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    messages
        .iter()
        .map(|m| m["threadId"].as_str().unwrap().to_owned())
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

async fn get_ok(env: &TestEmulator, token: &str, path: &str) -> Value {
    let (status, _, body) = env.get(token, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn labels_get_counts_messages_and_threads_as_the_ground_truth_does() {
    let env = start(5, 3, 120).await;
    env.control_ok(Method::PUT, "quota", Some(json!({"enforce": false})))
        .await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let truth = env.ground_truth(SUPPORT).await;
    let labels = get_ok(&env, &token, "gmail/v1/users/me/labels").await;
    let labels = labels["labels"].as_array().unwrap();
    assert!(labels.len() > 13, "system and user labels");
    for label in labels {
        let id = label["id"].as_str().unwrap();
        let got = get_ok(&env, &token, &format!("gmail/v1/users/me/labels/{id}")).await;
        let with: Vec<&Value> = truth.iter().filter(|m| has_label(m, id)).collect();
        let unread: Vec<&Value> = with
            .iter()
            .copied()
            .filter(|m| has_label(m, "UNREAD"))
            .collect();
        let threads = |ms: &[&Value]| {
            ms.iter()
                .map(|m| m["threadId"].as_str().unwrap())
                .collect::<BTreeSet<_>>()
                .len()
        };
        assert_eq!(got["id"], id);
        assert_eq!(got["name"], label["name"]);
        assert_eq!(got["type"], label["type"]);
        assert_eq!(got["messagesTotal"], with.len(), "{id}");
        assert_eq!(got["messagesUnread"], unread.len(), "{id}");
        assert_eq!(got["threadsTotal"], threads(&with), "{id}");
        assert_eq!(got["threadsUnread"], threads(&unread), "{id}");
    }

    // The client library parses it.
    let hub = env.hub(SUPPORT).await;
    let (_, inbox) = hub
        .users()
        .labels_get("me", "INBOX")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let in_inbox = truth.iter().filter(|m| has_label(m, "INBOX")).count();
    assert_eq!(inbox.messages_total, Some(in_inbox as i32));
    assert_eq!(inbox.type_.as_deref(), Some("system"));

    let (status, _, body) = env.get(&token, "gmail/v1/users/me/labels/Label_999").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["status"], "NOT_FOUND");
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(
        stats["requests"]["gmail.users.labels.get"]["200"],
        labels.len() + 1,
        "each label once, and INBOX through the hub"
    );
}

#[tokio::test]
async fn threads_list_pages_through_every_thread_once_newest_first() {
    let env = start(6, 3, 150).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let truth = env.ground_truth(SUPPORT).await;
    let expected = threads_in_order(&truth);
    assert!(expected.len() < truth.len(), "some threads hold replies");

    let mut listed = Vec::new();
    let mut page_token: Option<String> = None;
    loop {
        let mut path = "gmail/v1/users/me/threads?maxResults=7&includeSpamTrash=true".to_owned();
        if let Some(t) = &page_token {
            path.push_str(&format!("&pageToken={t}"));
        }
        let page = get_ok(&env, &token, &path).await;
        assert_eq!(page["resultSizeEstimate"], expected.len());
        for thread in page["threads"].as_array().unwrap() {
            assert!(thread["snippet"].is_string());
            assert!(thread["historyId"].is_string());
            listed.push(thread["id"].as_str().unwrap().to_owned());
        }
        match page["nextPageToken"].as_str() {
            Some(t) => page_token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, expected);

    // Filters apply per message, and a thread is listed when one of its messages matches.
    let inbox: Vec<Value> = truth
        .iter()
        .filter(|m| has_label(m, "INBOX"))
        .cloned()
        .collect();
    let hub = env.hub(SUPPORT).await;
    let (_, response) = hub
        .users()
        .threads_list("me")
        .add_label_ids("INBOX")
        .max_results(500)
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let ids: Vec<String> = response
        .threads
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.id.unwrap())
        .collect();
    assert_eq!(ids, threads_in_order(&inbox));
}

#[tokio::test]
async fn threads_get_answers_minimal_metadata_and_full_like_messages_get() {
    let env = start(6, 3, 150).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let truth = env.ground_truth(SUPPORT).await;
    let mut by_thread: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in truth.iter().rev() {
        by_thread
            .entry(m["threadId"].as_str().unwrap().to_owned())
            .or_default()
            .push(m["id"].as_str().unwrap().to_owned());
    }
    let (thread, members) = by_thread
        .iter()
        .max_by_key(|(_, ms)| ms.len())
        .map(|(t, ms)| (t.clone(), ms.clone()))
        .unwrap();
    assert!(members.len() > 1);

    for format in ["minimal", "metadata", "full"] {
        let got = get_ok(
            &env,
            &token,
            &format!("gmail/v1/users/me/threads/{thread}?format={format}"),
        )
        .await;
        assert_eq!(got["id"], thread.as_str());
        let messages = got["messages"].as_array().unwrap();
        let ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, members, "oldest first");
        assert_eq!(got["snippet"], messages.last().unwrap()["snippet"]);
        for message in messages {
            let id = message["id"].as_str().unwrap();
            let single = get_ok(
                &env,
                &token,
                &format!("gmail/v1/users/me/messages/{id}?format={format}"),
            )
            .await;
            assert_eq!(message, &single, "{format} {id}");
            assert_eq!(message.get("payload").is_some(), format != "minimal");
        }
    }

    let hub = env.hub(SUPPORT).await;
    let (_, parsed) = hub
        .users()
        .threads_get("me", &thread)
        .format("metadata")
        .add_metadata_headers("Subject")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let first = &parsed.messages.unwrap()[0];
    let headers = first.payload.as_ref().unwrap().headers.as_ref().unwrap();
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].name.as_deref(), Some("Subject"));

    let (status, _, body) = env
        .get(
            &token,
            &format!("gmail/v1/users/me/threads/{thread}?format=raw"),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let (status, _, _) = env
        .get(&token, "gmail/v1/users/me/threads/00000000000000ab")
        .await;
    assert_eq!(status, 404);
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn fields_selects_parts_of_every_gmail_answer() {
    let env = start(7, 3, 30).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let truth = env.ground_truth(SUPPORT).await;
    let id = truth[0]["id"].as_str().unwrap();
    let thread = truth[0]["threadId"].as_str().unwrap();

    let got = get_ok(
        &env,
        &token,
        &format!("gmail/v1/users/me/messages/{id}?fields=id,labelIds"),
    )
    .await;
    assert_eq!(keys(&got), ["id", "labelIds"]);
    assert_eq!(got["labelIds"], truth[0]["labelIds"]);

    let page = get_ok(
        &env,
        &token,
        "gmail/v1/users/me/messages?maxResults=5&fields=nextPageToken,messages/id",
    )
    .await;
    assert_eq!(keys(&page), ["messages", "nextPageToken"]);
    for (listed, expected) in page["messages"].as_array().unwrap().iter().zip(&truth) {
        assert_eq!(listed, &json!({"id": expected["id"]}));
    }

    let labels = get_ok(
        &env,
        &token,
        "gmail/v1/users/me/labels?fields=labels(name,id,type)",
    )
    .await;
    for label in labels["labels"].as_array().unwrap() {
        assert_eq!(keys(label), ["id", "name", "type"]);
    }

    let nested = get_ok(
        &env,
        &token,
        &format!(
            "gmail/v1/users/me/threads/{thread}?format=metadata&metadataHeaders=Subject&fields=id,messages(id,payload(headers(name)))"
        ),
    )
    .await;
    assert_eq!(keys(&nested), ["id", "messages"]);
    let message = &nested["messages"][0];
    assert_eq!(keys(message), ["id", "payload"]);
    assert_eq!(
        message["payload"],
        json!({"headers": [{"name": "Subject"}]})
    );

    let profile = get_ok(
        &env,
        &token,
        "gmail/v1/users/me/profile?fields=emailAddress",
    )
    .await;
    assert_eq!(profile, json!({"emailAddress": SUPPORT}));
    let history_id = get_ok(&env, &token, "gmail/v1/users/me/profile").await["historyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let history = get_ok(
        &env,
        &token,
        &format!("gmail/v1/users/me/history?startHistoryId={history_id}&fields=historyId"),
    )
    .await;
    assert_eq!(keys(&history), ["historyId"]);

    // The client library sends `fields` as a plain parameter and parses what is left.
    let hub = env.hub(SUPPORT).await;
    let (_, parsed) = hub
        .users()
        .messages_get("me", id)
        .param("fields", "id,snippet")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(parsed.id.as_deref(), Some(id));
    assert!(parsed.snippet.is_some());
    assert!(parsed.label_ids.is_none() && parsed.payload.is_none());
}

#[tokio::test]
async fn bad_selectors_are_googles_400_and_system_parameters_are_accepted_everywhere() {
    let env = start(7, 3, 10).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let truth = env.ground_truth(SUPPORT).await;
    let id = truth[0]["id"].as_str().unwrap();
    let thread = truth[0]["threadId"].as_str().unwrap();
    let before = env.control_ok(Method::GET, "stats", None).await;

    for bad in ["labels(nme)", "labels(name", "id,,labelIds", "nosuchfield"] {
        let (status, _, body) = env
            .get(&token, &format!("gmail/v1/users/me/labels?fields={bad}"))
            .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(body["error"]["errors"][0]["reason"], "invalidParameter");
        assert_eq!(body["error"]["errors"][0]["location"], "fields");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid field selection")
        );
    }
    let after = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(
        after["quota_units"], before["quota_units"],
        "a refused selector is not charged"
    );

    let history_id = get_ok(&env, &token, "gmail/v1/users/me/profile").await["historyId"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "gmail/v1/users/me/profile".to_owned(),
        "gmail/v1/users/me/labels".to_owned(),
        "gmail/v1/users/me/labels/INBOX".to_owned(),
        "gmail/v1/users/me/messages".to_owned(),
        format!("gmail/v1/users/me/messages/{id}"),
        "gmail/v1/users/me/threads".to_owned(),
        format!("gmail/v1/users/me/threads/{thread}"),
        format!("gmail/v1/users/me/history?startHistoryId={history_id}"),
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let plain = get_ok(&env, &token, &path).await;
        for extra in ["alt=json", "prettyPrint=false", "prettyPrint=true&alt=json"] {
            let got = get_ok(&env, &token, &format!("{path}{sep}{extra}")).await;
            assert_eq!(got, plain, "{path} with {extra}");
        }
    }
    let (status, _, body) = env
        .get(&token, "gmail/v1/users/me/profile?prettyPrint=maybe")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["errors"][0]["location"], "prettyPrint");
}

/// Inserts a message through the control API and returns its ID.
async fn insert(env: &TestEmulator, raw: &str, labels: &[&str]) -> String {
    use base64::Engine as _;
    let encoded = base64::prelude::BASE64_URL_SAFE_NO_PAD.encode(raw);
    env.control_ok(
        Method::POST,
        &format!("users/{SUPPORT}/messages"),
        Some(json!({"raw": encoded, "label_ids": labels})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every message ID `q` lists, paging to the end.
async fn search(env: &TestEmulator, token: &str, q: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let mut url = reqwest::Url::parse(&env.url("gmail/v1/users/me/messages")).unwrap();
        url.query_pairs_mut()
            .append_pair("q", q)
            .append_pair("maxResults", "500")
            .append_pair("pageToken", &page_token);
        let response = env.http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200, "q={q:?}");
        let page: Value = response.json().await.unwrap();
        for m in page["messages"].as_array().into_iter().flatten() {
            found.insert(m["id"].as_str().unwrap().to_owned());
        }
        match page["nextPageToken"].as_str() {
            Some(t) => page_token = t.to_owned(),
            None => return found,
        }
    }
}

#[tokio::test]
async fn q_understands_gmails_search_syntax() {
    let env = start(8, 3, 80).await;
    env.control_ok(Method::PUT, "quota", Some(json!({"enforce": false})))
        .await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let report = insert(
        &env,
        "From: Alice Zqxj <alice@zqxj.example>\r\nTo: support@example.com\r\nSubject: Quarterly zqxj report\r\nMessage-ID: <r1@zqxj.example>\r\nContent-Type: text/plain\r\n\r\nThe numbers are blorptastic.\r\n",
        &["INBOX"],
    )
    .await;
    let lunch = insert(
        &env,
        "From: Bob <bob@elsewhere.example>\r\nTo: carol@zqxj.example\r\nSubject: zqxj lunch\r\nMessage-ID: <r2@zqxj.example>\r\nContent-Type: text/plain\r\n\r\nNoon?\r\n",
        &["INBOX", "UNREAD"],
    )
    .await;
    let big_attachment = "A".repeat(80 * 1024);
    let scan = insert(
        &env,
        &format!(
            "From: Scanner <scanner@zqxj.example>\r\nTo: support@example.com\r\nSubject: Scan zqxj\r\nMessage-ID: <r3@zqxj.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nAttached.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan-0001.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{big_attachment}\r\n--b--\r\n"
        ),
        &["SPAM"],
    )
    .await;
    let set = |ids: &[&String]| ids.iter().map(|s| (*s).clone()).collect::<BTreeSet<_>>();
    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        ("zqxj", set(&[&report, &lunch])),
        ("zqxj in:anywhere", set(&[&report, &lunch, &scan])),
        ("subject:zqxj -lunch", set(&[&report])),
        ("\"quarterly zqxj\"", set(&[&report])),
        ("\"zqxj quarterly\"", set(&[])),
        ("from:alice@zqxj.example", set(&[&report])),
        ("from:\"Alice Zqxj\"", set(&[&report])),
        ("to:carol@zqxj.example", set(&[&lunch])),
        ("subject:(zqxj lunch)", set(&[&lunch])),
        ("blorptastic OR subject:lunch", set(&[&report, &lunch])),
        ("{blorptastic noon}", set(&[&report, &lunch])),
        ("(from:bob OR from:alice) zqxj is:unread", set(&[&lunch])),
        ("zqxj -is:unread", set(&[&report])),
        ("zqxj is:read", set(&[&report])),
        ("in:spam has:attachment", set(&[&scan])),
        ("in:spam filename:scan-0001.pdf", set(&[&scan])),
        ("in:anywhere zqxj larger:50K", set(&[&scan])),
        ("in:anywhere zqxj smaller:50K", set(&[&report, &lunch])),
        ("rfc822msgid:<r2@zqxj.example>", set(&[&lunch])),
        ("zqxj newer_than:1d", set(&[&report, &lunch])),
        ("zqxj older_than:1d", set(&[])),
        ("zqxj -(subject:lunch OR subject:quarterly)", set(&[])),
        ("zqxj -is:chat -in:chats", set(&[&report, &lunch])),
    ];
    for (q, expected) in &cases {
        assert_eq!(&search(&env, &token, q).await, expected, "q={q:?}");
    }

    // Label operators agree with the ground truth, spam and trash left out unless asked.
    let truth = env.ground_truth(SUPPORT).await;
    let visible = |m: &&Value| !has_label(m, "SPAM") && !has_label(m, "TRASH");
    let ids = |pred: &dyn Fn(&Value) -> bool| {
        truth
            .iter()
            .filter(visible)
            .filter(|m| pred(m))
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
    };
    let everything = ids(&|_| true);
    assert_eq!(search(&env, &token, "-is:chat -in:chats").await, everything);
    assert_eq!(
        search(&env, &token, "is:unread OR label:invoices").await,
        ids(&|m| has_label(m, "UNREAD") || has_label(m, "Label_1"))
    );
    assert_eq!(
        search(&env, &token, "-in:inbox (is:starred OR is:important)").await,
        ids(&|m| !has_label(m, "INBOX") && (has_label(m, "STARRED") || has_label(m, "IMPORTANT")))
    );
    assert_eq!(search(&env, &token, "in:chats").await, BTreeSet::new());
    assert_eq!(
        search(&env, &token, "label:no-such-label").await,
        BTreeSet::new()
    );

    // Never an error on a query Gmail accepts, nor on a sloppy one.
    for q in [
        "(",
        ")",
        "((a OR",
        "a))",
        "{",
        "}",
        "-",
        "\"unterminated",
        "OR",
        "a OR",
        "from:",
        "subject:(",
        "after:garbage",
        "larger:lots",
        "newer_than:soon",
        "-(-(-zqxj))",
        "has:drive",
        "category:primary",
        "list:announce@example.com",
        "is:snoozed",
        "http://example.com/x?y=1",
        "a AND b",
        "label:\"Tenants/Unit 4B\"",
    ] {
        search(&env, &token, q).await;
    }
}
