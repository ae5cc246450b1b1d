//! An async client for a VMM's API socket (HTTP/1 over a Unix socket). It
//! has no runtime of its own: it runs on its caller's tokio runtime, which
//! needs I/O and, for a timeout, time enabled.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Errors of talking to an API socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The request could not be built.
    #[error("bad request: {0}")]
    Request(String),
    /// HTTP failed.
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// No whole answer came within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Sends one request (`body`, if any, as JSON) and returns the status code
/// and body; with a `timeout`, gives up (and closes the connection) when the
/// whole exchange takes longer.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Option<Duration>,
) -> Result<(u16, String), ClientError> {
    let exchange = exchange(socket, method, path, body);
    match timeout {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| ClientError::Timeout(limit))?,
        None => exchange.await,
    }
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when `sender` is dropped (or on a timeout,
    // when this future is).
    let conn = tokio::spawn(conn);
    let _abort = AbortOnDrop(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .map_err(|e| ClientError::Request(e.to_string()))?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Aborts the connection task when the request is done or abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that accepts but never answers ends in a timeout, and a
    /// missing one in a connect error.
    #[tokio::test]
    async fn silent_and_missing_sockets() {
        let dir = std::env::temp_dir().join(format!("vmm-api-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let limit = Duration::from_millis(200);
        let answer = request(&socket, "GET", "/vm", None, Some(limit)).await;
        assert!(
            matches!(answer, Err(ClientError::Timeout(l)) if l == limit),
            "{answer:?}"
        );
        silent.abort();
        std::fs::remove_dir_all(&dir).unwrap();
        let answer = request(&socket, "GET", "/vm", None, None).await;
        assert!(
            matches!(answer, Err(ClientError::Connect { .. })),
            "{answer:?}"
        );
    }
}
