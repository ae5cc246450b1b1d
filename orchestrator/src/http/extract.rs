//! Request extractors: the caller's token, the JSON body, and the base URL
//! the caller reached us at.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::identity::{token, AuthContext};

/// The authenticated caller (`X-Auth-Token`), or 401.
pub struct Auth(pub AuthContext);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(tok) = parts
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
        else {
            return Err(ApiError::unauthorized(
                "the request you have made requires authentication (no X-Auth-Token)",
            ));
        };
        let found = token::validate(&state.db.lock(), tok)?;
        match found {
            Some((ctx, _)) => Ok(Auth(ctx)),
            None => Err(ApiError::unauthorized(
                "the token is invalid, expired or revoked",
            )),
        }
    }
}

/// Like [`Auth`], but the token must be scoped to a project.
pub struct ProjectAuth(pub AuthContext);

impl FromRequestParts<AppState> for ProjectAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Auth(ctx) = Auth::from_request_parts(parts, state).await?;
        if ctx.project_id.is_empty() {
            return Err(ApiError::unauthorized(
                "this service needs a project-scoped token",
            ));
        }
        Ok(ProjectAuth(ctx))
    }
}

/// A JSON body parsed into `T`: malformed JSON, wrong types and (where `T`
/// denies them) unknown fields are a 400 with serde's explanation; a body
/// over the limit is a 413.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
    }
}

/// The URL clients reach the API at: `--public-url`, else `http://` plus the
/// request's `Host`, else the listen address. No trailing slash.
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(url) = &state.cfg.public_url {
            return Ok(BaseUrl(url.clone()));
        }
        let host = parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
            });
        Ok(BaseUrl(match host {
            Some(h) => format!("http://{h}"),
            None => format!("http://{}", state.cfg.listen),
        }))
    }
}
