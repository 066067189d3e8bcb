//! The local Google emulator, driven by the real clients (yup-oauth2, google-gmail1) and by raw
//! HTTP where a client would hide the detail under test.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use google_gmail1::api::Scope;
use reqwest::Method;
use serde_json::{Value, json};

use crate::emulator_helpers::{
    DIRECTORY_READONLY, GMAIL_METADATA, GMAIL_READONLY, google_error, raw_message, start, unix_now,
};

const SUPPORT: &str = "support@example.com";

#[tokio::test]
async fn real_clients_get_a_token_and_read_the_profile() {
    let env = start(1, 3, 20).await;
    let hub = env.hub(SUPPORT).await;

    let (_, profile) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();

    assert_eq!(profile.email_address.as_deref(), Some(SUPPORT));
    assert_eq!(profile.messages_total, Some(20));
    let state = env.control_ok(Method::GET, "state", None).await;
    let support = state["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == SUPPORT)
        .unwrap()
        .clone();
    assert_eq!(
        support["history_id"].as_str().unwrap(),
        profile.history_id.unwrap().to_string()
    );
    assert_eq!(support["org_unit"], "/Shared Mailboxes");
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["tokens_issued"][SUPPORT], 1);
    assert_eq!(stats["token_requests"][SUPPORT], 1);
    assert_eq!(stats["requests"]["gmail.users.getProfile"]["200"], 1);
    assert_eq!(stats["requests"]["oauth2.token"]["200"], 1);
    assert_eq!(
        stats["requests_by_user"][SUPPORT]["gmail.users.getProfile"],
        1
    );
    assert_eq!(stats["quota_units"][SUPPORT], 1);
    assert!(stats["token_requests"].get("billing@example.com").is_none());
    env.emulator.shutdown().await;
}

#[tokio::test]
async fn seeded_users_and_key_file_follow_the_contract() {
    let env = start(1, 3, 5).await;

    let state = env.control_ok(Method::GET, "state", None).await;
    let users: Vec<(String, String, bool)> = state["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap().to_owned(),
                u["org_unit"].as_str().unwrap().to_owned(),
                u["is_admin"].as_bool().unwrap(),
            )
        })
        .collect();
    let key: Value = serde_json::from_slice(&std::fs::read(&env.info.key_path).unwrap()).unwrap();

    assert_eq!(
        users,
        vec![
            ("admin@example.com".into(), "/".into(), true),
            ("alice@example.com".into(), "/Staff".into(), false),
            (
                "billing@example.com".into(),
                "/Shared Mailboxes".into(),
                false
            ),
            (SUPPORT.into(), "/Shared Mailboxes".into(), false),
        ]
    );
    assert_eq!(env.emulator.admin_email(), "admin@example.com");
    assert_eq!(key["type"], "service_account");
    assert_eq!(key["token_uri"], env.emulator.token_url());
    assert!(
        key["client_id"]
            .as_str()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit())
    );
    assert!(
        key["private_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&env.info.key_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(env.emulator.base_url().ends_with('/'));
    assert_eq!(
        env.emulator.token_url(),
        format!("{}token", env.emulator.base_url())
    );
}

#[tokio::test]
async fn token_endpoint_refuses_each_bad_assertion_with_googles_errors() {
    let env = start(1, 3, 5).await;
    let now = unix_now();
    let good = env.claims(SUPPORT, GMAIL_READONLY);
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };

    // Tampered signature: change a character inside the signature (the last
    // one may carry only padding bits, which a decoder can reject outright).
    let assertion = env.assertion(&good);
    let at = assertion.rfind('.').unwrap() + 10;
    let flipped = if &assertion[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{}{}", &assertion[..at], flipped, &assertion[at + 1..]);
    let (status, body) = env.exchange(&tampered).await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["error_description"].as_str()
        ),
        (400, Some("invalid_grant"), Some("Invalid JWT Signature."))
    );

    // Unknown user.
    let (status, body) = env
        .exchange(&env.assertion(&with(json!({"sub": "nobody@example.com"}))))
        .await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["error_description"].as_str()
        ),
        (400, Some("invalid_grant"), Some("Invalid email or User ID"))
    );

    // A scope outside the grant.
    let (status, body) = env
        .exchange(&env.assertion(&with(
            json!({"scope": "https://www.googleapis.com/auth/gmail.modify"}),
        )))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("Client is unauthorized to retrieve access tokens")
    );

    // Too long-lived, and already expired.
    for claims in [
        with(json!({"exp": now + 7200})),
        with(json!({"iat": now - 7200, "exp": now - 3600})),
    ] {
        let (status, body) = env.exchange(&env.assertion(&claims)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("Invalid JWT: Token must be a short-lived token (60 minutes)")
        );
    }

    // Empty scope, wrong audience.
    let (status, body) = env
        .exchange(&env.assertion(&with(json!({"scope": ""}))))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = env
        .exchange(&env.assertion(&with(json!({"aud": "https://evil.example.com/token"}))))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // A forced per-user policy error, then cleared.
    env.control_ok(
        Method::PATCH,
        &format!("users/{SUPPORT}"),
        Some(json!({"token_error": "admin_policy_enforced"})),
    )
    .await;
    let (status, body) = env.exchange(&env.assertion(&good)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("admin_policy_enforced"))
    );
    env.control_ok(
        Method::PATCH,
        &format!("users/{SUPPORT}"),
        Some(json!({"token_error": null})),
    )
    .await;
    assert_eq!(env.exchange(&env.assertion(&good)).await.0, 200);

    // Revoked delegation.
    env.control_ok(
        Method::PUT,
        "delegation",
        Some(json!({"client_id": env.info.client_id, "scopes": []})),
    )
    .await;
    let (status, body) = env.exchange(&env.assertion(&good)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized_client"))
    );

    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["tokens_issued"][SUPPORT], 1);
    assert_eq!(stats["token_requests"][SUPPORT], 9);
    assert_eq!(stats["token_requests"]["nobody@example.com"], 1);
    assert_eq!(stats["requests"]["oauth2.token"]["401"], 2);
}

