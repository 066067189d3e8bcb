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
    /// The replica's byte budget for fetched messages not yet committed
    /// (`sync.memory_budget_bytes`), shared by every mailbox syncing at once:
    /// one permit per KiB ([`BUDGET_UNIT_BYTES`]). A pass takes permits for a
    /// fetched message before it joins a batch and drops them when the batch
    /// is committed (or dropped); a pass that must wait holds none.
    pub memory_budget: Arc<tokio::sync::Semaphore>,
}

/// The bytes one permit of [`SyncContext::memory_budget`] stands for.
pub const BUDGET_UNIT_BYTES: usize = 1024;

/// The replica's byte budget for `settings`, in permits of [`BUDGET_UNIT_BYTES`].
pub fn memory_budget(settings: &Settings) -> Arc<tokio::sync::Semaphore> {
    let permits = (settings.sync.memory_budget_bytes / BUDGET_UNIT_BYTES)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    Arc::new(tokio::sync::Semaphore::new(permits))
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
