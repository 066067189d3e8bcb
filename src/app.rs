//! The one startup path: `Application::build(settings)` then
//! `run_until_stopped(shutdown)`, used by `run` and by the tests; plus the
//! other commands that need the whole machine (`sync`, `check`).

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Policy, Settings};
use crate::domain::{MailboxAddress, SubscriptionStatus};
use crate::google::Google;
use crate::output;
use crate::store::Store;
use crate::subscriptions::OrgUnitVerdict;
use crate::sync::engine::{
    self, PassOptions, ProgressFn, Schedule, SyncContext, SyncCounts, SyncReport,
};
use crate::sync::gate::{self, GateDecision};

/// A built daemon: database migrated, key loaded, listener bound.
pub struct Application {
    ctx: SyncContext,
    listener: TcpListener,
    port: u16,
    /// The consent pages' listener, when `oauth.enabled`.
    oauth_listener: Option<TcpListener>,
    /// Held for the process's life on SQLite: a second `run` on the same file refuses to start.
    _instance_lock: Option<File>,
}

/// A refusal caused by the user's input (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Opens the configured database without migrating it (`migrate` counts
/// what is pending first).
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = settings.database.connect_url()?;
    let options = crate::store::ConnectOptions {
        max_connections: settings.database.max_connections,
        idle_in_transaction_timeout: Some(settings.database.idle_in_transaction_timeout),
    };
    let store = Store::connect_with(url.expose(), options)
        .await
        .with_context(|| format!("opening database {}", url.redacted()))?;
    Ok(store)
}

/// Opens the store and applies pending migrations (every command that reads
/// or writes does, so a fresh install needs no separate step).
pub async fn open_migrated_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = open_store(settings).await?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// A replica's identity: host, process and a random suffix.
pub fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// The SQLite single-replica guard: an exclusive lock on `<db>.lock`.
fn lock_sqlite(path: PathBuf) -> anyhow::Result<File> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `gmail-ingest run` is already using {} (SQLite supports one replica; use PostgreSQL to run several)",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
    }
}

/// The project quota budget kept in the database, shared by replicas.
struct StoreBudget(crate::store::Store);

#[async_trait::async_trait]
impl crate::google::quota::SharedBudget for StoreBudget {
    async fn reserve(
        &self,
        window_start: chrono::DateTime<Utc>,
        units: i64,
        limit: i64,
    ) -> anyhow::Result<bool> {
        Ok(self
            .0
            .reserve_quota("project-minute", window_start, units, limit)
            .await?)
    }
}

/// The project's daily count (`quota_daily`), on both backends: one replica
/// on SQLite, but the count survives its restarts.
#[async_trait::async_trait]
impl crate::google::daily::DailyLedger for StoreBudget {
    async fn reserve(
        &self,
        day: chrono::NaiveDate,
        units: i64,
        limit: i64,
        purpose: crate::google::daily::Purpose,
    ) -> anyhow::Result<bool> {
        let backfill = purpose == crate::google::daily::Purpose::Backfill;
        Ok(self
            .0
            .reserve_daily_quota(&day.to_string(), units, limit, backfill)
            .await?)
    }

    async fn usage(
        &self,
        day: chrono::NaiveDate,
    ) -> anyhow::Result<crate::google::daily::DayUsage> {
        let u = self.0.daily_quota_usage(&day.to_string()).await?;
        Ok(crate::google::daily::DayUsage {
            units: u.units,
            backfill_units: u.backfill_units,
        })
    }
}

/// The Google client of a command, counting its calls in the project's
/// daily budget kept in `store`.
pub fn google_counted(settings: &Settings, store: &Store) -> anyhow::Result<Arc<Google>> {
    let google = Google::from_settings(settings)?;
    share_daily_budget(&google, store);
    Ok(google)
}

fn share_daily_budget(google: &Google, store: &Store) {
    google
        .quota_limiter()
        .daily()
        .share(Arc::new(StoreBudget(store.clone())));
}

/// Today's daily budget as the database counts it, planned with `settings`.
pub async fn daily_plan(
    settings: &Settings,
    store: &Store,
) -> anyhow::Result<crate::google::daily::DayPlan> {
    let budget = crate::google::daily::DailyBudget::new(
        settings.sync.project_quota_units_per_day,
        settings.sync.daily_incremental_reserve_fraction,
    );
    budget.share(Arc::new(StoreBudget(store.clone())));
    budget
        .plan()
        .await
        .context("reading the daily quota budget")
}

