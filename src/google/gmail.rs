//! Thin typed wrapper over google-gmail1.
//!
//! Every call: waits for its quota units, runs inside the one retry loop,
//! requests the configured scopes explicitly (messages.get would otherwise ask
//! for an add-on scope), counts itself in the caller's [`CallStats`], and
//! turns Google's shapes into domain types at this edge. Nothing here touches
//! the database or decides what to sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use google_gmail1::Gmail;
use google_gmail1::common::{Delegate, Retry};

use super::Google;
use super::auth::{Connector, ConsentTokens};
use super::daily::Purpose;
use super::error::{ErrorClass, GoogleError, classify_gmail_error};
use super::quota::Method;
use super::retry::call_with_retry;
use crate::domain::{GmailMessageId, GmailMessageMeta, HistoryId, MailboxAddress, MessageFormat};
use crate::events;
use gmail_normalize::PayloadPart;

/// Calls and units spent by one sync pass.
#[derive(Debug, Default)]
pub struct CallStats {
    pub calls: AtomicU64,
    pub units: AtomicU64,
    pub message_gets: AtomicU64,
    /// Set while the pass lists or fetches for a full sync or resync: its
    /// calls are charged to the daily budget as backfill.
    pub backfill: std::sync::atomic::AtomicBool,
}

impl CallStats {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn units(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// What the pass's calls are for, from now on.
    pub fn set_purpose(&self, purpose: Purpose) {
        self.backfill
            .store(purpose == Purpose::Backfill, Ordering::Relaxed);
    }

    pub fn purpose(&self) -> Purpose {
        if self.backfill.load(Ordering::Relaxed) {
            Purpose::Backfill
        } else {
            Purpose::Incremental
        }
    }
}

/// Captures what google-gmail1 hides from its error values: the HTTP status
/// and the `Retry-After` header of a failed response.
/// Pub/Sub's hub (the same generated family) uses it too.
#[derive(Default)]
pub(super) struct Capture {
    pub(super) status: Option<u16>,
    pub(super) retry_after: Option<Duration>,
}

impl Delegate for Capture {
    fn http_failure(
        &mut self,
        resp: &google_gmail1::common::Response,
        _err: Option<&serde_json::Value>,
    ) -> Retry {
        self.status = Some(resp.status().as_u16());
        self.retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Retry::Abort
    }
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub email: String,
    pub history_id: HistoryId,
    pub messages_total: i64,
}

#[derive(Debug, Clone)]
pub struct MessageRef {
    pub id: GmailMessageId,
    pub thread_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct IdPage {
    pub messages: Vec<MessageRef>,
    pub next_page_token: Option<String>,
}

/// A fetched message: Gmail's metadata plus the content in the configured format.
#[derive(Debug, Clone)]
pub struct FetchedMessage {
    pub meta: GmailMessageMeta,
    pub raw: Option<Vec<u8>>,
    pub payload: Option<PayloadPart>,
}

/// One history record, typed arrays only (Google: prefer them to `messages`).
#[derive(Debug, Clone, Default)]
pub struct HistoryRecord {
    pub id: Option<HistoryId>,
    pub added: Vec<(GmailMessageId, Vec<String>)>,
    pub deleted: Vec<GmailMessageId>,
    pub labels_added: Vec<(GmailMessageId, Vec<String>)>,
    pub labels_removed: Vec<(GmailMessageId, Vec<String>)>,
    /// The message's whole label set (`message.labelIds`) as the
    /// `labelsAdded`/`labelsRemoved` entries of this record carry it, when
    /// Google sent it: what a label scope is decided from without a fetch.
    pub message_labels: Vec<(GmailMessageId, Vec<String>)>,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub records: Vec<HistoryRecord>,
    pub next_page_token: Option<String>,
    /// The mailbox's current history position.
    pub history_id: Option<HistoryId>,
}

/// A push watch Google made (`users.watch`): the mailbox's history position
/// when it was made and when Gmail stops publishing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub history_id: HistoryId,
    /// From the response's `expiration` (epoch milliseconds).
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone)]
pub struct LabelInfo {
    pub id: String,
    pub name: String,
    pub label_type: String,
}

/// The Gmail API as seen by one mailbox.
#[derive(Clone)]
pub struct MailboxGmail {
    google: Arc<Google>,
    mailbox: MailboxAddress,
    hub: Arc<Gmail<Connector>>,
    stats: Arc<CallStats>,
    /// Set for a mailbox authorized by OAuth consent: its token cache.
    oauth: Option<Arc<dyn ConsentTokens>>,
}

