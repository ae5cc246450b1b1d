//! A blocking client for the API socket (`nubo-vmm api ...`), so scripts and
//! tests on hosts without curl can drive a VMM: vmm-api's async client on a
//! runtime of its own.

use std::os::fd::BorrowedFd;
use std::path::Path;

pub use vmm_api::client::ClientError as ApiError;

/// Errors of the blocking client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The runtime could not start.
    #[error("cannot start the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Sends one request and returns the status code and body; not for use on
/// a tokio runtime's thread (embedders with a runtime call
/// [`vmm_api::client::request`]).
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(ClientError::Runtime)?;
    Ok(runtime.block_on(vmm_api::client::request(socket, method, path, body, None))?)
}

/// Like [`request`], passing `fds` along with the request (`SCM_RIGHTS`:
/// an image and its backing files for `PUT /vm/add-disk`, a TAP for
/// `PUT /vm/add-net`).
pub fn request_with_fds(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    fds: &[BorrowedFd<'_>],
) -> Result<(u16, String), ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    Ok(runtime.block_on(vmm_api::request_with_fds(
        socket, method, path, body, fds, None,
    ))?)
}
