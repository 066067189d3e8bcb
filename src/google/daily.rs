//! The project's daily quota budget: counted once for the project, in the
//! database's `quota_daily` (through a [`DailyLedger`]), per Pacific day.
//!
//! Google resets the daily quota at midnight America/Los_Angeles, so the day
//! here is the Pacific calendar day (chrono-tz, DST-aware: a spring day is
//! 23 hours long, an autumn one 25). Each replica reserves units from the
//! ledger in chunks (a thousandth of the budget, at most 100,000 units), one
//! pool per [`Purpose`], so a quiet fleet writes once per chunk rather than
//! once per call; a chunk left unspent when a replica stops or the day
//! rolls over stays counted (the count is an upper bound on what was spent,
//! off by at most two chunks per replica).
//!
//! [`DayPlan`] is the planning: backfills (full syncs and resyncs) may spend
//! only down to a reserve kept for incremental passes, sized from the
//! fleet's measured incremental rate until the next reset (or a fixed
//! fraction of the budget, whichever is larger), so new mail keeps flowing
//! all day. Only the whole budget refuses a call; the reserve is applied by
//! the engine between pages of a listing (`DayPlan::backfill`).
//! This module never reads the wall clock except through its [`Clock`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::America::Los_Angeles;

use super::error::{ErrorClass, GoogleError};

/// Where "now" comes from: the wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// How much larger than the measured incremental need the reserve is kept.
const RESERVE_HEADROOM: f64 = 1.25;

/// The incremental rate is measured over at least this long (just after
/// midnight a few quiet polls would otherwise look like a rate).
const MIN_RATE_WINDOW_SECS: f64 = 900.0;

/// The Pacific calendar day `t` falls on: the quota day Google counts it in.
pub fn pacific_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&Los_Angeles).date_naive()
}

/// When the Pacific day `day` begins (its midnight), in UTC.
pub fn day_start(day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(NaiveTime::MIN);
    // Los Angeles changes its clocks at 02:00, so midnight always exists
    // once; the fallback (PST) is for a tz database that ever says otherwise.
    Los_Angeles
        .from_local_datetime(&midnight)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| midnight.and_utc() + TimeDelta::hours(8))
}

/// The next Pacific midnight after `t`: when the daily quota resets.
pub fn next_reset(t: DateTime<Utc>) -> DateTime<Utc> {
    let day = pacific_day(t);
    day_start(day.succ_opt().unwrap_or(day))
}

/// What a Gmail call is for: incremental passes are planned ahead of
/// backfills (full syncs and resyncs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Incremental,
    Backfill,
}

/// Units reserved on one Pacific day by the whole project.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayUsage {
    pub units: i64,
    /// The part reserved for backfills.
    pub backfill_units: i64,
}

/// The project's daily count, shared by every replica (the database).
/// `reserve` adds `units` to `day`'s total if it stays within `limit`,
/// atomically, and says whether it did.
#[async_trait::async_trait]
pub trait DailyLedger: Send + Sync {
    async fn reserve(
        &self,
        day: NaiveDate,
        units: i64,
        limit: i64,
        purpose: Purpose,
    ) -> anyhow::Result<bool>;

    async fn usage(&self, day: NaiveDate) -> anyhow::Result<DayUsage>;
}

/// A ledger in memory, for a process without a database (and unit tests).
#[derive(Default)]
pub struct MemoryLedger(Mutex<HashMap<NaiveDate, DayUsage>>);

#[async_trait::async_trait]
impl DailyLedger for MemoryLedger {
    async fn reserve(
        &self,
        day: NaiveDate,
        units: i64,
        limit: i64,
        purpose: Purpose,
    ) -> anyhow::Result<bool> {
        let mut days = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let usage = days.entry(day).or_default();
        if usage.units + units > limit {
            return Ok(false);
        }
        usage.units += units;
        if purpose == Purpose::Backfill {
            usage.backfill_units += units;
        }
        Ok(true)
    }

    async fn usage(&self, day: NaiveDate) -> anyhow::Result<DayUsage> {
        let days = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(days.get(&day).copied().unwrap_or_default())
    }
}

/// Units this replica reserved and has not spent yet, per purpose, on `day`.
#[derive(Debug, Default)]
struct Pools {
    day: Option<NaiveDate>,
    incremental: i64,
    backfill: i64,
}

