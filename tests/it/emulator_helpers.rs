//! Helpers for driving the emulator with the real clients and with raw HTTP.

use std::path::Path;

use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use gmail_emulator::{Emulator, EmulatorConfig, ServiceAccountInfo};
use google_gmail1::Gmail;
use google_gmail1::hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use google_gmail1::hyper_util::client::legacy::Client;
use google_gmail1::hyper_util::client::legacy::connect::HttpConnector;
use google_gmail1::hyper_util::rt::TokioExecutor;
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use serde_json::{Value, json};

pub(crate) const GMAIL_READONLY: &str = "https://www.googleapis.com/auth/gmail.readonly";
pub(crate) const GMAIL_METADATA: &str = "https://www.googleapis.com/auth/gmail.metadata";
pub(crate) const DIRECTORY_READONLY: &str =
    "https://www.googleapis.com/auth/admin.directory.user.readonly";

pub(crate) type Hub = Gmail<HttpsConnector<HttpConnector>>;

/// A running emulator with a registered service-account key.
pub(crate) struct TestEmulator {
    pub(crate) emulator: Emulator,
    pub(crate) info: ServiceAccountInfo,
    pub(crate) private_key_pem: String,
    pub(crate) http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start(seed: u64, users: usize, messages: usize) -> TestEmulator {
    let emulator = Emulator::start(EmulatorConfig {
        seed,
        users,
        messages,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let info = emulator
        .write_service_account_key(&dir.path().join("sa.json"))
        .expect("key written");
    let key: Value = serde_json::from_slice(&std::fs::read(&info.key_path).unwrap()).unwrap();
    TestEmulator {
        private_key_pem: key["private_key"].as_str().unwrap().to_owned(),
        emulator,
        info,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TestEmulator {
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.emulator.base_url(),
            path.trim_start_matches('/')
        )
    }

    /// A JWT assertion signed with the registered key (or a tampered one).
    pub(crate) fn assertion(&self, claims: &Value) -> String {
        let key = RsaPrivateKey::from_pkcs8_pem(&self.private_key_pem).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
        let header = BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let body = BASE64_URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let signed = format!("{header}.{body}");
        let signature = signer.sign(signed.as_bytes()).to_bytes();
        format!("{signed}.{}", BASE64_URL_SAFE_NO_PAD.encode(signature))
    }

    pub(crate) fn claims(&self, sub: &str, scope: &str) -> Value {
        let now = unix_now();
        json!({"iss": self.info.client_email, "aud": self.emulator.token_url(), "scope": scope, "sub": sub, "iat": now, "exp": now + 3600})
    }

    /// POSTs an assertion to `/token`: `(status, body)`.
    pub(crate) async fn exchange(&self, assertion: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.emulator.token_url())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion),
            ])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// An access token for `sub` with `scope`, obtained by a signed JWT.
    pub(crate) async fn token(&self, sub: &str, scope: &str) -> String {
        let (status, body) = self
            .exchange(&self.assertion(&self.claims(sub, scope)))
            .await;
        assert_eq!(status, 200, "token refused: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// GET with a bearer token: `(status, headers, body)`.
    pub(crate) async fn get(
        &self,
        token: &str,
        path: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    pub(crate) async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(
            method,
            self.url(&format!("emulator/v1/{}", path.trim_start_matches('/'))),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    pub(crate) async fn control_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let (status, value) = self.control(method, path, body).await;
        assert_eq!(status, 200, "control call {path} failed: {value}");
        value
    }

    pub(crate) async fn ground_truth(&self, email: &str) -> Vec<Value> {
        let value = self
            .control_ok(
                reqwest::Method::GET,
                &format!("users/{email}/messages"),
                None,
            )
            .await;
        value["messages"].as_array().unwrap().clone()
    }

    /// The google-gmail1 hub authenticated by yup-oauth2 as `mailbox`.
    pub(crate) async fn hub(&self, mailbox: &str) -> Hub {
        hub_with_key(&self.info.key_path, mailbox, &self.emulator.base_url()).await
    }
}

pub(crate) async fn hub_with_key(key_path: &Path, mailbox: &str, base_url: &str) -> Hub {
    let key = yup_oauth2::read_service_account_key(key_path)
        .await
        .unwrap();
    let auth = yup_oauth2::ServiceAccountAuthenticator::builder(key)
        .subject(mailbox)
        .build()
        .await
        .unwrap();
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let mut hub = Gmail::new(client, auth);
    hub.base_url(base_url.to_owned());
    hub.root_url(base_url.to_owned());
    hub
}

/// Google's JSON error carried by a hub error: `(code, reason, message)`.
pub(crate) fn google_error(error: &google_gmail1::Error) -> (i64, String, String) {
    match error {
        google_gmail1::Error::BadRequest(value) => (
            value["error"]["code"].as_i64().unwrap_or_default(),
            value["error"]["errors"][0]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            value["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        other => panic!("expected a Google JSON error, got {other:?}"),
    }
}

pub(crate) fn raw_message(subject: &str, message_id: &str, in_reply_to: Option<&str>) -> String {
    let mut text = format!(
        "From: Someone <someone@outside.example.net>\r\nTo: support@example.com\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
    );
    if let Some(parent) = in_reply_to {
        text.push_str(&format!(
            "In-Reply-To: {parent}\r\nReferences: {parent}\r\n"
        ));
    }
    text.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\nA new message body for the history tests.\r\n");
    BASE64_URL_SAFE_NO_PAD.encode(text)
}
