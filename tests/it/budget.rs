//! The project's daily quota (issue 14 point 2): counted once for the
//! project in the database, surviving restarts, rolling over at midnight
//! America/Los_Angeles (DST included); planned, so that incremental passes
//! of synced mailboxes go first while backfills wait (and resume from their
//! page token); visible in `status` and in `subscriptions approve`. On
//! SQLite and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use gmail_ingest::google::daily::{Clock, DailyBudget, Purpose, next_reset, pacific_day};
use gmail_ingest::google::error::ErrorClass;
use gmail_ingest::sync::engine::{Outcome, SyncContext};

use crate::chaos_helpers::WorldCli as Cli;
use crate::helpers::{Backend, World, both_backends, small, world_with};

const GET: &str = "gmail.users.messages.get";

/// A clock the test moves by hand, shared by every limiter it is given to.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn at(t: DateTime<Utc>) -> TestClock {
        TestClock(Arc::new(AtomicI64::new(t.timestamp_millis())))
    }

    fn set(&self, t: DateTime<Utc>) {
        self.0.store(t.timestamp_millis(), Ordering::SeqCst);
    }

    fn clock(&self) -> Clock {
        let ms = self.0.clone();
        Arc::new(move || {
            Utc.timestamp_millis_opt(ms.load(Ordering::SeqCst))
                .single()
                .expect("a valid instant")
        })
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 instant")
}

fn daily(ctx: &SyncContext) -> &DailyBudget {
    ctx.google.quota_limiter().daily()
}

/// A replica of the world: its own limiter over the same database.
async fn replica(w: &World, clock: &TestClock) -> SyncContext {
    let ctx = gmail_ingest::app::context(w.settings.clone())
        .await
        .expect("context builds");
    daily(&ctx).set_clock(clock.clock());
    ctx
}

/// Charges `n` messages.get (20 units each) and says how many were granted.
async fn spend(ctx: &SyncContext, n: usize) -> usize {
    let mut granted = 0;
    for _ in 0..n {
        match daily(ctx).charge(Purpose::Incremental, 20, GET).await {
            Ok(()) => granted += 1,
            Err(e) => {
                assert_eq!(e.class, ErrorClass::RateLimited, "{e}");
                let hint = e.retry_after.expect("a refusal says when to retry");
                let now = daily(ctx).now();
                let reset = next_reset(now);
                assert_eq!(
                    hint.as_secs(),
                    (reset - now).num_seconds() as u64,
                    "the refusal's retry hint is the next Pacific midnight"
                );
            }
        }
    }
    granted
}

async fn used_on(w: &World, day: &str) -> i64 {
    w.ctx.store.daily_quota_usage(day).await.unwrap().units
}

/// Two replicas on one database spend one budget; a restarted replica
/// (a new limiter) sees what was spent; the budget rolls over exactly at
/// Pacific midnight, also across the spring DST change (a 23-hour day).
async fn the_daily_budget_is_the_projects_across_replicas_restarts_and_pacific_days(
    backend: Backend,
) {
    let Some(w) = world_with(backend, small(1, 0), |s| {
        s.sync.project_quota_units_per_day = 1000;
    })
    .await
    else {
        return;
    };
    // Arrange: 23:59 PST on Saturday 7 March 2026, the eve of the DST change.
    let clock = TestClock::at(utc("2026-03-08T07:59:00Z"));
    let (a, b) = (replica(&w, &clock).await, replica(&w, &clock).await);

    // Act + assert: 50 calls of 20 units fit in 1000, whoever makes them.
    assert_eq!(spend(&a, 30).await, 30);
    assert_eq!(
        spend(&b, 30).await,
        20,
        "replica b spent past the shared budget"
    );
    assert_eq!(
        spend(&a, 5).await,
        0,
        "replica a spent past the shared budget"
    );
    assert_eq!(used_on(&w, "2026-03-07").await, 1000);

    // A restart is a new limiter over the same database: still spent.
    drop(a);
    let a = replica(&w, &clock).await;
    assert_eq!(spend(&a, 1).await, 0, "a restart forgot the day's usage");
    let plan = daily(&a).plan().await.unwrap();
    assert_eq!((plan.used, plan.budget), (1000, 1000));
    assert_eq!(plan.reset_at, utc("2026-03-08T08:00:00Z"));

    // One second before Pacific midnight: still Saturday. At midnight
    // (08:00 UTC, PST): a new day, for both replicas.
    clock.set(utc("2026-03-08T07:59:59Z"));
    assert_eq!(spend(&b, 1).await, 0);
    clock.set(utc("2026-03-08T08:00:00Z"));
    assert_eq!(spend(&a, 1).await, 1);
    assert_eq!(spend(&b, 49).await, 49);
    assert_eq!(spend(&a, 1).await, 0);
    assert_eq!(used_on(&w, "2026-03-08").await, 1000);

    // Sunday 8 March has 23 hours: its midnight is 07:00 UTC (PDT), not 08:00.
    let plan = daily(&b).plan().await.unwrap();
    assert_eq!(plan.reset_at, utc("2026-03-09T07:00:00Z"));
    clock.set(utc("2026-03-09T06:59:59Z"));
    assert_eq!(spend(&a, 1).await, 0, "rolled over before Pacific midnight");
    clock.set(utc("2026-03-09T07:00:00Z"));
    assert_eq!(
        spend(&b, 1).await,
        1,
        "did not roll over at Pacific midnight"
    );
    assert_eq!(used_on(&w, "2026-03-09").await, 20);

    // The autumn change: 1 November has 25 hours (07:00 to 08:00 UTC).
    clock.set(utc("2026-11-01T06:59:59Z"));
    assert_eq!(pacific_day(daily(&a).now()).to_string(), "2026-10-31");
    assert_eq!(
        daily(&a).plan().await.unwrap().reset_at,
        utc("2026-11-01T07:00:00Z")
    );
    clock.set(utc("2026-11-01T07:00:00Z"));
    assert_eq!(
        daily(&a).plan().await.unwrap().reset_at,
        utc("2026-11-02T08:00:00Z")
    );
}

