//! The lifecycle of a leased pass, and lease renewal while it runs.
//!
//! [`run_leased`] is the one owner of that lifecycle, for the daemon's
//! workers and the `sync` command alike: it starts the keeper, runs the
//! pass, stops the keeper (also when the pass is dropped mid-way) and
//! releases the lease with the next poll time the engine computed — unless
//! the pass's last batch released it already (a completed pass does, in its
//! final checkpoint's transaction). Claiming is the caller's; nothing here
//! decides when a mailbox is due.
//!
//! A lease is `(owner, epoch)` on the mailbox's `sync_state` row with an
//! expiry. Every fenced write re-checks owner, epoch and expiry inside its own
//! transaction, so correctness never depends on this task: renewal only keeps
//! a healthy worker from losing its mailbox mid-sync. If a renewal is refused
//! (another replica claimed the mailbox after our lease expired, e.g. after a
//! long pause), the worker's cancellation token fires and the sync stops at
//! its next batch boundary; its writes would be refused anyway.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::events;
use crate::store::{Lease, Store, StoreError};
use crate::sync::engine::{self, PassOptions, SyncContext, SyncReport};

/// Runs one pass over a mailbox the caller claimed: keeps the lease alive
/// while the pass runs, then releases it with the report's next poll time
/// (not at all when the lease was lost). `cancel` is the caller's shutdown;
/// a lost lease cancels only this pass. The error is the release's.
pub async fn run_leased(
    ctx: &SyncContext,
    lease: &Lease,
    opts: &PassOptions,
    cancel: &CancellationToken,
) -> Result<SyncReport, StoreError> {
    let stop = cancel.child_token();
    let keeper_done = CancellationToken::new();
    let keeper = tokio::spawn(keep_alive(
        ctx.store.clone(),
        lease.clone(),
        ctx.settings.sync.lease_duration,
        keeper_done.clone(),
        stop.clone(),
    ));
    // If this pass is dropped mid-way (a caller's timeout, an aborted task),
    // the keeper must stop renewing too, or the lease is held forever by
    // work that no longer runs.
    let _stop_keeper_on_drop = keeper_done.clone().drop_guard();
    let report = engine::sync_mailbox(ctx, lease, opts, &stop).await;
    keeper_done.cancel();
    let _ = keeper.await;
    if let Some(at) = report.next_poll_at
        && !report.lease_released
    {
        ctx.store.release_lease(lease, at).await?;
    }
    Ok(report)
}

/// Renews `lease` every third of `lease_for` until `done` fires; cancels
/// `lost` when the lease cannot be kept.
pub async fn keep_alive(
    store: Store,
    lease: Lease,
    lease_for: Duration,
    done: CancellationToken,
    lost: CancellationToken,
) {
    let period = (lease_for / 3).max(Duration::from_millis(500));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        match store.renew_lease(&lease, Utc::now(), lease_for).await {
            Ok(_) => failures = 0,
            // The pass's last batch released it (and nobody claimed it since):
            // not a loss. A renewal can race that commit by a few milliseconds.
            Err(StoreError::LeaseLost { .. }) => {
                if released_by_us(&store, &lease).await {
                    return;
                }
                events::LeaseLost {
                    mailbox: &lease.mailbox,
                }
                .emit();
                lost.cancel();
                return;
            }
            Err(e) => {
                // The database is unreachable: keep trying until the lease
                // would have expired, then stop the sync (its writes would be
                // refused anyway).
                events::DbError {
                    operation: "renew_lease",
                    error: &e,
                }
                .emit();
                failures += 1;
                if Duration::from_secs_f64(period.as_secs_f64() * f64::from(failures)) >= lease_for
                {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// Whether `lease` is free with its epoch unchanged: released by its own
/// pass, not claimed by another replica (a claim increments the epoch).
async fn released_by_us(store: &Store, lease: &Lease) -> bool {
    matches!(
        store.sync_state(&lease.mailbox).await,
        Ok(Some(s)) if s.lease_owner.is_none() && s.lease_epoch == lease.epoch
    )
}
