//! Cloud Pub/Sub, pulled as the service account itself (never impersonating
//! a mailbox): the subscription Gmail push publishes to, and the `check` of
//! what the admin set up.
//!
//! [`PubSub`] wraps google-pubsub1's `Pubsub` hub over the same connector as
//! Gmail, with the service account's own token (no `sub`; the Pub/Sub scope,
//! requested explicitly on every call). Every call runs inside the one retry
//! loop and is classified by `google::error`. A pulled message is decoded
//! here into a [`Notification`] or refused as malformed (never a panic).
//! Nothing here touches the database or decides what a notification does.

use std::sync::Arc;

use google_pubsub1::Pubsub;
use google_pubsub1::api::{
    AcknowledgeRequest, ModifyAckDeadlineRequest, PullRequest, TestIamPermissionsRequest,
};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::Google;
use super::auth::{Connector, HubAuth};
use super::error::{ErrorClass, GoogleError, classify_pubsub_error};
use super::gmail::Capture;
use super::retry::call_with_retry;
use crate::config::PushSettings;
use crate::domain::{HistoryId, MailboxAddress};
use crate::events;

pub const PUBSUB_URL: &str = "https://pubsub.googleapis.com/";
/// The one scope every Pub/Sub call asks for.
pub const PUBSUB_SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
/// The account Gmail publishes notifications as.
pub const GMAIL_PUSH_MEMBER: &str = "serviceAccount:gmail-api-push@system.gserviceaccount.com";
pub const PUBLISHER_ROLE: &str = "roles/pubsub.publisher";
/// The permission pulling and acknowledging need (`roles/pubsub.subscriber`).
pub const CONSUME_PERMISSION: &str = "pubsub.subscriptions.consume";

const PULL: &str = "pubsub.projects.subscriptions.pull";
const ACKNOWLEDGE: &str = "pubsub.projects.subscriptions.acknowledge";
const MODIFY_ACK_DEADLINE: &str = "pubsub.projects.subscriptions.modifyAckDeadline";
const SUBSCRIPTION_GET: &str = "pubsub.projects.subscriptions.get";
const SUBSCRIPTION_TEST: &str = "pubsub.projects.subscriptions.testIamPermissions";
const TOPIC_GET: &str = "pubsub.projects.topics.get";
const TOPIC_POLICY: &str = "pubsub.projects.topics.getIamPolicy";

/// What a Gmail push notification says: this mailbox changed, up to this
/// history position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub mailbox: MailboxAddress,
    pub history_id: HistoryId,
}

impl Notification {
    /// Decodes a message's data (already base64-decoded): JSON
    /// `{"emailAddress", "historyId"}`, the history id a number or a decimal
    /// string. Anything else is malformed, said in one line that quotes none
    /// of the data.
    pub fn decode(data: &[u8]) -> Result<Notification, String> {
        let v: Value = serde_json::from_slice(data).map_err(|e| {
            format!(
                "not JSON (line {}, column {}, {} bytes)",
                e.line(),
                e.column(),
                data.len()
            )
        })?;
        let email = v
            .get("emailAddress")
            .and_then(Value::as_str)
            .ok_or("no emailAddress string")?;
        let mailbox =
            MailboxAddress::parse(email).map_err(|e| format!("emailAddress is invalid: {e}"))?;
        let history_id = match v.get("historyId") {
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or("historyId is not a positive integer")
                .and_then(|h| HistoryId::new(h).map_err(|_| "historyId is out of range"))?,
            Some(Value::String(s)) => {
                HistoryId::parse(s).map_err(|e| format!("historyId is invalid: {e}"))?
            }
            _ => return Err("no historyId".to_owned()),
        };
        Ok(Notification {
            mailbox,
            history_id,
        })
    }
}

/// One pulled message: its ack ID, and its notification or why it is not one.
#[derive(Debug, Clone)]
pub struct Received {
    pub ack_id: String,
    pub notification: Result<Notification, String>,
}

/// One line of `check`'s report about Pub/Sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub ok: bool,
    pub text: String,
}

impl CheckLine {
    fn ok(text: String) -> CheckLine {
        CheckLine { ok: true, text }
    }

    fn fail(text: String) -> CheckLine {
        CheckLine { ok: false, text }
    }
}

