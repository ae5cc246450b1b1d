//! Requests that hand open descriptors to the VMM with the request
//! (`SCM_RIGHTS` on the API socket): a TAP for `PUT /vm/add-net`, a disk image
//! and its backing files for `PUT /vm/add-disk`. A jailed VMM cannot open
//! them by path, so its caller opens them and passes them along.
//!
//! The request is written by hand (HTTP/1.1, `Connection: close`): the
//! descriptors ride on the first `sendmsg` together with the request's first
//! bytes, which is where the VMM's API server looks for them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;

use crate::client::ClientError;

/// Most descriptors one request may carry (a disk and its backing chain).
pub const MAX_FDS: usize = 16;

/// Like [`crate::request`], with `fds` passed to the VMM along with the
/// request (at most [`MAX_FDS`]). The VMM gets duplicates; the caller keeps
/// its own.
pub async fn request_with_fds(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<(u16, String), ClientError> {
    if fds.len() > MAX_FDS {
        return Err(ClientError::Request(format!(
            "{} descriptors, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let exchange = exchange(socket, method, path, body, raw);
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
    fds: Vec<RawFd>,
) -> Result<(u16, String), ClientError> {
    if method.contains(char::is_whitespace) || path.contains(char::is_whitespace) {
        return Err(ClientError::Request("whitespace in method or path".into()));
    }
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("content-type: application/json\r\n");
    }
    head.push_str("\r\n");
    let request = [head.as_bytes(), body.as_bytes()].concat();
    let mut sent = 0;
    while sent < request.len() {
        let with = if sent == 0 { fds.as_slice() } else { &[] };
        let n = stream
            .async_io(Interest::WRITABLE, || {
                send_with_fds(stream.as_raw_fd(), &request[sent..], with)
            })
            .await
            .map_err(|e| ClientError::Request(format!("sending the request: {e}")))?;
        if n == 0 {
            return Err(ClientError::Request("the VMM closed the socket".into()));
        }
        sent += n;
    }
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| ClientError::Request(format!("reading the answer: {e}")))?;
    parse_response(&answer)
}

/// One `sendmsg` of `data` with `fds` as `SCM_RIGHTS` (none when empty).
fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable bytes, enough for one
        // header and `fds`; CMSG_FIRSTHDR and CMSG_DATA stay inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: `msg` points at `iov` (over `data`) and `control`, both alive
    // for the call; the kernel only reads them.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Room for the control message of [`MAX_FDS`] descriptors, as u64s (aligned
/// for `cmsghdr`).
const CONTROL_WORDS: usize = 64;
const _: () = assert!(
    CONTROL_WORDS * 8 >= 16 + MAX_FDS * 4,
    "the control buffer holds MAX_FDS descriptors"
);

/// The receiving side: one `recvmsg` from `socket` into `buf`. Returns the
/// bytes read, the descriptors that came with them (close-on-exec, owned by
/// the caller) and whether the kernel dropped some because more than
/// [`MAX_FDS`] came at once.
pub fn recv_with_fds(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: msghdr is plain data; every field used is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both alive
    // and writable for the call.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR
    // and CMSG_NXTHDR stay inside it and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` points at a complete header inside `control`.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes the header size.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at `data_len` bytes inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: reads the i-th descriptor (unaligned: the data has
                // no alignment guarantee) inside the message.
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: the kernel just installed `fd` in this process for
                // us; nothing else owns it.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    Ok((n as usize, received, truncated))
}

/// The status and body of a whole HTTP/1.1 response (content-length,
/// chunked, or until the connection closed).
fn parse_response(raw: &[u8]) -> Result<(u16, String), ClientError> {
    let bad = |why: &str| ClientError::Request(format!("malformed answer: {why}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(_) => return Err(bad("body shorter than its content-length")),
            None => rest.to_vec(),
        }
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, "{}".into()));
        let chunked =
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (400, "abcde".into()));
        let closed = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response(closed).unwrap(), (204, String::new()));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
    }

    /// The descriptors arrive with the request's first bytes.
    #[tokio::test]
    async fn descriptors_arrive_with_the_request() {
        let dir = std::env::temp_dir().join(format!("vmm-api-fds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let (n, mut fds, truncated) = recv_with_fds(conn.as_raw_fd(), &mut buf).unwrap();
            assert!(n > 0 && !truncated);
            assert_eq!(fds.len(), 1);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(text.starts_with("PUT /vm/add-net HTTP/1.1\r\n"), "{text}");
            let mut passed = std::fs::File::from(fds.remove(0));
            passed.write_all(b"hello").unwrap();
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{\"a\"")
                .unwrap();
        });
        let file_path = dir.join("passed");
        let file = std::fs::File::create(&file_path).unwrap();
        let fd = std::os::fd::AsFd::as_fd(&file);
        let answer = request_with_fds(&socket, "PUT", "/vm/add-net", Some("{}"), &[fd], None)
            .await
            .unwrap();
        server.join().unwrap();
        assert_eq!(answer, (200, "{\"a\"".into()));
        assert_eq!(std::fs::read(&file_path).unwrap(), b"hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