pub async fn context(settings: Settings) -> anyhow::Result<SyncContext> {
    let policy = settings.policy()?;
    let google = Google::from_settings(&settings)?;
    let store = open_migrated_store(&settings).await?;
    share_daily_budget(&google, &store);
    if store.sqlite_path().is_none() && store.backend() == "postgres" {
        google.quota_limiter().share_project_budget(
            Arc::new(StoreBudget(store.clone())),
            settings.sync.project_quota_units_per_minute,
        );
    }
    let policy = Arc::new(policy);
    let oauth =
        crate::oauth::OAuthService::from_settings(&settings, store.clone(), policy.clone())?;
    Ok(SyncContext {
        store,
        google,
        memory_budget: crate::sync::context::memory_budget(&settings),
        settings: Arc::new(settings),
        policy,
        replica: replica_id(),
        oauth,
    })
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        // Install the metrics recorder before any work: it used to be
        // installed by the first /metrics scrape, so every event before that
        // scrape was lost.
        crate::telemetry::metrics_handle();
        let listen = settings.http.listen.clone();
        let ctx = context(settings).await?;
        let instance_lock = match ctx.store.sqlite_path() {
            Some(p) => Some(lock_sqlite(p)?),
            None => None,
        };
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding http.listen {listen}"))?;
        let port = listener.local_addr()?.port();
        let oauth_listener = match &ctx.oauth {
            Some(oauth) => {
                // After a key rotation, re-seal what the old key sealed. A
                // token that cannot be opened stops its own mailbox only.
                let report = oauth
                    .reseal_stale_tokens()
                    .await
                    .context("re-sealing OAuth refresh tokens under the current key")?;
                if report.resealed > 0 {
                    tracing::info!(
                        tokens = report.resealed,
                        "Re-sealed OAuth refresh tokens under the current key."
                    );
                }
                for (mailbox, cause) in &report.unreadable {
                    let oauth_mode = ctx
                        .store
                        .get_subscription(mailbox)
                        .await
                        .context("reading the subscription of an unreadable consent")?
                        .is_some_and(|s| s.auth_mode == crate::domain::AuthMode::OAuth);
                    if oauth_mode {
                        tracing::error!(
                            %mailbox,
                            error = %cause,
                            "A stored OAuth consent cannot be opened: this mailbox is not read (auth_failed) until its key is back in oauth.token_encryption_key_file or its owner authorizes again; the others are."
                        );
                    } else {
                        tracing::warn!(
                            %mailbox,
                            error = %cause,
                            "A stored OAuth consent cannot be opened; it is not used (the mailbox is not in OAuth mode), but switching the mailbox to OAuth needs a new consent."
                        );
                    }
                }
                let addr = ctx.settings.oauth.listen.clone();
                Some(
                    TcpListener::bind(&addr)
                        .await
                        .with_context(|| format!("binding oauth.listen {addr}"))?,
                )
            }
            None => None,
        };
        Ok(Application {
            ctx,
            listener,
            port,
            oauth_listener,
            _instance_lock: instance_lock,
        })
    }

    /// The port of the consent pages (oauth.listen may say port 0).
    pub fn oauth_port(&self) -> Option<u16> {
        self.oauth_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// The port actually bound (http.listen may say port 0).
    pub fn http_port(&self) -> u16 {
        self.port
    }

    pub fn context(&self) -> &SyncContext {
        &self.ctx
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            ctx,
            listener,
            oauth_listener,
            _instance_lock,
            ..
        } = self;
        let r = crate::daemon::run(ctx.clone(), listener, oauth_listener, shutdown).await;
        ctx.store.close().await;
        r
    }
}

pub async fn run_daemon(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    tracing::info!(port = app.http_port(), "Serving /healthz /readyz /metrics.");
    app.run_until_stopped(shutdown).await
}

/// One pass over every active subscription (or one mailbox), as `sync` does.
pub async fn sync_once(
    settings: Arc<Settings>,
    only: Option<MailboxAddress>,
    force_full: bool,
    show_progress: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Vec<SyncReport>> {
    let ctx = context((*settings).clone()).await?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        c.cancel();
    });
    sync_with(&ctx, only, force_full, show_progress, &cancel).await
}

