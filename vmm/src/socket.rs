//! Binding the Unix sockets a VMM serves (its API and its console): a socket
//! left at the path by a dead VMM is replaced, one that a live process
//! serves is refused, so a second VMM never silently takes over the socket
//! of a running one.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Errors of binding a socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something else than a socket is at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A live process (another VMM?) accepts connections on the socket.
    #[error("{what} {} is in use by a live process; refusing to take it over", path.display())]
    InUse {
        /// "API socket" or "console socket".
        what: &'static str,
        /// The socket path.
        path: PathBuf,
    },
    /// Binding or preparing the socket failed.
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Binds `path` (the VMM's `what`, for messages) with mode 0600. A socket
/// already there is replaced only when it is stale (nobody accepts
/// connections on it).
pub fn bind(path: &Path, what: &'static str) -> Result<UnixListener, SocketError> {
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    // Bind first and look only when the path is taken: between a check and
    // the bind, another VMM could bind the path.
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_socket() => {
                    return Err(SocketError::NotASocket(path.to_path_buf()))
                }
                _ => {}
            }
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(SocketError::InUse {
                        what,
                        path: path.to_path_buf(),
                    })
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) => {}
                // Cannot tell whether someone serves it: leave it alone.
                Err(e) => return Err(bind_err(e)),
            }
            match std::fs::remove_file(path) {
                Ok(()) => tracing::info!(socket = %path.display(), what, "replaced a stale socket"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_err(e)),
            }
            UnixListener::bind(path).map_err(bind_err)?
        }
        Err(e) => return Err(bind_err(e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}