/// The replica's Pub/Sub client: the subscription it pulls, the topic Gmail
/// publishes to, and the hub (built on first use).
pub struct PubSub {
    google: Arc<Google>,
    topic: String,
    subscription: String,
    base_url: String,
    hub: OnceCell<Arc<Pubsub<Connector>>>,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// One Pub/Sub request: the scope added explicitly, the status and
/// `Retry-After` captured for [`classify_pubsub_error`], the answer mapped
/// by `$ok`; what [`PubSub::call`]'s operation returns.
macro_rules! request {
    ($builder:expr, $ok:expr) => {{
        let mut cap = Capture::default();
        let r = $builder
            .add_scope(PUBSUB_SCOPE)
            .delegate(&mut cap)
            .doit()
            .await
            .map($ok);
        (cap, r)
    }};
}

impl PubSub {
    /// The client `push` describes, or `None` when push is off.
    pub fn from_settings(google: Arc<Google>, push: &PushSettings) -> Option<PubSub> {
        push.enabled.then(|| PubSub {
            google,
            topic: push.topic.clone(),
            subscription: push.subscription.clone(),
            base_url: super::with_slash(&push.pubsub_base_url, PUBSUB_URL),
            hub: OnceCell::new(),
        })
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How long one pull may wait for a message: a second less than
    /// `google.request_timeout` (at least a second), so that the retry
    /// loop's timeout never fires on a quiet subscription.
    pub fn long_poll(&self) -> std::time::Duration {
        let timeout = self.google.retry.request_timeout;
        timeout
            .saturating_sub(std::time::Duration::from_secs(1))
            .max(std::time::Duration::from_secs(1))
            .min(timeout)
    }

    async fn hub(&self) -> Result<Arc<Pubsub<Connector>>, GoogleError> {
        self.hub
            .get_or_try_init(|| async {
                let tokens = self.google.tokens()?.clone();
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .pool_idle_timeout(std::time::Duration::from_secs(90))
                .build(super::auth::connector());
                let mut hub = Pubsub::new(
                    client,
                    HubAuth {
                        tokens,
                        subject: None,
                        scopes: Arc::new(vec![PUBSUB_SCOPE.to_owned()]),
                    },
                );
                hub.base_url(self.base_url.clone());
                hub.root_url(self.base_url.clone());
                Ok(Arc::new(hub))
            })
            .await
            .cloned()
    }

    /// Runs one call inside the retry loop, classifying and counting it.
    async fn call<T, F, Fut>(&self, method: &'static str, op: F) -> Result<T, GoogleError>
    where
        F: Fn(Arc<Pubsub<Connector>>) -> Fut,
        Fut: std::future::Future<Output = (Capture, Result<T, google_pubsub1::Error>)>,
    {
        let hub = self.hub().await?;
        call_with_retry(&self.google.retry, method, || async {
            let (capture, res) = op(hub.clone()).await;
            let res = res.map_err(|e| {
                classify_pubsub_error(method, &e, capture.status, capture.retry_after)
            });
            events::GoogleRequest {
                method,
                outcome: res.as_ref().map_or_else(|e| e.class.as_str(), |_| "ok"),
            }
            .emit();
            res
        })
        .await
    }

    /// Up to `max` messages, waiting (`returnImmediately` false) until the
    /// server has one or gives up; each already decoded. An empty answer is
    /// not an error, and neither is a long poll the server holds past
    /// [`Self::long_poll`]: it is ended and counts as an empty answer (what
    /// Pub/Sub had assigned to it is delivered again after the ack
    /// deadline), so an idle subscription never looks like a failing one.
    pub async fn pull(&self, max: i32) -> Result<Vec<Received>, GoogleError> {
        let sub = self.subscription.as_str();
        let wait = self.long_poll();
        let resp = self
            .call(PULL, |hub| async move {
                let mut cap = Capture::default();
                let request = PullRequest {
                    max_messages: Some(max),
                    return_immediately: Some(false),
                };
                let call = hub
                    .projects()
                    .subscriptions_pull(request, sub)
                    .add_scope(PUBSUB_SCOPE)
                    .delegate(&mut cap)
                    .doit();
                let r = match tokio::time::timeout(wait, call).await {
                    Ok(r) => r.map(|(_, r)| r),
                    Err(_) => Ok(google_pubsub1::api::PullResponse::default()),
                };
                (cap, r)
            })
            .await?;
        Ok(resp
            .received_messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                // A message without an ack ID cannot be acknowledged: Pub/Sub
                // redelivers it, so it is not ours to count yet.
                let ack_id = m.ack_id.filter(|a| !a.is_empty())?;
                let data = m.message.and_then(|m| m.data).unwrap_or_default();
                Some(Received {
                    ack_id,
                    notification: Notification::decode(&data),
                })
            })
            .collect())
    }

