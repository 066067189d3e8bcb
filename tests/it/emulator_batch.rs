//! The emulator's batch endpoint, driven with request bodies written exactly as
//! google-api-python-client's `BatchHttpRequest` writes them (LF-only lines, a quoted
//! `===…==` boundary, `Content-ID: <uuid + n>`, the credentials on each inner request) and
//! answers parsed with a maintained multipart parser (multer), then split the way that client
//! splits each part (status line, headers up to the first CRLF CRLF, JSON body).

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::emulator_helpers::{GMAIL_READONLY, TestEmulator, start};

const SUPPORT: &str = "support@example.com";

/// The `boundary` Python's email generator picks: fifteen `=`, nineteen digits, `==`.
const PY_BOUNDARY: &str = "===============7330845974216740156==";

/// One inner call: the path with its query, and the bearer token it carries (none: the
/// outer request's applies).
struct Call {
    target: String,
    token: Option<String>,
}

fn call(target: impl Into<String>, token: Option<&str>) -> Call {
    Call {
        target: target.into(),
        token: token.map(str::to_owned),
    }
}

/// The body `BatchHttpRequest.execute` sends: for each request a `MIMENonMultipart`
/// `application/http` part whose payload is `_serialize_request`'s text, the multipart's own
/// headers suppressed, flattened by `email.generator.Generator` (LF line ends).
fn python_batch_body(base_id: &str, calls: &[Call]) -> String {
    let mut out = String::new();
    for (n, call) in calls.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        out.push_str(&format!("--{PY_BOUNDARY}\n"));
        out.push_str("Content-Type: application/http\nMIME-Version: 1.0\n");
        out.push_str("Content-Transfer-Encoding: binary\n");
        out.push_str(&format!("Content-ID: <{base_id} + {}>\n\n", n + 1));
        // The Python client adds `alt=json` to every request it builds.
        let sep = if call.target.contains('?') { '&' } else { '?' };
        out.push_str(&format!("GET {}{sep}alt=json HTTP/1.1\n", call.target));
        out.push_str("Content-Type: application/json\nMIME-Version: 1.0\n");
        out.push_str("accept: application/json\naccept-encoding: gzip, deflate\n");
        out.push_str("user-agent: (gzip)\nx-goog-api-client: gdcl/2.187.0 gl-python/3.12.3\n");
        if let Some(token) = &call.token {
            out.push_str(&format!("authorization: Bearer {token}\n"));
        }
        out.push_str("Host: gmail.googleapis.com\n\n");
    }
    out.push_str(&format!("\n--{PY_BOUNDARY}--"));
    out
}

/// One part of the answer, as the Python client reads it.
#[derive(Debug)]
struct Answer {
    content_id: Option<String>,
    status: u16,
    headers: BTreeMap<String, String>,
    body: Value,
}

