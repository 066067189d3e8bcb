//! Every Google failure, classified once.
//!
//! The sync engine branches on [`ErrorClass`], never on status codes or
//! message text: all of that knowledge lives here. Sources: Google's
//! "handle errors" guide and the token-endpoint error table
//! (reference/gmail-api.md §1.4, §4).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient (5xx, reset, timeout): retry with backoff.
    Retryable,
    /// Quota or concurrency refusal: retry after the hinted delay.
    RateLimited,
    /// `history.list` answered 404: the stored historyId is too old.
    HistoryExpired,
    /// The message (or user in the Directory) does not exist.
    NotFound,
    /// Access to this mailbox is refused until an admin acts.
    AuthRevoked,
    /// A bug or a misconfiguration: do not retry.
    Fatal,
}

impl ErrorClass {
    /// Bounded label for metrics (`error_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::RateLimited => "rate_limited",
            Self::HistoryExpired => "history_expired",
            Self::NotFound => "not_found",
            Self::AuthRevoked => "auth_revoked",
            Self::Fatal => "fatal",
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Retryable | Self::RateLimited)
    }
}

/// Why access to a mailbox is refused, phrased for the operator who must fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthCause {
    /// The service account's client ID has no DWD grant, or lacks a scope.
    ScopeNotGranted,
    /// The mailbox does not exist in the Workspace directory.
    UserUnknown,
    /// The user is suspended or archived.
    UserSuspended,
    /// The user has no Gmail service (no licence or mailbox).
    NoGmailService,
    /// A Workspace admin policy blocks the app or the scopes.
    AdminPolicy,
    /// The token was issued for another mailbox.
    DelegationDenied,
    /// The key was refused (deleted, disabled, or not this service account's).
    KeyRejected,
    /// The JWT's times were refused: the host clock is probably wrong.
    ClockSkew,
    /// An OAuth mailbox's refresh token was refused (`invalid_grant`): the
    /// owner revoked access, reset their password, or an admin removed the app.
    ConsentRevoked,
    /// An OAuth mailbox has no stored consent (never authorized, or disconnected).
    ConsentMissing,
    /// The stored consent cannot be opened: sealed under a key the key file
    /// no longer holds, or its value is corrupted.
    ConsentUnreadable,
}

impl AuthCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScopeNotGranted => "scope_not_granted",
            Self::UserUnknown => "user_unknown",
            Self::UserSuspended => "user_suspended",
            Self::NoGmailService => "no_gmail_service",
            Self::AdminPolicy => "admin_policy",
            Self::DelegationDenied => "delegation_denied",
            Self::KeyRejected => "key_rejected",
            Self::ClockSkew => "clock_skew",
            Self::ConsentRevoked => "consent_revoked",
            Self::ConsentMissing => "consent_missing",
            Self::ConsentUnreadable => "consent_unreadable",
        }
    }

    /// What the Workspace admin (or operator) must do.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::ScopeNotGranted => {
                "authorize the service account's client ID for the configured scopes under domain-wide delegation"
            }
            Self::UserUnknown => "the mailbox does not exist in the directory: check the address",
            Self::UserSuspended => {
                "the user is suspended or archived: restore it in the Admin console"
            }
            Self::NoGmailService => "the user has no Gmail service: assign a licence with Gmail",
            Self::AdminPolicy => {
                "a Workspace admin policy blocks this app or scope: allow it under API controls"
            }
            Self::DelegationDenied => "the token belongs to another mailbox (a bug: report it)",
            Self::KeyRejected => {
                "the service-account key was refused: create a new key and update the key file"
            }
            Self::ClockSkew => "the JWT times were refused: synchronise this host's clock (NTP)",
            Self::ConsentRevoked => "consent revoked — the owner must authorize again",
            Self::ConsentMissing => "no consent stored — the owner must authorize",
            Self::ConsentUnreadable => {
                "the stored consent cannot be opened with oauth.token_encryption_key_file — put the key it was sealed under back on a later line of the key file, or have the owner authorize again"
            }
        }
    }
}

impl fmt::Display for AuthCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.remedy())
    }
}

/// One classified failure of a Google call.
#[derive(Debug, Clone, thiserror::Error)]
pub struct GoogleError {
    pub class: ErrorClass,
    /// Discovery id of the method, e.g. `gmail.users.messages.get`.
    pub method: &'static str,
    pub status: Option<u16>,
    /// Google's `reason` (or the token endpoint's `error`), when known.
    pub reason: Option<String>,
    /// One line, never a token or key material.
    pub message: String,
    /// Server hint (Retry-After) for rate limits.
    pub retry_after: Option<Duration>,
    pub auth_cause: Option<AuthCause>,
}

