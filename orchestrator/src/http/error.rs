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
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => {
                tracing::error!(error = %e, "the state database's disk is full");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "The state database cannot grow: no space left on the daemon's disk. \
                     Nothing was changed; try again once space is freed.",
                )
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The state database is busy; try again.",
            ),
            _ => ApiError::internal(format!("state database: {e}")),
        }
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
    /// Neutron: `{"NeutronError": {"type", "message", "detail"}}`.
    Network,
    /// Cinder: `{"badRequest": {"message", "code"}}`, `itemNotFound`,
    /// `overLimit`... (the same fault names as Nova's).
    Volume,
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
        507 => "insufficientStorage",
        503 => "serviceUnavailable",
        _ => "computeFault",
    }
}

/// Neutron names each fault; clients print only the message, so the type
/// follows the status (as webob's `HTTP*` exceptions do).
fn neutron_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "HTTPBadRequest",
        401 => "HTTPUnauthorized",
        403 => "HTTPForbidden",
        404 => "HTTPNotFound",
        405 => "HTTPMethodNotAllowed",
        409 => "HTTPConflict",
        413 => "HTTPRequestEntityTooLarge",
        503 => "HTTPServiceUnavailable",
        _ => "HTTPInternalServerError",
    }
}

/// Renders an error in `style`.
pub fn render(style: ErrorStyle, err: &ApiError) -> Response {
    let code = err.status.as_u16();
    let body = match style {
        ErrorStyle::Identity => json!({
            "error": { "code": code, "message": err.message, "title": title(err.status) }
        }),
        ErrorStyle::Compute | ErrorStyle::Volume => {
            json!({ nova_name(err.status): { "code": code, "message": err.message } })
        }
        ErrorStyle::Image => json!({
            "code": code, "title": title(err.status), "message": err.message,
            "error": { "code": code, "message": err.message, "title": title(err.status) }
        }),
        ErrorStyle::Network => json!({
            "NeutronError": { "type": neutron_type(err.status), "message": err.message, "detail": "" }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Unmounts a tmpfs when dropped.
    struct Mount(std::path::PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    /// A real SQLite file on a full file system: the write fails with
    /// SQLITE_FULL, which clients get as 507 with a message saying so (not
    /// 500 "database or disk is full"), and the database is intact after.
    #[test]
    fn a_full_disk_under_the_database_is_507() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "nubo-test"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount a tmpfs and CI=true"
            );
            eprintln!("SKIPPING: cannot mount a tmpfs");
            return;
        }
        let _mount = Mount(mnt.clone());
        let db = crate::db::Db::open(&mnt.join("nubo.db")).expect("open");
        let filler = mnt.join("filler");
        // Fill the file system up to the last byte.
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("filler");
            let chunk = vec![0u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.write_all(&[0u8; 512]);
        }
        let blob = "x".repeat(256 << 10);
        let err = (0..16)
            .find_map(|i| {
                db.lock()
                    .execute(
                        "INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?1, ?2, 1)",
                        rusqlite::params![format!("p{i}"), blob],
                    )
                    .err()
            })
            .expect("a write on a full disk must fail");
        let api = ApiError::from(err);
        assert_eq!(
            api.status,
            StatusCode::INSUFFICIENT_STORAGE,
            "{}",
            api.message
        );
        assert!(api.message.contains("no space left"), "{}", api.message);
        // Space again: the database works.
        std::fs::remove_file(&filler).expect("remove filler");
        db.lock()
            .execute(
                "INSERT INTO quotas (project_id, resource, hard_limit) VALUES ('after', 'cores', 1)",
                [],
            )
            .expect("write after freeing space");
    }
}
