//! Logging and the metrics registry.
//!
//! Tracing goes to stderr, pretty or JSON (`log.format`), filtered by
//! `RUST_LOG` when set, else `log.level`; pretty logs are coloured only on a
//! terminal. Some directives are always appended:
//! `yup_oauth2` logs tokens at debug level, so it is capped at `info` whatever
//! the operator asks for. The Prometheus recorder is installed once per
//! process; only `events.rs` records into it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LogSettings};

/// Directives appended after the operator's filter; later directives win.
const FORCED_DIRECTIVES: &[&str] = &[
    "yup_oauth2=info",
    "hyper=warn",
    "hyper_util=warn",
    "h2=warn",
    "rustls=warn",
    "sqlx=warn",
    "tokio_cron_scheduler=warn",
];

pub fn env_filter(level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
    let mut spec = base;
    for d in FORCED_DIRECTIVES {
        spec.push(',');
        spec.push_str(d);
    }
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(FORCED_DIRECTIVES.join(",")))
}

/// Installs the global tracing subscriber. Safe to call more than once (the
/// first call wins), which the tests rely on.
pub fn init_tracing(settings: &LogSettings) {
    let filter = env_filter(&settings.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colours only for a person at a terminal: a pipe, a file or the
        // journal gets plain text.
        LogFormat::Pretty => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .compact()
            .try_init(),
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness): then our
        // handle renders nothing, which the metrics test would reveal.
        let _ = metrics::set_global_recorder(recorder);
        crate::events::describe_all();
        handle
    })
}

/// Renders every metric in the Prometheus text exposition format.
pub fn render_metrics() -> String {
    metrics_handle().render()
}