fn parse_id(method: &'static str, id: Option<String>) -> Result<GmailMessageId, GoogleError> {
    let id = id.unwrap_or_default();
    GmailMessageId::parse(&id).map_err(|e| {
        GoogleError::new(
            ErrorClass::Fatal,
            method,
            format!("malformed response: {e}"),
        )
    })
}

fn history_id(method: &'static str, v: Option<u64>) -> Result<Option<HistoryId>, GoogleError> {
    v.map(|h| {
        HistoryId::new(h).map_err(|e| {
            GoogleError::new(
                ErrorClass::Fatal,
                method,
                format!("malformed response: {e}"),
            )
        })
    })
    .transpose()
}

fn convert_part(p: google_gmail1::api::MessagePart) -> PayloadPart {
    let body = p.body.unwrap_or_default();
    PayloadPart {
        part_id: p.part_id.unwrap_or_default(),
        mime_type: p.mime_type.unwrap_or_default(),
        filename: p.filename.filter(|f| !f.is_empty()),
        headers: p
            .headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.name.unwrap_or_default(), h.value.unwrap_or_default()))
            .collect(),
        body_size: i64::from(body.size.unwrap_or(0)),
        body: body.data,
        attachment_id: body.attachment_id,
        parts: p
            .parts
            .unwrap_or_default()
            .into_iter()
            .map(convert_part)
            .collect(),
    }
}

/// `message.labelIds` of the label-change entries of one history record.
fn message_labels(
    method: &'static str,
    h: &google_gmail1::api::History,
) -> Result<Vec<(GmailMessageId, Vec<String>)>, GoogleError> {
    let added = h.labels_added.iter().flatten().map(|x| &x.message);
    let removed = h.labels_removed.iter().flatten().map(|x| &x.message);
    added
        .chain(removed)
        .flatten()
        .filter_map(|m| m.label_ids.as_ref().map(|l| (m.id.clone(), l.clone())))
        .map(|(id, l)| Ok((parse_id(method, id)?, l)))
        .collect()
}

fn label_pairs(
    method: &'static str,
    v: Option<Vec<google_gmail1::api::HistoryLabelAdded>>,
) -> Result<Vec<(GmailMessageId, Vec<String>)>, GoogleError> {
    v.unwrap_or_default()
        .into_iter()
        .filter_map(|x| x.message.map(|m| (m, x.label_ids.unwrap_or_default())))
        .map(|(m, l)| Ok((parse_id(method, m.id)?, l)))
        .collect()
}

impl MailboxGmail {
    pub(super) fn new(
        google: Arc<Google>,
        mailbox: MailboxAddress,
        hub: Arc<Gmail<Connector>>,
        stats: Arc<CallStats>,
    ) -> Self {
        MailboxGmail {
            google,
            mailbox,
            hub,
            stats,
            oauth: None,
        }
    }

    pub(super) fn with_oauth(mut self, tokens: Arc<dyn ConsentTokens>) -> Self {
        self.oauth = Some(tokens);
        self
    }

    /// Forgets the mailbox's cached access token, so the next call gets a new one.
    fn evict_token(&self) {
        match &self.oauth {
            Some(t) => t.evict(self.mailbox.as_str()),
            None => {
                if let Some(t) = &self.google.tokens {
                    t.evict(self.mailbox.as_str());
                }
            }
        }
    }

    pub fn mailbox(&self) -> &MailboxAddress {
        &self.mailbox
    }

    pub fn stats(&self) -> &Arc<CallStats> {
        &self.stats
    }

    /// Runs one Gmail call: quota first, then the request, inside the retry loop.
    async fn call<T, F, Fut>(&self, method: Method, op: F) -> Result<T, GoogleError>
    where
        F: Fn(Arc<Gmail<Connector>>, Vec<String>) -> Fut,
        Fut: std::future::Future<Output = (Capture, Result<T, google_gmail1::Error>)>,
    {
        let id = method.id();
        let result = call_with_retry(&self.google.retry, id, || async {
            let permit = self
                .google
                .quota
                .acquire(self.mailbox.as_str(), method, self.stats.purpose())
                .await?;
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            self.stats
                .units
                .fetch_add(u64::from(permit.units), Ordering::Relaxed);
            let (capture, res) = op(self.hub.clone(), self.google.scopes.clone()).await;
            drop(permit);
            match res {
                Ok(v) => {
                    events::GoogleRequest {
                        method: id,
                        outcome: "ok",
                    }
                    .emit();
                    Ok(v)
                }
                Err(e) => {
                    let ge = classify_gmail_error(id, &e, capture.status, capture.retry_after);
                    events::GoogleRequest {
                        method: id,
                        outcome: ge.class.as_str(),
                    }
                    .emit();
                    if ge.status == Some(401) {
                        // A refused bearer: sign a fresh JWT next time.
                        self.evict_token();
                    }
                    Err(ge)
                }
            }
        })
        .await;
        if let Err(e) = &result
            && e.class == ErrorClass::AuthRevoked
        {
            self.evict_token();
        }
        result
    }

