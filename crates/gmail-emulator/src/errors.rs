//! Google's error bodies: the nested Gmail/Directory shape, the flat OAuth shape, and the
//! control API's one-line errors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::util::json_response;

/// A Gmail or Directory API error, rendered as `{"error":{"code","message","errors":[..],"status"}}`.
/// Boxed so that `Result<_, GoogleError>` stays small on the happy path.
#[derive(Debug, Clone)]
pub(crate) struct GoogleError(Box<Detail>);

#[derive(Debug, Clone)]
pub(crate) struct Detail {
    pub(crate) code: u16,
    pub(crate) message: String,
    pub(crate) reason: &'static str,
    pub(crate) domain: &'static str,
    /// The canonical gRPC status name; Directory errors leave it out.
    pub(crate) status: Option<&'static str>,
    pub(crate) location: Option<(&'static str, &'static str)>,
    /// Seconds a client should wait, sent as `Retry-After`.
    pub(crate) retry_after: Option<u64>,
}

fn canonical_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

impl GoogleError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(Detail {
            code,
            message: message.into(),
            reason,
            domain: "global",
            status: Some(canonical_status(code)),
            location: None,
            retry_after: None,
        }))
    }

    fn with(mut self, change: impl FnOnce(&mut Detail)) -> Self {
        change(&mut self.0);
        self
    }

    pub(crate) fn not_found() -> Self {
        Self::new(404, "notFound", "Requested entity was not found.")
    }

    pub(crate) fn unauthenticated() -> Self {
        Self::new(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            ).with(|d| {d.location = Some(("header", "Authorization"));})
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(400, "invalidArgument", message)
    }

    /// A bad value of a system parameter such as `fields` or `alt`.
    pub(crate) fn invalid_parameter(parameter: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalidParameter", message).with(|d| {
            d.location = Some(("parameter", parameter));
        })
    }

    pub(crate) fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(400, "failedPrecondition", message).with(|d| {
            d.status = Some("FAILED_PRECONDITION");
        })
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }

    pub(crate) fn insufficient_permissions() -> Self {
        Self::new(
            403,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        )
    }

    pub(crate) fn user_rate_limit(retry_after: u64) -> Self {
        Self::new(403, "userRateLimitExceeded", "User Rate Limit Exceeded").with(|d| {
            d.domain = "usageLimits";
            d.retry_after = Some(retry_after);
        })
    }

    pub(crate) fn project_rate_limit(retry_after: u64) -> Self {
        Self::new(403, "rateLimitExceeded", "Rate Limit Exceeded").with(|d| {
            d.domain = "usageLimits";
            d.retry_after = Some(retry_after);
        })
    }

    pub(crate) fn too_many_concurrent(retry_after: u64) -> Self {
        Self::new(
            429,
            "rateLimitExceeded",
            "Too many concurrent requests for user",
        )
        .with(|d| {
            d.retry_after = Some(retry_after);
        })
    }

    pub(crate) fn backend_error() -> Self {
        Self::new(500, "backendError", "Backend Error")
    }

    pub(crate) fn unavailable() -> Self {
        Self::new(503, "backendError", "The service is currently unavailable.")
    }

    /// The Admin SDK's variant of the shape: no `status` member.
    pub(crate) fn directory_style(self) -> Self {
        self.with(|d| d.status = None)
    }
}

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        let detail = *self.0;
        let mut item =
            json!({"domain": detail.domain, "reason": detail.reason, "message": detail.message});
        if let Some((location_type, location)) = detail.location {
            item["locationType"] = json!(location_type);
            item["location"] = json!(location);
        }
        let mut error = json!({"code": detail.code, "message": detail.message, "errors": [item]});
        if let Some(status) = detail.status {
            error["status"] = json!(status);
        }
        let status = StatusCode::from_u16(detail.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(status, &json!({ "error": error }), false);
        if let Some(seconds) = detail.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if detail.code == 401 {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
                ),
            );
        }
        response
    }
}

/// The token endpoint's flat error body `{"error","error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
        false,
    )
}

/// A control API refusal: `{"error": "<one line>"}`.
pub(crate) fn control_error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, &json!({"error": message.into()}), false)
}
