//! Quota-unit limiters: per mailbox per minute, per project per minute and per
//! day, plus a per-mailbox cap on requests in flight.
//!
//! Each per-minute limit is a GCRA-style token bucket: it refills at
//! `rate = (limit × (1 − margin) − burst) / 60` units per second and holds at
//! most `burst` units. Over any 60-second window it grants at most
//! `burst + 60 × rate = limit × (1 − margin)`, so Google's rolling per-minute check is never
//! tripped by us, while steady state runs at `1 − margin` of the ceiling.
//! Reservations queue in arrival order (the bucket may go negative; each
//! caller sleeps until its own units are due), so waiters are served fairly.
//! Every Google call awaits [`QuotaLimiter::acquire`] first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::daily::{DailyBudget, Purpose};
use super::error::{ErrorClass, GoogleError};
use crate::config::{MethodCosts, SyncSettings};
use crate::events;

/// Fraction of each per-minute ceiling kept free to absorb clock and latency skew.
const SAFETY_MARGIN: f64 = 0.02;

/// The Gmail methods we call, with their discovery ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    GetProfile,
    LabelsList,
    HistoryList,
    MessagesList,
    MessagesGet,
    AttachmentsGet,
    Watch,
    Stop,
}

impl Method {
    pub fn id(self) -> &'static str {
        match self {
            Self::GetProfile => "gmail.users.getProfile",
            Self::LabelsList => "gmail.users.labels.list",
            Self::HistoryList => "gmail.users.history.list",
            Self::MessagesList => "gmail.users.messages.list",
            Self::MessagesGet => "gmail.users.messages.get",
            Self::AttachmentsGet => "gmail.users.messages.attachments.get",
            Self::Watch => "gmail.users.watch",
            Self::Stop => "gmail.users.stop",
        }
    }

    pub fn cost(self, costs: &MethodCosts) -> u32 {
        match self {
            Self::GetProfile => costs.get_profile,
            Self::LabelsList => costs.labels_list,
            Self::HistoryList => costs.history_list,
            Self::MessagesList => costs.messages_list,
            Self::MessagesGet => costs.messages_get,
            Self::AttachmentsGet => costs.attachments_get,
            Self::Watch => costs.watch,
            Self::Stop => costs.stop,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    /// Units available now; negative while reservations are queued.
    tokens: f64,
    burst: f64,
    /// Units per second.
    rate: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(limit: u32, max_cost: u32) -> Bucket {
        let limit = f64::from(limit.max(1));
        let burst = (limit * 0.01)
            .max(f64::from(max_cost) * 2.0)
            .min(limit / 2.0);
        let rate = ((limit * (1.0 - SAFETY_MARGIN) - burst) / 60.0).max(limit * 0.001);
        Bucket {
            tokens: burst,
            burst,
            rate,
            updated: Instant::now(),
        }
    }

    /// Debits `cost` and returns how long the caller must wait for it.
    fn reserve(&mut self, now: Instant, cost: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        self.tokens -= cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

struct MailboxQuota {
    bucket: Mutex<Bucket>,
    in_flight: Arc<Semaphore>,
}

/// The per-project budget shared by all replicas (the database, on
/// PostgreSQL). `reserve` adds `units` to the window's total if it stays
/// within `limit`, atomically, and says whether it did.
#[async_trait::async_trait]
pub trait SharedBudget: Send + Sync {
    async fn reserve(
        &self,
        window_start: DateTime<Utc>,
        units: i64,
        limit: i64,
    ) -> anyhow::Result<bool>;
}

/// Units reserved from the shared budget in chunks, so the database is asked
/// about once per `chunk` units rather than once per call.
struct SharedPool {
    budget: Arc<dyn SharedBudget>,
    limit: i64,
    chunk: i64,
    /// (window start, units reserved but not yet spent in that window).
    state: tokio::sync::Mutex<(Option<DateTime<Utc>>, i64)>,
}

fn minute_floor(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{DurationRound, TimeDelta};
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}

impl SharedPool {
    /// Waits until `units` are reserved in the current minute's shared window.
    async fn take(&self, units: i64) {
        loop {
            let now = Utc::now();
            let window = minute_floor(now);
            let mut state = self.state.lock().await;
            if state.0 != Some(window) {
                *state = (Some(window), 0);
            }
            if state.1 >= units {
                state.1 -= units;
                return;
            }
            let want = self.chunk.max(units);
            match self.budget.reserve(window, want, self.limit).await {
                Ok(true) => {
                    state.1 += want;
                    continue;
                }
                Ok(false) if want > units => {
                    // Not a whole chunk left: try for just what this call needs.
                    if let Ok(true) = self.budget.reserve(window, units, self.limit).await {
                        return;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // The database is unreachable: the local project bucket
                    // still bounds this replica; the store's own errors surface
                    // elsewhere. Do not stall the sync on bookkeeping.
                    tracing::warn!(error = %format!("{e:#}"), "Shared quota budget unavailable; limiting locally.");
                    return;
                }
            }
            drop(state);
            let next = window + chrono::TimeDelta::minutes(1);
            let wait = (next - Utc::now())
                .to_std()
                .unwrap_or(Duration::from_millis(100));
            events::QuotaThrottled {
                scope: "project",
                wait,
            }
            .emit();
            tokio::time::sleep(wait).await;
        }
    }
}

/// The limiters shared by every worker of a replica.
pub struct QuotaLimiter {
    costs: MethodCosts,
    user_limit: u32,
    per_mailbox_concurrency: usize,
    project: Mutex<Bucket>,
    /// The project's daily budget (shared through the database once
    /// `app::context` gives it the ledger).
    daily: DailyBudget,
    mailboxes: Mutex<HashMap<String, Arc<MailboxQuota>>>,
    /// Set on PostgreSQL: the project budget shared with the other replicas.
    shared: OnceLock<SharedPool>,
}

/// Held for the duration of one Google request: frees the mailbox's
/// in-flight slot when dropped.
#[derive(Debug)]
pub struct QuotaPermit {
    _in_flight: OwnedSemaphorePermit,
    pub units: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain numbers: a panic mid-update cannot break them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl QuotaLimiter {
    pub fn new(sync: &SyncSettings) -> QuotaLimiter {
        let costs = sync.method_costs.clone();
        let max_cost = [
            costs.get_profile,
            costs.labels_list,
            costs.history_list,
            costs.messages_list,
            costs.messages_get,
            costs.attachments_get,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        QuotaLimiter {
            user_limit: sync.user_quota_units_per_minute,
            per_mailbox_concurrency: sync.per_mailbox_concurrency,
            project: Mutex::new(Bucket::per_minute(
                sync.project_quota_units_per_minute,
                max_cost,
            )),
            daily: DailyBudget::new(
                sync.project_quota_units_per_day,
                sync.daily_incremental_reserve_fraction,
            ),
            mailboxes: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
            costs,
        }
    }

    /// Shares the per-project per-minute budget with other replicas through
    /// `budget` (first call wins).
    pub fn share_project_budget(&self, budget: Arc<dyn SharedBudget>, limit_per_minute: u32) {
        let limit = i64::from(limit_per_minute);
        let _ = self.shared.set(SharedPool {
            budget,
            limit,
            chunk: (limit / 100).max(100),
            state: tokio::sync::Mutex::new((None, 0)),
        });
    }

    /// The project's daily budget.
    pub fn daily(&self) -> &DailyBudget {
        &self.daily
    }

    pub fn cost(&self, method: Method) -> u32 {
        method.cost(&self.costs)
    }

    fn mailbox(&self, mailbox: &str) -> Arc<MailboxQuota> {
        let max_cost = self.costs.messages_get.max(self.costs.attachments_get);
        lock(&self.mailboxes)
            .entry(mailbox.to_owned())
            .or_insert_with(|| {
                Arc::new(MailboxQuota {
                    bucket: Mutex::new(Bucket::per_minute(self.user_limit, max_cost)),
                    in_flight: Arc::new(Semaphore::new(self.per_mailbox_concurrency)),
                })
            })
            .clone()
    }

    /// Waits for an in-flight slot and the method's units on the mailbox's and
    /// the project's budgets, charging the daily budget for `purpose`. Fails
    /// (rate-limited, with the time to wait) only when the project's daily
    /// budget is spent.
    pub async fn acquire(
        &self,
        mailbox: &str,
        method: Method,
        purpose: Purpose,
    ) -> Result<QuotaPermit, GoogleError> {
        let units = self.cost(method);
        let mq = self.mailbox(mailbox);
        let in_flight = mq.in_flight.clone().acquire_owned().await.map_err(|_| {
            GoogleError::new(ErrorClass::Fatal, method.id(), "quota limiter closed")
        })?;
        self.daily.charge(purpose, units, method.id()).await?;
        let now = Instant::now();
        let user_wait = lock(&mq.bucket).reserve(now, f64::from(units));
        let project_wait = lock(&self.project).reserve(now, f64::from(units));
        if let Some(shared) = self.shared.get() {
            shared.take(i64::from(units)).await;
        }
        let wait = user_wait.max(project_wait);
        if !wait.is_zero() {
            events::QuotaThrottled {
                scope: if project_wait > user_wait {
                    "project"
                } else {
                    "user"
                },
                wait,
            }
            .emit();
            tokio::time::sleep(wait).await;
        }
        events::QuotaUnitsSpent {
            method: method.id(),
            units,
        }
        .emit();
        Ok(QuotaPermit {
            _in_flight: in_flight,
            units,
        })
    }

    /// Drops the state of mailboxes no longer synced (idle memory stays bounded).
    pub fn forget(&self, mailbox: &str) {
        lock(&self.mailboxes).remove(mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_never_grants_more_than_its_limit_in_any_minute() {
        let start = Instant::now();
        let mut b = Bucket::per_minute(6000, 20);
        // Reserve 20-unit calls back to back and record when each may go.
        let mut grants = Vec::new();
        let mut t = start;
        for _ in 0..2000 {
            let wait = b.reserve(t, 20.0);
            grants.push(t + wait);
            t += Duration::from_millis(1);
        }
        grants.sort();
        // Sliding 60 s window over grant times.
        let mut lo = 0;
        let mut max_units = 0;
        for hi in 0..grants.len() {
            while grants[hi] - grants[lo] >= Duration::from_secs(60) {
                lo += 1;
            }
            max_units = max_units.max((hi - lo + 1) * 20);
        }
        assert!(max_units <= 6000, "granted {max_units} units in a minute");
        // And it runs close to the ceiling: 2000 calls × 20 units at ≥ 95 %.
        let span = (*grants.last().unwrap() - grants[0]).as_secs_f64();
        let rate_per_min = (2000.0 * 20.0) / span * 60.0;
        assert!(
            rate_per_min >= 0.95 * 6000.0,
            "only {rate_per_min} units/min"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_per_mailbox_are_capped() {
        let settings =
            crate::config::Settings::load_from(std::path::Path::new("/nonexistent"), None, &[])
                .unwrap();
        let mut sync = settings.sync;
        sync.per_mailbox_concurrency = 2;
        let q = QuotaLimiter::new(&sync);
        let a = q
            .acquire("a@example.com", Method::GetProfile, Purpose::Incremental)
            .await
            .unwrap();
        let _b = q
            .acquire("a@example.com", Method::GetProfile, Purpose::Incremental)
            .await
            .unwrap();
        let third = tokio::time::timeout(
            Duration::from_secs(1),
            q.acquire("a@example.com", Method::GetProfile, Purpose::Incremental),
        )
        .await;
        assert!(third.is_err(), "a third request went in flight");
        // Another mailbox is not affected.
        q.acquire("b@example.com", Method::GetProfile, Purpose::Incremental)
            .await
            .unwrap();
        drop(a);
        q.acquire("a@example.com", Method::GetProfile, Purpose::Incremental)
            .await
            .unwrap();
    }

    /// A shared budget kept in memory, per window, like the database's.
    struct FakeBudget(Mutex<HashMap<DateTime<Utc>, i64>>);

    #[async_trait::async_trait]
    impl SharedBudget for FakeBudget {
        async fn reserve(
            &self,
            window: DateTime<Utc>,
            units: i64,
            limit: i64,
        ) -> anyhow::Result<bool> {
            let mut m = self.0.lock().unwrap();
            let total = m.entry(window).or_default();
            if *total + units <= limit {
                *total += units;
                Ok(true)
            } else {
                Ok(false)
            }
        }
    }

    #[tokio::test]
    async fn replicas_never_spend_more_than_the_shared_project_budget() {
        let budget: Arc<dyn SharedBudget> = Arc::new(FakeBudget(Mutex::new(HashMap::new())));
        let pool = |b: &Arc<dyn SharedBudget>| SharedPool {
            budget: b.clone(),
            limit: 1000,
            chunk: 100,
            state: tokio::sync::Mutex::new((None, 0)),
        };
        let (a, b) = (pool(&budget), pool(&budget));
        // 1000 units fit: 25 calls of 20 on each replica.
        for _ in 0..25 {
            a.take(20).await;
            b.take(20).await;
        }
        // The next call must wait for the next minute's window.
        let blocked = tokio::time::timeout(Duration::from_millis(200), a.take(20)).await;
        assert!(blocked.is_err(), "a replica spent beyond the shared budget");
    }

    #[tokio::test]
    async fn the_daily_budget_refuses_with_a_retry_hint() {
        let settings =
            crate::config::Settings::load_from(std::path::Path::new("/nonexistent"), None, &[])
                .unwrap();
        let mut sync = settings.sync;
        sync.project_quota_units_per_day = 30;
        let q = QuotaLimiter::new(&sync);
        q.acquire("a@example.com", Method::MessagesGet, Purpose::Incremental)
            .await
            .unwrap();
        let e = q
            .acquire("a@example.com", Method::MessagesGet, Purpose::Backfill)
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert!(e.retry_after.is_some());
    }
}
