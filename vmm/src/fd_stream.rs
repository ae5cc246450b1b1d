//! The server side of descriptor passing on the API socket: a listener whose
//! connections read with `recvmsg`, collecting the `SCM_RIGHTS` descriptors
//! that arrive with the bytes (vmm-api's `request_with_fds` sends them with
//! the request's first bytes) into a per-connection [`ReceivedFds`], which
//! handlers get as connect info. At most [`MAX_FDS`] are kept per
//! connection; a message with more ends the connection. What a request does
//! not take is closed with the connection (or after the request, see
//! `api.rs`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// Most descriptors kept per connection (a disk and its backing chain).
pub const MAX_FDS: usize = vmm_api::fd_passing::MAX_FDS;

/// The descriptors received on one connection, oldest first.
#[derive(Clone, Default, Debug)]
pub struct ReceivedFds(Arc<Mutex<Vec<OwnedFd>>>);

impl ReceivedFds {
    /// Takes every descriptor received so far.
    pub fn take(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds `fds`; false (and the extra ones closed) past [`MAX_FDS`].
    fn push(&self, fds: Vec<OwnedFd>) -> bool {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for fd in fds {
            if held.len() >= MAX_FDS {
                return false;
            }
            held.push(fd);
        }
        true
    }
}

/// A Unix stream that keeps the descriptors passed along with its bytes.
pub struct FdStream {
    inner: UnixStream,
    fds: ReceivedFds,
}

impl FdStream {
    /// Wraps `inner`.
    pub fn new(inner: UnixStream) -> Self {
        Self {
            inner,
            fds: ReceivedFds::default(),
        }
    }

    /// The descriptors received so far (shared with the connection).
    pub fn fds(&self) -> &ReceivedFds {
        &self.fds
    }
}

/// One `recvmsg` into `buf`; descriptors go to `fds` (close-on-exec).
fn recv_with_fds(socket: RawFd, buf: &mut [u8], fds: &ReceivedFds) -> io::Result<usize> {
    let (n, received, truncated) = vmm_api::fd_passing::recv_with_fds(socket, buf)?;
    if !fds.push(received) || truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_FDS} descriptors on one connection"),
        ));
    }
    Ok(n)
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            match this.inner.try_io(Interest::READABLE, || {
                recv_with_fds(fd, unfilled, &this.fds)
            }) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A Unix listener whose connections are [`FdStream`]s.
pub struct FdListener(pub UnixListener);

impl axum::serve::Listener for FdListener {
    type Io = FdStream;
    type Addr = ();

    async fn accept(&mut self) -> (FdStream, ()) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => return (FdStream::new(stream), ()),
                Err(e) => {
                    tracing::debug!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Connected<IncomingStream<'_, FdListener>> for ReceivedFds {
    fn connect_info(stream: IncomingStream<'_, FdListener>) -> Self {
        stream.io().fds.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use tokio::io::AsyncReadExt;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Sends `data` with `fds` in one message (the client's way).
    fn send(socket: &std::os::unix::net::UnixStream, data: &[u8], fds: &[RawFd]) {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: computes a size only.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: msghdr is plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer has room for one header and `fds`.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    bytes,
                );
            }
        }
        // SAFETY: `msg` points at live buffers for the call.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
        assert_eq!(n as usize, data.len());
    }

    /// Reads everything the client sent, through an [`FdStream`].
    fn serve(server: std::os::unix::net::UnixStream) -> (io::Result<String>, Vec<OwnedFd>) {
        runtime().block_on(async move {
            server.set_nonblocking(true).unwrap();
            let mut stream = FdStream::new(UnixStream::from_std(server).unwrap());
            let mut text = String::new();
            let result = stream.read_to_string(&mut text).await.map(|_| text);
            (result, stream.fds().take())
        })
    }

    #[test]
    fn descriptors_arrive_with_the_bytes() {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let fds = [file.as_fd().as_raw_fd(), file.as_fd().as_raw_fd()];
        send(&client, b"PUT /vm/add-disk", &fds);
        send(&client, b" more", &[]);
        drop(client);
        let (text, got) = serve(server);
        assert_eq!(text.unwrap(), "PUT /vm/add-disk more");
        assert_eq!(got.len(), 2);
        for fd in &got {
            assert_ne!(
                fd.as_raw_fd(),
                file.as_raw_fd(),
                "duplicates, not the same number"
            );
            // SAFETY: F_GETFD reads the flags of a descriptor we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_ne!(flags & libc::FD_CLOEXEC, 0, "close-on-exec");
        }
    }

    #[test]
    fn too_many_descriptors_end_the_connection() {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let fds = vec![file.as_raw_fd(); MAX_FDS + 1];
        send(&client, b"x", &fds);
        drop(client);
        let (result, _) = serve(server);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn plain_bytes_pass() {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        send(&client, b"GET /vm HTTP/1.1\r\n\r\n", &[]);
        drop(client);
        let (text, fds) = serve(server);
        assert!(text.unwrap().starts_with("GET /vm"));
        assert!(fds.is_empty());
    }
}