#[tokio::test]
async fn an_expired_access_token_gets_401_after_the_clock_moves() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    assert_eq!(env.get(&token, "gmail/v1/users/me/profile").await.0, 200);

    env.emulator.advance_clock(Duration::from_secs(3601));
    let (status, headers, body) = env.get(&token, "gmail/v1/users/me/profile").await;

    assert_eq!(status, 401);
    assert_eq!(body["error"]["errors"][0]["reason"], "authError");
    assert_eq!(body["error"]["errors"][0]["location"], "Authorization");
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(
        env.get("not-a-token", "gmail/v1/users/me/profile").await.0,
        401
    );
    // A fresh assertion still works: JWT times are checked against the signer's wall clock.
    let fresh = env.token(SUPPORT, GMAIL_READONLY).await;
    assert_eq!(env.get(&fresh, "gmail/v1/users/me/profile").await.0, 200);
}

#[tokio::test]
async fn messages_come_back_in_every_format_through_the_hub() {
    let env = start(1, 3, 40).await;
    let hub = env.hub(SUPPORT).await;
    let (_, list) = hub
        .users()
        .messages_list("me")
        .include_spam_trash(true)
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let ids: Vec<String> = list
        .messages
        .unwrap()
        .into_iter()
        .map(|m| m.id.unwrap())
        .collect();
    assert_eq!(ids.len(), 40);
    let mut saw_attachment = false;

    for id in &ids {
        let (_, raw) = hub
            .users()
            .messages_get("me", id)
            .format("raw")
            .add_scope(Scope::Readonly)
            .doit()
            .await
            .unwrap();
        let bytes = raw.raw.clone().unwrap();
        assert_eq!(raw.size_estimate, Some(bytes.len() as i32));
        assert!(raw.payload.is_none());
        assert!(!raw.snippet.clone().unwrap().is_empty());
        assert_eq!(raw.id.as_deref(), Some(id.as_str()));
        assert_eq!(id.len(), 16);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Message-ID: <"));

        let (_, full) = hub
            .users()
            .messages_get("me", id)
            .add_scope(Scope::Readonly)
            .doit()
            .await
            .unwrap();
        let payload = full.payload.unwrap();
        assert!(full.raw.is_none());
        assert_eq!(payload.part_id.as_deref(), Some(""));
        assert!(
            payload
                .headers
                .unwrap()
                .iter()
                .any(|h| h.name.as_deref() == Some("Subject"))
        );
        assert_eq!(full.label_ids, raw.label_ids);
        let mut stack = vec![payload.parts.unwrap_or_default()];
        while let Some(parts) = stack.pop() {
            for part in parts {
                if let Some(attachment_id) =
                    part.body.as_ref().and_then(|b| b.attachment_id.clone())
                {
                    let (_, body) = hub
                        .users()
                        .messages_attachments_get("me", id, &attachment_id)
                        .add_scope(Scope::Readonly)
                        .doit()
                        .await
                        .unwrap();
                    assert_eq!(
                        body.data.unwrap().len() as i32,
                        part.body.unwrap().size.unwrap()
                    );
                    saw_attachment = true;
                } else if let Some(children) = part.parts {
                    stack.push(children);
                }
            }
        }
    }
    assert!(saw_attachment, "some generated message has an attachment");

    let (_, minimal) = hub
        .users()
        .messages_get("me", &ids[0])
        .format("minimal")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert!(minimal.payload.is_none() && minimal.raw.is_none());
    assert!(minimal.internal_date.unwrap() > 1_700_000_000_000);
    let (_, metadata) = hub
        .users()
        .messages_get("me", &ids[0])
        .format("metadata")
        .add_metadata_headers("Subject")
        .add_metadata_headers("From")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let names: BTreeSet<String> = metadata
        .payload
        .unwrap()
        .headers
        .unwrap()
        .into_iter()
        .map(|h| h.name.unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["From".to_owned(), "Subject".to_owned()])
    );

    let (_, labels) = hub
        .users()
        .labels_list("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let labels = labels.labels.unwrap();
    assert!(
        labels
            .iter()
            .any(|l| l.id.as_deref() == Some("INBOX") && l.type_.as_deref() == Some("system"))
    );
    assert!(
        labels
            .iter()
            .any(|l| l.id.as_deref() == Some("Label_1") && l.type_.as_deref() == Some("user"))
    );

    let missing = hub
        .users()
        .messages_get("me", "0000000000000001")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap_err();
    assert_eq!(
        google_error(&missing),
        (
            404,
            "notFound".into(),
            "Requested entity was not found.".into()
        )
    );
}

