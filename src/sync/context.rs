//! What a sync pass needs from its replica: the store, the Google client,
//! the settings and policy, the replica's identity and the OAuth service.
//!
//! Shared by the engine, the org-unit gate and the daemon so that none of
//! them imports another for it. It holds handles only: it must not grow
//! behaviour of its own beyond deriving values from the settings.

use std::sync::Arc;

use crate::config::{Policy, Settings};
use crate::google::Google;
use crate::store::Store;
use gmail_normalize::NormalizeLimits;

/// What the engine needs, shared by every worker of a replica.
#[derive(Clone)]
pub struct SyncContext {
    pub store: Store,
    pub google: Arc<Google>,
    pub settings: Arc<Settings>,
    pub policy: Arc<Policy>,
    /// This replica's identity, recorded as lease owner and in `sync_runs`.
    pub replica: String,
    /// Per-mailbox OAuth consent, when `oauth.enabled`.
    pub oauth: Option<Arc<crate::oauth::OAuthService>>,
}

impl SyncContext {
    /// The normalizer's limits from `sync.max_message_bytes`.
    pub(crate) fn limits(&self) -> NormalizeLimits {
        NormalizeLimits {
            max_message_bytes: self.settings.sync.max_message_bytes,
            ..NormalizeLimits::default()
        }
    }
}
