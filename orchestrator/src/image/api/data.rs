//! `/v2/images/{id}/file`: upload and download of image data.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::image::files::{DiskFormat, StoreError};
use crate::image::service::*;
use crate::image::store;

// ---------------------------------------------------------------- upload, download

pub(crate) fn is_octet_stream(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/octet-stream")
            })
            .unwrap_or(false),
    }
}

pub(crate) fn deleted_during_upload(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        format!(
            "Image {id} could not be found after upload. \
             The image may have been deleted during the upload."
        ),
    )
}

/// Moves an image from `saving` to `killed` (if still saving).
fn kill(conn: &rusqlite::Connection, id: &str) {
    if let Err(e) = store::kill(conn, id) {
        tracing::error!(image = %id, error = %e, "cannot mark the image killed");
    }
}

pub(crate) async fn upload_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<StatusCode> {
    if !is_octet_stream(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The image data must be sent as application/octet-stream.",
        ));
    }
    let format: DiskFormat = {
        let conn = st.db.lock();
        let img = load_writable(&conn, &ctx, &id)?;
        if img.status != "queued" {
            return Err(ApiError::conflict(format!(
                "Image {id} has status '{}': data can only be uploaded to a queued image.",
                img.status
            )));
        }
        let (Some(disk), Some(container)) = (&img.disk_format, &img.container_format) else {
            return Err(ApiError::bad_request(
                "Properties disk_format, container_format must be set prior to saving data.",
            ));
        };
        let kernelish = |f: &str| matches!(f, "aki" | "ari" | "ami");
        if (kernelish(disk) || kernelish(container)) && disk != container {
            return Err(ApiError::bad_request(
                "Invalid mix of disk and container formats. When setting a disk or container \
                 format to one of 'aki', 'ari', or 'ami', the container and disk formats must match.",
            ));
        }
        let format = disk
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        if !store::start_saving(&conn, &id)? {
            return Err(ApiError::conflict(format!(
                "Image {id} is no longer queued: another upload started."
            )));
        }
        format
    };
    // The upload runs in its own task, so that it reaches an end state
    // (active or killed) even when the client goes away and this handler's
    // future is dropped.
    let body = req.into_body().into_data_stream();
    let task = tokio::spawn(async move {
        let result = st.images.upload(&id, format, body).await;
        let conn = st.db.lock();
        match result {
            Ok(stored) => {
                if !store::activate(&conn, &id, &stored)? {
                    drop(conn);
                    if let Err(e) = st.images.remove(&id) {
                        tracing::warn!(image = %id, error = %e, "cannot remove data of a deleted image");
                    }
                    return Err(deleted_during_upload(&id));
                }
                Ok(StatusCode::NO_CONTENT)
            }
            Err(e) => {
                tracing::info!(image = %id, error = %e, "image upload failed");
                kill(&conn, &id);
                if store::load(&conn, &id)?.is_none() {
                    return Err(deleted_during_upload(&id));
                }
                Err(store_error(e))
            }
        }
    });
    task.await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("the upload task failed: {e}"))))
}

pub(crate) async fn download_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let img = load_visible(&st.db.lock(), &ctx, &id)?;
    if img.status != "active" {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (file, len) = st
        .images
        .open_for_download(&id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => {
                ApiError::not_found(format!("The data of image {id} is missing."))
            }
            e => store_error(e),
        })?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(md5) = img
        .checksum
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert("content-md5", md5);
    }
    Ok(resp)
}