#[tokio::test]
async fn listing_pages_to_the_end_newest_first_and_filters_apply() {
    let env = start(3, 3, 60).await;
    let hub = env.hub(SUPPORT).await;
    let truth = env.ground_truth(SUPPORT).await;

    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut call = hub
            .users()
            .messages_list("me")
            .max_results(7)
            .include_spam_trash(true)
            .add_scope(Scope::Readonly);
        if let Some(t) = &token {
            call = call.page_token(t);
        }
        let (_, page) = call.doit().await.unwrap();
        pages += 1;
        assert_eq!(page.result_size_estimate, Some(60));
        listed.extend(
            page.messages
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.id.unwrap()),
        );
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let truth_ids: Vec<String> = truth
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pages, 9);
    assert_eq!(
        listed, truth_ids,
        "listing order is the ground truth's newest-first order"
    );
    assert!(
        listed.windows(2).all(|w| w[0] > w[1]),
        "IDs follow internalDate, newest first"
    );

    // Default excludes SPAM/TRASH; labelIds must all match; q understands in:/label:/after:/before:.
    let has = |m: &Value, label: &str| m["labelIds"].as_array().unwrap().iter().any(|l| l == label);
    let count = |pred: &dyn Fn(&Value) -> bool| truth.iter().filter(|m| pred(m)).count() as u32;
    let (_, default) = hub
        .users()
        .messages_list("me")
        .max_results(500)
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(
        default.result_size_estimate,
        Some(count(&|m| !has(m, "SPAM") && !has(m, "TRASH")))
    );
    let (_, inbox_unread) = hub
        .users()
        .messages_list("me")
        .add_label_ids("INBOX")
        .add_label_ids("UNREAD")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(
        inbox_unread.result_size_estimate,
        Some(count(&|m| has(m, "INBOX") && has(m, "UNREAD")))
    );
    let (_, sent) = hub
        .users()
        .messages_list("me")
        .q("in:sent")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(
        sent.result_size_estimate,
        Some(count(&|m| has(m, "SENT")
            && !has(m, "SPAM")
            && !has(m, "TRASH")))
    );
    let (_, none) = hub
        .users()
        .messages_list("me")
        .q("before:2000/01/01")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(none.result_size_estimate, Some(0));
    assert!(none.messages.is_none() && none.next_page_token.is_none());
    let (_, recent) = hub
        .users()
        .messages_list("me")
        .q("after:2026/10/01")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let recent = recent.result_size_estimate.unwrap();
    assert!(
        recent > 0 && recent < 60,
        "after: keeps only the last month: {recent}"
    );
    let (_, epoch) = hub
        .users()
        .messages_list("me")
        .q("after:1790812800")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(
        epoch.result_size_estimate,
        Some(recent),
        "epoch seconds and dates agree (2026-10-01)"
    );
    let (_, labelled) = hub
        .users()
        .messages_list("me")
        .q("label:invoices")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(
        labelled.result_size_estimate,
        Some(count(&|m| has(m, "Label_1")
            && !has(m, "SPAM")
            && !has(m, "TRASH")))
    );
}