impl Pools {
    fn of(&mut self, purpose: Purpose) -> &mut i64 {
        match purpose {
            Purpose::Incremental => &mut self.incremental,
            Purpose::Backfill => &mut self.backfill,
        }
    }
}

/// The daily budget as one replica sees it.
pub struct DailyBudget {
    limit: i64,
    chunk: i64,
    reserve_fraction: f64,
    ledger: RwLock<Arc<dyn DailyLedger>>,
    clock: RwLock<Clock>,
    /// Held across the ledger's reservation, so one replica asks the
    /// database for one chunk at a time.
    pools: tokio::sync::Mutex<Pools>,
}

impl DailyBudget {
    /// A budget of `limit` units per Pacific day, counted in memory until
    /// [`DailyBudget::share`] gives it the project's ledger.
    pub fn new(limit: u64, reserve_fraction: f64) -> DailyBudget {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        DailyBudget {
            limit,
            chunk: (limit / 1000).clamp(1, 100_000),
            reserve_fraction: reserve_fraction.clamp(0.0, 1.0),
            ledger: RwLock::new(Arc::new(MemoryLedger::default())),
            clock: RwLock::new(system_clock()),
            pools: tokio::sync::Mutex::new(Pools::default()),
        }
    }

    /// Counts against the project's ledger from now on.
    pub fn share(&self, ledger: Arc<dyn DailyLedger>) {
        *self.ledger.write().unwrap_or_else(|p| p.into_inner()) = ledger;
    }

    /// Reads "now" from `clock` from now on (tests).
    pub fn set_clock(&self, clock: Clock) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = clock;
    }

    pub fn now(&self) -> DateTime<Utc> {
        let clock = self.clock.read().unwrap_or_else(|p| p.into_inner()).clone();
        clock()
    }

    fn ledger(&self) -> Arc<dyn DailyLedger> {
        self.ledger
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Units reserved from the ledger at a time.
    pub fn chunk(&self) -> i64 {
        self.chunk
    }

    /// Charges `units` for `method` to today's budget. Fails (rate-limited,
    /// retry after the next Pacific midnight) only when the project's whole
    /// daily budget is spent.
    pub async fn charge(
        &self,
        purpose: Purpose,
        units: u32,
        method: &'static str,
    ) -> Result<(), GoogleError> {
        let units = i64::from(units);
        let now = self.now();
        let today = pacific_day(now);
        let mut pools = self.pools.lock().await;
        if pools.day != Some(today) {
            // Yesterday's unspent chunks stay counted on yesterday's row.
            *pools = Pools {
                day: Some(today),
                ..Pools::default()
            };
        }
        if *pools.of(purpose) >= units {
            *pools.of(purpose) -= units;
            return Ok(());
        }
        let ledger = self.ledger();
        let want = self.chunk.max(units);
        let granted = match ledger.reserve(today, want, self.limit, purpose).await {
            Ok(true) => Ok(want),
            // Not a whole chunk left: just what this call needs.
            Ok(false) if want > units => ledger
                .reserve(today, units, self.limit, purpose)
                .await
                .map(|ok| if ok { units } else { 0 }),
            Ok(false) => Ok(0),
            Err(e) => Err(e),
        };
        match granted {
            Ok(0) => {
                let mut e = GoogleError::new(
                    ErrorClass::RateLimited,
                    method,
                    "the project's daily quota budget (sync.project_quota_units_per_day) is spent until midnight Pacific time",
                );
                e.retry_after = (next_reset(now) - now).to_std().ok();
                Err(e)
            }
            Ok(n) => {
                *pools.of(purpose) += n - units;
                Ok(())
            }
            Err(e) => {
                // The database is unreachable: its own errors surface where
                // the pass writes; do not stall the sync on bookkeeping.
                tracing::warn!(error = %format!("{e:#}"), "Daily quota budget unavailable; not counted.");
                Ok(())
            }
        }
    }

    /// Today's usage, reserve and projection, from the project's ledger.
    pub async fn plan(&self) -> anyhow::Result<DayPlan> {
        let now = self.now();
        let usage = self.ledger().usage(pacific_day(now)).await?;
        Ok(DayPlan::compute(
            usage,
            self.limit,
            self.reserve_fraction,
            now,
        ))
    }
}

