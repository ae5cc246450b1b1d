//! The HTTP side every service shares: the state handlers reach, request
//! ids, error styles ([`error`]), extractors ([`extract`]), access rules
//! ([`policy`]), version documents ([`versions`]), the list of services and
//! their catalog ([`catalog`]), and the router built from that list
//! ([`router`]). Services' handlers import from here; only [`router`]
//! imports the services back.

pub mod catalog;
pub mod error;
pub mod extract;
pub mod policy;
pub mod router;
pub mod versions;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::Uri;

use crate::compute::Compute;
use crate::config::Config;
use crate::db::Db;
use crate::image::files::ImageStore;

/// Largest JSON request body (uploads have their own limit).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The state database.
    pub db: Db,
    /// The daemon's configuration.
    pub cfg: Arc<Config>,
    /// Image files.
    pub images: Arc<ImageStore>,
    /// The compute service.
    pub compute: Arc<Compute>,
    /// The Networking service.
    pub network: Arc<crate::network::NetworkService>,
    /// The Block Storage service.
    pub volume: Arc<crate::volume::VolumeService>,
}

/// The request's id (`x-openstack-request-id`), for handlers that record it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Drops one trailing slash (`/compute/v2.1/` → `/compute/v2.1`), so both
/// spellings the clients use reach the same route. Applied before routing.
pub fn strip_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let new = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = new.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}