#[tokio::test]
async fn history_reports_every_kind_of_change_in_order() {
    let env = start(1, 3, 10).await;
    let hub = env.hub(SUPPORT).await;
    let (_, profile) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let start_id = profile.history_id.unwrap();
    let (_, unchanged) = hub
        .users()
        .history_list("me")
        .start_history_id(start_id)
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert!(unchanged.history.is_none() && unchanged.next_page_token.is_none());
    assert_eq!(unchanged.history_id, Some(start_id));

    let inserted = env
        .control_ok(Method::POST, &format!("users/{SUPPORT}/messages"), Some(json!({"raw": raw_message("Boiler", "<boiler-1@outside.example.net>", None), "label_ids": ["INBOX", "UNREAD"]})))
        .await;
    let reply = env
        .control_ok(Method::POST, &format!("users/{SUPPORT}/messages"), Some(json!({"raw": raw_message("Re: Boiler", "<boiler-2@outside.example.net>", Some("<boiler-1@outside.example.net>"))})))
        .await;
    let id = inserted["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply["threadId"], inserted["threadId"],
        "a reply joins its parent's thread"
    );
    assert_eq!(inserted["threadId"], inserted["id"]);
    env.control_ok(
        Method::POST,
        &format!("users/{SUPPORT}/messages/{id}/labels"),
        Some(json!({"add": ["STARRED", "Label_2"], "remove": ["UNREAD"]})),
    )
    .await;
    env.control_ok(
        Method::DELETE,
        &format!("users/{SUPPORT}/messages/{id}"),
        None,
    )
    .await;

    let (_, history) = hub
        .users()
        .history_list("me")
        .start_history_id(start_id)
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let records = history.history.unwrap();
    let kinds: Vec<&str> = records
        .iter()
        .map(|h| {
            if h.messages_added.is_some() {
                "added"
            } else if h.labels_added.is_some() {
                "labelAdded"
            } else if h.labels_removed.is_some() {
                "labelRemoved"
            } else {
                assert!(h.messages_deleted.is_some());
                "deleted"
            }
        })
        .collect();
    assert_eq!(
        kinds,
        ["added", "added", "labelAdded", "labelRemoved", "deleted"]
    );
    let ids: Vec<u64> = records.iter().map(|h| h.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > start_id);
    assert_eq!(
        records[2].labels_added.as_ref().unwrap()[0]
            .label_ids
            .as_deref(),
        Some(&["STARRED".to_owned(), "Label_2".to_owned()][..])
    );
    assert_eq!(
        records[3].labels_removed.as_ref().unwrap()[0]
            .label_ids
            .as_deref(),
        Some(&["UNREAD".to_owned()][..])
    );
    assert_eq!(
        records[0].messages.as_ref().unwrap()[0].id.as_deref(),
        Some(id.as_str())
    );
    let (_, now) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(history.history_id, now.history_id);
    assert_eq!(history.history_id, Some(*ids.last().unwrap()));

    // Added-then-deleted still shows as added; fetching it is a 404.
    let gone = hub
        .users()
        .messages_get("me", &id)
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap_err();
    assert_eq!(google_error(&gone).0, 404);
    let (_, only_deleted) = hub
        .users()
        .history_list("me")
        .start_history_id(start_id)
        .add_history_types("messageDeleted")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(only_deleted.history.unwrap().len(), 1);
    let (_, starred) = hub
        .users()
        .history_list("me")
        .start_history_id(start_id)
        .label_id("Label_2")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert_eq!(
        starred.history.unwrap().len(),
        3,
        "label added, label removed and deletion touch a Label_2 message"
    );

    // Missing or garbled startHistoryId is a 400.
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    for query in ["", "?startHistoryId=abc"] {
        let (status, _, body) = env
            .get(&token, &format!("gmail/v1/users/me/history{query}"))
            .await;
        assert_eq!(
            (status, body["error"]["errors"][0]["reason"].as_str()),
            (400, Some("invalidArgument"))
        );
    }
}

