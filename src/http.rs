//! `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` says the process is alive. `/readyz` says the database answers,
//! migrations are applied and the scheduler ticked recently; it never calls
//! Google, so a slow Google does not get pods killed. It answers from a
//! readiness refreshed at most once a second ([`READINESS_TTL`]): concurrent
//! requests share one refresh, so unauthenticated traffic cannot drain the
//! pool the fenced writes need (one `SELECT 1` a second, the migrations
//! re-read once a minute). `/metrics` is the Prometheus text exposition.
//! None of them shows mailbox content. The listener's bounds are
//! `listener::serve`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::store::Store;

/// How long one readiness refresh answers `/readyz`.
pub const READINESS_TTL: Duration = Duration::from_secs(1);
/// How often the refresh re-reads the applied migrations (they change only
/// when someone migrates or restores the database: an outage re-reads them).
const MIGRATIONS_TTL: Duration = Duration::from_secs(60);
/// The longest a refresh waits for the database before calling it unreachable.
const READINESS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` reads: shared between the daemon loop and the HTTP server.
#[derive(Debug)]
pub struct Health {
    /// Unix millis of the last scheduler tick handled (0 = never).
    pub last_tick_ms: AtomicI64,
    /// The longest acceptable gap between ticks.
    pub tick_budget: Duration,
    pub integration_enabled: bool,
    /// Active mailboxes in `auth_failed`, from the daemon's last fleet
    /// snapshot (every 30 s): shown, never a reason to be unready, since
    /// the other mailboxes keep going.
    pub auth_failed: AtomicU64,
}

impl Health {
    pub fn new(tick_budget: Duration, integration_enabled: bool) -> Health {
        Health {
            last_tick_ms: AtomicI64::new(0),
            tick_budget,
            integration_enabled,
            auth_failed: AtomicU64::new(0),
        }
    }

    pub fn ticked(&self) {
        self.last_tick_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn scheduler_fresh(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        last > 0 && Utc::now().timestamp_millis() - last <= self.tick_budget.as_millis() as i64
    }
}

/// The database half of readiness, as of its last refresh.
#[derive(Debug, Clone, Default)]
struct DatabaseReadiness {
    /// When it was refreshed (`None`: never).
    refreshed: Option<Instant>,
    checked_at: Option<DateTime<Utc>>,
    database: String,
    migrations: String,
    migrations_read: Option<Instant>,
}

/// One refresh at a time, at most one a [`READINESS_TTL`]: a request that
/// finds it fresh answers from it; one that finds it stale refreshes it
/// holding the lock, and the requests behind it then find it fresh.
#[derive(Debug, Default)]
pub struct ReadinessCache {
    state: tokio::sync::Mutex<DatabaseReadiness>,
}

impl ReadinessCache {
    async fn current(&self, store: &Store) -> DatabaseReadiness {
        let mut r = self.state.lock().await;
        if r.refreshed.is_some_and(|t| t.elapsed() < READINESS_TTL) {
            return r.clone();
        }
        let was_ok = r.database == "ok";
        r.database = match tokio::time::timeout(READINESS_QUERY_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => format!("unreachable: {e}"),
            Err(_) => format!(
                "unreachable: no answer within {}s",
                READINESS_QUERY_TIMEOUT.as_secs()
            ),
        };
        if r.database != "ok" {
            r.migrations = "unknown".to_owned();
            r.migrations_read = None;
        } else if !was_ok
            || r.migrations != "ok"
            || r.migrations_read
                .is_none_or(|t| t.elapsed() >= MIGRATIONS_TTL)
        {
            r.migrations =
                match tokio::time::timeout(READINESS_QUERY_TIMEOUT, store.pending_migrations())
                    .await
                {
                    Ok(Ok(0)) => "ok".to_owned(),
                    Ok(Ok(n)) => format!("{n} pending"),
                    Ok(Err(e)) => format!("unknown: {e}"),
                    Err(_) => "unknown: no answer in time".to_owned(),
                };
            r.migrations_read = Some(Instant::now());
        }
        r.refreshed = Some(Instant::now());
        r.checked_at = Some(Utc::now());
        r.clone()
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub health: Arc<Health>,
    pub readiness: Arc<ReadinessCache>,
}

impl HttpState {
    pub fn new(store: Store, health: Arc<Health>) -> HttpState {
        HttpState {
            store,
            health,
            readiness: Arc::new(ReadinessCache::default()),
        }
    }
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    database: String,
    migrations: String,
    /// When the database half was last refreshed (RFC 3339).
    checked_at: Option<DateTime<Utc>>,
    scheduler: &'static str,
    integration: &'static str,
    /// Active mailboxes in `auth_failed` (see `status` for which and why).
    mailboxes_auth_failed: u64,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let db = state.readiness.current(&state.store).await;
    let scheduler = if state.health.scheduler_fresh() {
        "ok"
    } else {
        "stale"
    };
    let ready = db.database == "ok" && db.migrations == "ok" && scheduler == "ok";
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        database: db.database,
        migrations: db.migrations,
        checked_at: db.checked_at,
        scheduler,
        integration: if state.health.integration_enabled {
            "enabled"
        } else {
            "disabled: ingesting nothing"
        },
        mailboxes_auth_failed: state.health.auth_failed.load(Ordering::Relaxed),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render_metrics(),
    )
        .into_response()
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves until `shutdown` resolves, within `limits` (`[http]`).
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    limits: crate::config::ListenerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve(listener, router(state), "http", limits, shutdown).await
}
