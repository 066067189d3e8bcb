//! Push watches follow the subscriptions out of `active`: a tick (every
//! [`STOP_TICK`], with push on) lists the mailboxes paused, removed,
//! suspended or back in pending whose watch has not expired, claims each
//! stop with a compare-and-set (so one replica calls it), and calls
//! `users.stop` — through domain-wide delegation for a delegated mailbox,
//! through its owner's consent for an OAuth one.
//!
//! `users.stop` is the one Gmail call made for a mailbox that is no longer
//! admitted, and it reads nothing. A failure is recorded in
//! `sync_state.watch_error` and not retried: the watch lapses by itself at
//! its expiry (at most 7 days), and notifications for a mailbox that is not
//! active change nothing. Making and renewing watches is the engine's
//! (`sync::engine::watch`), under the mailbox's lease.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::domain::AuthMode;
use crate::events;
use crate::google::error::{ErrorClass, GoogleError};
use crate::google::gmail::CallStats;
use crate::store::WatchToStop;
use crate::sync::context::SyncContext;

/// How often the daemon looks for watches to stop.
pub const STOP_TICK: Duration = Duration::from_secs(10);

/// Watches stopped per tick at most (the rest wait for the next one).
const STOPS_PER_TICK: usize = 100;

/// Stops the watches of mailboxes no longer active; returns how many it
/// stopped. Does nothing with push off.
pub async fn stop_unadmitted(ctx: &SyncContext) -> anyhow::Result<usize> {
    if !ctx.settings.push.enabled {
        return Ok(0);
    }
    let now = Utc::now();
    let mut stopped = 0;
    for w in ctx.store.watches_to_stop(now, STOPS_PER_TICK).await? {
        if !ctx.store.take_watch_to_stop(&w, Utc::now()).await? {
            continue;
        }
        match stop_one(ctx, &w).await {
            Ok(()) => {
                events::WatchCall {
                    call: "stop",
                    outcome: "ok",
                }
                .emit();
                events::WatchStopped {
                    mailbox: &w.mailbox,
                    status: w.status.as_str(),
                }
                .emit();
                stopped += 1;
            }
            Err(e) => {
                events::WatchCall {
                    call: "stop",
                    outcome: e.class.as_str(),
                }
                .emit();
                let error = format!(
                    "users.stop failed: {e}; the watch lapses at {}",
                    w.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
                events::WatchFailed {
                    mailbox: &w.mailbox,
                    call: "stop",
                    error: &error,
                }
                .emit();
                ctx.store
                    .record_watch_stop_failure(&w.mailbox, &error, Utc::now())
                    .await?;
            }
        }
    }
    Ok(stopped)
}

/// One `users.stop`, with the mailbox's own credentials.
async fn stop_one(ctx: &SyncContext, w: &WatchToStop) -> Result<(), GoogleError> {
    let calls = Arc::new(CallStats::default());
    let gmail = match w.auth_mode {
        AuthMode::Delegated => ctx.google.gmail(&w.mailbox, calls).await?,
        AuthMode::OAuth => match &ctx.oauth {
            Some(o) => ctx
                .google
                .gmail_oauth(&w.mailbox, o.tokens().clone(), calls),
            None => {
                return Err(GoogleError::new(
                    ErrorClass::Fatal,
                    crate::google::auth::TOKEN_METHOD,
                    "an OAuth subscription, but oauth.enabled is false",
                ));
            }
        },
    };
    gmail.stop().await
}
