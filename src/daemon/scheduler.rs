//! tokio-cron-scheduler jobs. They decide what is due and say so on a
//! bounded channel; they never sync inline, so a slow job cannot pile up.
//! A tick that finds the channel full is dropped: ticks are idempotent.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Claim mailboxes whose `next_poll_at` has come.
    Poll,
    /// A worker finished and freed a slot: claim again now rather than at
    /// the next tick (not a scheduler tick: readiness does not count it).
    SlotFreed,
    /// The reconciliation full resync (`sync.full_resync_cron`).
    FullResync,
    /// Re-check every subscription's org unit.
    OrgUnitRecheck,
    /// Re-expand every group subscription (`policy.group_recheck_interval`).
    GroupRecheck,
    /// Refresh fleet gauges: phases, lag, overdue reviews, history-window risk.
    Fleet,
    /// Log overdue reviews (WARN) and history-window risk (ERROR).
    Reminder,
    /// Delete `sync_runs` past `sync.run_retention` and old quota windows.
    Housekeeping,
    /// Stop the push watches of mailboxes no longer active (with push on).
    WatchStop,
}

/// How often the dispatcher looks for due mailboxes: a tenth of the poll
/// interval, between 1 s and 5 s (tokio-cron-scheduler counts repeats in
/// whole seconds: a shorter period would never fire).
pub fn poll_tick(settings: &Settings) -> Duration {
    (settings.sync.poll_interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

fn repeated(every: Duration, tx: &mpsc::Sender<Tick>, tick: Tick) -> anyhow::Result<Job> {
    let every = every.max(Duration::from_secs(1));
    let tx = tx.clone();
    Job::new_repeated_async(every, move |_, _| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.try_send(tick);
        })
    })
    .with_context(|| format!("scheduling {tick:?}"))
}

/// Builds and starts the scheduler. The caller shuts it down.
pub async fn start(settings: &Settings, tx: mpsc::Sender<Tick>) -> anyhow::Result<JobScheduler> {
    let sched = JobScheduler::new()
        .await
        .context("creating the scheduler")?;
    sched
        .add(repeated(poll_tick(settings), &tx, Tick::Poll)?)
        .await?;
    sched
        .add(repeated(
            settings.sync.org_unit_recheck_interval,
            &tx,
            Tick::OrgUnitRecheck,
        )?)
        .await?;
    sched
        .add(repeated(
            settings.policy.group_recheck_interval,
            &tx,
            Tick::GroupRecheck,
        )?)
        .await?;
    sched
        .add(repeated(Duration::from_secs(30), &tx, Tick::Fleet)?)
        .await?;
    if settings.push.enabled {
        sched
            .add(repeated(super::watches::STOP_TICK, &tx, Tick::WatchStop)?)
            .await?;
    }
    sched
        .add(repeated(Duration::from_secs(3600), &tx, Tick::Reminder)?)
        .await?;
    sched
        .add(repeated(
            Duration::from_secs(3600),
            &tx,
            Tick::Housekeeping,
        )?)
        .await?;
    let resync_tx = tx.clone();
    let cron = Job::new_async(settings.sync.full_resync_cron.as_str(), move |_, _| {
        let tx = resync_tx.clone();
        Box::pin(async move {
            let _ = tx.try_send(Tick::FullResync);
        })
    })
    .context("scheduling sync.full_resync_cron")?;
    sched.add(cron).await?;
    sched.start().await.context("starting the scheduler")?;
    Ok(sched)
}
