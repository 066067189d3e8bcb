//! The top of the HTTP side: the router that puts every route family on one port, and the
//! accept loop that serves it over HTTP/1.1 and h2c and can drop a connection on purpose.
//!
//! Nothing in the crate but `lib.rs` imports this module; it holds no emulation logic of its
//! own, only the wiring.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::errors::GoogleError;
use super::pipeline::{ResetConnection, Shared};
use super::{batch, consent, control, directory, fields, gmail, oauth, pubsub_api};

#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct InjectedReset;

/// Google's 404 for a path nothing serves.
async fn not_found() -> axum::response::Response {
    let mut response = GoogleError::new(404, "notFound", "Not Found").into_response();
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Every route the emulator serves; an unknown path gets Google's 404 body. The batch routes
/// dispatch their inner requests to the Gmail routes alone.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let gmail = || gmail::router().layer(axum::middleware::from_fn(fields::system_parameters));
    let batch_api = gmail().fallback(not_found).with_state(Arc::clone(&shared));
    Router::new()
        .route("/token", axum::routing::post(oauth::token))
        .merge(consent::router())
        .merge(gmail())
        .merge(batch::router(batch_api))
        .merge(directory::router())
        .merge(control::router())
        .merge(pubsub_api::router())
        .fallback(not_found)
        .with_state(shared)
}

/// Accepts connections until `cancel` fires; each connection speaks HTTP/1.1 or h2c.
pub(crate) async fn accept_loop(listener: TcpListener, router: Router, cancel: CancellationToken) {
    let service = TowerToHyperService::new(router);
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "The emulator could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "Could not set TCP_NODELAY.");
        }
        let service = service.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let per_request = hyper::service::service_fn(move |request: Request<Incoming>| {
                let service = service.clone();
                async move {
                    let response = match hyper::service::Service::call(&service, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    // An error from the service makes hyper close the connection without
                    // writing a response: the client sees a transport error.
                    if response.extensions().get::<ResetConnection>().is_some() {
                        Err(InjectedReset)
                    } else {
                        Ok(response)
                    }
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), per_request);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "An emulator connection ended with an error.");
                    }
                }
                () = cancel.cancelled() => {}
            }
        });
    }
}