#[tokio::test]
async fn expired_history_answers_404_and_a_fresh_profile_id_works() {
    let env = start(1, 3, 10).await;
    let hub = env.hub(SUPPORT).await;
    let (_, before) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();

    env.control_ok(
        Method::POST,
        &format!("users/{SUPPORT}/history/expire"),
        None,
    )
    .await;

    let expired = hub
        .users()
        .history_list("me")
        .start_history_id(before.history_id.unwrap())
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap_err();
    assert_eq!(
        google_error(&expired),
        (
            404,
            "notFound".into(),
            "Requested entity was not found.".into()
        )
    );
    let (_, after) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert!(after.history_id > before.history_id);
    let (_, fresh) = hub
        .users()
        .history_list("me")
        .start_history_id(after.history_id.unwrap())
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    assert!(fresh.history.is_none());
}

#[tokio::test]
async fn empty_history_pages_keep_their_page_token_and_lose_nothing() {
    let env = start(1, 3, 5).await;
    let hub = env.hub(SUPPORT).await;
    let (_, profile) = hub
        .users()
        .get_profile("me")
        .add_scope(Scope::Readonly)
        .doit()
        .await
        .unwrap();
    let mut inserted = BTreeSet::new();
    for n in 0..9 {
        let body = json!({"raw": raw_message(&format!("Note {n}"), &format!("<note-{n}@outside.example.net>"), None)});
        let value = env
            .control_ok(
                Method::POST,
                &format!("users/{SUPPORT}/messages"),
                Some(body),
            )
            .await;
        inserted.insert(value["id"].as_str().unwrap().to_owned());
    }
    env.control_ok(
        Method::PUT,
        "faults",
        Some(json!({"empty_page_rate": 0.5, "seed": 42})),
    )
    .await;

    let mut seen = BTreeSet::new();
    let mut empty_pages = 0;
    let mut token: Option<String> = None;
    for _ in 0..100 {
        let mut call = hub
            .users()
            .history_list("me")
            .start_history_id(profile.history_id.unwrap())
            .max_results(2)
            .add_scope(Scope::Readonly);
        if let Some(t) = &token {
            call = call.page_token(t);
        }
        let (_, page) = call.doit().await.unwrap();
        assert!(page.history_id.is_some());
        match page.history {
            None => {
                empty_pages += 1;
                assert!(
                    page.next_page_token.is_some(),
                    "an injected empty page still points onwards"
                );
            }
            Some(records) => seen.extend(
                records
                    .into_iter()
                    .flat_map(|h| h.messages_added.unwrap())
                    .map(|a| a.message.unwrap().id.unwrap()),
            ),
        }
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert!(empty_pages > 0);
    assert_eq!(seen, inserted);
}

#[tokio::test]
async fn quota_refuses_with_retry_after_and_recovers_a_minute_later() {
    let env = start(1, 3, 5).await;
    let quota = env
        .control_ok(
            Method::PUT,
            "quota",
            Some(json!({"user_units_per_minute": 100})),
        )
        .await;
    assert_eq!(
        quota,
        json!({"user_units_per_minute": 100, "project_units_per_minute": 1_200_000, "max_concurrent_per_user": 10, "enforce": true})
    );
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let id = env.ground_truth(SUPPORT).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("gmail/v1/users/me/messages/{id}?format=raw");

    for _ in 0..5 {
        assert_eq!(env.get(&token, &path).await.0, 200);
    }
    let (status, headers, body) = env.get(&token, &path).await;

    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "userRateLimitExceeded"
    );
    assert_eq!(body["error"]["errors"][0]["domain"], "usageLimits");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(
        stats["quota_units"][SUPPORT], 100,
        "the refused call was not charged"
    );
    assert_eq!(stats["requests"]["gmail.users.messages.get"]["403"], 1);

    env.emulator.advance_clock(Duration::from_secs(61));
    assert_eq!(env.get(&token, &path).await.0, 200);

    env.control_ok(
        Method::PUT,
        "quota",
        Some(json!({"project_units_per_minute": 10})),
    )
    .await;
    let (status, _, body) = env.get(&token, &path).await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (403, Some("rateLimitExceeded"))
    );
    env.control_ok(Method::PUT, "quota", Some(json!({"enforce": false})))
        .await;
    assert_eq!(env.get(&token, &path).await.0, 200);
}

