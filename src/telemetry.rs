//! Logging and the metrics registry.
//!
//! Tracing goes to stderr, pretty or JSON (`log.format`), filtered by
//! `RUST_LOG` when set, else `log.level`; pretty logs are coloured only on a
//! terminal. Some directives are always appended
//! (noisy dependencies at `warn`). Targets that print secrets are capped in
//! the subscriber itself, by a filter layer no directive can lift
//! ([`secret_cap`]): `yup_oauth2` logs token requests and responses at debug
//! level, and a more specific directive (`yup_oauth2::service_account=debug`)
//! would beat any appended `yup_oauth2=info`. The Prometheus recorder is
//! installed once per process; only `events.rs` records into it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Targets that print secrets below a level, with the most verbose level
/// each may log at: `yup_oauth2` logs token requests and responses (access
/// tokens, assertions) at debug; sqlx-postgres logs the *value* of every
/// database URL parameter it does not know (`?sslpassword=…`) at warn.
const SECRET_CAPS: &[(&str, Level)] = &[
    ("yup_oauth2", Level::INFO),
    ("sqlx_postgres::options", Level::ERROR),
];

/// Whether the cap lets an event or span through: false for a target of
/// [`SECRET_CAPS`] (the target itself or a module under it) more verbose
/// than its cap, true for everything else.
pub fn secret_cap_allows(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    SECRET_CAPS.iter().all(|(prefix, cap)| {
        let under = target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
        // `Level` orders verbose as greater: TRACE > DEBUG > INFO.
        !under || meta.level() <= cap
    })
}

/// The cap as a filter layer of the subscriber: a global filter, so an event
/// it refuses reaches no layer whatever `RUST_LOG`'s directives enable.
pub fn secret_cap() -> tracing_subscriber::filter::FilterFn<fn(&Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(secret_cap_allows as fn(&Metadata<'_>) -> bool)
}

/// Installs the global tracing subscriber. Safe to call more than once (the
/// first call wins), which the tests rely on.
pub fn init_tracing(settings: &LogSettings) {
    let filter = env_filter(&settings.level);
    let registry = tracing_subscriber::registry()
        .with(secret_cap())
        .with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        // Colours only for a person at a terminal: a pipe, a file or the
        // journal gets plain text.
        LogFormat::Pretty => registry
            .with(
                fmt.with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .compact(),
            )
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// What a subscriber built like [`init_tracing`]'s, with `directives`
    /// as `RUST_LOG`, prints for events of the given targets.
    fn printed(directives: &str) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let filter = EnvFilter::try_new(format!("{directives},yup_oauth2=info")).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(secret_cap())
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || SinkWriter(sink.clone())),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "yup_oauth2::service_account", "received response: access_token=SECRET1");
            tracing::trace!(target: "yup_oauth2", "found valid token in cache: SECRET2");
            tracing::warn!(target: "sqlx_postgres::options::parse", value = "SECRET3", "ignoring unrecognized connect parameter");
            tracing::info!(target: "yup_oauth2::authenticator", "kept at info");
            tracing::debug!(target: "gmail_ingest::sync", "our own debug line");
        });
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct SinkWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SinkWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_directive_lifts_the_cap_on_token_printing_targets() {
        for directives in [
            "yup_oauth2::service_account=debug",
            "yup_oauth2=trace,sqlx_postgres=trace",
            "trace",
        ] {
            let out = printed(directives);
            for secret in ["SECRET1", "SECRET2", "SECRET3"] {
                assert!(!out.contains(secret), "{directives}: {out}");
            }
            assert!(out.contains("kept at info"), "{directives}: {out}");
        }
        let out = printed("trace");
        assert!(out.contains("our own debug line"), "{out}");
    }
}