both_backends!(
    the_daily_budget_is_the_projects,
    the_daily_budget_is_the_projects_across_replicas_restarts_and_pacific_days
);

/// A quiet fleet does not write per call: with the default budget, a
/// replica reserves a thousandth of it at a time.
async fn units_are_reserved_from_the_database_in_chunks(backend: Backend) {
    let Some(w) = world_with(backend, small(1, 0), |_| {}).await else {
        return;
    };
    let clock = TestClock::at(utc("2026-12-01T18:00:00Z"));
    let a = replica(&w, &clock).await;
    assert_eq!(daily(&a).chunk(), 80_000);
    // 100 history.list calls of 2 units: one reservation of one chunk.
    for _ in 0..100 {
        daily(&a)
            .charge(Purpose::Incremental, 2, "gmail.users.history.list")
            .await
            .unwrap();
    }
    let usage = w.ctx.store.daily_quota_usage("2026-12-01").await.unwrap();
    assert_eq!((usage.units, usage.backfill_units), (80_000, 0));
    // Backfill units are reserved in their own chunk, counted as such.
    daily(&a).charge(Purpose::Backfill, 20, GET).await.unwrap();
    let usage = w.ctx.store.daily_quota_usage("2026-12-01").await.unwrap();
    assert_eq!((usage.units, usage.backfill_units), (160_000, 80_000));
}

both_backends!(
    daily_units_are_reserved_in_chunks,
    units_are_reserved_from_the_database_in_chunks
);

fn status(cli: &Cli) -> serde_json::Value {
    cli.json(&["status", "--format", "json"])
}

fn row<'a>(status: &'a serde_json::Value, m: &str) -> &'a serde_json::Value {
    status["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mailbox"] == m)
        .unwrap_or_else(|| panic!("{m} in status: {status}"))
}