/// Today's budget as planned at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct DayPlan {
    /// The Pacific day.
    pub day: NaiveDate,
    pub now: DateTime<Utc>,
    /// Units reserved today by the whole project.
    pub used: i64,
    pub backfill_used: i64,
    pub budget: i64,
    /// Units backfills may not spend today: kept for incremental passes.
    pub reserve: i64,
    /// The reserve's fixed part (`sync.daily_incremental_reserve_fraction`).
    pub fixed_reserve: i64,
    /// Units per second spent today on average (since Pacific midnight).
    pub rate_per_second: f64,
    /// Units per second spent today on incremental passes.
    pub incremental_rate_per_second: f64,
    /// When the budget runs out at today's rate; `None`: not today.
    pub exhaustion_at: Option<DateTime<Utc>>,
    /// The next Pacific midnight.
    pub reset_at: DateTime<Utc>,
}

/// May a backfill spend now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillVerdict {
    Go,
    /// Not before `until` (re-planned then), because `reason`.
    Wait {
        until: DateTime<Utc>,
        reason: String,
    },
}

impl DayPlan {
    pub fn compute(
        usage: DayUsage,
        budget: i64,
        reserve_fraction: f64,
        now: DateTime<Utc>,
    ) -> DayPlan {
        let day = pacific_day(now);
        let start = day_start(day);
        let reset_at = next_reset(now);
        let elapsed = (now - start).num_milliseconds().max(0) as f64 / 1000.0;
        let used = usage.units.max(0);
        let rate = used as f64 / elapsed.max(60.0);
        let incremental = (used - usage.backfill_units).max(0) as f64;
        let incremental_rate = incremental / elapsed.max(MIN_RATE_WINDOW_SECS);
        let to_reset = (reset_at - now).num_milliseconds().max(0) as f64 / 1000.0;
        let fixed = budget as f64 * reserve_fraction;
        let reserve = fixed
            .max(RESERVE_HEADROOM * incremental_rate * to_reset)
            .min(budget as f64) as i64;
        let exhaustion_at = if used >= budget {
            Some(now)
        } else if rate > 0.0 {
            let secs = (budget - used) as f64 / rate;
            (secs < to_reset).then(|| now + TimeDelta::milliseconds((secs * 1000.0) as i64))
        } else {
            None
        };
        DayPlan {
            day,
            now,
            used,
            backfill_used: usage.backfill_units.max(0),
            budget,
            reserve,
            fixed_reserve: fixed as i64,
            rate_per_second: rate,
            incremental_rate_per_second: incremental_rate,
            exhaustion_at,
            reset_at,
        }
    }

    /// Units left today.
    pub fn remaining(&self) -> i64 {
        (self.budget - self.used).max(0)
    }

    /// Whether backfills may spend now, and if not, until when they wait:
    /// the first moment the remaining budget exceeds the reserve again if
    /// incremental passes keep their rate (the reserve shrinks as the day
    /// runs out), or the next reset.
    pub fn backfill(&self) -> BackfillVerdict {
        let remaining = self.remaining() as f64;
        let reserve = self.reserve as f64;
        if remaining > reserve {
            return BackfillVerdict::Go;
        }
        let until = self.reserve_clears_at().unwrap_or(self.reset_at);
        let reason = format!(
            "daily quota: {} of {} units left today, within the {} kept for incremental passes; backfills resume at {} (the budget resets at {})",
            self.remaining(),
            self.budget,
            self.reserve,
            until.format("%Y-%m-%d %H:%M UTC"),
            self.reset_at.format("%Y-%m-%d %H:%M UTC"),
        );
        BackfillVerdict::Wait { until, reason }
    }

