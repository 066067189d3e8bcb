//! The one retry loop for Google calls.
//!
//! Bounded (`max_attempts`), jittered exponential backoff starting at
//! `initial_backoff` and capped at `max_backoff`, honouring a server
//! `Retry-After`; no sleep after the last attempt; returns the last error.
//! Each attempt runs under `request_timeout`. Only [`ErrorClass::Retryable`]
//! and [`ErrorClass::RateLimited`] are retried: the rest are answers.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::error::{ErrorClass, GoogleError};
use crate::events;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: `initial * 2^attempt` plus up to
    /// one `initial` of jitter, capped, and never shorter than a server hint.
    pub fn backoff(&self, attempt: u32, err: &GoogleError) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
        let jitter_ms = self.initial_backoff.as_millis().min(1000) as u64;
        let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        let wait = (base + jitter).min(self.max_backoff);
        match (err.class, err.retry_after) {
            (ErrorClass::RateLimited, Some(hint)) => wait.max(hint.min(self.max_backoff * 4)),
            _ => wait,
        }
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable class, or the
/// attempts are used up.
pub async fn call_with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    method: &'static str,
    mut op: F,
) -> Result<T, GoogleError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GoogleError>>,
{
    let mut last = None;
    for attempt in 0..policy.max_attempts {
        let result = match tokio::time::timeout(policy.request_timeout, op()).await {
            Ok(r) => r,
            Err(_) => Err(GoogleError::timeout(method, policy.request_timeout)),
        };
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) if !e.class.is_retryable() => return Err(e),
            Err(e) => e,
        };
        if attempt + 1 < policy.max_attempts {
            let delay = policy.backoff(attempt, &err);
            events::GoogleRetry {
                method,
                class: err.class,
                attempt: attempt + 1,
                delay,
                error: &err,
            }
            .emit();
            tokio::time::sleep(delay).await;
        }
        last = Some(err);
    }
    Err(last
        .unwrap_or_else(|| GoogleError::new(ErrorClass::Fatal, method, "no attempt was allowed")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = call_with_retry(&policy(5), "m", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(GoogleError::new(ErrorClass::Retryable, "m", "boom"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error_and_no_final_sleep() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let err = call_with_retry(&policy(3), "m", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(GoogleError::new(
                ErrorClass::Retryable,
                "m",
                format!("attempt {n}"),
            ))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(err.message, "attempt 2");
        // Two sleeps: <= (100+100) + (200+100) ms.
        assert!(
            start.elapsed() <= Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_not_retried() {
        for class in [
            ErrorClass::NotFound,
            ErrorClass::AuthRevoked,
            ErrorClass::HistoryExpired,
            ErrorClass::Fatal,
        ] {
            let calls = AtomicU32::new(0);
            let err = call_with_retry(&policy(5), "m", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(GoogleError::new(class, "m", "no"))
            })
            .await
            .unwrap_err();
            assert_eq!(err.class, class);
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_wait_at_least_the_server_hint() {
        let mut e = GoogleError::new(ErrorClass::RateLimited, "m", "slow down");
        e.retry_after = Some(Duration::from_secs(1));
        assert!(policy(3).backoff(0, &e) >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn hung_requests_time_out_and_count_as_attempts() {
        let mut p = policy(2);
        p.request_timeout = Duration::from_secs(1);
        let err = call_with_retry(&p, "m", std::future::pending::<Result<(), GoogleError>>)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Retryable);
        assert!(err.message.contains("no answer within"));
    }
}
