//! Whether the decisions of the operators, the org-unit gate and the
//! configuration still admit a running pass.
//!
//! The store's fence refuses every write of a pass whose subscription is no
//! longer active (or no longer in the mode the pass started with); this
//! module makes the pass stop *sending* Gmail requests too: [`Watch`] reads
//! the subscription beside the pass every [`WATCH_EVERY`] and cancels the
//! pass's token at once (the fetches in flight are dropped), and
//! [`Pass::check_standing`] reads it once before each group of requests (a
//! listing page, a history page, a fetch chunk). It never writes; the pass
//! records the stop (`failure::Run::stopped_by`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Pass, PassError};
use crate::domain::{AuthMode, MailboxAddress, StopDecision};
use crate::store::{Lease, Store, Subscription};

/// How often the watcher reads the subscription while a pass runs: one
/// primary-key read per running pass and second.
pub(super) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The decision that stopped a pass, with the reason the subscription
/// records for it (the gate's, or the operator's), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stop {
    pub(super) decision: StopDecision,
    pub(super) reason: Option<String>,
}

impl Stop {
    /// The decision `sub` stands for against a pass in mode `pinned`; `None`
    /// while it admits the pass.
    pub(super) fn of(sub: Option<&Subscription>, pinned: Option<AuthMode>) -> Option<Stop> {
        let decision = StopDecision::judge(sub.map(|s| (s.status, s.auth_mode)), pinned)?;
        Some(Stop {
            decision,
            reason: sub.and_then(|s| s.status_reason.clone()),
        })
    }

    /// `integration.enabled` is false in this process.
    pub(super) fn disabled() -> Stop {
        Stop {
            decision: StopDecision::Disabled,
            reason: Some("integration.enabled is false".to_owned()),
        }
    }
}

/// The watcher of one pass: its token (a child of the caller's, so shutdown
/// and a lost lease still cancel it) and the decision it found, if any. The
/// watching task ends with the pass (drop guard).
pub(super) struct Watch {
    pub(super) token: CancellationToken,
    found: Arc<OnceLock<Stop>>,
    _done: DropGuard,
}

impl Watch {
    /// Starts watching the subscription of `lease` (in the lease's mode).
    pub(super) fn start(store: Store, lease: &Lease, parent: &CancellationToken) -> Watch {
        let token = parent.child_token();
        let found = Arc::new(OnceLock::new());
        let done = CancellationToken::new();
        tokio::spawn(watch(
            store,
            lease.mailbox.clone(),
            lease.auth_mode,
            token.clone(),
            found.clone(),
            done.clone(),
        ));
        Watch {
            token,
            found,
            _done: done.drop_guard(),
        }
    }

    /// The decision that cancelled the pass, if one did.
    pub(super) fn found(&self) -> Option<&Stop> {
        self.found.get()
    }
}

async fn watch(
    store: Store,
    mailbox: MailboxAddress,
    mode: Option<AuthMode>,
    token: CancellationToken,
    found: Arc<OnceLock<Stop>>,
    done: CancellationToken,
) {
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = token.cancelled() => return,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
        // A failed read decides nothing: the fence refuses what it must.
        if let Ok(sub) = store.get_subscription(&mailbox).await
            && let Some(stop) = Stop::of(sub.as_ref(), mode)
        {
            let _ = found.set(stop);
            token.cancel();
            return;
        }
    }
}

impl Pass<'_> {
    /// One read of the subscription before a group of Gmail requests: the
    /// pass stops (`PassError::Stopped`) when a decision no longer admits it,
    /// and at the next boundary after shutdown as before.
    pub(super) async fn check_standing(&self) -> Result<(), PassError> {
        self.check_cancel()?;
        let sub = self.ctx().store.get_subscription(self.mailbox()).await?;
        match Stop::of(sub.as_ref(), self.lease().auth_mode) {
            Some(stop) => Err(PassError::Stopped(stop)),
            None => Ok(()),
        }
    }
}