/// `sync_once` on an existing context (tests and the demo use it).
pub async fn sync_with(
    ctx: &SyncContext,
    only: Option<MailboxAddress>,
    force_full: bool,
    show_progress: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<SyncReport>> {
    if !ctx.settings.integration.enabled {
        anyhow::bail!("integration.enabled is false: nothing is ingested");
    }
    let subs = ctx
        .store
        .list_subscriptions()
        .await
        .context("listing subscriptions")?;
    if let Some(m) = &only {
        match subs.iter().find(|s| &s.mailbox == m) {
            None => return Err(UsageError(format!("no subscription for {m}")).into()),
            Some(s)
                if !matches!(
                    s.status,
                    SubscriptionStatus::Active | SubscriptionStatus::Suspended
                ) =>
            {
                return Err(UsageError(format!("{m} is {}, not active", s.status)).into());
            }
            Some(_) => {}
        }
    }
    // Suspended subscriptions come back by themselves when their org unit is approved again.
    for s in subs.iter().filter(|s| {
        s.status == SubscriptionStatus::Suspended
            && s.auth_mode == crate::domain::AuthMode::Delegated
    }) {
        if only.as_ref().is_none_or(|m| m == &s.mailbox)
            && let Err(e) = gate::check_subscription(ctx, &s.mailbox, Some(s)).await
        {
            tracing::warn!(mailbox = %s.mailbox, error = %format!("{e:#}"), "Org-unit re-check failed.");
        }
    }
    let subs = ctx
        .store
        .list_subscriptions()
        .await
        .context("listing subscriptions")?;
    let targets: Vec<MailboxAddress> = subs
        .into_iter()
        .filter(|s| s.status == SubscriptionStatus::Active)
        .filter(|s| only.as_ref().is_none_or(|m| m == &s.mailbox))
        .map(|s| s.mailbox)
        .collect();
    let progress: Option<ProgressFn> = show_progress.then(|| {
        let f: ProgressFn = Arc::new(|m: &MailboxAddress, p: engine::Progress| {
            output::progress(format!(
                "{m}: listed {} fetched {} of ~{}",
                p.listed, p.fetched, p.estimated_total
            ));
        });
        f
    });
    let opts = PassOptions {
        force_full,
        progress,
        schedule: Schedule::OneOff,
    };
    let concurrency = ctx.settings.sync.max_concurrent_mailboxes.max(1);
    let passes_done = CancellationToken::new();
    let recheck = recheck_gate(ctx, only.as_ref(), &passes_done);
    let passes = futures::stream::iter(targets)
        .map(|m| {
            let opts = opts.clone();
            async move {
                let Some(lease) = ctx
                    .store
                    .claim_mailbox(
                        &m,
                        &ctx.replica,
                        Utc::now(),
                        ctx.settings.sync.lease_duration,
                    )
                    .await?
                else {
                    output::notice(format!("{m}: skipped, another replica is syncing it"));
                    return Ok(None);
                };
                let report = crate::daemon::lease::run_leased(ctx, &lease, &opts, cancel).await?;
                Ok(Some(report))
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<anyhow::Result<Option<SyncReport>>>>();
    let (reports, ()) = tokio::join!(
        async {
            let r = passes.await;
            passes_done.cancel();
            r
        },
        recheck
    );
    if show_progress {
        output::progress_done();
    }
    let mut out = Vec::new();
    for r in reports {
        if let Some(rep) = r? {
            out.push(rep);
        }
    }
    out.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    Ok(out)
}

/// The org-unit gate re-evaluated every `sync.org_unit_recheck_interval`
/// while the passes of a long `sync` run (the daemon's scheduler does the
/// same): a mailbox moved out of the approved OUs is suspended, and its
/// running pass stops at once. Only `only` when `sync` was given one
/// mailbox. Ends when `done` fires.
async fn recheck_gate(ctx: &SyncContext, only: Option<&MailboxAddress>, done: &CancellationToken) {
    let every = ctx
        .settings
        .sync
        .org_unit_recheck_interval
        .max(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let check = async {
            match only {
                None => gate::check_all(ctx).await.map(|results| {
                    for (m, r) in results {
                        if let Err(e) = r {
                            tracing::warn!(mailbox = %m, error = %format!("{e:#}"), "Org-unit re-check failed.");
                        }
                    }
                }),
                Some(m) => {
                    let sub = ctx.store.get_subscription(m).await?;
                    match sub {
                        Some(s)
                            if s.auth_mode == crate::domain::AuthMode::Delegated
                                && matches!(
                                    s.status,
                                    SubscriptionStatus::Active | SubscriptionStatus::Suspended
                                ) =>
                        {
                            gate::check_subscription(ctx, m, Some(&s)).await.map(|_| ())
                        }
                        _ => Ok(()),
                    }
                }
            }
        };
        tokio::select! {
            () = done.cancelled() => return,
            r = check => if let Err(e) = r {
                tracing::warn!(error = %format!("{e:#}"), "Org-unit re-check failed; retrying at the next interval.");
            }
        }
    }
}

/// Column headers of the per-mailbox sync table (`sync`, `demo`).
pub const REPORT_HEADERS: &[&str] = &[
    "MAILBOX",
    "KIND",
    "ADDED",
    "UPDATED",
    "DELETED",
    "RELABELLED",
    "API CALLS",
    "UNITS",
    "OUTCOME",
];

/// The rows of the per-mailbox sync table, under [`REPORT_HEADERS`].
pub fn report_rows(reports: &[SyncReport]) -> Vec<Vec<String>> {
    reports
        .iter()
        .map(|r| {
            let v = ReportView::from(r);
            let c = v.counts;
            vec![
                v.mailbox,
                v.kind,
                c.added.to_string(),
                c.updated.to_string(),
                c.deleted.to_string(),
                c.label_changes.to_string(),
                c.api_calls.to_string(),
                c.quota_units.to_string(),
                v.outcome,
            ]
        })
        .collect()
}

/// A `SyncReport` as printed.
#[derive(Debug, Serialize)]
pub struct ReportView {
    pub mailbox: String,
    pub kind: String,
    #[serde(flatten)]
    pub counts: SyncCounts,
    pub outcome: String,
}

impl From<&SyncReport> for ReportView {
    fn from(r: &SyncReport) -> Self {
        let kinds: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
        ReportView {
            mailbox: r.mailbox.to_string(),
            kind: if kinds.is_empty() {
                "-".to_owned()
            } else {
                kinds.join("+")
            },
            counts: r.counts,
            outcome: match &r.outcome {
                engine::Outcome::Ok => "ok".to_owned(),
                engine::Outcome::Failed { error, .. } => format!("failed: {error}"),
                engine::Outcome::AuthFailed { cause } => format!("auth failed: {cause}"),
                engine::Outcome::Suspended { reason } => format!("suspended: {reason}"),
                engine::Outcome::LeaseLost => "lease lost".to_owned(),
                engine::Outcome::Interrupted => "interrupted".to_owned(),
                engine::Outcome::Paced { until, .. } => format!(
                    "waiting for the daily quota until {}",
                    until.format("%Y-%m-%d %H:%M UTC")
                ),
                engine::Outcome::Stopped {
                    decision,
                    reason: Some(reason),
                } => format!("stopped: {decision} ({reason})"),
                engine::Outcome::Stopped {
                    decision,
                    reason: None,
                } => format!("stopped: {decision}"),
            },
        }
    }
}

/// What [`approve_one`] did: the active subscription, and the warning to
/// show when the Directory could not be asked (a subscription without labels
/// may still be approved then; the daemon's gate checks before every sync).
#[derive(Debug)]
pub struct Approved {
    pub subscription: crate::store::Subscription,
    pub warning: Option<String>,
    /// The Directory placed the mailbox in an approved org unit (or it is
    /// an OAuth mailbox with its owner's consent): it may be read now.
    pub readable: bool,
}

/// What a newly approved mailbox's full sync will cost (`approve` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct BackfillEstimate {
    /// The profile's messagesTotal.
    pub messages: u64,
    /// messages × `sync.method_costs.messages_get`.
    pub units: u64,
    /// How long the mailbox takes at `sync.user_quota_units_per_minute`.
    pub minutes_at_ceiling: f64,
    /// Units left in today's project budget, and the share the backfill takes of it.
    pub remaining_today: i64,
    pub share_of_remaining: f64,
    pub reset_at: chrono::DateTime<Utc>,
}

/// The estimate for an approved mailbox the gate admitted: one getProfile,
/// as the mailbox (impersonated, or with its owner's consent), counted in
/// the daily budget.
pub async fn backfill_estimate(
    settings: &Settings,
    store: &Store,
    policy: &Policy,
    sub: &crate::store::Subscription,
) -> anyhow::Result<BackfillEstimate> {
    let oauth = sub.auth_mode == crate::domain::AuthMode::OAuth;
    let gmail = mailbox_gmail(settings, store, policy, &sub.mailbox, oauth).await?;
    let profile = gmail.get_profile().await?;
    let plan = daily_plan(settings, store).await?;
    let messages = profile.messages_total.max(0) as u64;
    let units = messages * u64::from(settings.sync.method_costs.messages_get);
    let remaining_today = plan.remaining();
    Ok(BackfillEstimate {
        messages,
        units,
        minutes_at_ceiling: units as f64
            / f64::from(settings.sync.user_quota_units_per_minute.max(1)),
        remaining_today,
        share_of_remaining: if remaining_today > 0 {
            units as f64 / remaining_today as f64
        } else {
            f64::INFINITY
        },
        reset_at: plan.reset_at,
    })
}

/// One approval, as `subscriptions approve` runs it for one mailbox (and
/// group approval for each member): the domain, state and four-eyes rules
/// first, then the org-unit verdict (none for an OAuth mailbox), then — only
/// for a subscription that requests labels, and only once the gate admitted
/// it — Gmail's `labels.list` read as the mailbox (delegated: impersonated;
/// OAuth: the stored consent's token) to resolve `label_filter` into label
/// IDs, written as `label_scope` in the update that makes it active.
///
/// Refusals (`SubscriptionError`, exit code 2) change nothing: an unknown
/// label, a delegated mailbox with labels whose org unit could not be
/// verified, a refused org unit, four-eyes. A subscription without labels
/// costs no Gmail call.
pub async fn approve_one(
    settings: &Settings,
    store: &Store,
    policy: &Policy,
    mailbox: &MailboxAddress,
    by: crate::domain::Operator,
) -> anyhow::Result<Approved> {
    use crate::subscriptions::{SubscriptionError, Subscriptions, resolve_label_scope};
    let subs = Subscriptions::new(store, policy);
    let sub = subs.admissible(mailbox, &by).await?;
    let oauth = sub.auth_mode == crate::domain::AuthMode::OAuth;
    let verdict = if oauth {
        OrgUnitVerdict::NotApplicable
    } else {
        org_unit_verdict(settings, policy, mailbox).await
    };
    let mut warning = None;
    match &verdict {
        // Refused: `approve_scoped` names the cause, before any label read.
        OrgUnitVerdict::Refused(_) => {}
        OrgUnitVerdict::Unverified(why) if !sub.label_filter.is_empty() => {
            return Err(SubscriptionError::LabelsUnverified {
                mailbox: mailbox.clone(),
                why: why.clone(),
            }
            .into());
        }
        OrgUnitVerdict::Unverified(why) => {
            warning = Some(format!(
                "org unit not verified ({why}); the daemon checks it before every sync"
            ));
        }
        OrgUnitVerdict::Approved(_) | OrgUnitVerdict::NotApplicable => {}
    }
    let admitted = !matches!(verdict, OrgUnitVerdict::Refused(_));
    let readable = matches!(
        verdict,
        OrgUnitVerdict::Approved(_) | OrgUnitVerdict::NotApplicable
    );
    let scope = if sub.label_filter.is_empty() || !admitted {
        None
    } else {
        let labels = mailbox_labels(settings, store, policy, mailbox, oauth)
            .await
            .with_context(|| format!("reading the labels of {mailbox} to resolve --labels"))?;
        let scope = resolve_label_scope(&labels, &sub.label_filter).map_err(|label| {
            SubscriptionError::UnknownLabel {
                mailbox: mailbox.clone(),
                label,
            }
        })?;
        Some(scope)
    };
    let subscription = subs.approve_scoped(mailbox, by, verdict, scope).await?;
    Ok(Approved {
        readable: readable && subscription.status == SubscriptionStatus::Active,
        subscription,
        warning,
    })
}

/// Gmail's `labels.list` as the mailbox: impersonated, or with its owner's
/// consent for an OAuth subscription.
async fn mailbox_labels(
    settings: &Settings,
    store: &Store,
    policy: &Policy,
    mailbox: &MailboxAddress,
    oauth: bool,
) -> anyhow::Result<Vec<crate::google::gmail::LabelInfo>> {
    let gmail = mailbox_gmail(settings, store, policy, mailbox, oauth).await?;
    Ok(gmail.list_labels().await?)
}

/// A Gmail handle as the mailbox for a command: impersonated, or with its
/// owner's consent for an OAuth subscription; its calls count in the
/// project's daily budget.
async fn mailbox_gmail(
    settings: &Settings,
    store: &Store,
    policy: &Policy,
    mailbox: &MailboxAddress,
    oauth: bool,
) -> anyhow::Result<crate::google::gmail::MailboxGmail> {
    let google = google_counted(settings, store)?;
    let stats = Arc::new(crate::google::gmail::CallStats::default());
    let gmail = if oauth {
        let service = crate::oauth::OAuthService::from_settings(
            settings,
            store.clone(),
            Arc::new(policy.clone()),
        )?
        .ok_or_else(|| {
            UsageError(format!(
                "{mailbox} is an OAuth subscription, but oauth.enabled is false"
            ))
        })?;
        google.gmail_oauth(mailbox, service.tokens().clone(), stats)
    } else {
        google.gmail(mailbox, stats).await?
    };
    Ok(gmail)
}

/// The org-unit verdict for `subscriptions approve`, from the Directory when
/// a key is configured; `Unverified` when it cannot be asked.
pub async fn org_unit_verdict(
    settings: &Settings,
    policy: &Policy,
    mailbox: &MailboxAddress,
) -> OrgUnitVerdict {
    let google = match Google::from_settings(settings) {
        Ok(g) => g,
        Err(e) => return OrgUnitVerdict::Unverified(format!("{e:#}")),
    };
    match google.directory_user(mailbox).await {
        Ok(user) => match gate::evaluate(policy, mailbox, user.as_ref()) {
            GateDecision::Allowed => {
                OrgUnitVerdict::Approved(user.map(|u| u.org_unit.to_string()).unwrap_or_default())
            }
            GateDecision::Refused(r) => OrgUnitVerdict::Refused(r),
        },
        Err(e) => OrgUnitVerdict::Unverified(e.to_string()),
    }
}

/// `check`: the deep preflight. Prints one line per check and, for each
/// failure, what must be fixed. Returns the exit code. `only` checks one
/// subscription (whatever its status; an unknown one is a [`UsageError`]
/// before anything is checked). Only an active subscription is read: a
/// pending, suspended or paused one gets no mailbox token and no Gmail call,
/// at most the Directory's verdict on its org unit (the admin's token).
pub async fn check(settings: &Settings, only: Option<&MailboxAddress>) -> anyhow::Result<u8> {
    if let Some(m) = only {
        let store = open_migrated_store(settings).await?;
        let found = store.get_subscription(m).await;
        store.close().await;
        if found?.is_none() {
            return Err(UsageError(format!("no subscription for {m}")).into());
        }
    }
    let mut failed = 0usize;
    let mut report = |ok: bool, what: String| {
        if !ok {
            failed += 1;
        }
        output::line(format!("[{}] {what}", if ok { " ok " } else { "FAIL" }));
    };
    report(true, "configuration loaded and valid".to_owned());
    let policy = settings.policy()?;

    let store = match open_migrated_store(settings).await {
        Ok(s) => {
            report(
                true,
                format!("database reachable ({}), migrations applied", s.backend()),
            );
            Some(s)
        }
        Err(e) => {
            report(false, format!("database: {e:#}"));
            None
        }
    };

    let google = match Google::from_settings(settings) {
        Ok(g) => {
            match g.account() {
                Some(a) => report(
                    true,
                    format!(
                        "key file {} (service account {}, client ID {})",
                        settings.google.service_account_key_file.display(),
                        a.client_email(),
                        a.client_id()
                    ),
                ),
                None => report(
                    true,
                    "no service-account key: OAuth-only deployment (no domain-wide delegation)"
                        .to_owned(),
                ),
            }
            Some(g)
        }
        Err(e) => {
            report(false, format!("{e:#}"));
            None
        }
    };
    let Some(google) = google else {
        return Ok(1);
    };

    let client_id = google
        .account()
        .map(|a| a.client_id().to_owned())
        .unwrap_or_default();
    if let Some(account) = google.account() {
        // Clock skew: JWTs are refused when our clock is off by minutes.
        match crate::google::auth::server_clock_skew(account.token_uri()).await {
            Ok(Some(skew)) if skew.abs() > 60 => report(
                false,
                format!(
                    "clock skew of {skew}s against the token endpoint: synchronise this host's clock (NTP)"
                ),
            ),
            Ok(Some(skew)) => report(true, format!("clock skew {skew}s")),
            Ok(None) => report(
                true,
                "clock skew not measurable (no Date header)".to_owned(),
            ),
            Err(e) => report(false, format!("token endpoint unreachable: {e}")),
        }

        let admin = google.admin_subject().to_owned();
        let token = match google.tokens() {
            Ok(t) => {
                t.token(&admin, &[crate::google::DIRECTORY_SCOPE.to_owned()])
                    .await
            }
            Err(e) => Err(e),
        };
        match token {
            Ok(_) => report(true, format!("Directory token for admin {admin}")),
            Err(e) => report(
                false,
                format!(
                    "Directory token for admin {admin}: {e}. Fix: in the Admin console authorize client ID {client_id} for scope {} and make sure {admin} is an admin",
                    crate::google::DIRECTORY_SCOPE
                ),
            ),
        }
        // The group scope is optional: needed once a group is subscribed.
        let group_scope = crate::google::DIRECTORY_GROUP_SCOPE;
        let groups_subscribed = match &store {
            Some(st) => st
                .list_group_subscriptions()
                .await
                .map(|gs| gs.iter().filter(|g| g.status == "active").count())
                .unwrap_or(0),
            None => 0,
        };
        let token = match google.tokens() {
            Ok(t) => t.token(&admin, &[group_scope.to_owned()]).await,
            Err(e) => Err(e),
        };
        match token {
            Ok(_) => report(true, format!("Directory group scope for admin {admin}")),
            Err(e) if groups_subscribed == 0 => report(
                true,
                format!(
                    "Directory group scope for admin {admin} not granted ({e}): optional; group subscriptions are refused and review cannot compare group memberships until client ID {client_id} is authorized for {group_scope}"
                ),
            ),
            Err(e) => report(
                false,
                format!(
                    "Directory group scope for admin {admin}: {e}, with {groups_subscribed} group subscription(s). Fix: authorize client ID {client_id} for scope {group_scope}"
                ),
            ),
        }
    }

    // Gmail push: what the admin must have created and granted in Pub/Sub.
    if let Some(pubsub) =
        crate::google::pubsub::PubSub::from_settings(google.clone(), &settings.push)
    {
        for line in pubsub.check().await {
            report(line.ok, line.text);
        }
    }

    let Some(store) = store else { return Ok(1) };
    let subs = store.list_subscriptions().await?;
    let approved: Vec<String> = policy
        .approved_org_units
        .iter()
        .map(|o| o.to_string())
        .collect();
    let oauth = match crate::oauth::OAuthService::from_settings(
        settings,
        store.clone(),
        Arc::new(policy.clone()),
    ) {
        Ok(Some(o)) => {
            report(
                true,
                "OAuth client secret and token encryption key loaded".to_owned(),
            );
            Some(o)
        }
        Ok(None) => None,
        Err(e) => {
            report(false, format!("oauth: {e:#}"));
            None
        }
    };
    for sub in subs.iter().filter(|s| match only {
        Some(m) => &s.mailbox == m,
        None => matches!(
            s.status,
            SubscriptionStatus::Active
                | SubscriptionStatus::Pending
                | SubscriptionStatus::Suspended
        ),
    }) {
        let m = &sub.mailbox;
        let active = sub.status == SubscriptionStatus::Active;
        let not_read = || {
            format!(
                "{m}: {}: not read until it is active (no mailbox token, no Gmail call)",
                sub.status
            )
        };
        if sub.auth_mode == crate::domain::AuthMode::OAuth {
            if active {
                check_oauth_mailbox(&google, oauth.as_ref(), m, &mut report).await;
            } else {
                let consent = store.oauth_token(m).await?.is_some();
                report(
                    true,
                    format!(
                        "{m}: authorized by its owner: {}",
                        if consent {
                            "consent stored"
                        } else {
                            "no consent stored yet"
                        }
                    ),
                );
                report(true, not_read());
            }
            continue;
        }
        if !matches!(
            sub.status,
            SubscriptionStatus::Active
                | SubscriptionStatus::Pending
                | SubscriptionStatus::Suspended
        ) {
            report(true, not_read());
            continue;
        }
        // The gate first: a mailbox outside policy is never impersonated,
        // not even to check it.
        let allowed = match google.directory_user(m).await {
            Ok(user) => match gate::evaluate(&policy, m, user.as_ref()) {
                GateDecision::Allowed => {
                    report(
                        true,
                        format!(
                            "{m}: org unit {}",
                            user.map(|u| u.org_unit.to_string()).unwrap_or_default()
                        ),
                    );
                    true
                }
                GateDecision::Refused(r) => {
                    report(
                        false,
                        format!(
                            "{m}: {r}. Fix: move the mailbox into one of: {}",
                            approved.join(", ")
                        ),
                    );
                    false
                }
            },
            Err(e) => {
                report(false, format!("{m}: directory look-up: {e}"));
                false
            }
        };
        if !active {
            // The Directory's verdict (asked with the admin's token) is all
            // a subscription nobody approved, or the gate suspended, gets.
            report(true, not_read());
            continue;
        }
        if !allowed {
            continue;
        }
        for scope in google.scopes() {
            let token = match google.tokens() {
                Ok(t) => t.token(m.as_str(), std::slice::from_ref(scope)).await,
                Err(e) => Err(e),
            };
            match token {
                Ok(_) => report(true, format!("{m}: token for {scope}")),
                Err(e) => report(
                    false,
                    format!(
                        "{m}: token for {scope}: {e}. Fix: authorize client ID {client_id} for exactly these scopes: {}",
                        google.scopes().join(",")
                    ),
                ),
            }
        }
        let stats = Arc::new(crate::google::gmail::CallStats::default());
        match google.gmail(m, stats).await {
            Ok(g) => check_profile(&g, m, &mut report).await,
            Err(e) => report(false, format!("{m}: {e}")),
        }
    }
    if failed > 0 {
        output::error(format!("{failed} check(s) failed"));
        return Ok(1);
    }
    Ok(0)
}

async fn check_profile(
    g: &crate::google::gmail::MailboxGmail,
    m: &MailboxAddress,
    report: &mut impl FnMut(bool, String),
) {
    match g.get_profile().await {
        Ok(p) => report(
            true,
            format!(
                "{m}: profile ({} messages, historyId {})",
                p.messages_total, p.history_id
            ),
        ),
        Err(e) => report(false, format!("{m}: profile: {e}")),
    }
}

/// `check` for a mailbox authorized by its owner: a refresh with the stored
/// consent, then the profile with that token.
async fn check_oauth_mailbox(
    google: &Arc<Google>,
    oauth: Option<&Arc<crate::oauth::OAuthService>>,
    m: &MailboxAddress,
    report: &mut impl FnMut(bool, String),
) {
    let Some(oauth) = oauth else {
        report(
            false,
            format!("{m}: an OAuth subscription, but oauth.enabled is false"),
        );
        return;
    };
    match oauth.tokens().access_token(m).await {
        Ok(_) => report(true, format!("{m}: OAuth token from the owner's consent")),
        Err(e) => {
            report(
                false,
                format!(
                    "{m}: OAuth token: {e}. Fix: send the owner {}",
                    oauth.authorize_link(m)
                ),
            );
            return;
        }
    }
    let stats = Arc::new(crate::google::gmail::CallStats::default());
    let g = google.gmail_oauth(m, oauth.tokens().clone(), stats);
    check_profile(&g, m, report).await;
}

/// One member's outcome in `subscriptions approve --group`.
#[derive(Debug, Serialize)]
pub struct GroupApproval {
    pub mailbox: MailboxAddress,
    /// `approved` or `refused`.
    pub result: &'static str,
    /// The status after the attempt.
    pub status: Option<SubscriptionStatus>,
    /// Why it was refused.
    pub reason: Option<String>,
}

/// `subscriptions approve --group GROUP`: approves each pending member
/// subscription requested through the group, one by one through
/// [`approve_one`] (so each is gated and audited like a single approval);
/// a refusal does not stop the others. A mailbox that left the group since
/// it was requested is refused.
pub async fn approve_group(
    settings: &Settings,
    policy: &Policy,
    store: &Store,
    group: &str,
    by: crate::domain::Operator,
) -> anyhow::Result<Vec<GroupApproval>> {
    let pending = crate::groups::pending_members(store, group)
        .await
        .map_err(group_error)?;
    let mut out = Vec::new();
    for (m, still_member) in pending {
        if !still_member {
            out.push(GroupApproval {
                status: Some(SubscriptionStatus::Pending),
                mailbox: m,
                result: "refused",
                reason: Some(format!("no longer a member of {group}")),
            });
            continue;
        }
        match approve_one(settings, store, policy, &m, by.clone()).await {
            Ok(done) => out.push(GroupApproval {
                mailbox: m,
                result: "approved",
                status: Some(done.subscription.status),
                reason: done.warning,
            }),
            Err(e) => {
                let user_error = e.chain().any(|c| {
                    c.downcast_ref::<crate::subscriptions::SubscriptionError>()
                        .is_some_and(|s| s.is_user_error())
                });
                if !user_error {
                    return Err(e.context(format!("approving {m}")));
                }
                let status = store.get_subscription(&m).await?.map(|s| s.status);
                out.push(GroupApproval {
                    mailbox: m,
                    result: "refused",
                    status,
                    reason: Some(format!("{e:#}")),
                });
            }
        }
    }
    Ok(out)
}

/// A group refusal as the CLI reports it: bad input is a [`UsageError`].
pub fn group_error(e: crate::groups::GroupError) -> anyhow::Error {
    if e.is_user_error() {
        UsageError(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// The Google clients for a command that may ask the Directory: `None`
/// when no service-account key or admin is configured (then the Directory
/// is not asked), with the reason.
pub fn directory_client(settings: &Settings) -> Result<Arc<Google>, String> {
    if settings
        .google
        .service_account_key_file
        .as_os_str()
        .is_empty()
    {
        return Err("no service-account key configured".to_owned());
    }
    if settings.google.admin_subject.trim().is_empty() {
        return Err("google.admin_subject is empty".to_owned());
    }
    Google::from_settings(settings).map_err(|e| format!("{e:#}"))
}

/// Asks the Directory, live, about every subscription not removed: the
/// user (org unit, suspended, archived) and, where the group scope is
/// granted, its direct group memberships. A failed look-up is recorded for
/// that mailbox; the others go on.
pub async fn directory_view(
    google: &Arc<Google>,
    store: &Store,
) -> anyhow::Result<crate::subscriptions::DirectoryView> {
    use crate::google::directory::GroupsError;
    use crate::subscriptions::{DirectoryView, LiveFacts};
    let subs = store.list_subscriptions().await?;
    let mut view = DirectoryView::default();
    let mut groups_ok = true;
    for sub in subs
        .iter()
        .filter(|s| s.status != SubscriptionStatus::Removed)
    {
        let m = &sub.mailbox;
        let user = match google.directory_user(m).await {
            Ok(u) => u,
            Err(e) => {
                view.mailboxes.insert(m.clone(), Err(e.to_string()));
                continue;
            }
        };
        let mut facts = LiveFacts {
            org_unit: user.as_ref().map(|u| u.org_unit.to_string()),
            suspended: user.as_ref().is_some_and(|u| u.suspended),
            archived: user.as_ref().is_some_and(|u| u.archived),
            groups: None,
        };
        if user.is_some() && groups_ok {
            match google.directory_groups_of(m.as_str()).await {
                Ok(gs) => facts.groups = Some(gs.into_iter().map(|g| g.email).collect()),
                Err(GroupsError::ScopeNotGranted) => {
                    groups_ok = false;
                    view.groups_unknown = Some("scope not granted".to_owned());
                }
                Err(GroupsError::NotFound(_)) => facts.groups = Some(Vec::new()),
                Err(GroupsError::Google(e)) => {
                    tracing::warn!(mailbox = %m, error = %e, "Could not list the mailbox's groups.");
                }
            }
        }
        view.mailboxes.insert(m.clone(), Ok(facts));
    }
    Ok(view)
}
