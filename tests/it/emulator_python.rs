//! An unmodified official client against the emulator: google-api-python-client
//! downloads a 1,000-message mailbox in batches of 50 (`tests/python/batch_download.py`),
//! the pattern of Google's own samples and of common backup tools.
//!
//! The interpreter is `GMAIL_INGEST_PYTHON` (else `python3`) and must import
//! `googleapiclient` and `google.oauth2`; `.ci/run` installs them in a venv. Without
//! them these tests say so and pass, unless `GMAIL_INGEST_REQUIRE_PYTHON_CLIENT=1`
//! (set by CI) turns that into a failure, as `GMAIL_INGEST_REQUIRE_POSTGRES` does.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::emulator_helpers::{TestEmulator, start};

const SUPPORT: &str = "support@example.com";

fn python() -> Option<String> {
    let python = std::env::var("GMAIL_INGEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let usable = Command::new(&python)
        .args([
            "-c",
            "import googleapiclient.discovery, google.oauth2.service_account",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if usable {
        return Some(python);
    }
    let why = format!(
        "{python} cannot import googleapiclient and google.oauth2 \
         (pip install google-api-python-client google-auth, or set GMAIL_INGEST_PYTHON)"
    );
    if std::env::var("GMAIL_INGEST_REQUIRE_PYTHON_CLIENT").as_deref() == Ok("1") {
        panic!("GMAIL_INGEST_REQUIRE_PYTHON_CLIENT=1 but {why}");
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("Python client not available: this test did not run: {why}");
    }
    None
}

/// Runs the download script against `env` and returns what it printed.
async fn download(python: &str, env: &TestEmulator) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/batch_download.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .arg(env.emulator.base_url())
        .arg(&env.info.key_path)
        .arg(SUPPORT);
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), command.output())
        .await
        .expect("the Python client finishes within 5 minutes")
        .expect("the Python client starts");
    assert!(
        out.status.success(),
        "the Python client failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_python_client_downloads_a_mailbox_in_batches_of_50_charged_as_single_gets() {
    let Some(python) = python() else { return };
    // Arrange: 1,000 messages, quota enforcement off.
    let env = start(11, 3, 1_000).await;
    env.control_ok(Method::PUT, "quota", Some(json!({"enforce": false})))
        .await;
    let before = env.control_ok(Method::GET, "stats", None).await;

    // Act
    let result = download(&python, &env).await;

    // Assert: every listed message arrived once, and the batches cost what single gets cost.
    let listed = ids(&result["listed"]);
    let fetched = ids(&result["fetched"]);
    assert_eq!(result["errors"], json!({}), "{result}");
    assert!(listed.len() > 900, "listed {} of 1,000", listed.len());
    assert_eq!(
        fetched.iter().collect::<BTreeSet<_>>(),
        listed.iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(fetched.len(), listed.len(), "a message was fetched twice");
    let after = env.control_ok(Method::GET, "stats", None).await;
    let gets = |s: &Value| {
        s["requests"]["gmail.users.messages.get"]["200"]
            .as_u64()
            .unwrap_or(0)
    };
    let lists = |s: &Value| {
        s["requests"]["gmail.users.messages.list"]["200"]
            .as_u64()
            .unwrap_or(0)
    };
    let units = |s: &Value| s["quota_units"][SUPPORT].as_u64().unwrap_or(0);
    assert_eq!(gets(&after) - gets(&before), listed.len() as u64);
    assert_eq!(
        units(&after) - units(&before),
        20 * listed.len() as u64 + 5 * (lists(&after) - lists(&before)),
        "each inner messages.get is charged 20 units, each messages.list 5"
    );
}

#[tokio::test]
async fn under_the_enforced_2026_quota_the_python_client_gets_gmails_rate_limit_answers() {
    let Some(python) = python() else { return };
    // Arrange: 2026's per-user ceiling, 6,000 units a minute = 300 messages.get.
    let env = start(12, 3, 1_000).await;
    env.control_ok(
        Method::PUT,
        "quota",
        Some(json!({"enforce": true, "user_units_per_minute": 6000})),
    )
    .await;

    // Act: a client that does not pace itself.
    let result = download(&python, &env).await;

    // Assert: what fits the minute arrives; every other inner call is Gmail's per-user 403.
    let listed = ids(&result["listed"]);
    let fetched = ids(&result["fetched"]);
    assert!(listed.len() > 900, "listed {} of 1,000", listed.len());
    assert!(
        !fetched.is_empty() && fetched.len() <= 300,
        "fetched {} under a 6,000-unit minute",
        fetched.len()
    );
    let errors = result["errors"].as_object().unwrap();
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        ["403 userRateLimitExceeded"],
        "{result}"
    );
    assert_eq!(
        fetched.len() as u64 + errors["403 userRateLimitExceeded"].as_u64().unwrap(),
        listed.len() as u64,
        "every inner call got an answer of its own"
    );
}