/// POSTs a batch: `(outer status, outer body or parts)`.
async fn send_batch(
    env: &TestEmulator,
    path: &str,
    content_type: &str,
    outer_token: Option<&str>,
    body: String,
) -> (u16, Result<Vec<Answer>, Value>) {
    let mut request = env
        .http
        .post(env.url(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = outer_token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.bytes().await.unwrap().to_vec();
    if !content_type.starts_with("multipart/mixed") {
        return (status, Err(serde_json::from_slice(&bytes).unwrap()));
    }
    (status, Ok(parse_answer(&content_type, bytes).await))
}

/// POSTs `calls` to `/batch/gmail/v1` exactly as google-api-python-client
/// sends a batch.
async fn python_batch(
    env: &TestEmulator,
    outer_token: Option<&str>,
    base_id: &str,
    calls: &[Call],
) -> (u16, Result<Vec<Answer>, Value>) {
    send_batch(
        env,
        "batch/gmail/v1",
        &python_content_type(),
        outer_token,
        python_batch_body(base_id, calls),
    )
    .await
}

async fn parse_answer(content_type: &str, body: Vec<u8>) -> Vec<Answer> {
    let boundary = content_type
        .split_once("boundary=")
        .expect("a boundary")
        .1
        .trim_matches('"')
        .to_owned();
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut answers = Vec::new();
    while let Some(field) = multipart.next_field().await.unwrap() {
        assert_eq!(field.headers()["content-type"], "application/http");
        let content_id = field
            .headers()
            .get("content-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let payload = String::from_utf8(field.bytes().await.unwrap().to_vec()).unwrap();
        // `_deserialize_response`: the status line splits in three (a reason is required),
        // and the body starts after the first CRLF CRLF.
        let (status_line, rest) = payload.split_once('\n').unwrap();
        let words: Vec<&str> = status_line.trim_end().splitn(3, ' ').collect();
        assert_eq!(words.len(), 3, "status line {status_line:?}");
        assert_eq!(words[0], "HTTP/1.1");
        let (head, body) = rest
            .split_once("\r\n\r\n")
            .expect("CRLF CRLF before the body");
        let headers = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect::<BTreeMap<_, _>>();
        answers.push(Answer {
            content_id,
            status: words[1].parse().unwrap(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            headers,
        });
    }
    answers
}

fn python_content_type() -> String {
    format!("multipart/mixed; boundary=\"{PY_BOUNDARY}\"")
}

async fn message_ids(env: &TestEmulator, n: usize) -> Vec<String> {
    env.ground_truth(SUPPORT)
        .await
        .iter()
        .take(n)
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn fifty_raw_gets_in_one_batch_equal_fifty_single_gets() {
    let env = start(3, 3, 60).await;
    env.control_ok(Method::PUT, "quota", Some(json!({"enforce": false})))
        .await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let ids = message_ids(&env, 50).await;
    let before = env.control_ok(Method::GET, "stats", None).await;

    let mut singles = Vec::new();
    for id in &ids {
        let (status, _, body) = env
            .get(
                &token,
                &format!("gmail/v1/users/me/messages/{id}?format=raw"),
            )
            .await;
        assert_eq!(status, 200);
        singles.push(body);
    }
    let after_singles = env.control_ok(Method::GET, "stats", None).await;

    let base_id = uuid::Uuid::new_v4().to_string();
    let calls: Vec<Call> = ids
        .iter()
        .map(|id| {
            call(
                format!("/gmail/v1/users/me/messages/{id}?format=raw"),
                Some(&token),
            )
        })
        .collect();
    let (status, answers) = python_batch(&env, Some(&token), &base_id, &calls).await;
    let answers = answers.unwrap();
    assert_eq!(status, 200);
    assert_eq!(answers.len(), 50);
    for (n, (answer, single)) in answers.iter().zip(&singles).enumerate() {
        assert_eq!(
            answer.content_id.as_deref(),
            Some(format!("<response-{base_id} + {}>", n + 1).as_str())
        );
        assert_eq!(answer.status, 200);
        assert!(answer.headers["content-type"].starts_with("application/json"));
        assert_eq!(&answer.body, single, "part {n} differs from its single get");
    }
    let after_batch = env.control_ok(Method::GET, "stats", None).await;
    let units = |s: &Value| s["quota_units"][SUPPORT].as_u64().unwrap_or(0);
    let gets = |s: &Value| s["requests"]["gmail.users.messages.get"]["200"].as_u64();
    assert_eq!(units(&after_singles) - units(&before), 50 * 20);
    assert_eq!(
        units(&after_batch) - units(&after_singles),
        units(&after_singles) - units(&before),
        "a batch is charged as its calls sent alone"
    );
    assert_eq!(gets(&after_singles), Some(50));
    assert_eq!(gets(&after_batch), Some(100));
    assert_eq!(
        after_batch["requests_by_user"][SUPPORT]["gmail.users.messages.get"],
        100
    );
}

#[tokio::test]
async fn crlf_bodies_unquoted_boundaries_and_the_short_path_are_accepted() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let body = "preamble\r\n--batch_foobarbaz\r\nContent-Type: application/http\r\nContent-ID: <item1:12930812@barnyard.example.com>\r\n\r\nGET /gmail/v1/users/me/profile HTTP/1.1\r\n\r\n\r\n--batch_foobarbaz\r\nContent-Type: application/http\r\n\r\nGET https://gmail.googleapis.com/gmail/v1/users/me/labels HTTP/1.1\r\n\r\n\r\n--batch_foobarbaz--\r\n";
    for path in ["batch", "batch/gmail/v1"] {
        let (status, answers) = send_batch(
            &env,
            path,
            "multipart/mixed; boundary=batch_foobarbaz",
            Some(&token),
            body.to_owned(),
        )
        .await;
        let answers = answers.unwrap();
        assert_eq!(status, 200);
        assert_eq!(answers.len(), 2);
        assert_eq!(
            answers[0].content_id.as_deref(),
            Some("<response-item1:12930812@barnyard.example.com>")
        );
        assert_eq!(answers[0].status, 200);
        assert_eq!(answers[0].body["emailAddress"], SUPPORT);
        assert_eq!(answers[1].content_id, None);
        assert_eq!(answers[1].status, 200);
        assert!(answers[1].body["labels"].as_array().unwrap().len() > 3);
    }
}

#[tokio::test]
async fn a_batch_of_101_calls_is_refused_whole() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let calls: Vec<Call> = (0..101)
        .map(|_| call("/gmail/v1/users/me/profile", Some(&token)))
        .collect();
    let (status, answer) = python_batch(&env, Some(&token), "b1", &calls).await;
    assert_eq!(status, 400);
    let error = answer.unwrap_err();
    assert_eq!(error["error"]["code"], 400);
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert!(stats["requests"].get("gmail.users.getProfile").is_none());

    // A hundred is the limit, not beyond it.
    let (status, answers) = python_batch(&env, Some(&token), "b2", &calls[..100]).await;
    assert_eq!(status, 200);
    assert_eq!(answers.unwrap().len(), 100);
}

#[tokio::test]
async fn a_batch_without_a_boundary_is_googles_400_and_runs_nothing() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let calls = [call("/gmail/v1/users/me/profile", Some(&token))];
    let (status, answer) = send_batch(
        &env,
        "batch/gmail/v1",
        "multipart/mixed",
        Some(&token),
        python_batch_body("nb", &calls),
    )
    .await;
    assert_eq!(status, 400);
    let error = answer.unwrap_err();
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        error["error"]["message"],
        "Invalid multipart request with 0 mime parts."
    );
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert!(stats["requests"].get("gmail.users.getProfile").is_none());
}

#[tokio::test]
async fn an_inner_401_sits_beside_successful_calls() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let profile = "/gmail/v1/users/me/profile";
    let calls = [
        call(profile, Some(&token)),
        call(profile, Some("ya29.not-a-token")),
        // No inner Authorization: the outer one applies.
        call(profile, None),
        call(profile, Some(&token)),
    ];
    let (status, answers) = python_batch(&env, Some(&token), "x", &calls).await;
    assert_eq!(status, 200);
    let answers = answers.unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 401, 200, 200]);
    assert_eq!(answers[1].body["error"]["code"], 401);
    assert_eq!(answers[1].body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(answers[1].content_id.as_deref(), Some("<response-x + 2>"));

    // Without an outer token, a part without its own is unauthenticated.
    let (status, answers) = python_batch(&env, None, "y", &calls).await;
    assert_eq!(status, 200);
    let statuses: Vec<u16> = answers.unwrap().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 401, 401, 200]);
}

