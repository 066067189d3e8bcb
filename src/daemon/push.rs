//! The Gmail push pull loop: each replica pulls `push.subscription` and
//! turns notifications into due mailboxes, durably.
//!
//! One iteration: pull (a long poll) → decode → [`Store::mark_notified`]
//! once per mailbox named (the highest historyId of the batch) → acknowledge
//! only what is settled: the messages whose mark committed, and the ones that
//! can never mark anything (malformed, or for a mailbox not subscribed and
//! active: counted, and no Gmail call is made for them) → wake the
//! dispatcher when a mailbox became due. A store error leaves its messages
//! unacknowledged: Pub/Sub delivers them again after the ack deadline, and a
//! mark is idempotent, so a crash or an outage between pull and commit loses
//! nothing. This module never syncs a mailbox: the dispatcher claims it like
//! any due mailbox, under its lease.
//!
//! A failed pull (after the retry loop) waits a bounded, jittered backoff;
//! it is an event and a metric each time, a WARN once per streak. Polling
//! stays the safety net meanwhile. The loop stops at the cancellation token,
//! also mid-iteration: a mark committed but not acknowledged is delivered
//! again and marked again, harmlessly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::scheduler::Tick;
use crate::domain::{HistoryId, MailboxAddress};
use crate::events;
use crate::google::pubsub::{PubSub, Received};
use crate::store::{NotifyOutcome, Store};

/// Messages asked for by one pull.
pub const PULL_MAX_MESSAGES: i32 = 100;
/// The first wait after a failed pull; doubled per failure in a row.
pub const PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between two failed pulls (plus up to a second of jitter).
pub const PULL_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait after `streak` failures in a row (1 = the first).
pub fn pull_backoff(streak: u32) -> Duration {
    let base = PULL_BACKOFF_INITIAL
        .saturating_mul(1u32 << streak.saturating_sub(1).min(16))
        .min(PULL_BACKOFF_MAX);
    base + Duration::from_millis(rand::rng().random_range(0..=1000))
}

/// What one pulled batch settled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Safe to acknowledge: marked, malformed, or not subscribed.
    pub ack: Vec<String>,
    /// Left for Pub/Sub to deliver again (the store failed).
    pub unacked: Vec<String>,
    /// Some mailbox became due.
    pub due: bool,
}

/// Marks what `received` names (one mark per mailbox, at the highest
/// historyId among its messages) and sorts the ack IDs accordingly.
pub async fn settle(store: &Store, received: Vec<Received>) -> Settled {
    let mut out = Settled::default();
    let mut by_mailbox: BTreeMap<MailboxAddress, (HistoryId, Vec<String>)> = BTreeMap::new();
    for r in received {
        match r.notification {
            Ok(n) => {
                let e = by_mailbox
                    .entry(n.mailbox)
                    .or_insert((n.history_id, Vec::new()));
                e.0 = e.0.max(n.history_id);
                e.1.push(r.ack_id);
            }
            Err(why) => {
                events::PushNotification {
                    outcome: "malformed",
                    mailbox: None,
                    detail: Some(&why),
                }
                .emit();
                out.ack.push(r.ack_id);
            }
        }
    }
    for (mailbox, (history_id, acks)) in by_mailbox {
        match store.mark_notified(&mailbox, history_id, Utc::now()).await {
            Ok(outcome) => {
                out.due |= outcome == NotifyOutcome::Due;
                for _ in &acks {
                    events::PushNotification {
                        outcome: outcome.as_str(),
                        mailbox: Some(&mailbox),
                        detail: None,
                    }
                    .emit();
                }
                out.ack.extend(acks);
            }
            Err(e) => {
                events::DbError {
                    operation: "mark_notified",
                    error: &e,
                }
                .emit();
                for _ in &acks {
                    events::PushNotification {
                        outcome: "store_error",
                        mailbox: Some(&mailbox),
                        detail: None,
                    }
                    .emit();
                }
                out.unacked.extend(acks);
            }
        }
    }
    out
}

/// Pulls until `token` fires. `wake` is the dispatcher's channel.
pub async fn run(
    pubsub: Arc<PubSub>,
    store: Store,
    wake: mpsc::Sender<Tick>,
    token: CancellationToken,
) {
    tracing::info!(
        subscription = pubsub.subscription(),
        "Pulling Gmail push notifications."
    );
    let mut failures = 0u32;
    let mut store_failures = 0u32;
    loop {
        let iteration = async {
            let received = match pubsub.pull(PULL_MAX_MESSAGES).await {
                Ok(r) => {
                    if failures > 0 {
                        events::PushPullRecovered { failures }.emit();
                        failures = 0;
                    }
                    r
                }
                Err(error) => {
                    failures += 1;
                    let delay = pull_backoff(failures);
                    events::PushPullFailed {
                        error: &error,
                        streak: failures,
                        delay,
                    }
                    .emit();
                    tokio::time::sleep(delay).await;
                    return;
                }
            };
            if received.is_empty() {
                return;
            }
            let settled = settle(&store, received).await;
            if settled.due {
                // A full channel already holds a pending claim: nothing to add.
                let _ = wake.try_send(Tick::SlotFreed);
            }
            match pubsub.acknowledge(&settled.ack).await {
                Ok(()) => events::PushAcked {
                    count: settled.ack.len(),
                }
                .emit(),
                // Delivered again after the ack deadline, and marked again.
                Err(e) => tracing::warn!(
                    error = %e,
                    count = settled.ack.len(),
                    "Acknowledging push notifications failed; Pub/Sub will deliver them again."
                ),
            }
            if settled.unacked.is_empty() {
                store_failures = 0;
            } else {
                // The database is failing: Pub/Sub keeps those messages; do
                // not pull more as fast as it hands them out.
                store_failures += 1;
                tokio::time::sleep(pull_backoff(store_failures)).await;
            }
        };
        tokio::select! {
            () = token.cancelled() => break,
            () = iteration => {}
        }
    }
    tracing::info!("Stopped pulling Gmail push notifications.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_backoff_doubles_and_is_bounded() {
        assert!(pull_backoff(1) >= PULL_BACKOFF_INITIAL);
        assert!(pull_backoff(1) <= PULL_BACKOFF_INITIAL + Duration::from_secs(1));
        assert!(pull_backoff(3) >= PULL_BACKOFF_INITIAL * 4);
        for streak in [7, 40, u32::MAX] {
            let d = pull_backoff(streak);
            assert!(d >= PULL_BACKOFF_MAX, "{d:?}");
            assert!(d <= PULL_BACKOFF_MAX + Duration::from_secs(1), "{d:?}");
        }
    }
}
