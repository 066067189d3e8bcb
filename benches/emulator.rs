//! Emulator benchmark: start-up time and memory for a million generated messages, then
//! `messages.get?format=raw` throughput over 32 keep-alive HTTP/1.1 connections with quota
//! enforcement off and no latency, first one call per request, then 50 calls per
//! `POST /batch/gmail/v1` over the same number of connections. Load generator and emulator share this process (and the
//! machine's cores). Results go to the log (set `RUST_LOG=info`) and to `BENCHMARKS.md`
//! by hand.
//!
//! `cargo bench --bench emulator` (env: `BENCH_USERS`, `BENCH_MESSAGES`, `BENCH_SECONDS`,
//! `BENCH_CONNECTIONS`, `BENCH_BATCH_SIZE`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use gmail_emulator::{Emulator, EmulatorConfig};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::{Value, json};

type Bytes = axum::body::Bytes;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn report(line: &str) {
    tracing::info!("{line}");
    // The one place this benchmark writes results, so they survive without RUST_LOG.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let users = env_or("BENCH_USERS", 10) as usize;
    let messages = env_or("BENCH_MESSAGES", 100_000) as usize;
    let seconds = env_or("BENCH_SECONDS", 10);
    let connections = env_or("BENCH_CONNECTIONS", 32) as usize;
    let batch_size = env_or("BENCH_BATCH_SIZE", 50) as usize;

    let rss_before = rss_kib();
    let started = Instant::now();
    let emulator = Emulator::start(EmulatorConfig {
        users,
        messages,
        ..EmulatorConfig::default()
    })
    .await?;
    let startup = started.elapsed();
    let rss_after = rss_kib();
    report(&format!(
        "startup: {users} users x {messages} messages (+25 for admin) in {:.2} s; RSS {} MiB -> {} MiB (+{} MiB)",
        startup.as_secs_f64(),
        rss_before / 1024,
        rss_after / 1024,
        (rss_after - rss_before) / 1024
    ));

    let dir = tempfile::tempdir()?;
    let info = emulator.write_service_account_key(&dir.path().join("sa.json"))?;
    let key: Value = serde_json::from_slice(&std::fs::read(&info.key_path)?)?;
    let private_key =
        rsa::RsaPrivateKey::from_pkcs8_pem(key["private_key"].as_str().unwrap_or_default())?;
    let mailbox = "support@example.com";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({"iss": info.client_email, "aud": emulator.token_url(), "sub": mailbox,
        "scope": "https://www.googleapis.com/auth/gmail.readonly", "iat": now, "exp": now + 3600});
    let signed = format!(
        "{}.{}",
        BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        BASE64_URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let signature =
        rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private_key).sign(signed.as_bytes());
    let assertion = format!(
        "{signed}.{}",
        BASE64_URL_SAFE_NO_PAD.encode(signature.to_bytes())
    );
    let http = reqwest::Client::new();
    let token: Value = http
        .post(emulator.token_url())
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    http.put(format!("{}emulator/v1/quota", emulator.base_url()))
        .json(&json!({"enforce": false}))
        .send()
        .await?
        .error_for_status()?;

    // Pick messages of about 10 KB (8-12 KB raw).
    let truth: Value = http
        .get(format!(
            "{}emulator/v1/users/{mailbox}/messages",
            emulator.base_url()
        ))
        .send()
        .await?
        .json()
        .await?;
    let mut picked = Vec::new();
    for message in truth["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .take(2000)
    {
        let id = message["id"].as_str().unwrap_or_default();
        let minimal: Value = http
            .get(format!(
                "{}gmail/v1/users/me/messages/{id}?format=minimal",
                emulator.base_url()
            ))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let size = minimal["sizeEstimate"].as_u64().unwrap_or_default();
        if (8_000..=12_000).contains(&size) {
            picked.push((id.to_owned(), size));
        }
        if picked.len() == 64 {
            break;
        }
    }
    anyhow::ensure!(!picked.is_empty(), "no message of about 10 KB found");
    let mean_size = picked.iter().map(|(_, s)| s).sum::<u64>() / picked.len() as u64;
    let urls: Arc<Vec<String>> = Arc::new(
        picked
            .iter()
            .map(|(id, _)| {
                format!(
                    "{}gmail/v1/users/me/messages/{id}?format=raw",
                    emulator.base_url()
                )
            })
            .collect(),
    );

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let body_bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let bench_started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (urls, done, failed, body_bytes, token) = (
            urls.clone(),
            done.clone(),
            failed.clone(),
            body_bytes.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // One client per worker: one keep-alive connection each.
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http::<Empty<Bytes>>();
            let mut n = worker;
            while Instant::now() < deadline {
                let request = http::Request::get(&urls[n % urls.len()])
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::new())
                    .expect("valid request");
                n += 1;
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        match response.into_body().collect().await {
                            Ok(body) => {
                                body_bytes
                                    .fetch_add(body.to_bytes().len() as u64, Ordering::Relaxed);
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = bench_started.elapsed().as_secs_f64();
    let ok = done.load(Ordering::Relaxed);
    report(&format!(
        "messages.get format=raw: {ok} ok, {} failed in {elapsed:.1} s over {connections} connections = {:.0} req/s, {:.1} MB/s of JSON (mean raw size {mean_size} B); RSS now {} MiB",
        failed.load(Ordering::Relaxed),
        ok as f64 / elapsed,
        body_bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6,
        rss_kib() / 1024
    ));
    let ids: Vec<String> = picked.iter().map(|(id, _)| id.clone()).collect();
    batch_phase(
        &emulator.base_url(),
        &token,
        &ids,
        batch_size,
        connections,
        seconds,
    )
    .await?;
    emulator.shutdown().await;
    Ok(())
}

/// A batch body of `size` raw gets, starting at `offset` in `ids`, as Google's Python client
/// writes it (LF line ends, `Content-ID: <base + n>`).
fn batch_body(ids: &[String], offset: usize, size: usize, token: &str) -> String {
    let mut body = String::new();
    for n in 0..size {
        let id = &ids[(offset + n) % ids.len()];
        body.push_str(&format!(
            "--{BOUNDARY}\nContent-Type: application/http\nContent-ID: <bench + {n}>\n\nGET /gmail/v1/users/me/messages/{id}?format=raw HTTP/1.1\nauthorization: Bearer {token}\n\n\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\n"));
    body
}

const BOUNDARY: &str = "===============0123456789==";

/// `size` messages per `POST /batch/gmail/v1`, `connections` workers, for `seconds`.
async fn batch_phase(
    base_url: &str,
    token: &str,
    ids: &[String],
    size: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..ids.len())
            .map(|offset| Bytes::from(batch_body(ids, offset, size, token)))
            .collect(),
    );
    let url = format!("{base_url}batch/gmail/v1");
    let batches = Arc::new(AtomicU64::new(0));
    let inner_ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let body_bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (bodies, url, batches, inner_ok, failed, body_bytes) = (
            bodies.clone(),
            url.clone(),
            batches.clone(),
            inner_ok.clone(),
            failed.clone(),
            body_bytes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http::<Full<Bytes>>();
            let mut n = worker;
            while Instant::now() < deadline {
                let request = http::Request::post(&url)
                    .header(
                        "content-type",
                        format!("multipart/mixed; boundary=\"{BOUNDARY}\""),
                    )
                    .body(Full::new(bodies[n % bodies.len()].clone()))
                    .expect("valid request");
                n += 1;
                let answer = match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        response.into_body().collect().await.ok()
                    }
                    _ => None,
                };
                let Some(answer) = answer else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let bytes = answer.to_bytes();
                let ok = String::from_utf8_lossy(&bytes)
                    .matches("\r\n\r\nHTTP/1.1 200 OK\r\n")
                    .count() as u64;
                body_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                inner_ok.fetch_add(ok, Ordering::Relaxed);
                batches.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = inner_ok.load(Ordering::Relaxed);
    let answered = batches.load(Ordering::Relaxed);
    report(&format!(
        "batch of {size} x messages.get format=raw: {answered} batches ({ok} inner 200s, {} inner non-200, {} batches failed) in {elapsed:.1} s over {connections} connections = {:.0} messages/s, {:.1} batches/s, {:.1} MB/s of multipart; RSS now {} MiB",
        answered * size as u64 - ok,
        failed.load(Ordering::Relaxed),
        ok as f64 / elapsed,
        answered as f64 / elapsed,
        body_bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6,
        rss_kib() / 1024
    ));
    Ok(())
}