    pub async fn get_profile(&self) -> Result<Profile, GoogleError> {
        let m = Method::GetProfile;
        let p = self
            .call(m, |hub, scopes| async move {
                let mut cap = Capture::default();
                let mut call = hub.users().get_profile("me").delegate(&mut cap);
                for s in &scopes {
                    call = call.add_scope(s);
                }
                let r = call.doit().await.map(|(_, p)| p);
                (cap, r)
            })
            .await?;
        Ok(Profile {
            email: p.email_address.unwrap_or_default(),
            history_id: history_id(m.id(), p.history_id)?.ok_or_else(|| {
                GoogleError::new(ErrorClass::Fatal, m.id(), "profile without historyId")
            })?,
            messages_total: i64::from(p.messages_total.unwrap_or(0)),
        })
    }

    /// One page of message IDs, newest first. `label_id` filters to one label.
    pub async fn list_message_ids(
        &self,
        page_token: Option<&str>,
        label_id: Option<&str>,
        page_size: u32,
    ) -> Result<IdPage, GoogleError> {
        let m = Method::MessagesList;
        let resp = self
            .call(m, |hub, scopes| async move {
                let mut cap = Capture::default();
                let mut call = hub
                    .users()
                    .messages_list("me")
                    .max_results(page_size)
                    .include_spam_trash(true)
                    .delegate(&mut cap);
                if let Some(t) = page_token {
                    call = call.page_token(t);
                }
                if let Some(l) = label_id {
                    call = call.add_label_ids(l);
                }
                for s in &scopes {
                    call = call.add_scope(s);
                }
                let r = call.doit().await.map(|(_, p)| p);
                (cap, r)
            })
            .await?;
        let messages = resp
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|msg| {
                Ok(MessageRef {
                    id: parse_id(m.id(), msg.id)?,
                    thread_id: msg.thread_id.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, GoogleError>>()?;
        Ok(IdPage {
            messages,
            next_page_token: resp.next_page_token.filter(|t| !t.is_empty()),
        })
    }

    /// Fetches one message in the configured format.
    pub async fn get_message(&self, id: &GmailMessageId) -> Result<FetchedMessage, GoogleError> {
        let m = Method::MessagesGet;
        let format = self.google.message_format;
        let msg = self
            .call(m, |hub, scopes| async move {
                let mut cap = Capture::default();
                let mut call = hub
                    .users()
                    .messages_get("me", id.as_str())
                    .format(format.as_str())
                    .delegate(&mut cap);
                for s in &scopes {
                    call = call.add_scope(s);
                }
                let r = call.doit().await.map(|(_, p)| p);
                (cap, r)
            })
            .await?;
        self.stats.message_gets.fetch_add(1, Ordering::Relaxed);
        let meta = GmailMessageMeta {
            gmail_id: parse_id(m.id(), msg.id)?,
            thread_id: msg.thread_id.unwrap_or_default(),
            history_id: history_id(m.id(), msg.history_id)?
                .unwrap_or(HistoryId::new(0).unwrap_or_else(|_| unreachable!())),
            internal_date_ms: msg.internal_date.unwrap_or(0),
            size_estimate: i64::from(msg.size_estimate.unwrap_or(0)),
            snippet: msg.snippet.filter(|s| !s.is_empty()),
            label_ids: msg.label_ids.unwrap_or_default(),
        };
        let (raw, payload) = match format {
            MessageFormat::Raw => (msg.raw, None),
            MessageFormat::Full | MessageFormat::Metadata => (None, msg.payload.map(convert_part)),
        };
        Ok(FetchedMessage { meta, raw, payload })
    }

    /// One page of history after `start`.
    pub async fn list_history(
        &self,
        start: HistoryId,
        page_token: Option<&str>,
    ) -> Result<HistoryPage, GoogleError> {
        let m = Method::HistoryList;
        let resp = self
            .call(m, |hub, scopes| async move {
                let mut cap = Capture::default();
                let mut call = hub
                    .users()
                    .history_list("me")
                    .start_history_id(start.get())
                    .max_results(500)
                    .delegate(&mut cap);
                if let Some(t) = page_token {
                    call = call.page_token(t);
                }
                for s in &scopes {
                    call = call.add_scope(s);
                }
                let r = call.doit().await.map(|(_, p)| p);
                (cap, r)
            })
            .await?;
        let mut records = Vec::new();
        for h in resp.history.unwrap_or_default() {
            let message_labels = message_labels(m.id(), &h)?;
            records.push(HistoryRecord {
                message_labels,
                id: history_id(m.id(), h.id)?,
                added: h
                    .messages_added
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|a| a.message)
                    .map(|msg| Ok((parse_id(m.id(), msg.id)?, msg.label_ids.unwrap_or_default())))
                    .collect::<Result<_, GoogleError>>()?,
                deleted: h
                    .messages_deleted
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|d| d.message)
                    .map(|msg| parse_id(m.id(), msg.id))
                    .collect::<Result<_, GoogleError>>()?,
                labels_added: label_pairs(m.id(), h.labels_added)?,
                labels_removed: label_pairs(
                    m.id(),
                    h.labels_removed.map(|v| {
                        v.into_iter()
                            .map(|r| google_gmail1::api::HistoryLabelAdded {
                                label_ids: r.label_ids,
                                message: r.message,
                            })
                            .collect()
                    }),
                )?,
            });
        }
        Ok(HistoryPage {
            records,
            next_page_token: resp.next_page_token.filter(|t| !t.is_empty()),
            history_id: history_id(m.id(), resp.history_id)?,
        })
    }

    pub async fn list_labels(&self) -> Result<Vec<LabelInfo>, GoogleError> {
        let m = Method::LabelsList;
        let resp = self
            .call(m, |hub, scopes| async move {
                let mut cap = Capture::default();
                let mut call = hub.users().labels_list("me").delegate(&mut cap);
                for s in &scopes {
                    call = call.add_scope(s);
                }
                let r = call.doit().await.map(|(_, p)| p);
                (cap, r)
            })
            .await?;
        Ok(resp
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| {
                Some(LabelInfo {
                    id: l.id?,
                    name: l.name.unwrap_or_default(),
                    label_type: l.type_.unwrap_or_else(|| "user".to_owned()),
                })
            })
            .collect())
    }

