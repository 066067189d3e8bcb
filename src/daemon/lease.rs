//! Lease renewal while a mailbox is being synced.
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
            Err(StoreError::LeaseLost { .. }) => {
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
