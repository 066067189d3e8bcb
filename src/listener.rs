//! The one way we serve HTTP: `http.listen` and `oauth.listen` both go
//! through [`serve`], which bounds what a client can hold.
//!
//! `axum::serve` builds hyper without a timer, so hyper's header-read timeout
//! is silently off, and it has no idle timeout and no connection cap: a few
//! thousand slow clients would hold file descriptors until the process could
//! no longer open database or Google connections. Here every listener has:
//!
//! - a cap on concurrent connections (`max_connections`): a
//!   semaphore permit is taken *before* `accept`, so over the cap a new
//!   connection waits in the kernel's listen backlog, holding no descriptor
//!   of ours, until a served connection ends (which the timeouts below
//!   bound); a connection is never accepted only to be refused;
//! - hyper's header-read timeout with a timer (`header_read_timeout`):
//!   a request's headers, including the first one's, must arrive within it,
//!   and it also ends a kept-alive connection that sends no next request;
//! - an idle timeout (`idle_timeout`): a connection on which no
//!   byte moved either way for this long is closed (a body trickled one byte
//!   at a time, a client that never reads its response);
//! - a request body limit (`max_body_bytes`): larger bodies get
//!   413, whether announced by `Content-Length` or streamed.
//!
//! Only HTTP/1.1 is spoken: no browser, probe or scraper uses cleartext
//! HTTP/2, and leaving it out leaves out its slow-client surface. On shutdown
//! no new connection is accepted, served ones finish their request
//! (keep-alive is turned off), and whatever is still open after the grace
//! period is dropped. This module never logs request content.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerLimits;

/// A listener's limits and its name, shared by its connection tasks.
struct Bounds {
    name: &'static str,
    limits: ListenerLimits,
}

/// `router` with the body limit applied: an announced `Content-Length`
/// over the limit is answered 413 before any handler runs, and a streamed
/// body is cut at the limit (axum's extractors answer 413).
pub fn limit_bodies(router: Router, max_body_bytes: usize) -> Router {
    router
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| refuse_large_bodies(req, next, max_body_bytes),
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
}

async fn refuse_large_bodies(req: Request, next: Next, max: usize) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes\n"),
        )
            .into_response();
    }
    next.run(req).await
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves,
/// then drains for `limits.shutdown_grace`. `name` is the listener's config
/// section (`http`, `oauth`), for log lines.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    name: &'static str,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = limit_bodies(router, limits.max_body_bytes);
    let limits = Arc::new(Bounds { name, limits });
    // Taken before `accept` and moved into the connection's task: the cap on
    // descriptors this listener holds.
    let permits = Arc::new(Semaphore::new(limits.limits.max_connections.max(1)));
    // Fired when shutdown begins: connections finish their request, then close.
    let draining = CancellationToken::new();
    // Fired when the grace period is over: connections still open are dropped.
    let abort = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before it
                // was accepted: back off instead of spinning.
                tracing::warn!(listener = limits.name, error = %e, "Could not accept a connection.");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let limits = limits.clone();
        let draining = draining.clone();
        let abort = abort.clone();
        tracker.spawn(async move {
            serve_connection(stream, router, &limits, &draining, &abort).await;
            drop(permit);
        });
    }
    drop(listener);
    draining.cancel();
    tracker.close();
    if tokio::time::timeout(limits.limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = limits.name,
            open = tracker.len(),
            "Closing connections still open after the shutdown grace."
        );
        abort.cancel();
        tracker.wait().await;
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    bounds: &Bounds,
    draining: &CancellationToken,
    abort: &CancellationToken,
) {
    let limits = &bounds.limits;
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let mut drain_started = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = bounds.name, error = %e, "Connection ended with an error.");
                }
                return;
            }
            () = draining.cancelled(), if !drain_started => {
                drain_started = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(listener = bounds.name, "Closing an idle connection.");
                return;
            }
            () = abort.cancelled() => return,
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it started.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
