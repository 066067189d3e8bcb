//! Gmail push in the integration tests: the emulator's topic, grants and pull
//! subscription, and the `[push]` settings that point the daemon at them.

use std::time::Duration;

use gmail_ingest::config::Settings;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::World;

/// The emulator's one project is `emulator-project`.
pub(crate) const TOPIC: &str = "projects/emulator-project/topics/gmail";
pub(crate) const SUBSCRIPTION: &str = "projects/emulator-project/subscriptions/ingest";
pub(crate) const GMAIL_PUSH: &str = "serviceAccount:gmail-api-push@system.gserviceaccount.com";

/// Turns push on against the emulator (call from `world_with`'s tweak, which
/// runs after the emulator's URLs are in the settings). Polls are made rare
/// so that a test sees what push alone does.
pub(crate) fn push_on(s: &mut Settings) {
    s.push.enabled = true;
    s.push.topic = TOPIC.to_owned();
    s.push.subscription = SUBSCRIPTION.to_owned();
    s.push.pubsub_base_url = s.google.gmail_base_url.clone();
    s.push.fallback_poll_interval = Duration::from_secs(3600);
}

impl World {
    /// What an admin sets up: the topic, publish granted to Gmail's push
    /// account, a pull subscription, and subscribe granted to our service
    /// account. `ack_deadline_seconds` is the subscription's (10–600).
    pub(crate) async fn set_up_pubsub(&self, ack_deadline_seconds: u64) {
        self.control(Method::PUT, &format!("pubsub/{TOPIC}"), None)
            .await;
        self.grant_gmail_publish(true).await;
        self.control(
            Method::PUT,
            &format!("pubsub/{SUBSCRIPTION}"),
            Some(json!({"topic": TOPIC, "ack_deadline_seconds": ack_deadline_seconds})),
        )
        .await;
        let me = format!("serviceAccount:{}", self.service_account_email());
        self.control(
            Method::PUT,
            &format!("pubsub/{SUBSCRIPTION}/subscribers/{me}"),
            None,
        )
        .await;
    }

    /// Grants (or revokes) publish on the topic to Gmail's push account.
    pub(crate) async fn grant_gmail_publish(&self, on: bool) {
        let m = if on { Method::PUT } else { Method::DELETE };
        self.control(m, &format!("pubsub/{TOPIC}/publishers/{GMAIL_PUSH}"), None)
            .await;
    }

    /// The emulator's Pub/Sub state: topics, subscriptions, watches, stats.
    pub(crate) async fn pubsub(&self) -> Value {
        self.control(Method::GET, "pubsub", None).await
    }

    /// The emulator's live watch on `email`, if any.
    pub(crate) async fn watch_of(&self, email: &str) -> Option<Value> {
        self.pubsub().await["watches"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["email"] == email && w["live"] == true)
            .cloned()
    }

    pub(crate) fn service_account_email(&self) -> String {
        let key: Value = serde_json::from_slice(
            &std::fs::read(&self.settings.google.service_account_key_file).expect("key file"),
        )
        .expect("key json");
        key["client_email"]
            .as_str()
            .expect("client_email")
            .to_owned()
    }
}
