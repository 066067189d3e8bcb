//! The long-running service: scheduler, worker pool, the Gmail push pull
//! loop (with `push.enabled`), HTTP endpoints.
//!
//! [`run`] owns the one `CancellationToken` and the one `TaskTracker`; it is
//! the only place that spawns long-lived tasks. On shutdown it stops the
//! scheduler and claiming, lets in-flight mailboxes finish their current
//! transaction (they stop at the next batch boundary), releases their leases,
//! and waits for the tracker until `http.shutdown_grace` — failing if
//! anything is still running then.

pub mod lease;
pub mod notify;
pub mod push;
pub mod scheduler;
pub mod watches;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::scheduler::Tick;
use self::worker::{Pool, ResyncRequests};
use crate::domain::{MailboxAddress, SubscriptionStatus, SyncPhase};
use crate::events;
use crate::http::Health;
use crate::store::WatchState;
use crate::sync::context::SyncContext;
use crate::sync::gate;

/// The longest a tick handler (a claim, the fleet gauges) may take.
const TICK_HANDLER_LIMIT: Duration = Duration::from_secs(60);

/// Runs until `shutdown` resolves; then drains within the grace period.
pub async fn run(
    ctx: SyncContext,
    listener: TcpListener,
    oauth_listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let settings = ctx.settings.clone();
    let health = Arc::new(Health::new(
        scheduler::poll_tick(&settings) * 3 + Duration::from_secs(5),
        settings.integration.enabled,
    ));
    if !settings.integration.enabled {
        tracing::warn!("integration.enabled is false: the daemon ingests nothing.");
    }

    let http_token = token.clone();
    let http_state = crate::http::HttpState::new(ctx.store.clone(), health.clone());
    let http_limits = settings.http.limits();
    let http_task = tokio::spawn(async move {
        crate::http::serve(
            listener,
            http_state,
            http_limits,
            http_token.cancelled_owned(),
        )
        .await
    });

    let oauth_task = match (oauth_listener, ctx.oauth.clone()) {
        (Some(l), Some(svc)) => {
            let t = token.clone();
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "Serving the OAuth consent pages.");
            }
            let limits = settings.oauth.limits(settings.http.shutdown_grace);
            Some(tokio::spawn(async move {
                crate::oauth::web::serve(l, svc, limits, t.cancelled_owned()).await
            }))
        }
        _ => None,
    };

    let (tx, mut rx) = mpsc::channel::<Tick>(16);
    let mut sched = scheduler::start(&settings, tx.clone()).await?;
    // A first tick right away rather than after one period.
    let _ = tx.try_send(Tick::Poll);
    let _ = tx.try_send(Tick::Fleet);
    let _ = tx.try_send(Tick::Housekeeping);
    let _ = tx.try_send(Tick::GroupRecheck);
    if settings.push.enabled {
        let _ = tx.try_send(Tick::WatchStop);
    }

    let pool = Pool {
        ctx: ctx.clone(),
        permits: Arc::new(Semaphore::new(settings.sync.max_concurrent_mailboxes)),
        tracker: tracker.clone(),
        shutdown: token.clone(),
        resync: Arc::new(ResyncRequests::default()),
        wake: tx.clone(),
    };
    // Gmail push: notifications make mailboxes due and wake the dispatcher.
    if settings.integration.enabled
        && let Some(pubsub) =
            crate::google::pubsub::PubSub::from_settings(ctx.google.clone(), &settings.push)
    {
        tracker.spawn(push::run(
            Arc::new(pubsub),
            ctx.store.clone(),
            tx.clone(),
            token.clone(),
        ));
    }
    tracing::info!(replica = %ctx.replica, backend = ctx.store.backend(), "Daemon started.");
    notify::notify("READY=1");

    tokio::pin!(shutdown);
    // If the scheduler falls silent, dispatch anyway and start a new one:
    // tokio-cron-scheduler's repeated jobs never fire again once the process
    // was paused past their period (SIGSTOP, a VM pause, a clock step), which
    // would leave /readyz stale for good. Readiness reports the silent window.
    let silence = health.tick_budget;
    loop {
        let tick = tokio::select! {
            () = &mut shutdown => break,
            tick = tokio::time::timeout(silence, rx.recv()) => match tick {
                Ok(Some(tick)) => tick,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "The scheduler sent no tick for {:?}; restarting it and dispatching meanwhile.",
                        silence
                    );
                    let _ = tokio::time::timeout(Duration::from_secs(5), sched.shutdown()).await;
                    match scheduler::start(&settings, tx.clone()).await {
                        Ok(s) => sched = s,
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "Could not restart the scheduler."),
                    }
                    Tick::SlotFreed
                }
            },
        };
        // A tick handler must never wedge the loop: each is bounded.
        if tokio::time::timeout(
            TICK_HANDLER_LIMIT,
            handle_tick(tick, &pool, &health, &tracker),
        )
        .await
        .is_err()
        {
            tracing::error!(
                ?tick,
                "A scheduler tick took longer than {:?} and was abandoned.",
                TICK_HANDLER_LIMIT
            );
        }
    }

    tracing::info!("Shutting down: no new claims; in-flight mailboxes finish their current batch.");
    notify::notify("STOPPING=1");
    token.cancel();
    let _ = sched.shutdown().await;
    tracker.close();
    let grace = settings.http.shutdown_grace;
    let drained = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    let _ = http_task.await;
    if let Some(t) = oauth_task {
        let _ = t.await;
    }
    if !drained {
        anyhow::bail!(
            "shutdown grace of {} expired with {} task(s) still running",
            humantime::format_duration(grace),
            tracker.len()
        );
    }
    tracing::info!("Shutdown complete.");
    Ok(())
}