#[tokio::test]
async fn too_many_concurrent_requests_for_one_user_get_429() {
    let env = start(1, 3, 5).await;
    env.control_ok(
        Method::PUT,
        "quota",
        Some(json!({"max_concurrent_per_user": 2})),
    )
    .await;
    env.control_ok(
        Method::PUT,
        "faults",
        Some(json!({"latency_ms": [300, 300]})),
    )
    .await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;

    let calls = (0..5).map(|_| env.get(&token, "gmail/v1/users/me/profile"));
    let results = futures::future::join_all(calls).await;

    let mut statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let refused = results.iter().find(|r| r.0 == 429).unwrap();
    assert_eq!(
        refused.2["error"]["message"],
        "Too many concurrent requests for user"
    );
    assert_eq!(
        refused.2["error"]["errors"][0]["reason"],
        "rateLimitExceeded"
    );
    assert!(refused.1.contains_key("retry-after"));
    // Slots are released: the next call is admitted.
    assert_eq!(env.get(&token, "gmail/v1/users/me/profile").await.0, 200);
}

#[tokio::test]
async fn injected_faults_give_errors_rate_limits_resets_and_latency() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let profile = "gmail/v1/users/me/profile";

    env.control_ok(
        Method::PUT,
        "faults",
        Some(json!({"error_rate": 1.0, "seed": 7})),
    )
    .await;
    let mut statuses = BTreeSet::new();
    for _ in 0..20 {
        let (status, _, body) = env.get(&token, profile).await;
        assert_eq!(body["error"]["errors"][0]["reason"], "backendError");
        statuses.insert(status);
    }
    assert_eq!(statuses, BTreeSet::from([500, 503]));
    // Control calls and token exchanges are not faulted.
    assert_eq!(env.control(Method::GET, "state", None).await.0, 200);
    env.token(SUPPORT, GMAIL_READONLY).await;

    env.control_ok(Method::PUT, "faults", Some(json!({"rate_limit_rate": 1.0})))
        .await;
    let mut statuses = BTreeSet::new();
    for _ in 0..20 {
        let (status, headers, _) = env.get(&token, profile).await;
        assert!(headers.contains_key("retry-after"));
        statuses.insert(status);
    }
    assert_eq!(statuses, BTreeSet::from([403, 429]));

    env.control_ok(Method::PUT, "faults", Some(json!({"reset_rate": 1.0})))
        .await;
    let error = env
        .http
        .get(env.url(profile))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_err();
    assert!(
        error.status().is_none(),
        "a reset is a transport error, not an HTTP status: {error}"
    );

    env.control_ok(
        Method::PUT,
        "faults",
        Some(json!({"latency_ms": [150, 150]})),
    )
    .await;
    let started = Instant::now();
    assert_eq!(env.get(&token, profile).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let (status, body) = env
        .control(Method::PUT, "faults", Some(json!({"error_rate": 2.0})))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("error_rate"));
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["faults_injected"]["reset"], 1);
}

#[tokio::test]
async fn the_same_fault_seed_replays_the_same_sequence() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        env.control_ok(
            Method::PUT,
            "faults",
            Some(json!({"error_rate": 0.3, "rate_limit_rate": 0.3, "seed": 99})),
        )
        .await;
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(env.get(&token, "gmail/v1/users/me/labels").await.0);
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&200) && runs[0].iter().any(|s| *s != 200));
}

