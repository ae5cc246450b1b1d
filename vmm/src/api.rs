//! The per-guest control API: HTTP/1.1 with JSON bodies on a Unix socket,
//! a thin layer over [`VmController`]. See `vmm/openapi.yaml`.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /vm` | state, uptime, boot count, configuration |
//! | `PUT /vm/pause`, `PUT /vm/resume` | stop and continue every vCPU |
//! | `PUT /vm/shutdown` `{"timeout_s": 30}` | press the ACPI power button; stop hard after the timeout |
//! | `PUT /vm/reboot` | restart the guest |
//! | `PUT /vm/stop` | stop now; the VMM exits |
//! | `PUT /vm/add-disk` (DiskConfig, optional descriptors) | hot-add a disk; 200 with its DeviceInfo |
//! | `PUT /vm/add-net` (NetConfig + id, a TAP descriptor) | hot-add a NIC; 200 with its DeviceInfo |
//! | `PUT /vm/remove-device` `{"id": "...", "timeout_ms": 10000}` | 204 once the guest ejected it |
//! | `PUT /vm/resize-disk` `{"id": "...", "size": N}` | grow a disk; the guest is told |
//! | `GET /metrics` | counters in the Prometheus text format |

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};

use crate::config::DiskConfig;
use crate::control::{ControlError, VmController, DEFAULT_REMOVE_TIMEOUT};
use crate::fd_stream::{FdListener, ReceivedFds};
use crate::socket::SocketError;
use vmm_api::config::{AddNetRequest, RemoveDeviceRequest, ResizeDiskRequest};

/// Errors of starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound (a live one is refused).
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The server thread could not start.
    #[error("cannot start the API thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The JSON body of every error answer.
#[derive(serde::Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Maps a controller's error to HTTP: 400 for a bad request, 404 for an
/// unknown device, 409 for a wrong state, 503 when gone, 504 when the guest
/// did not do its part in time.
fn control_error(e: ControlError) -> Response {
    let status = match &e {
        ControlError::WrongState { .. } => StatusCode::CONFLICT,
        ControlError::Gone => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::NoDevice(_) => StatusCode::NOT_FOUND,
        ControlError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
    };
    error(status, e.to_string())
}

/// Maps a controller's answer to HTTP: 204, or its error.
fn answer(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => control_error(e),
    }
}

/// Runs a blocking controller call off the async runtime.
async fn control(
    ctl: VmController,
    call: impl FnOnce(&VmController) -> Result<(), ControlError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(move || call(&ctl)).await {
        Ok(result) => answer(result),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs a blocking controller call that answers with a JSON body.
async fn control_json<T: serde::Serialize + Send + 'static>(
    ctl: VmController,
    call: impl FnOnce(&VmController) -> Result<T, ControlError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(move || call(&ctl)).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => control_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Parses a JSON body; the error says why it is not one.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// The descriptors that came with the request (none without a connection,
/// e.g. in tests).
fn request_fds(extensions: &axum::http::Extensions) -> Vec<std::os::fd::OwnedFd> {
    extensions
        .get::<ConnectInfo<ReceivedFds>>()
        .map(|ConnectInfo(fds)| fds.take())
        .unwrap_or_default()
}

async fn add_disk(
    State(ctl): State<VmController>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let fds = request_fds(&extensions);
    let disk: DiskConfig = match parse(&body) {
        Ok(d) => d,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let files = (!fds.is_empty()).then(|| fds.into_iter().map(File::from).collect());
    control_json(ctl, move |c| c.add_disk(disk, files)).await
}

async fn add_net(
    State(ctl): State<VmController>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Response {
    let mut fds = request_fds(&extensions);
    let request: AddNetRequest = match parse(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if fds.len() > 1 {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a NIC takes one TAP descriptor, got {}", fds.len()),
        );
    }
    let tap = fds.pop();
    control_json(ctl, move |c| c.add_net(request.net, request.id, tap)).await
}

/// Longest wait for an eject that a request may ask for.
const MAX_REMOVE_TIMEOUT_MS: u64 = 600_000;

async fn remove_device(State(ctl): State<VmController>, body: Bytes) -> Response {
    let request: RemoveDeviceRequest = match parse(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let timeout = match request.timeout_ms {
        None => DEFAULT_REMOVE_TIMEOUT,
        Some(ms) if ms <= MAX_REMOVE_TIMEOUT_MS => Duration::from_millis(ms),
        Some(ms) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("timeout_ms must be at most {MAX_REMOVE_TIMEOUT_MS}, got {ms}"),
            )
        }
    };
    control(ctl, move |c| c.remove_device(&request.id, timeout)).await
}

async fn resize_disk(State(ctl): State<VmController>, body: Bytes) -> Response {
    let request: ResizeDiskRequest = match parse(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    control(ctl, move |c| c.resize_disk(&request.id, request.size)).await
}

/// Closes the descriptors a request came with but did not take.
async fn drop_unused_fds(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let fds = request
        .extensions()
        .get::<ConnectInfo<ReceivedFds>>()
        .cloned();
    let response = next.run(request).await;
    if let Some(ConnectInfo(fds)) = fds {
        let left = fds.take();
        if !left.is_empty() {
            tracing::debug!(
                count = left.len(),
                "closed descriptors the request did not take"
            );
        }
    }
    response
}

/// The body of `PUT /vm/shutdown`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownRequest {
    /// Seconds to wait for the guest before stopping it hard.
    timeout_s: Option<f64>,
}

async fn shutdown(State(ctl): State<VmController>, body: Bytes) -> Response {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        ShutdownRequest::default()
    } else {
        match serde_json::from_slice::<ShutdownRequest>(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
        }
    };
    let timeout = match request.timeout_s {
        None => None,
        Some(t) if t.is_finite() && (0.0..=86_400.0).contains(&t) => {
            Some(Duration::from_secs_f64(t))
        }
        Some(t) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("timeout_s must be between 0 and 86400 seconds, got {t}"),
            )
        }
    };
    control(ctl, move |c| c.shutdown(timeout)).await
}

