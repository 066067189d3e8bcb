//! The bounded worker pool.
//!
//! The dispatcher takes semaphore permits *before* claiming leases, so a
//! replica never holds more mailboxes than it can sync
//! (`sync.max_concurrent_mailboxes`); each claimed mailbox runs in its own
//! task with its permit, its lease keeper and a child cancellation token. One
//! mailbox's failure or slowness only occupies its own permit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lease;
use crate::domain::MailboxAddress;
use crate::events;
use crate::store::Lease;
use crate::sync::engine::{PassOptions, Schedule, SyncContext};

/// Mailboxes the scheduler asked to resync fully at their next claim.
#[derive(Default)]
pub struct ResyncRequests(Mutex<Option<HashSet<MailboxAddress>>>);

impl ResyncRequests {
    /// Requests a full resync of every mailbox (the reconciliation cron).
    pub fn request_all(&self) {
        *self.lock() = Some(HashSet::new());
    }

    /// True (once) if `m` is due for a requested resync.
    pub fn take(&self, m: &MailboxAddress) -> bool {
        match self.lock().as_mut() {
            Some(done) => done.insert(m.clone()),
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashSet<MailboxAddress>>> {
        // Plain data: a panic mid-insert cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Pool {
    pub ctx: SyncContext,
    /// One permit per mailbox in flight; taken before a lease is claimed.
    pub permits: Arc<Semaphore>,
    pub tracker: TaskTracker,
    /// Fires on shutdown: stop between batches, release leases.
    pub shutdown: CancellationToken,
    pub resync: Arc<ResyncRequests>,
    /// Told when a worker frees its slot, so the next due mailbox is claimed
    /// at once instead of at the next scheduler tick.
    pub wake: tokio::sync::mpsc::Sender<super::scheduler::Tick>,
}

impl Pool {
    /// Claims as many due mailboxes as there are free permits and starts a
    /// task for each. Returns how many were started.
    pub async fn dispatch(&self) -> anyhow::Result<usize> {
        let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
        while let Ok(p) = self.permits.clone().try_acquire_owned() {
            permits.push(p);
        }
        if permits.is_empty() {
            return Ok(0);
        }
        let leases = self
            .ctx
            .store
            .claim_due(
                &self.ctx.replica,
                Utc::now(),
                self.ctx.settings.sync.lease_duration,
                permits.len(),
            )
            .await?;
        if !leases.is_empty() {
            events::LeasesClaimed {
                count: leases.len(),
            }
            .emit();
        }
        let n = leases.len();
        for (lease, permit) in leases.into_iter().zip(permits) {
            self.spawn(lease, permit);
        }
        events::InFlight {
            count: self.ctx.settings.sync.max_concurrent_mailboxes
                - self.permits.available_permits(),
        }
        .emit();
        Ok(n)
    }

    fn spawn(&self, lease: Lease, permit: OwnedSemaphorePermit) {
        let ctx = self.ctx.clone();
        let shutdown = self.shutdown.clone();
        let force_full = self.resync.take(&lease.mailbox);
        let wake = self.wake.clone();
        self.tracker.spawn(async move {
            run_one(ctx, lease, force_full, shutdown).await;
            drop(permit);
            // A full channel already holds a pending claim: nothing to add.
            let _ = wake.try_send(super::scheduler::Tick::SlotFreed);
        });
    }
}

/// Syncs one leased mailbox and releases it.
pub async fn run_one(
    ctx: SyncContext,
    lease: Lease,
    force_full: bool,
    shutdown: CancellationToken,
) {
    let opts = PassOptions {
        force_full,
        progress: None,
        schedule: Schedule::Daemon,
    };
    if let Err(e) = lease::run_leased(&ctx, &lease, &opts, &shutdown).await {
        events::DbError {
            operation: "release_lease",
            error: &e,
        }
        .emit();
    }
}