#[tokio::test]
async fn inner_calls_meet_the_enforced_quota_and_concurrency_cap() {
    let env = start(1, 3, 30).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    let ids = message_ids(&env, 15).await;
    // Ten messages.get (20 units each) fit in a minute, the other five do not.
    env.control_ok(
        Method::PUT,
        "quota",
        Some(json!({"user_units_per_minute": 200, "enforce": true})),
    )
    .await;
    let calls: Vec<Call> = ids
        .iter()
        .map(|id| call(format!("/gmail/v1/users/me/messages/{id}"), Some(&token)))
        .collect();
    let (status, answers) = python_batch(&env, None, "q", &calls).await;
    assert_eq!(status, 200);
    let answers = answers.unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [[200; 10].as_slice(), &[403; 5]].concat());
    let limited = &answers[14];
    assert_eq!(
        limited.body["error"]["errors"][0]["reason"],
        "userRateLimitExceeded"
    );
    assert!(limited.headers.contains_key("retry-after"));
    let stats = env.control_ok(Method::GET, "stats", None).await;
    assert_eq!(stats["quota_units"][SUPPORT], 200);
    assert_eq!(stats["requests"]["gmail.users.messages.get"]["403"], 5);

    // Inner calls run together: with latency, only the cap's worth of them is admitted.
    env.emulator
        .advance_clock(std::time::Duration::from_secs(61));
    env.control_ok(
        Method::PUT,
        "quota",
        Some(json!({"user_units_per_minute": 6000, "max_concurrent_per_user": 3})),
    )
    .await;
    env.control_ok(
        Method::PUT,
        "faults",
        Some(json!({"latency_ms": [100, 100]})),
    )
    .await;
    let calls: Vec<Call> = (0..8)
        .map(|_| call("/gmail/v1/users/me/profile", Some(&token)))
        .collect();
    let (status, answers) = python_batch(&env, None, "c", &calls).await;
    assert_eq!(status, 200);
    let answers = answers.unwrap();
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(
        refused.body["error"]["message"],
        "Too many concurrent requests for user"
    );
}

#[tokio::test]
async fn injected_faults_hit_each_inner_call() {
    let env = start(1, 3, 5).await;
    let token = env.token(SUPPORT, GMAIL_READONLY).await;
    env.control_ok(
        Method::PUT,
        "faults",
        Some(json!({"error_rate": 1.0, "seed": 7})),
    )
    .await;
    let calls: Vec<Call> = (0..10)
        .map(|_| call("/gmail/v1/users/me/profile", Some(&token)))
        .collect();
    let (status, answers) = python_batch(&env, None, "f", &calls).await;
    assert_eq!(status, 200, "the batch itself is never faulted");
    let answers = answers.unwrap();
    assert_eq!(answers.len(), 10);
    for answer in &answers {
        assert!(matches!(answer.status, 500 | 503), "{answer:?}");
        assert_eq!(answer.body["error"]["errors"][0]["reason"], "backendError");
    }
    let stats = env.control_ok(Method::GET, "stats", None).await;
    let injected: u64 = stats["faults_injected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(injected, 10);

    // A dropped connection cannot be one part of an answer: the whole exchange is lost.
    env.control_ok(Method::PUT, "faults", Some(json!({"reset_rate": 1.0})))
        .await;
    let error = env
        .http
        .post(env.url("batch/gmail/v1"))
        .header("content-type", python_content_type())
        .body(python_batch_body("r", &calls[..2]))
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "{error}");
}
