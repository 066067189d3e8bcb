//! Shared state and the request pipeline every Gmail and Directory call goes through
//! (faults → auth → concurrency cap → latency → quota → handler → counters).
//!
//! It sits below the route handlers, which call [`serve_api`] and lock [`Shared`]; it must not
//! import a handler (the router that names them all is `server`'s).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::clock::Clock;
use super::errors::GoogleError;
use super::grants::OAuthClientInfo;
use super::model::{ApiMethod, Fault, World};
use super::scopes::{DIRECTORY_PREFIX, GMAIL_FULL, GMAIL_METADATA, GMAIL_MODIFY, GMAIL_READONLY};

/// State shared by every connection. `Debug` leaves the world out: it holds bearer tokens.
pub(crate) struct Shared {
    /// The one lock. Held only for short, synchronous sections; never across an `.await`.
    world: Mutex<World>,
    pub(crate) clock: Clock,
    pub(crate) token_url: String,
    pub(crate) port: u16,
    /// The registered web client; fixed for the emulator's life (`POST /reset` keeps it).
    pub(crate) oauth_client: OAuthClientInfo,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        world: World,
        token_url: String,
        port: u16,
        oauth_client: OAuthClientInfo,
    ) -> Self {
        Self {
            world: Mutex::new(world),
            clock: Clock::default(),
            token_url,
            port,
            oauth_client,
        }
    }

    /// Locks the world. A panic while holding the lock leaves plain data behind, so a poisoned
    /// lock is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Response extension: the accept loop turns such a response into a dropped connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResetConnection;

fn reset_response() -> Response {
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(ResetConnection);
    response
}

/// Who is calling: the token's subject (lower case) and scopes.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) email: String,
    pub(crate) scopes: Vec<String>,
}

impl Caller {
    fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The token carries at least one of `scopes`.
    pub(crate) fn has_any(&self, scopes: &[&str]) -> bool {
        scopes.iter().any(|s| self.has(s))
    }

    fn has_gmail_scope(&self) -> bool {
        [GMAIL_READONLY, GMAIL_METADATA, GMAIL_MODIFY, GMAIL_FULL]
            .iter()
            .any(|s| self.has(s))
    }

    /// The token carries `gmail.metadata`: Google then refuses `q` whatever else it carries.
    pub(crate) fn has_metadata_scope(&self) -> bool {
        self.has(GMAIL_METADATA)
    }

    /// The token's only Gmail scope is `gmail.metadata`: no bodies, no attachments.
    pub(crate) fn metadata_only(&self) -> bool {
        self.has(GMAIL_METADATA)
            && ![GMAIL_READONLY, GMAIL_MODIFY, GMAIL_FULL]
                .iter()
                .any(|s| self.has(s))
    }
}

/// Releases a user's concurrency slot when the request ends, however it ends.
struct InFlight {
    shared: Arc<Shared>,
    email: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(user) = self.shared.lock().user_mut(&self.email) {
            user.in_flight = user.in_flight.saturating_sub(1);
        }
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates and authorises a call; for Gmail also takes a concurrency slot.
fn admit(
    world: &mut World,
    now: i64,
    method: ApiMethod,
    headers: &HeaderMap,
    user_id: Option<&str>,
) -> Result<Caller, GoogleError> {
    let token = bearer(headers).ok_or_else(GoogleError::unauthenticated)?;
    let issued = world
        .live_token(token, now)
        .ok_or_else(GoogleError::unauthenticated)?;
    let Some(subject) = issued.subject.clone() else {
        return Err(GoogleError::failed_precondition(
            "Precondition check failed.",
        ));
    };
    let caller = Caller {
        email: subject.clone(),
        scopes: issued.scopes.clone(),
    };
    if method.is_gmail() {
        if let Some(user_id) = user_id
            && user_id != "me"
            && !user_id.eq_ignore_ascii_case(&subject)
        {
            return Err(GoogleError::forbidden(format!(
                "Delegation denied for {subject}"
            )));
        }
        if !caller.has_gmail_scope() {
            return Err(GoogleError::insufficient_permissions());
        }
        let quota = world.quota.clone();
        let user = world
            .user_mut(&subject)
            .ok_or_else(|| GoogleError::failed_precondition("Mail service not enabled"))?;
        if user.suspended {
            return Err(GoogleError::forbidden(format!(
                "Account {subject} is suspended."
            )));
        }
        if !user.mailbox_enabled {
            return Err(GoogleError::failed_precondition("Mail service not enabled"));
        }
        if quota.enforce && user.in_flight >= quota.max_concurrent_per_user {
            return Err(GoogleError::too_many_concurrent(1));
        }
        user.in_flight += 1;
    } else {
        let admin = world
            .user(&subject)
            .is_some_and(|u| u.is_admin && !u.suspended);
        if !admin {
            return Err(GoogleError::forbidden(
                "Not Authorized to access this resource/api",
            ));
        }
        if !caller
            .scopes
            .iter()
            .any(|s| s.starts_with(DIRECTORY_PREFIX))
        {
            return Err(GoogleError::insufficient_permissions());
        }
    }
    Ok(caller)
}

/// Runs one Gmail or Directory call through the common pipeline.
pub(crate) async fn serve_api<F>(
    shared: Arc<Shared>,
    method: ApiMethod,
    headers: &HeaderMap,
    user_id: Option<&str>,
    handler: F,
) -> Response
where
    F: FnOnce(&Shared, &Caller) -> Result<Response, GoogleError>,
{
    let style = |e: GoogleError| {
        if method.is_gmail() {
            e
        } else {
            e.directory_style()
        }
    };
    let (fault, latency, admitted) = {
        let mut world = shared.lock();
        let (fault, latency) = world.roll_fault();
        let admitted = match fault {
            None => Some(admit(
                &mut world,
                shared.clock.now_ms(),
                method,
                headers,
                user_id,
            )),
            Some(_) => None,
        };
        (fault, latency, admitted)
    };
    let caller = match admitted {
        Some(Ok(caller)) => caller,
        Some(Err(refusal)) => {
            let response = style(refusal).into_response();
            shared
                .lock()
                .record(method, response.status().as_u16(), None);
            return response;
        }
        None => {
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            let refusal = match fault {
                Some(Fault::Reset) | None => return reset_response(),
                Some(Fault::ServerError) => GoogleError::backend_error(),
                Some(Fault::Unavailable) => GoogleError::unavailable(),
                Some(Fault::UserRateLimit) => GoogleError::user_rate_limit(1),
                Some(Fault::ConcurrentRateLimit) => GoogleError::too_many_concurrent(1),
            };
            let response = style(refusal).into_response();
            shared
                .lock()
                .record(method, response.status().as_u16(), None);
            return response;
        }
    };
    let _slot = method.is_gmail().then(|| InFlight {
        shared: Arc::clone(&shared),
        email: caller.email.clone(),
    });
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let charged = shared
        .lock()
        .charge(&caller.email, method, shared.clock.now_ms());
    let response = match charged.and_then(|()| handler(&shared, &caller)) {
        Ok(response) => response,
        Err(refusal) => style(refusal).into_response(),
    };
    shared
        .lock()
        .record(method, response.status().as_u16(), Some(&caller.email));
    response
}