    /// `users.watch`: asks Gmail to publish the mailbox's changes to `topic`
    /// (`projects/P/topics/T`), only those touching `label_ids`
    /// (`labelFilterBehavior` "include") when there are any. Replaces any
    /// watch the mailbox had.
    pub async fn watch(&self, topic: &str, label_ids: &[String]) -> Result<Watch, GoogleError> {
        let m = Method::Watch;
        let request = google_gmail1::api::WatchRequest {
            topic_name: Some(topic.to_owned()),
            label_ids: (!label_ids.is_empty()).then(|| label_ids.to_vec()),
            label_filter_behavior: (!label_ids.is_empty()).then(|| "include".to_owned()),
            label_filter_action: None,
        };
        let resp = self
            .call(m, |hub, scopes| {
                let request = request.clone();
                async move {
                    let mut cap = Capture::default();
                    let mut call = hub.users().watch(request, "me").delegate(&mut cap);
                    for s in &scopes {
                        call = call.add_scope(s);
                    }
                    let r = call.doit().await.map(|(_, p)| p);
                    (cap, r)
                }
            })
            .await?;
        let malformed = |what: &str| {
            GoogleError::new(
                ErrorClass::Fatal,
                m.id(),
                format!("malformed response: {what}"),
            )
        };
        let history_id =
            history_id(m.id(), resp.history_id)?.ok_or_else(|| malformed("no historyId"))?;
        let expires_at = resp
            .expiration
            .and_then(chrono::DateTime::from_timestamp_millis)
            .ok_or_else(|| malformed("no valid expiration"))?;
        Ok(Watch {
            history_id,
            expires_at,
        })
    }

    /// `users.stop`: ends the mailbox's watch (Gmail answers the same whether
    /// or not there was one). Reads nothing.
    pub async fn stop(&self) -> Result<(), GoogleError> {
        self.call(Method::Stop, |hub, scopes| async move {
            let mut cap = Capture::default();
            let mut call = hub.users().stop("me").delegate(&mut cap);
            for s in &scopes {
                call = call.add_scope(s);
            }
            let r = call.doit().await.map(|_| ());
            (cap, r)
        })
        .await
    }
}