impl fmt::Display for GoogleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.method)?;
        if let Some(s) = self.status {
            write!(f, " with {s}")?;
        }
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(c) = self.auth_cause {
            write!(f, "; {}", c.remedy())?;
        }
        Ok(())
    }
}

impl GoogleError {
    pub fn new(class: ErrorClass, method: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            method,
            status: None,
            reason: None,
            message: one_line(&message.into()),
            retry_after: None,
            auth_cause: None,
        }
    }

    pub fn timeout(method: &'static str, after: Duration) -> Self {
        Self::new(
            ErrorClass::Retryable,
            method,
            format!("no answer within {}", humantime::format_duration(after)),
        )
    }

    pub fn auth(method: &'static str, cause: AuthCause, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorClass::AuthRevoked, method, message);
        e.auth_cause = Some(cause);
        e
    }
}

/// Collapses whitespace so an error always fits on one log or CLI line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(300));
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > 300 {
            out.push('…');
            break;
        }
    }
    out
}

/// Classifies an HTTP failure of a Google API (Gmail or Directory) from its
/// status and JSON body (`{"error":{"code","message","errors":[{"reason"}],"status"}}`).
pub fn classify_http(
    method: &'static str,
    status: Option<u16>,
    body: Option<&Value>,
    retry_after: Option<Duration>,
) -> GoogleError {
    let err = body.and_then(|b| b.get("error"));
    let code = status.or_else(|| {
        err.and_then(|e| e.get("code"))
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
    });
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let reason = err
        .and_then(|e| e.get("errors"))
        .and_then(|v| v.get(0))
        .and_then(|v| v.get("reason"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let grpc_status = err
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let lower = message.to_ascii_lowercase();
    let r = reason.as_deref().unwrap_or("");
    let is_history = method == "gmail.users.history.list";

    let (class, cause) = match (code, r) {
        (
            _,
            "userRateLimitExceeded" | "rateLimitExceeded" | "quotaExceeded" | "dailyLimitExceeded",
        ) => (ErrorClass::RateLimited, None),
        (Some(429), _) => (ErrorClass::RateLimited, None),
        (Some(403), _) if lower.contains("quota exceeded") || lower.contains("rate limit") => {
            (ErrorClass::RateLimited, None)
        }
        // Pub/Sub refuses the service account itself, not a mailbox: an IAM
        // grant is missing (the admin's to add; `check` names it).
        (Some(403), _) if method.starts_with("pubsub.") => (ErrorClass::Fatal, None),
        (Some(404), _) if is_history => (ErrorClass::HistoryExpired, None),
        (Some(404), _) => (ErrorClass::NotFound, None),
        (Some(401), _) => (ErrorClass::Retryable, None),
        (Some(400), _) if lower.contains("mail service not enabled") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::NoGmailService))
        }
        (Some(400), "failedPrecondition") | (Some(400), _)
            if grpc_status == "FAILED_PRECONDITION" =>
        {
            (ErrorClass::Retryable, None)
        }
        (Some(400), "failedPrecondition") => (ErrorClass::Retryable, None),
        (Some(403), _) if lower.contains("delegation denied") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::DelegationDenied))
        }
        (Some(403), "domainPolicy") => (ErrorClass::AuthRevoked, Some(AuthCause::AdminPolicy)),
        (Some(403), "insufficientPermissions") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::ScopeNotGranted))
        }
        (Some(403), _) if lower.contains("metadata scope") => (ErrorClass::Fatal, None),
        (Some(403), _) if lower.contains("suspended") || lower.contains("disabled") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::UserSuspended))
        }
        (Some(403), _) if method.starts_with("directory.") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::ScopeNotGranted))
        }
        (Some(403), _) => (ErrorClass::AuthRevoked, Some(AuthCause::UserSuspended)),
        (Some(s), _) if s >= 500 => (ErrorClass::Retryable, None),
        (Some(408), _) => (ErrorClass::Retryable, None),
        (None, _) => (ErrorClass::Retryable, None),
        _ => (ErrorClass::Fatal, None),
    };
    GoogleError {
        class,
        method,
        status: code,
        reason,
        message: if message.is_empty() {
            format!("HTTP {}", code.map_or("?".to_owned(), |c| c.to_string()))
        } else {
            one_line(&message)
        },
        retry_after,
        auth_cause: cause,
    }
}

