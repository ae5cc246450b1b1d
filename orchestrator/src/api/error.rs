//! API errors and their JSON shapes. Handlers return [`ApiError`]; a
//! per-service layer ([`restyle`]) renders it the way that OpenStack service
//! does, because the clients parse each service's own error body.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answer: an HTTP status and a message for the user.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, in words a user can act on.
    pub message: String,
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 500: logged; the user sees a generic message with the cause.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {message}"),
        )
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("state database: {e}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) => ApiError::new(b.status(), b.body_text()),
            other => {
                ApiError::bad_request(format!("malformed request body: {}", other.body_text()))
            }
        }
    }
}

/// Marker left in the response so [`restyle`] can render the body.
#[derive(Clone)]
struct ErrorMarker(ApiError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.status.as_u16(), "message": self.message } });
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(ErrorMarker(self));
        resp
    }
}

/// How a service shapes its error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// Keystone: `{"error": {"code", "message", "title"}}`.
    Identity,
    /// Nova: `{"itemNotFound": {"code", "message"}}` and friends.
    Compute,
    /// Glance: `{"code", "title", "message"}`... as webob renders it in JSON.
    Image,
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

fn nova_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        405 => "badMethod",
        409 => "conflictingRequest",
        413 => "overLimit",
        415 => "badMediaType",
        501 => "notImplemented",
        503 => "serviceUnavailable",
        _ => "computeFault",
    }
}

/// Renders an error in `style`.
pub fn render(style: ErrorStyle, err: &ApiError) -> Response {
    let code = err.status.as_u16();
    let body = match style {
        ErrorStyle::Identity => json!({
            "error": { "code": code, "message": err.message, "title": title(err.status) }
        }),
        ErrorStyle::Compute => {
            json!({ nova_name(err.status): { "code": code, "message": err.message } })
        }
        ErrorStyle::Image => json!({
            "code": code, "title": title(err.status), "message": err.message,
            "error": { "code": code, "message": err.message, "title": title(err.status) }
        }),
    };
    (err.status, Json(body)).into_response()
}

/// Response layer: re-renders [`ApiError`]s and framework rejections (such as
/// 413 from the body limit, 405, or an unmatched path) in `style`.
pub fn restyle(style: ErrorStyle, resp: Response) -> Response {
    if let Some(ErrorMarker(err)) = resp.extensions().get::<ErrorMarker>().cloned() {
        return render(style, &err);
    }
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        let is_json = resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            let message = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_string(),
                StatusCode::NOT_FOUND => "the resource could not be found".to_string(),
                StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this resource".to_string(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    "unsupported Content-Type for this request".to_string()
                }
                s => title(s).to_string(),
            };
            return render(style, &ApiError::new(status, message));
        }
    }
    resp
}