async fn handle_tick(tick: Tick, pool: &Pool, health: &Health, tracker: &TaskTracker) {
    events::SchedulerTick.emit();
    match tick {
        Tick::Poll | Tick::SlotFreed => {
            if tick == Tick::Poll {
                health.ticked();
            }
            if !health.integration_enabled {
                return;
            }
            if let Err(e) = pool.dispatch().await {
                let e: &(dyn std::error::Error + 'static) = e.as_ref();
                events::DbError {
                    operation: "claim_due",
                    error: e,
                }
                .emit();
            }
        }
        Tick::FullResync => {
            tracing::info!("Reconciliation full resync requested for every mailbox.");
            pool.resync.request_all();
        }
        Tick::OrgUnitRecheck => {
            if health.integration_enabled {
                let ctx = pool.ctx.clone();
                spawn_background(
                    pool,
                    tracker,
                    "Org-unit re-check failed; retrying at the next tick.",
                    async move { gate::check_all(&ctx).await },
                );
            }
        }
        Tick::GroupRecheck => {
            if health.integration_enabled {
                let ctx = pool.ctx.clone();
                spawn_background(
                    pool,
                    tracker,
                    "Group re-expansion failed; retrying at the next interval.",
                    async move {
                        crate::groups::reexpand_all(
                            &ctx.store,
                            &ctx.google,
                            &ctx.settings,
                            &ctx.policy,
                        )
                        .await
                    },
                );
            }
        }
        Tick::Housekeeping => {
            let ctx = pool.ctx.clone();
            spawn_background(
                pool,
                tracker,
                "Housekeeping failed; retrying at the next tick.",
                async move { housekeeping(&ctx, Utc::now()).await.map(|_| ()) },
            );
        }
        Tick::WatchStop => {
            if health.integration_enabled {
                let ctx = pool.ctx.clone();
                spawn_background(
                    pool,
                    tracker,
                    "Stopping push watches failed; retrying at the next tick.",
                    async move { watches::stop_unadmitted(&ctx).await },
                );
            }
        }
        Tick::Fleet | Tick::Reminder => match fleet_snapshot(&pool.ctx).await {
            Ok(f) if tick == Tick::Reminder => {
                health.auth_failed.store(f.auth_failed, Ordering::Relaxed);
                events::Reminder {
                    reviews_overdue: f.reviews_overdue,
                    history_window_at_risk: f.at_risk,
                }
                .emit()
            }
            Ok(f) => health.auth_failed.store(f.auth_failed, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "Could not refresh fleet gauges."),
        },
    }
}

/// Runs a periodic job beside the dispatcher, on the tracker (so shutdown
/// waits for it) and until shutdown; its failure is one WARN, `failed`, and
/// the next tick tries again.
fn spawn_background<T>(
    pool: &Pool,
    tracker: &TaskTracker,
    failed: &'static str,
    job: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) {
    let token = pool.shutdown.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = token.cancelled() => {}
            r = job => {
                if let Err(e) = r {
                    tracing::warn!(error = %format!("{e:#}"), "{failed}");
                }
            }
        }
    });
}