#[tokio::test]
async fn scopes_and_user_state_shape_what_gmail_allows() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;

    let (status, _, body) = env
        .get(&token, "gmail/v1/users/billing@example.com/profile")
        .await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        body["error"]["message"],
        format!("Delegation denied for {SUPPORT}")
    );
    assert_eq!(
        env.get(&token, &format!("gmail/v1/users/{SUPPORT}/profile"))
            .await
            .0,
        200
    );

    env.control_ok(
        Method::PATCH,
        &format!("users/{SUPPORT}"),
        Some(json!({"mailbox_enabled": false})),
    )
    .await;
    let (status, _, body) = env.get(&token, "gmail/v1/users/me/profile").await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (400, Some("failedPrecondition"))
    );
    assert_eq!(
        (
            body["error"]["message"].as_str(),
            body["error"]["status"].as_str()
        ),
        (
            Some("Mail service not enabled"),
            Some("FAILED_PRECONDITION")
        )
    );
    env.control_ok(
        Method::PATCH,
        &format!("users/{SUPPORT}"),
        Some(json!({"mailbox_enabled": true, "suspended": true})),
    )
    .await;
    assert_eq!(env.get(&token, "gmail/v1/users/me/profile").await.0, 403);
    env.control_ok(
        Method::PATCH,
        &format!("users/{SUPPORT}"),
        Some(json!({"suspended": false})),
    )
    .await;

    // A Directory-only token may not read Gmail.
    let directory_token = env.token("admin@example.com", DIRECTORY_READONLY).await;
    let (status, _, body) = env.get(&directory_token, "gmail/v1/users/me/profile").await;
    assert_eq!(
        (status, body["error"]["errors"][0]["reason"].as_str()),
        (403, Some("insufficientPermissions"))
    );

    // gmail.metadata: no bodies, no q, no attachments.
    env.control_ok(
        Method::PUT,
        "delegation",
        Some(json!({"client_id": env.info.client_id, "scopes": [GMAIL_METADATA]})),
    )
    .await;
    let metadata = env.token(SUPPORT, GMAIL_METADATA).await;
    let id = env.ground_truth(SUPPORT).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (format, text) in [("raw", "RAW"), ("full", "FULL")] {
        let (status, _, body) = env
            .get(
                &metadata,
                &format!("gmail/v1/users/me/messages/{id}?format={format}"),
            )
            .await;
        assert_eq!(status, 403);
        assert_eq!(
            body["error"]["message"],
            format!("Metadata scope doesn't allow format {text}")
        );
    }
    assert_eq!(
        env.get(
            &metadata,
            &format!("gmail/v1/users/me/messages/{id}?format=metadata")
        )
        .await
        .0,
        200
    );
    let (status, _, body) = env
        .get(&metadata, "gmail/v1/users/me/messages?q=in:inbox")
        .await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (403, Some("Metadata scope does not support 'q' parameter"))
    );
    assert_eq!(
        env.get(
            &metadata,
            &format!("gmail/v1/users/me/messages/{id}/attachments/ANGjdJx")
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn directory_look_ups_need_an_admin() {
    let env = start(1, 3, 5).await;
    let admin = env.token("admin@example.com", DIRECTORY_READONLY).await;

    let (status, _, user) = env
        .get(&admin, "admin/directory/v1/users/support@example.com")
        .await;
    assert_eq!(status, 200);
    assert_eq!(user["kind"], "admin#directory#user");
    assert_eq!(user["primaryEmail"], SUPPORT);
    assert_eq!(user["orgUnitPath"], "/Shared Mailboxes");
    assert_eq!(
        (
            user["suspended"].as_bool(),
            user["archived"].as_bool(),
            user["isMailboxSetup"].as_bool(),
            user["isAdmin"].as_bool()
        ),
        (Some(false), Some(false), Some(true), Some(false))
    );
    let (status, _, by_id) = env
        .get(
            &admin,
            &format!("admin/directory/v1/users/{}", user["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        (status, by_id["primaryEmail"].as_str()),
        (200, Some(SUPPORT))
    );

    let (status, _, missing) = env
        .get(&admin, "admin/directory/v1/users/ghost@example.com")
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        missing,
        json!({"error": {"code": 404, "message": "Resource Not Found: userKey", "errors": [{"message": "Resource Not Found: userKey", "domain": "global", "reason": "notFound"}]}})
    );

    let staff = env.token("alice@example.com", DIRECTORY_READONLY).await;
    let (status, _, body) = env
        .get(&staff, "admin/directory/v1/users/support@example.com")
        .await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (403, Some("Not Authorized to access this resource/api"))
    );
    assert_eq!(body["error"]["errors"][0]["reason"], "forbidden");

    // members.list needs a group scope, as at Google (tests/it/groups.rs covers the 403).
    let admin = env
        .token(
            "admin@example.com",
            &format!("{DIRECTORY_READONLY} https://www.googleapis.com/auth/admin.directory.group.readonly"),
        )
        .await;
    let (status, _, members) = env
        .get(
            &admin,
            "admin/directory/v1/groups/shared-mailboxes@example.com/members?maxResults=1",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(members["members"][0]["email"], SUPPORT);
    let next = members["nextPageToken"].as_str().unwrap();
    let (_, _, rest) = env
        .get(
            &admin,
            &format!(
                "admin/directory/v1/groups/shared-mailboxes@example.com/members?pageToken={next}"
            ),
        )
        .await;
    assert_eq!(rest["members"][0]["email"], "billing@example.com");
    assert!(rest.get("nextPageToken").is_none());
    assert_eq!(
        env.get(&admin, "admin/directory/v1/groups/nope@example.com/members")
            .await
            .0,
        404
    );

    env.control_ok(
        Method::PATCH,
        "users/support@example.com",
        Some(json!({"org_unit": "/Elsewhere", "archived": true})),
    )
    .await;
    let (_, _, moved) = env
        .get(&admin, "admin/directory/v1/users/support@example.com")
        .await;
    assert_eq!(
        (moved["orgUnitPath"].as_str(), moved["archived"].as_bool()),
        (Some("/Elsewhere"), Some(true))
    );
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["requests"]["directory.users.get"]["200"], 3);
    assert_eq!(stats["requests"]["directory.users.get"]["404"], 1);
    assert_eq!(stats["requests"]["directory.members.list"]["200"], 2);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_mailboxes() {
    let a = start(11, 3, 30).await;
    let b = start(11, 3, 30).await;
    let c = start(12, 3, 30).await;
    let truth_a = a.ground_truth(SUPPORT).await;

    assert_eq!(truth_a, b.ground_truth(SUPPORT).await);
    assert_ne!(truth_a, c.ground_truth(SUPPORT).await);
    let (ta, tb) = (
        a.token(SUPPORT, GMAIL_READONLY).await,
        b.token(SUPPORT, GMAIL_READONLY).await,
    );
    for message in truth_a.iter().take(10) {
        let path = format!(
            "gmail/v1/users/me/messages/{}?format=raw",
            message["id"].as_str().unwrap()
        );
        let (ra, rb) = (a.get(&ta, &path).await.2, b.get(&tb, &path).await.2);
        assert_eq!(ra, rb);
        assert!(ra["raw"].as_str().unwrap().len() > 1000);
    }
    let threads: BTreeSet<&str> = truth_a
        .iter()
        .map(|m| m["threadId"].as_str().unwrap())
        .collect();
    assert!(
        threads.len() < truth_a.len(),
        "some generated messages are replies in a thread"
    );
}

#[tokio::test]
async fn control_api_validates_input_and_reset_restores_the_seeded_state() {
    let env = start(1, 3, 5).await;
    let before = env.control_ok(Method::GET, "state", None).await;

    let (status, body) = env.control(Method::POST, "users", Some(json!({"email": "new-box@example.com", "org_unit": "/Shared Mailboxes", "messages": 3}))).await;
    assert_eq!((status, body["message_count"].as_u64()), (201, Some(3)));
    assert_eq!(
        env.control(
            Method::POST,
            "users",
            Some(json!({"email": "new-box@example.com"}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        env.control(
            Method::POST,
            "users",
            Some(json!({"email": "not an email"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        env.control(
            Method::PATCH,
            "users/ghost@example.com",
            Some(json!({"suspended": true}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        env.control(
            Method::PATCH,
            &format!("users/{SUPPORT}"),
            Some(json!({"suspended": "yes"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        env.control(
            Method::PATCH,
            &format!("users/{SUPPORT}"),
            Some(json!({"colour": "red"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        env.control(
            Method::POST,
            &format!("users/{SUPPORT}/messages"),
            Some(json!({"raw": "***"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        env.control(
            Method::POST,
            &format!("users/{SUPPORT}/messages"),
            Some(json!({"raw": raw_message("x", "<x@y.example>", None), "label_ids": ["BOGUS"]}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        env.control(
            Method::DELETE,
            &format!("users/{SUPPORT}/messages/ffffffffffffffff"),
            None
        )
        .await
        .0,
        404
    );
    let (status, body) = env
        .control(Method::PUT, "quota", Some(json!("not an object")))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string());
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    env.get(&token, "gmail/v1/users/me/profile").await;

    env.control_ok(Method::POST, "reset", None).await;

    let after = env.control_ok(Method::GET, "state", None).await;
    assert_eq!(before["users"], after["users"]);
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["requests"], json!({}));
    // Tokens outlive a reset; the mailbox is back to its seeded size.
    let (status, _, profile) = env.get(&token, "gmail/v1/users/me/profile").await;
    assert_eq!((status, profile["messagesTotal"].as_i64()), (200, Some(5)));
}

#[tokio::test]
async fn h2c_clients_are_served() {
    use http_body_util::{BodyExt as _, Empty};
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<axum::body::Bytes>>();
    let request = http::Request::get(env.url("gmail/v1/users/me/profile"))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();

    let response = client.request(request).await.unwrap();

    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let profile: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(profile["emailAddress"], SUPPORT);
}