/// With little of the day's budget left, a synced mailbox's incremental
/// pass gets its new mail while a new mailbox's full sync stops between
/// two pages; `status` says why and until when, with the listing's
/// progress; with budget again (a restart with a larger one), the backfill
/// resumes from its page token and fetches no message twice.
async fn incrementals_go_first_when_the_daily_budget_runs_low(backend: Backend) {
    const BUDGET: i64 = 10_000_000;
    let Some(w) = world_with(backend, small(3, 700), |s| {
        s.sync.project_quota_units_per_day = BUDGET as u64;
        s.sync.daily_incremental_reserve_fraction = 0.5;
    })
    .await
    else {
        return;
    };
    let shared = w.shared_mailboxes().await;
    let (synced, new) = (shared[0].clone(), shared[1].clone());
    let total = w.truth(&new).await.len();
    assert!(
        total > 500,
        "the backfill needs two pages: {total} messages"
    );
    w.subscribe(&synced).await;
    let first = w.sync(Some(&synced)).await;
    assert!(first[0].outcome.is_ok(), "{:?}", first[0].outcome);

    // Arrange: leave 5,000 units above the reserve of 5,000,000 kept for
    // incremental passes: the first page of the backfill (500 × 20 units,
    // reserved in chunks of 10,000) goes, the second waits.
    let plan = daily(&w.ctx).plan().await.unwrap();
    assert_eq!(plan.reserve, BUDGET / 2);
    let today = plan.day.to_string();
    let top_up = BUDGET - plan.reserve - plan.used - 5_000;
    assert!(
        w.ctx
            .store
            .reserve_daily_quota(&today, top_up, BUDGET, true)
            .await
            .unwrap()
    );
    w.subscribe(&new).await;

    // Act: the backfill stops after its first page.
    let paced = w.sync(Some(&new)).await;
    let Outcome::Paced { until, reason } = &paced[0].outcome else {
        panic!("the backfill did not wait: {:?}", paced[0].outcome);
    };
    assert!(reason.contains("kept for incremental passes"), "{reason}");
    assert!(*until > Utc::now());
    let stored = w.ctx.store.count_messages(&new).await.unwrap();
    assert_eq!(stored, 500, "the first page is stored, the rest waits");

    // An incremental pass of the synced mailbox still brings new mail,
    // while the backfill, asked again, still waits and spends nothing.
    let id = w
        .insert_message(&synced, "arrives while the budget is low", &["INBOX"])
        .await;
    let gets_before = w.requests_by_user(&new, GET).await;
    let reports = w.sync(None).await;
    let by = |m| reports.iter().find(|r| &r.mailbox == m).unwrap();
    assert!(by(&synced).outcome.is_ok(), "{:?}", by(&synced).outcome);
    assert_eq!(by(&synced).counts.added, 1);
    assert!(w.db(&synced).await.iter().any(|(i, _, _)| *i == id));
    assert!(matches!(by(&new).outcome, Outcome::Paced { .. }));
    assert_eq!(w.requests_by_user(&new, GET).await, gets_before);

    // Assert: status says why the backfill waits, until when, and how far it got.
    let cli = Cli::new(
        &w,
        &format!(
            "[sync]\nproject_quota_units_per_day = {BUDGET}\ndaily_incremental_reserve_fraction = 0.5\n"
        ),
    );
    let s = status(&cli);
    let q = &s["quota"];
    let usage = w.ctx.store.daily_quota_usage(&today).await.unwrap();
    assert_eq!(q["used_units"], usage.units);
    assert_eq!(q["budget_units"], BUDGET);
    assert_eq!(q["day"], today);
    let reset: DateTime<Utc> = serde_json::from_value(q["next_reset_at"].clone()).unwrap();
    assert_eq!(reset, next_reset(Utc::now()));
    let waiting = row(&s, new.as_str());
    assert!(
        waiting["quota_wait"]["reason"]
            .as_str()
            .unwrap()
            .contains("kept for incremental passes"),
        "{waiting}"
    );
    let wait_until: DateTime<Utc> =
        serde_json::from_value(waiting["quota_wait"]["until"].clone()).unwrap();
    assert_eq!(wait_until.timestamp(), until.timestamp());
    let p = &waiting["full_sync"];
    assert_eq!(p["listed"], 500, "{p}");
    assert_eq!(p["fetched"], 500, "{p}");
    assert_eq!(p["estimated_total"], total as i64, "{p}");
    assert!(p["rate_per_second"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["eta"].is_string(), "{p}");
    assert!(row(&s, synced.as_str())["quota_wait"].is_null());
    let table = cli.ok(&["status"]);
    assert!(table.contains("daily quota:"), "{table}");
    assert!(table.contains("waits for the daily quota until"), "{table}");

    // With budget again, the backfill resumes from its page token.
    let mut settings = w.settings.clone();
    settings.sync.project_quota_units_per_day = 4 * BUDGET as u64;
    let restarted = gmail_ingest::app::context(settings).await.unwrap();
    let done = gmail_ingest::app::sync_with(
        &restarted,
        Some(new.clone()),
        false,
        false,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(done[0].outcome.is_ok(), "{:?}", done[0].outcome);
    w.assert_converged(&new).await;
    assert_eq!(
        w.requests_by_user(&new, GET).await,
        total as u64,
        "a message was fetched twice"
    );
    let s = status(&cli);
    assert!(row(&s, new.as_str())["full_sync"].is_null());
    assert!(row(&s, new.as_str())["quota_wait"].is_null());
}

both_backends!(
    incrementals_go_first,
    incrementals_go_first_when_the_daily_budget_runs_low
);

/// `approve` prints what the mailbox's backfill will cost once the gate
/// admitted it; a profile that cannot be read is said, and the approval stands.
async fn approve_prints_the_backfill_estimate(backend: Backend) {
    let Some(w) = world_with(backend, small(3, 40), |_| {}).await else {
        return;
    };
    let shared = w.shared_mailboxes().await;
    let (m, refused) = (shared[0].clone(), shared[1].clone());
    let total = w.truth(&m).await.len();
    let cli = Cli::new(&w, "");
    cli.ok(&["subscriptions", "add", m.as_str(), "--by", "ops-a"]);
    let out = cli.ok(&["subscriptions", "approve", m.as_str(), "--by", "ops-b"]);
    assert!(out.contains("is active"), "{out}");
    let units = total * 20;
    let expected = format!("estimated backfill: {total} messages x 20 units = {units} units");
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains("per-mailbox ceiling of 6000 units/min"),
        "{out}"
    );
    // Nothing spent today yet but the approval's own profile (1 unit, in a
    // chunk of 80,000): the share is of what is left.
    let share = units as f64 / (80_000_000.0 - 80_000.0) * 100.0;
    assert!(out.contains(&format!("{share:.1} % of the")), "{out}");
    assert_eq!(w.requests_by_user(&m, "gmail.users.getProfile").await, 1);

    w.patch_user(
        &refused,
        serde_json::json!({"token_error": "access_denied"}),
    )
    .await;
    cli.ok(&["subscriptions", "add", refused.as_str(), "--by", "ops-a"]);
    let out = cli.ok(&[
        "subscriptions",
        "approve",
        refused.as_str(),
        "--by",
        "ops-b",
    ]);
    assert!(out.contains("is active"), "{out}");
    assert!(
        out.contains("estimated backfill: unknown (the mailbox's profile could not be read"),
        "{out}"
    );
}

both_backends!(approve_estimate, approve_prints_the_backfill_estimate);

/// An OAuth mailbox's estimate is read with its owner's consent (there is
/// no domain-wide delegation at all here).
async fn the_estimate_of_an_oauth_mailbox_uses_its_consent(backend: Backend) {
    use crate::oauth::{Daemon, consent, oauth_world};
    let Some((w, _)) = oauth_world(backend, std::time::Duration::from_secs(600)).await else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    let client_id = w.ctx.google.account().unwrap().client_id().to_owned();
    w.control(
        reqwest::Method::PUT,
        "delegation",
        Some(serde_json::json!({"client_id": client_id, "scopes": []})),
    )
    .await;
    let d = Daemon::start(&w).await;
    let c = consent(&d.consent, &m).await;
    assert_eq!(c.status, reqwest::StatusCode::OK, "{}", c.body);
    d.stop().await;

    let policy = w.settings.policy().unwrap();
    let done = gmail_ingest::app::approve_one(
        &w.settings,
        &w.ctx.store,
        &policy,
        &m,
        gmail_ingest::domain::Operator::parse("ops-b").unwrap(),
    )
    .await
    .unwrap();
    assert!(done.readable, "an approved consented mailbox may be read");
    let e = gmail_ingest::app::backfill_estimate(
        &w.settings,
        &w.ctx.store,
        &policy,
        &done.subscription,
    )
    .await
    .unwrap();
    let total = w.truth(&m).await.len() as u64;
    assert_eq!((e.messages, e.units), (total, total * 20));
    assert!(e.remaining_today > 0 && e.share_of_remaining > 0.0);
}

both_backends!(
    oauth_approve_estimate,
    the_estimate_of_an_oauth_mailbox_uses_its_consent
);

/// A requested resync of a synced mailbox that has not begun yields to the
/// budget: the pass is an incremental one, which still brings new mail.
async fn a_requested_resync_yields_to_incrementals_when_the_budget_is_low(backend: Backend) {
    const BUDGET: i64 = 1_000_000;
    let Some(w) = world_with(backend, small(3, 20), |s| {
        s.sync.project_quota_units_per_day = BUDGET as u64;
        s.sync.daily_incremental_reserve_fraction = 0.5;
    })
    .await
    else {
        return;
    };
    let m = w.shared_mailboxes().await[0].clone();
    w.subscribe(&m).await;
    assert!(w.sync(Some(&m)).await[0].outcome.is_ok());
    let plan = daily(&w.ctx).plan().await.unwrap();
    let top_up = BUDGET - plan.reserve - plan.used;
    assert!(
        w.ctx
            .store
            .reserve_daily_quota(&plan.day.to_string(), top_up, BUDGET, true)
            .await
            .unwrap()
    );
    let id = w.insert_message(&m, "during a tight day", &["INBOX"]).await;
    let lists_before = w.requests_by_user(&m, "gmail.users.messages.list").await;

    let r = w.sync_full(Some(&m)).await;
    assert!(r[0].outcome.is_ok(), "{:?}", r[0].outcome);
    assert_eq!(
        r[0].kinds,
        vec![gmail_ingest::sync::engine::SyncKind::Incremental]
    );
    assert_eq!(r[0].counts.added, 1);
    assert!(w.db(&m).await.iter().any(|(i, _, _)| *i == id));
    assert_eq!(
        w.requests_by_user(&m, "gmail.users.messages.list").await,
        lists_before,
        "the resync listed the mailbox"
    );
}

both_backends!(
    requested_resyncs_yield,
    a_requested_resync_yields_to_incrementals_when_the_budget_is_low
);
