//! `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` says the process is alive. `/readyz` says the database answers,
//! migrations are applied and the scheduler ticked recently; it never calls
//! Google, so a slow Google does not get pods killed. `/metrics` is the
//! Prometheus text exposition. None of them shows mailbox content.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::store::Store;

/// What `/readyz` reads: shared between the daemon loop and the HTTP server.
#[derive(Debug)]
pub struct Health {
    /// Unix millis of the last scheduler tick handled (0 = never).
    pub last_tick_ms: AtomicI64,
    /// The longest acceptable gap between ticks.
    pub tick_budget: Duration,
    pub integration_enabled: bool,
}

impl Health {
    pub fn ticked(&self) {
        self.last_tick_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn scheduler_fresh(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        last > 0 && Utc::now().timestamp_millis() - last <= self.tick_budget.as_millis() as i64
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub health: Arc<Health>,
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    database: String,
    migrations: String,
    scheduler: &'static str,
    integration: &'static str,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let database = match state.store.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("unreachable: {e}"),
    };
    let migrations = if database == "ok" {
        match state.store.pending_migrations().await {
            Ok(0) => "ok".to_owned(),
            Ok(n) => format!("{n} pending"),
            Err(e) => format!("unknown: {e}"),
        }
    } else {
        "unknown".to_owned()
    };
    let scheduler = if state.health.scheduler_fresh() {
        "ok"
    } else {
        "stale"
    };
    let ready = database == "ok" && migrations == "ok" && scheduler == "ok";
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        database,
        migrations,
        scheduler,
        integration: if state.health.integration_enabled {
            "enabled"
        } else {
            "disabled: ingesting nothing"
        },
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