/// Classifies a refusal of the OAuth token endpoint (`{"error","error_description"}`).
pub fn classify_token_error(
    method: &'static str,
    error: &str,
    description: Option<&str>,
) -> GoogleError {
    let desc = description.unwrap_or("");
    let lower = desc.to_ascii_lowercase();
    let (class, cause) = match error {
        "unauthorized_client" => (ErrorClass::AuthRevoked, Some(AuthCause::ScopeNotGranted)),
        "access_denied" | "admin_policy_enforced" => {
            (ErrorClass::AuthRevoked, Some(AuthCause::AdminPolicy))
        }
        "invalid_grant" if lower.contains("signature") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::KeyRejected))
        }
        "invalid_grant" if lower.contains("short-lived") || lower.contains("iat") => {
            (ErrorClass::AuthRevoked, Some(AuthCause::ClockSkew))
        }
        "invalid_grant" | "invalid_request" => {
            (ErrorClass::AuthRevoked, Some(AuthCause::UserUnknown))
        }
        "disabled_client" | "deleted_client" | "invalid_client" => {
            (ErrorClass::AuthRevoked, Some(AuthCause::KeyRejected))
        }
        "invalid_scope" => (ErrorClass::Fatal, None),
        "temporarily_unavailable" | "server_error" | "internal_failure" => {
            (ErrorClass::Retryable, None)
        }
        _ => (ErrorClass::Fatal, None),
    };
    GoogleError {
        class,
        method,
        status: None,
        reason: Some(error.to_owned()),
        message: one_line(if desc.is_empty() { error } else { desc }),
        retry_after: None,
        auth_cause: cause,
    }
}

/// Classifies a yup-oauth2 failure to obtain a token.
pub fn classify_auth_error(method: &'static str, e: &yup_oauth2::Error) -> GoogleError {
    match e {
        yup_oauth2::Error::AuthError(a) => {
            let code = match &a.error {
                yup_oauth2::error::AuthErrorCode::InvalidRequest => "invalid_request".to_owned(),
                yup_oauth2::error::AuthErrorCode::InvalidClient => "invalid_client".to_owned(),
                yup_oauth2::error::AuthErrorCode::InvalidGrant => "invalid_grant".to_owned(),
                yup_oauth2::error::AuthErrorCode::UnauthorizedClient => {
                    "unauthorized_client".to_owned()
                }
                yup_oauth2::error::AuthErrorCode::UnsupportedGrantType => {
                    "unsupported_grant_type".to_owned()
                }
                yup_oauth2::error::AuthErrorCode::InvalidScope => "invalid_scope".to_owned(),
                yup_oauth2::error::AuthErrorCode::AccessDenied => "access_denied".to_owned(),
                yup_oauth2::error::AuthErrorCode::ExpiredToken => "expired_token".to_owned(),
                yup_oauth2::error::AuthErrorCode::Other(s) => s.clone(),
            };
            classify_token_error(method, &code, a.error_description.as_deref())
        }
        // Transport failures and unparsable answers (a 5xx page) are transient.
        yup_oauth2::Error::HttpError(_)
        | yup_oauth2::Error::HttpClientError(_)
        | yup_oauth2::Error::JSONError(_) => GoogleError::new(
            ErrorClass::Retryable,
            method,
            format!("token endpoint: {}", e),
        ),
        yup_oauth2::Error::LowLevelError(io) => GoogleError::new(
            ErrorClass::Retryable,
            method,
            format!("token endpoint: {io}"),
        ),
        other => GoogleError::new(ErrorClass::Fatal, method, format!("token: {other}")),
    }
}

/// Classifies a google-gmail1 error. `status`/`retry_after` come from our
/// delegate (the library drops the status when it parses a JSON body).
pub fn classify_gmail_error(
    method: &'static str,
    e: &google_gmail1::Error,
    status: Option<u16>,
    retry_after: Option<Duration>,
) -> GoogleError {
    use google_gmail1::Error as E;
    match e {
        E::BadRequest(body) => classify_http(method, status, Some(body), retry_after),
        E::Failure(resp) => classify_http(
            method,
            status.or(Some(resp.status().as_u16())),
            None,
            retry_after,
        ),
        E::MissingToken(inner) => {
            if let Some(y) = inner.downcast_ref::<yup_oauth2::Error>() {
                classify_auth_error(method, y)
            } else if let Some(g) = inner.downcast_ref::<GoogleError>() {
                // Our own OAuth refresh-token source classifies its failures already.
                g.clone()
            } else {
                GoogleError::new(ErrorClass::Retryable, method, format!("token: {inner}"))
            }
        }
        E::HttpError(h) => {
            GoogleError::new(ErrorClass::Retryable, method, format!("transport: {h}"))
        }
        E::Io(io) => GoogleError::new(ErrorClass::Retryable, method, format!("transport: {io}")),
        E::JsonDecodeError(_, err) => GoogleError::new(
            ErrorClass::Retryable,
            method,
            format!("undecodable response: {err}"),
        ),
        other => GoogleError::new(ErrorClass::Fatal, method, other.to_string()),
    }
}

