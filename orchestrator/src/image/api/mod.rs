//! Image v2's thin handlers, one file per resource; the rules are in
//! [`crate::image::service`].

pub mod data;
pub mod images;
pub mod list;
pub mod schemas;
#[cfg(test)]
mod tests;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;

use crate::http::versions;
use crate::http::AppState;
use data::{download_image, upload_image};
use images::{add_tag, create_image, delete_image, patch_image, remove_tag, show_image};
use list::list_images;
use schemas::{image_schema, images_schema};

/// The image routes, relative to `/image`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions::image_versions))
        .route("/versions", get(versions::image_versions))
        .route("/v2/images", get(list_images).post(create_image))
        .route(
            "/v2/images/{id}",
            get(show_image).patch(patch_image).delete(delete_image),
        )
        .route(
            "/v2/images/{id}/file",
            put(upload_image)
                .get(download_image)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v2/images/{id}/tags/{tag}",
            put(add_tag).delete(remove_tag),
        )
        .route("/v2/schemas/image", get(image_schema))
        .route("/v2/schemas/images", get(images_schema))
}