    /// When the rate-sized reserve falls below what is left, before the
    /// reset, assuming incremental passes keep spending at their rate.
    fn reserve_clears_at(&self) -> Option<DateTime<Utc>> {
        let r = self.incremental_rate_per_second;
        if r <= 0.0 {
            return None;
        }
        let remaining = self.remaining() as f64;
        let to_reset = (self.reset_at - self.now).num_milliseconds().max(0) as f64 / 1000.0;
        // remaining − r·s > k·r·(T − s)  ⇔  s > (k·T − remaining/r) / (k − 1);
        // the fixed part only grows relative to what is left, so it must
        // still be clear at that moment.
        let s = (RESERVE_HEADROOM * to_reset - remaining / r) / (RESERVE_HEADROOM - 1.0);
        let s = s.max(60.0);
        let left_then = remaining - r * s;
        (s < to_reset && left_then > self.fixed_reserve as f64)
            .then(|| self.now + TimeDelta::milliseconds((s * 1000.0) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_quota_day_is_the_pacific_day_and_resets_at_its_midnight() {
        // (instant, Pacific day, next reset): winter, the spring change
        // (a 23-hour day), summer, the autumn change (a 25-hour day).
        for (t, day, reset) in [
            ("2026-12-01T16:00:00Z", "2026-12-01", "2026-12-02T08:00:00Z"),
            ("2026-12-02T07:59:59Z", "2026-12-01", "2026-12-02T08:00:00Z"),
            ("2026-03-08T07:59:59Z", "2026-03-07", "2026-03-08T08:00:00Z"),
            ("2026-03-08T08:00:00Z", "2026-03-08", "2026-03-09T07:00:00Z"),
            ("2026-03-08T10:30:00Z", "2026-03-08", "2026-03-09T07:00:00Z"),
            ("2026-07-01T06:59:59Z", "2026-06-30", "2026-07-01T07:00:00Z"),
            ("2026-11-01T06:59:59Z", "2026-10-31", "2026-11-01T07:00:00Z"),
            ("2026-11-01T07:00:00Z", "2026-11-01", "2026-11-02T08:00:00Z"),
            ("2026-11-01T09:30:00Z", "2026-11-01", "2026-11-02T08:00:00Z"),
        ] {
            assert_eq!(pacific_day(utc(t)).to_string(), day, "day of {t}");
            assert_eq!(next_reset(utc(t)), utc(reset), "reset after {t}");
        }
        let spring = pacific_day(utc("2026-03-08T12:00:00Z"));
        let autumn = pacific_day(utc("2026-11-01T12:00:00Z"));
        let hours = |d: NaiveDate| (day_start(d.succ_opt().unwrap()) - day_start(d)).num_hours();
        assert_eq!((hours(spring), hours(autumn)), (23, 25));
    }

    fn budget_at(limit: u64, t: &Arc<Mutex<DateTime<Utc>>>) -> DailyBudget {
        let b = DailyBudget::new(limit, 0.05);
        let t = t.clone();
        b.set_clock(Arc::new(move || *t.lock().unwrap()));
        b
    }

    #[tokio::test]
    async fn the_budget_refuses_until_pacific_midnight_then_starts_again() {
        let now = Arc::new(Mutex::new(utc("2026-03-09T06:59:00Z")));
        let b = budget_at(100, &now);
        for _ in 0..5 {
            b.charge(Purpose::Incremental, 20, "m").await.unwrap();
        }
        let e = b.charge(Purpose::Backfill, 20, "m").await.unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(60)));
        *now.lock().unwrap() = utc("2026-03-09T06:59:59Z");
        assert!(b.charge(Purpose::Incremental, 1, "m").await.is_err());
        *now.lock().unwrap() = utc("2026-03-09T07:00:00Z");
        b.charge(Purpose::Incremental, 20, "m").await.unwrap();
        let plan = b.plan().await.unwrap();
        assert_eq!(
            (plan.used, plan.day.to_string()),
            (20, "2026-03-09".to_owned())
        );
    }

    /// Counts the ledger's reservations.
    #[derive(Default)]
    struct Counting(MemoryLedger, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl DailyLedger for Counting {
        async fn reserve(
            &self,
            day: NaiveDate,
            units: i64,
            limit: i64,
            purpose: Purpose,
        ) -> anyhow::Result<bool> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.reserve(day, units, limit, purpose).await
        }

        async fn usage(&self, day: NaiveDate) -> anyhow::Result<DayUsage> {
            self.0.usage(day).await
        }
    }

    #[tokio::test]
    async fn a_quiet_replica_asks_the_ledger_once_per_chunk() {
        let now = Arc::new(Mutex::new(utc("2026-12-01T20:00:00Z")));
        let b = budget_at(80_000_000, &now);
        let ledger = Arc::new(Counting::default());
        b.share(ledger.clone());
        // 10,000 quiet polls of 2 units: 20,000 units, within one chunk.
        for _ in 0..10_000 {
            b.charge(Purpose::Incremental, 2, "m").await.unwrap();
        }
        assert_eq!(ledger.1.load(std::sync::atomic::Ordering::Relaxed), 1);
        let plan = b.plan().await.unwrap();
        assert_eq!((plan.used, plan.backfill_used), (80_000, 0));
    }

    #[test]
    fn backfills_wait_within_the_reserve_until_it_clears_or_the_reset() {
        let budget = 80_000_000;
        // 08:00 PST: 8 hours into the day.
        let now = utc("2026-12-01T16:00:00Z");
        let reset = utc("2026-12-02T08:00:00Z");
        // Plenty left: go.
        let plan = DayPlan::compute(
            DayUsage {
                units: 10_000_000,
                backfill_units: 9_000_000,
            },
            budget,
            0.05,
            now,
        );
        assert_eq!(plan.reserve, 4_000_000);
        assert_eq!(plan.backfill(), BackfillVerdict::Go);
        // Backfills spent down to the fixed reserve, no incremental rate to
        // wait out: until the reset.
        let plan = DayPlan::compute(
            DayUsage {
                units: 76_500_000,
                backfill_units: 76_500_000,
            },
            budget,
            0.05,
            now,
        );
        let BackfillVerdict::Wait { until, reason } = plan.backfill() else {
            panic!("a backfill spent into the reserve");
        };
        assert_eq!(until, reset);
        assert!(reason.contains("kept for incremental passes"), "{reason}");
        // Incrementals spend 500 units/s: the reserve is sized from that
        // rate until the reset (1.25 × 500 × 57,600 s = 36,000,000), more
        // than the 33,600,000 left; it shrinks faster than incrementals
        // spend, so backfills resume before the reset (after 19,200 s).
        let usage_after = |secs: i64| DayUsage {
            units: 46_400_000 + 500 * secs,
            backfill_units: 32_000_000,
        };
        let plan = DayPlan::compute(usage_after(0), budget, 0.05, now);
        assert_eq!(plan.reserve, 36_000_000);
        let BackfillVerdict::Wait { until, .. } = plan.backfill() else {
            panic!("a backfill spent into the rate-sized reserve");
        };
        assert_eq!((until - now).num_seconds(), 19_200);
        let at = |secs: i64| {
            DayPlan::compute(
                usage_after(secs),
                budget,
                0.05,
                now + TimeDelta::seconds(secs),
            )
            .backfill()
        };
        assert!(matches!(at(19_200 - 120), BackfillVerdict::Wait { .. }));
        assert_eq!(at(19_200 + 60), BackfillVerdict::Go);
        // Incrementals alone would spend the rest: no time clears the reserve.
        let plan = DayPlan::compute(
            DayUsage {
                units: 40_000_000,
                backfill_units: 0,
            },
            budget,
            0.05,
            now,
        );
        assert!(
            matches!(plan.backfill(), BackfillVerdict::Wait { until, .. } if until == reset),
            "{:?}",
            plan.backfill()
        );
    }

    #[test]
    fn the_projection_says_when_the_budget_runs_out_or_not_today() {
        let budget = 80_000_000;
        let now = utc("2026-12-01T16:00:00Z"); // 8 h into the Pacific day
        // 40,000,000 in 8 h: the other half lasts 8 more hours (before the reset).
        let plan = DayPlan::compute(
            DayUsage {
                units: 40_000_000,
                backfill_units: 0,
            },
            budget,
            0.05,
            now,
        );
        assert_eq!(plan.exhaustion_at, Some(utc("2026-12-02T00:00:00Z")));
        // 10,000,000 in 8 h: 56 more hours, not today.
        let plan = DayPlan::compute(
            DayUsage {
                units: 10_000_000,
                backfill_units: 0,
            },
            budget,
            0.05,
            now,
        );
        assert_eq!(plan.exhaustion_at, None);
        // Spent: now.
        let plan = DayPlan::compute(
            DayUsage {
                units: budget,
                backfill_units: 0,
            },
            budget,
            0.05,
            now,
        );
        assert_eq!(plan.exhaustion_at, Some(now));
    }
}
