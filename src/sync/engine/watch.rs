//! The mailbox's Gmail push watch (`users.watch`), kept by the pass that
//! holds its lease: at the start of each incremental segment (the first
//! full sync done), after the gate and a standing check, when push is on.
//!
//! A watch is made when the mailbox has none (never made, stopped, or
//! expired: a lapse), renewed when it is older than `push.renew_interval`,
//! and made again when the subscription's label scope is not the one it was
//! made for. A failing watch call (any Google error) is recorded in
//! `sync_state.watch_error` and the pass goes on as a plain poll; it is
//! tried again no sooner than [`WATCH_RETRY_AFTER`] later, never every pass
//! (a watch costs 100 units). Only a live watch (expiring in the future,
//! no error) lets the completed pass schedule its next poll after
//! `push.fallback_poll_interval` instead of `sync.poll_interval`.
//!
//! This module never stops a watch (the daemon does, for mailboxes no
//! longer active) and never writes a checkpoint: its two records are fenced
//! by the lease alone.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Pass, PassError};
use crate::events;
use crate::store::{SyncState, WatchState};

/// How long after a failed `users.watch` the next pass may try again.
pub const WATCH_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a pass calls `users.watch` (the `reason` of its log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WatchReason {
    /// The mailbox has no watch: never made, or stopped.
    Missing,
    /// Its watch expired before it was renewed.
    Lapsed,
    /// Its watch is older than `push.renew_interval`.
    Renewal,
    /// Its watch was made for another label scope.
    ScopeChanged,
    /// The last call failed, at least [`WATCH_RETRY_AFTER`] ago.
    Retry,
}

impl WatchReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            WatchReason::Missing => "missing",
            WatchReason::Lapsed => "lapsed",
            WatchReason::Renewal => "renewal",
            WatchReason::ScopeChanged => "scope_changed",
            WatchReason::Retry => "retry",
        }
    }
}

/// Whether a pass at `now` over a mailbox in `state`, whose subscription's
/// scope is `scope`, calls `users.watch`, and why; `None` when its watch
/// stands (or failed less than [`WATCH_RETRY_AFTER`] ago).
pub(super) fn watch_due(
    state: &SyncState,
    scope: &[String],
    renew_interval: Duration,
    now: DateTime<Utc>,
) -> Option<WatchReason> {
    let retry_after = chrono::Duration::from_std(WATCH_RETRY_AFTER).unwrap_or_default();
    if let (Some(_), Some(failed)) = (&state.watch_error, state.watch_failed_at)
        && now - failed < retry_after
    {
        return None;
    }
    let renew = chrono::Duration::from_std(renew_interval).unwrap_or_default();
    match state.watch_expires_at {
        None if state.watch_error.is_some() => Some(WatchReason::Retry),
        None => Some(WatchReason::Missing),
        Some(t) if t <= now => Some(WatchReason::Lapsed),
        Some(_) if state.watch_renewed_at.is_none_or(|r| now - r >= renew) => {
            Some(WatchReason::Renewal)
        }
        Some(_) if state.watch_label_scope.as_deref() != Some(scope) => {
            Some(WatchReason::ScopeChanged)
        }
        Some(_) if state.watch_error.is_some() => Some(WatchReason::Retry),
        Some(_) => None,
    }
}

/// Whether an expired watch is a new lapse: none counted since it expired
/// (a failed attempt after the expiry already counted it).
fn new_lapse(state: &SyncState, now: DateTime<Utc>) -> bool {
    match state.watch_expires_at {
        Some(t) if t <= now => state.watch_failed_at.is_none_or(|f| f < t),
        _ => false,
    }
}

impl Pass<'_> {
    /// Makes or renews the mailbox's watch when push is on and it is due
    /// (see the module), and notes whether the pass ends with a live one.
    /// With push off it does nothing at all: no call, no read, no write.
    pub(super) async fn keep_watch(&mut self, state: &SyncState) -> Result<(), PassError> {
        let push = &self.ctx().settings.push;
        if !push.enabled {
            return Ok(());
        }
        let now = Utc::now();
        let Some(reason) = watch_due(state, &self.scope, push.renew_interval, now) else {
            self.run.watch_live = state.watch_state(now) == WatchState::Live;
            return Ok(());
        };
        // The watch is the first Gmail request of the segment.
        self.check_standing().await?;
        if new_lapse(state, now) {
            events::WatchLapsed {
                mailbox: self.mailbox(),
            }
            .emit();
        }
        let topic = push.topic.clone();
        match self.gmail.watch(&topic, &self.scope).await {
            Ok(w) => {
                events::WatchCall {
                    call: "watch",
                    outcome: "ok",
                }
                .emit();
                let store = &self.run.ctx.store;
                store
                    .record_watch(self.run.lease, w.expires_at, &self.scope, Utc::now())
                    .await?;
                events::WatchMade {
                    mailbox: self.mailbox(),
                    reason: reason.as_str(),
                    expires_at: w.expires_at,
                }
                .emit();
                self.run.watch_live = w.expires_at > Utc::now();
            }
            Err(e) => {
                events::WatchCall {
                    call: "watch",
                    outcome: e.class.as_str(),
                }
                .emit();
                let error = format!("users.watch failed: {e}");
                events::WatchFailed {
                    mailbox: self.mailbox(),
                    call: "watch",
                    error: &error,
                }
                .emit();
                let store = &self.run.ctx.store;
                store
                    .record_watch_failure(self.run.lease, &error, Utc::now())
                    .await?;
                self.run.watch_live = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MailboxAddress, SyncPhase};

    fn state() -> SyncState {
        SyncState {
            phase: SyncPhase::Incremental,
            full_sync_generation: 1,
            lease_epoch: 1,
            ..SyncState::never_synced(MailboxAddress::parse("w@example.com").unwrap(), Utc::now())
        }
    }

    #[test]
    fn a_watch_is_made_renewed_and_retried_by_the_rule() {
        let day = Duration::from_secs(24 * 3600);
        let now = Utc::now();
        let h = chrono::Duration::hours;
        let scope = vec!["INBOX".to_owned()];
        let mut s = state();
        assert_eq!(watch_due(&s, &scope, day, now), Some(WatchReason::Missing));

        s.watch_expires_at = Some(now + h(24 * 6));
        s.watch_renewed_at = Some(now - h(1));
        s.watch_label_scope = Some(scope.clone());
        assert_eq!(watch_due(&s, &scope, day, now), None, "fresh");
        assert_eq!(
            watch_due(&s, &[], day, now),
            Some(WatchReason::ScopeChanged)
        );
        s.watch_renewed_at = Some(now - h(25));
        assert_eq!(watch_due(&s, &scope, day, now), Some(WatchReason::Renewal));
        s.watch_expires_at = Some(now - h(1));
        assert_eq!(watch_due(&s, &scope, day, now), Some(WatchReason::Lapsed));
        assert!(new_lapse(&s, now));

        // A failure waits an hour, whatever else is due.
        s.watch_error = Some("users.watch failed: x".to_owned());
        s.watch_failed_at = Some(now - chrono::Duration::minutes(59));
        assert_eq!(watch_due(&s, &scope, day, now), None);
        assert!(!new_lapse(&s, now), "counted at the failed attempt");
        s.watch_failed_at = Some(now - h(2));
        assert_eq!(watch_due(&s, &scope, day, now), Some(WatchReason::Lapsed));
        s.watch_expires_at = None;
        assert_eq!(watch_due(&s, &scope, day, now), Some(WatchReason::Retry));
    }
}