/// The API's routes over `controller`.
pub fn router(controller: VmController) -> Router {
    Router::new()
        .route(
            "/vm",
            get(|State(ctl): State<VmController>| async move { Json(ctl.info()) }),
        )
        .route(
            "/vm/pause",
            put(|State(ctl): State<VmController>| control(ctl, |c| c.pause())),
        )
        .route(
            "/vm/resume",
            put(|State(ctl): State<VmController>| control(ctl, |c| c.resume())),
        )
        .route("/vm/shutdown", put(shutdown))
        .route(
            "/vm/reboot",
            put(|State(ctl): State<VmController>| control(ctl, |c| c.reboot())),
        )
        .route(
            "/vm/stop",
            put(|State(ctl): State<VmController>| control(ctl, |c| c.stop())),
        )
        .route("/vm/add-disk", put(add_disk))
        .route("/vm/add-net", put(add_net))
        .route("/vm/remove-device", put(remove_device))
        .route("/vm/resize-disk", put(resize_disk))
        .route(
            "/metrics",
            get(|State(ctl): State<VmController>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    ctl.metrics(),
                )
            }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(drop_unused_fds))
        .with_state(controller)
}

/// Turns an error answer that is not JSON (axum's extractors write plain
/// text, e.g. 413 "length limit exceeded") into `{"error": "..."}`, keeping
/// its status and text: every error of the API has the same shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), MAX_ERROR_TEXT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    error(status, message)
}

/// Longest plain-text error kept when it is wrapped in JSON.
const MAX_ERROR_TEXT: usize = 4096;

/// Largest request body accepted; larger ones get 413.
const MAX_BODY: usize = 64 << 10;

/// Binds the API socket at `path` (see [`crate::socket::bind`]), for tokio.
fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let listener = crate::socket::bind(path, "API socket")?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(listener)
}

/// The running API server; [`ApiServer::shutdown`] lets answers in flight
/// (such as the 204 to `PUT /vm/stop`) reach their clients before exit.
pub struct ApiServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: std::thread::JoinHandle<()>,
}

impl ApiServer {
    /// Stops accepting, finishes answers in flight, and waits at most `limit`.
    pub fn shutdown(mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = std::time::Instant::now() + limit;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The API socket, bound (clients can connect and wait) but not served yet.
pub struct ApiListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiListener {
    /// Binds the API socket at `path` (mode 0600), refusing one that a live
    /// process serves and replacing a stale one.
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        Ok(Self {
            listener: bind(path)?,
            path: path.to_path_buf(),
        })
    }
}

/// Serves the API for `controller` on a Unix socket at `path`, in a thread
/// of its own. The socket is ready when this returns.
pub fn spawn(path: &Path, controller: VmController) -> Result<ApiServer, ApiError> {
    serve(ApiListener::bind(path)?, controller)
}

/// Serves the API for `controller` on `listener` in a thread of its own
/// (started after the VMM is jailed, so that it runs jailed too).
pub fn serve(listener: ApiListener, controller: VmController) -> Result<ApiServer, ApiError> {
    let ApiListener {
        listener: std_listener,
        path,
    } = listener;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let span = tracing::info_span!("api", socket = %path.display());
            let _enter = span.enter();
            // The runtime is built before the filter: what its drivers need
            // at set-up (epoll, eventfd, and with tokio's `signal` feature,
            // which other crates of a workspace build may switch on, a
            // socketpair) is not part of the API thread's allowlist.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the API runtime");
                    return;
                }
            };
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Api) {
                tracing::error!(error = %e, "the API is off");
                return;
            }
            runtime.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot use the API socket");
                        return;
                    }
                };
                let app = router(controller).into_make_service_with_connect_info::<ReceivedFds>();
                let serve = axum::serve(FdListener(listener), app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "the API server stopped");
                }
            });
        })
        .map_err(ApiError::Thread)?;
    Ok(ApiServer {
        stop: Some(stop),
        thread,
    })
}