/// Quota windows kept: the limiter only reads the current minute; a day is
/// kept for diagnosis.
const QUOTA_WINDOWS_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Deletes what only grows: `sync_runs` past `sync.run_retention` and quota
/// windows past [`QUOTA_WINDOWS_KEPT`]. Every replica may run it; the deletes
/// are idempotent.
pub async fn housekeeping(
    ctx: &SyncContext,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<crate::store::Pruned> {
    let retention = ctx.settings.sync.run_retention;
    // Zero keeps every run; a retention reaching before the epoch too.
    let runs_before = chrono::TimeDelta::from_std(retention)
        .ok()
        .filter(|keep| !keep.is_zero())
        .and_then(|keep| now.checked_sub_signed(keep));
    let pruned = ctx
        .store
        .prune_history(runs_before, now - QUOTA_WINDOWS_KEPT, 5_000)
        .await?;
    events::Pruned { pruned: &pruned }.emit();
    Ok(pruned)
}

/// Publishes the project's daily budget as the database counts it.
async fn daily_quota_gauges(ctx: &SyncContext) -> anyhow::Result<()> {
    let plan = ctx.google.quota_limiter().daily().plan().await?;
    events::DailyQuota {
        used_units: plan.used,
        budget_units: plan.budget,
        reserve_units: plan.reserve,
        exhaustion: plan
            .exhaustion_at
            .map(|t| (t - plan.now).to_std().unwrap_or_default()),
        reset: (plan.reset_at - plan.now).to_std().unwrap_or_default(),
    }
    .emit();
    Ok(())
}

/// What the fleet snapshot found, beyond the gauges it emits.
struct Fleet {
    reviews_overdue: u64,
    /// Mailboxes at risk of the history window.
    at_risk: u64,
    /// Active mailboxes in `auth_failed` (shown by `/readyz`).
    auth_failed: u64,
}

/// Computes the fleet gauges from the database (cheap: one row per mailbox).
async fn fleet_snapshot(ctx: &SyncContext) -> anyhow::Result<Fleet> {
    if let Err(e) = daily_quota_gauges(ctx).await {
        tracing::warn!(error = %format!("{e:#}"), "Could not refresh the daily quota gauges.");
    }
    let subs = ctx.store.list_subscriptions().await?;
    let states = ctx.store.list_sync_states().await?;
    let now = Utc::now();
    let mut by_phase: Vec<(SyncPhase, u64)> = SyncPhase::ALL.iter().map(|p| (*p, 0)).collect();
    let mut oldest: Option<chrono::Duration> = None;
    let mut at_risk = 0u64;
    let mut watches: Vec<(WatchState, u64)> = WatchState::ALL.iter().map(|w| (*w, 0)).collect();
    let window = chrono::Duration::from_std(ctx.settings.sync.history_window_alert)
        .unwrap_or_else(|_| chrono::Duration::days(5));
    // A set, not a scan of `subs` per state: at 10,000 mailboxes that was
    // 10^8 comparisons every 30 s.
    let active: std::collections::HashSet<&MailboxAddress> = subs
        .iter()
        .filter(|s| s.status == SubscriptionStatus::Active)
        .map(|s| &s.mailbox)
        .collect();
    for st in &states {
        if !active.contains(&st.mailbox) {
            continue;
        }
        if let Some(e) = by_phase.iter_mut().find(|(p, _)| *p == st.phase) {
            e.1 += 1;
        }
        let watch = st.watch_state(now);
        if let Some(e) = watches.iter_mut().find(|(w, _)| *w == watch) {
            e.1 += 1;
        }
        if let Some(t) = st.last_success_at {
            let lag = now - t;
            oldest = Some(oldest.map_or(lag, |o| o.max(lag)));
            if lag > window {
                at_risk += 1;
            }
        }
    }
    let overdue = subs
        .iter()
        .filter(|s| crate::subscriptions::review_overdue(&ctx.policy, s, now))
        .count() as u64;
    events::FleetSnapshot {
        by_phase: &by_phase,
        oldest_lag: oldest.and_then(|d| d.to_std().ok()),
        reviews_overdue: overdue,
        history_window_at_risk: at_risk,
    }
    .emit();
    let by_state: Vec<(&'static str, u64)> =
        watches.iter().map(|(w, n)| (w.as_str(), *n)).collect();
    events::WatchGauge {
        by_state: &by_state,
    }
    .emit();
    let auth_failed = by_phase
        .iter()
        .find(|(p, _)| *p == SyncPhase::AuthFailed)
        .map_or(0, |(_, n)| *n);
    Ok(Fleet {
        reviews_overdue: overdue,
        at_risk,
        auth_failed,
    })
}