/// Classifies a google-pubsub1 error: the same generated family and error
/// type as google-gmail1, so the same rules, under a `pubsub.` method id
/// (a 403 is a missing IAM grant of the service account, not a mailbox's).
pub fn classify_pubsub_error(
    method: &'static str,
    e: &google_pubsub1::Error,
    status: Option<u16>,
    retry_after: Option<Duration>,
) -> GoogleError {
    classify_gmail_error(method, e, status, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pubsub_refusals_are_the_service_accounts_not_a_mailboxs() {
        let b = body(
            403,
            "forbidden",
            "User not authorized to perform this action.",
        );
        let e = classify_http(
            "pubsub.projects.subscriptions.pull",
            Some(403),
            Some(&b),
            None,
        );
        assert_eq!(e.class, ErrorClass::Fatal);
        assert_eq!(e.auth_cause, None);
        let b = body(404, "notFound", "Resource not found");
        let e = classify_http("pubsub.projects.topics.get", Some(404), Some(&b), None);
        assert_eq!(e.class, ErrorClass::NotFound);
        let e = classify_http("pubsub.projects.subscriptions.pull", Some(503), None, None);
        assert_eq!(e.class, ErrorClass::Retryable);
    }

    fn body(code: u16, reason: &str, message: &str) -> Value {
        json!({"error": {"code": code, "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}]}})
    }

    #[test]
    fn rate_limits_are_recognised_in_every_shape() {
        let get = "gmail.users.messages.get";
        for (code, reason, msg) in [
            (403, "userRateLimitExceeded", "User Rate Limit Exceeded"),
            (403, "rateLimitExceeded", "Rate Limit Exceeded"),
            (
                429,
                "rateLimitExceeded",
                "Too many concurrent requests for user",
            ),
            (
                403,
                "forbidden",
                "Quota exceeded for quota metric 'Queries'",
            ),
            (429, "", "Resource has been exhausted (e.g. check quota)."),
        ] {
            let e = classify_http(get, Some(code), Some(&body(code, reason, msg)), None);
            assert_eq!(e.class, ErrorClass::RateLimited, "{code} {reason} {msg}");
        }
    }

    #[test]
    fn not_found_means_expired_history_only_on_history_list() {
        let b = body(404, "notFound", "Requested entity was not found.");
        assert_eq!(
            classify_http("gmail.users.history.list", Some(404), Some(&b), None).class,
            ErrorClass::HistoryExpired
        );
        assert_eq!(
            classify_http("gmail.users.messages.get", Some(404), Some(&b), None).class,
            ErrorClass::NotFound
        );
    }

    #[test]
    fn access_problems_carry_an_actionable_cause() {
        let e = classify_http(
            "gmail.users.getProfile",
            Some(400),
            Some(&body(400, "failedPrecondition", "Mail service not enabled")),
            None,
        );
        assert_eq!(e.class, ErrorClass::AuthRevoked);
        assert_eq!(e.auth_cause, Some(AuthCause::NoGmailService));
        let e = classify_http(
            "gmail.users.getProfile",
            Some(403),
            Some(&body(
                403,
                "forbidden",
                "Delegation denied for a@example.com",
            )),
            None,
        );
        assert_eq!(e.auth_cause, Some(AuthCause::DelegationDenied));
        let e = classify_token_error(
            "oauth2.token",
            "invalid_grant",
            Some("Invalid email or User ID"),
        );
        assert_eq!(e.auth_cause, Some(AuthCause::UserUnknown));
        let e = classify_token_error("oauth2.token", "unauthorized_client", None);
        assert_eq!(e.auth_cause, Some(AuthCause::ScopeNotGranted));
        let e = classify_token_error("oauth2.token", "admin_policy_enforced", None);
        assert_eq!(e.auth_cause, Some(AuthCause::AdminPolicy));
        assert!(e.to_string().contains("API controls"));
    }

    #[test]
    fn server_errors_retry_and_bad_arguments_do_not() {
        let m = "gmail.users.messages.list";
        assert_eq!(
            classify_http(
                m,
                Some(500),
                Some(&body(500, "backendError", "Backend Error")),
                None
            )
            .class,
            ErrorClass::Retryable
        );
        assert_eq!(
            classify_http(m, Some(503), None, None).class,
            ErrorClass::Retryable
        );
        assert_eq!(
            classify_http(
                m,
                Some(400),
                Some(&body(400, "invalidArgument", "bad")),
                None
            )
            .class,
            ErrorClass::Fatal
        );
        assert_eq!(
            classify_http(
                m,
                Some(400),
                Some(&body(
                    400,
                    "failedPrecondition",
                    "Precondition check failed."
                )),
                None
            )
            .class,
            ErrorClass::Retryable
        );
    }

    #[test]
    fn messages_stay_on_one_line() {
        let e = GoogleError::new(ErrorClass::Fatal, "x", "a\nb\n\n  c");
        assert_eq!(e.message, "a b c");
    }
}