    /// Acknowledges `ack_ids` (Pub/Sub will not deliver them again).
    pub async fn acknowledge(&self, ack_ids: &[String]) -> Result<(), GoogleError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let sub = self.subscription.as_str();
        self.call(ACKNOWLEDGE, |hub| async move {
            let request = AcknowledgeRequest {
                ack_ids: Some(ack_ids.to_vec()),
            };
            request!(
                hub.projects().subscriptions_acknowledge(request, sub),
                |_| ()
            )
        })
        .await
    }

    /// Hands `ack_ids` back at once (`modifyAckDeadline` 0): redelivered
    /// without waiting for the ack deadline.
    pub async fn nack(&self, ack_ids: &[String]) -> Result<(), GoogleError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        let sub = self.subscription.as_str();
        self.call(MODIFY_ACK_DEADLINE, |hub| async move {
            let request = ModifyAckDeadlineRequest {
                ack_deadline_seconds: Some(0),
                ack_ids: Some(ack_ids.to_vec()),
            };
            request!(
                hub.projects()
                    .subscriptions_modify_ack_deadline(request, sub),
                |_| ()
            )
        })
        .await
    }

    /// What `gmail-ingest check` says about push: the topic exists, the
    /// subscription exists and is on it, the service account may consume it,
    /// and the topic lets Gmail publish. Each failure names what the admin
    /// must create or grant.
    pub async fn check(&self) -> Vec<CheckLine> {
        let me = self
            .google
            .account()
            .map(|a| format!("serviceAccount:{}", a.client_email()))
            .unwrap_or_else(|| "the service account".to_owned());
        let (topic, sub) = (self.topic.as_str(), self.subscription.as_str());
        let mut out = Vec::new();

        let topic_found = self
            .call(TOPIC_GET, |hub| async move {
                request!(hub.projects().topics_get(topic), |_| ())
            })
            .await;
        let topic_exists = match topic_found {
            Ok(()) => {
                out.push(CheckLine::ok(format!("Pub/Sub topic {topic} exists")));
                true
            }
            Err(e) if e.class == ErrorClass::NotFound => {
                out.push(CheckLine::fail(format!(
                    "Pub/Sub topic {topic} does not exist. Fix: create it in the service account's project (gcloud pubsub topics create {topic})"
                )));
                false
            }
            Err(e) => {
                out.push(CheckLine::fail(format!(
                    "Pub/Sub topic {topic}: {e}. Fix: grant {me} roles/pubsub.viewer (or subscriber) in the topic's project"
                )));
                false
            }
        };

        let found = self
            .call(SUBSCRIPTION_GET, |hub| async move {
                request!(hub.projects().subscriptions_get(sub), |(_, s)| s)
            })
            .await;
        let sub_exists = match found {
            Ok(s) => {
                let on = s.topic.unwrap_or_default();
                if on == topic {
                    out.push(CheckLine::ok(format!(
                        "Pub/Sub subscription {sub} exists, on {topic}"
                    )));
                } else {
                    out.push(CheckLine::fail(format!(
                        "Pub/Sub subscription {sub} is on topic {on:?}, not {topic}. Fix: create a pull subscription on {topic} (gcloud pubsub subscriptions create ... --topic={topic}) and set push.subscription to it"
                    )));
                }
                true
            }
            Err(e) if e.class == ErrorClass::NotFound => {
                out.push(CheckLine::fail(format!(
                    "Pub/Sub subscription {sub} does not exist. Fix: create a pull subscription on {topic} (gcloud pubsub subscriptions create {sub} --topic={topic})"
                )));
                false
            }
            Err(e) => {
                out.push(CheckLine::fail(format!("Pub/Sub subscription {sub}: {e}")));
                false
            }
        };

        if sub_exists {
            let tested = self
                .call(SUBSCRIPTION_TEST, |hub| async move {
                    let request = TestIamPermissionsRequest {
                        permissions: Some(vec![CONSUME_PERMISSION.to_owned()]),
                    };
                    request!(
                        hub.projects()
                            .subscriptions_test_iam_permissions(request, sub),
                        |(_, r)| r.permissions.unwrap_or_default()
                    )
                })
                .await;
            match tested {
                Ok(p) if p.iter().any(|p| p == CONSUME_PERMISSION) => out.push(CheckLine::ok(
                    format!("{me} may pull {sub} ({CONSUME_PERMISSION})"),
                )),
                Ok(_) => out.push(CheckLine::fail(format!(
                    "{me} may not pull {sub}. Fix: grant {me} roles/pubsub.subscriber on {sub}"
                ))),
                Err(e) => out.push(CheckLine::fail(format!(
                    "testing {me}'s permissions on {sub}: {e}"
                ))),
            }
        }

        if topic_exists {
            let policy = self
                .call(TOPIC_POLICY, |hub| async move {
                    request!(hub.projects().topics_get_iam_policy(topic), |(_, p)| p)
                })
                .await;
            let grant = format!(
                "grant {GMAIL_PUSH_MEMBER} {PUBLISHER_ROLE} on {topic} (gcloud pubsub topics add-iam-policy-binding {topic} --member={GMAIL_PUSH_MEMBER} --role={PUBLISHER_ROLE})"
            );
            match policy {
                Ok(p) => {
                    let granted = p.bindings.unwrap_or_default().iter().any(|b| {
                        b.role.as_deref() == Some(PUBLISHER_ROLE)
                            && b.members
                                .iter()
                                .flatten()
                                .any(|m| m == GMAIL_PUSH_MEMBER)
                    });
                    if granted {
                        out.push(CheckLine::ok(format!(
                            "topic {topic} lets Gmail publish ({GMAIL_PUSH_MEMBER} has {PUBLISHER_ROLE})"
                        )));
                    } else {
                        out.push(CheckLine::fail(format!(
                            "topic {topic} does not let Gmail publish: users.watch will be refused. Fix: {grant}"
                        )));
                    }
                }
                // Reading a topic's policy needs pubsub.topics.getIamPolicy,
                // which a subscriber need not have: not a failure of the set-up.
                Err(e) if e.status == Some(403) => out.push(CheckLine::ok(format!(
                    "topic {topic}'s IAM policy is not readable by {me} ({e}): cannot tell whether Gmail may publish; make sure to {grant}"
                ))),
                Err(e) => out.push(CheckLine::fail(format!(
                    "reading topic {topic}'s IAM policy: {e}"
                ))),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_a_mailbox_and_a_history_id_as_number_or_string() {
        let n =
            Notification::decode(br#"{"emailAddress":"a@example.com","historyId":1234}"#).unwrap();
        assert_eq!(n.mailbox.as_str(), "a@example.com");
        assert_eq!(n.history_id.get(), 1234);
        let s =
            Notification::decode(br#"{"emailAddress":"a@example.com","historyId":"99"}"#).unwrap();
        assert_eq!(s.history_id.get(), 99);
    }

    #[test]
    fn anything_else_is_malformed_in_one_line_without_the_data() {
        for (data, want) in [
            (&b"SECRETSECRET"[..], "not JSON"),
            (br#"{"historyId":1}"#, "no emailAddress"),
            (
                br#"{"emailAddress":"not an address","historyId":1}"#,
                "emailAddress is invalid",
            ),
            (br#"{"emailAddress":"a@example.com"}"#, "no historyId"),
            (
                br#"{"emailAddress":"a@example.com","historyId":-1}"#,
                "historyId",
            ),
            (
                br#"{"emailAddress":"a@example.com","historyId":"12x"}"#,
                "historyId is invalid",
            ),
            (
                br#"{"emailAddress":"a@example.com","historyId":1.5}"#,
                "historyId",
            ),
            (br#"[1,2]"#, "no emailAddress"),
            (b"", "not JSON"),
        ] {
            let err = Notification::decode(data).unwrap_err();
            assert!(err.contains(want), "{err:?} for {data:?}");
            assert!(!err.contains('\n') && !err.contains("SECRET"), "{err}");
        }
    }
}
