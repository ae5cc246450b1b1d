//! The DHCP server: one thread serving one raw `AF_PACKET` socket per
//! network bridge with `poll(2)`.
//!
//! A plain thread rather than a tokio task: the work per frame is a few
//! microseconds of pure computation ([`respond`]), the sockets are few, and
//! the server then works the same in the daemon and in tests, with or
//! without a runtime.
//!
//! [`DhcpServer::set_scopes`] adds a bridge (opening its socket) or swaps
//! its scopes atomically while running; [`DhcpServer::remove`] drops it.
//! The poll loop takes a snapshot of the bridges (`Arc`s, so a socket is
//! closed only when no snapshot holds it) and is woken by an `eventfd`
//! whenever the set changes.
//!
//! A bridge deleted and created again under the same name is noticed by
//! the next `set_scopes` (its ifindex changed) and gets a new socket.
//!
//! Sockets are opened in the daemon's network namespace, or in the one
//! [`ServerConfig::netns`] names (from a short-lived thread that `setns`'d
//! into it: a socket stays in the namespace it was created in), which is how
//! tests run the server on a bridge inside a namespace of their own.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use tracing::{debug, info, info_span, warn};

use super::{respond, Scope};

/// Why the DHCP server could not do what it was asked.
#[derive(Debug, Error)]
pub enum DhcpError {
    /// The bridge does not exist (yet) in the server's namespace.
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    /// Not a possible interface name (empty, too long, NUL byte).
    #[error("invalid interface name {0:?}")]
    BadName(String),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Entering the configured network namespace failed.
    #[error("network namespace {path:?}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> DhcpError {
    move |source| DhcpError::Io { op, source }
}

/// How the server opens its sockets.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Open every socket in this network namespace (e.g.
    /// `/run/netns/NAME`) instead of the caller's.
    pub netns: Option<PathBuf>,
    /// Put each bridge in promiscuous mode (a membership of the socket,
    /// undone when it closes) so that renewals unicast to the server's MAC
    /// reach the socket. Without it, that needs a local FDB entry for the
    /// server MAC on the bridge (`bridge fdb add MAC dev BR self local`);
    /// with neither, clients still renew by broadcast when rebinding (at
    /// 7/8 of the lease).
    pub promiscuous: bool,
}

struct Bridge {
    name: String,
    /// The interface the socket is bound to: a bridge deleted and created
    /// again under the same name has another, and gets a new socket.
    ifindex: u32,
    sock: OwnedFd,
    scopes: Mutex<Arc<Vec<Scope>>>,
    /// Set after a socket error that keeps repeating (bridge deleted): the
    /// socket is left out of the poll set until `set_scopes` reopens it.
    broken: AtomicBool,
}

impl Bridge {
    fn scopes(&self) -> Arc<Vec<Scope>> {
        self.scopes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Shared {
    bridges: Mutex<HashMap<String, Arc<Bridge>>>,
    wake: OwnedFd,
    stop: AtomicBool,
}

impl Shared {
    fn bridges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Bridge>>> {
        self.bridges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let r = unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                mem::size_of::<u64>(),
            )
        };
        if r < 0 {
            warn!(error = %io::Error::last_os_error(), "dhcp: cannot wake the server thread");
        }
    }
}

/// The DHCP server of every bridge of this host. Stops (and joins its
/// thread) on [`DhcpServer::stop`] or drop.
pub struct DhcpServer {
    shared: Arc<Shared>,
    config: ServerConfig,
    thread: Option<JoinHandle<()>>,
}

impl DhcpServer {
    /// Starts the server thread, serving no bridge yet.
    pub fn start(config: ServerConfig) -> Result<Self, DhcpError> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io_err("eventfd")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            bridges: Mutex::new(HashMap::new()),
            wake,
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dhcp-server".into())
            .spawn(move || serve(&s))
            .map_err(io_err("spawn the server thread"))?;
        Ok(DhcpServer {
            shared,
            config,
            thread: Some(thread),
        })
    }

    /// Serves `bridge` with `scopes` from now on: opens its socket the
    /// first time (or after it broke), otherwise swaps the scopes
    /// atomically (a frame is answered with the old or the new set, never
    /// a mix).
    pub fn set_scopes(&self, bridge: &str, scopes: Vec<Scope>) -> Result<(), DhcpError> {
        let name = bridge.to_owned();
        let ifindex = in_netns(&self.config, move || ifindex_here(&name))?;
        {
            let map = self.shared.bridges();
            if let Some(b) = map.get(bridge) {
                if !b.broken.load(Ordering::Acquire) && b.ifindex == ifindex {
                    *b.scopes.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(scopes);
                    return Ok(());
                }
            }
        }
        let name = bridge.to_owned();
        let promisc = self.config.promiscuous;
        let (sock, ifindex) = in_netns(&self.config, move || open_socket_here(&name, promisc))?;
        let b = Arc::new(Bridge {
            name: bridge.to_owned(),
            ifindex,
            sock,
            scopes: Mutex::new(Arc::new(scopes)),
            broken: AtomicBool::new(false),
        });
        self.shared.bridges().insert(bridge.to_owned(), b);
        self.shared.wake();
        info!(bridge, ifindex, "dhcp: serving bridge");
        Ok(())
    }

    /// Stops serving `bridge`; `false` if it was not served.
    pub fn remove(&self, bridge: &str) -> bool {
        let removed = self.shared.bridges().remove(bridge).is_some();
        if removed {
            self.shared.wake();
            info!(bridge, "dhcp: bridge no longer served");
        }
        removed
    }

    /// The bridges served, sorted.
    pub fn bridges(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.bridges().keys().cloned().collect();
        v.sort();
        v
    }

    /// Stops the thread and closes every socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("dhcp: the server thread panicked");
            }
        }
        self.shared.bridges().clear();
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The poll loop.
fn serve(shared: &Shared) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Acquire) {
        let snapshot: Vec<Arc<Bridge>> = shared
            .bridges()
            .values()
            .filter(|b| !b.broken.load(Ordering::Acquire))
            .cloned()
            .collect();
        let mut fds: Vec<libc::pollfd> = std::iter::once(shared.wake.as_raw_fd())
            .chain(snapshot.iter().map(|b| b.sock.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!(error = %e, "dhcp: poll failed");
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if fds[0].revents != 0 {
            drain_eventfd(shared.wake.as_raw_fd());
        }
        for (b, p) in snapshot.iter().zip(&fds[1..]) {
            if p.revents != 0 {
                serve_bridge(b, &mut buf);
            }
        }
    }
}

fn drain_eventfd(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), mem::size_of::<u64>()) };
}

/// Reads every queued frame of one bridge and answers them.
fn serve_bridge(b: &Bridge, buf: &mut [u8]) {
    let span = info_span!("dhcp", bridge = %b.name);
    let _g = span.enter();
    let fd = b.sock.as_raw_fd();
    let mut errors = 0;
    loop {
        // SAFETY: a zeroed sockaddr_ll is valid; recvfrom writes at most
        // `len` bytes into it and at most `buf.len()` into `buf`.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: see above; all pointers are to live, owned memory.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return,
                io::ErrorKind::Interrupted => continue,
                _ => {
                    warn!(error = %e, "dhcp: receive failed");
                    errors += 1;
                    if errors >= 8 {
                        warn!("dhcp: socket keeps failing; not served until set again");
                        b.broken.store(true, Ordering::Release);
                        return;
                    }
                    continue;
                }
            }
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = buf.get(..n as usize).unwrap_or_default();
        let scopes = b.scopes();
        if let Some(reply) = respond(frame, &scopes) {
            // SAFETY: sends `reply.len()` bytes from a live Vec on a socket
            // bound to the bridge.
            let r = unsafe { libc::send(fd, reply.as_ptr().cast(), reply.len(), 0) };
            if r < 0 {
                warn!(error = %io::Error::last_os_error(), "dhcp: send failed");
            } else {
                debug!(bytes = reply.len(), "dhcp: answered");
            }
        }
    }
}

/// Classic BPF: accept ARP, and IPv4/UDP (unfragmented) to port 67.
fn filter() -> [libc::sock_filter; 12] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        op(0x28, 0, 0, 12),     // 0: ldh [12]          (EtherType)
        op(0x15, 8, 0, 0x0806), // 1: jeq ARP -> 10
        op(0x15, 0, 8, 0x0800), // 2: jeq IPv4 ? 3 : 11
        op(0x30, 0, 0, 23),     // 3: ldb [23]          (protocol)
        op(0x15, 0, 6, 17),     // 4: jeq UDP ? 5 : 11
        op(0x28, 0, 0, 20),     // 5: ldh [20]          (flags, offset)
        op(0x45, 4, 0, 0x1fff), // 6: jset offset -> 11
        op(0xb1, 0, 0, 14),     // 7: ldxb 4*([14]&0xf) (IHL)
        op(0x48, 0, 0, 16),     // 8: ldh [x+16]        (UDP dport)
        op(0x15, 0, 1, 67),     // 9: jeq 67 ? 10 : 11
        op(0x06, 0, 0, 0xffff), // 10: accept
        op(0x06, 0, 0, 0),      // 11: drop
    ]
}

/// Runs `f` in the configured namespace: in a throwaway thread that
/// `setns`'d into it (setns affects only the calling thread), or here.
fn in_netns<T, F>(config: &ServerConfig, f: F) -> Result<T, DhcpError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DhcpError> + Send + 'static,
{
    let Some(ns) = config.netns.clone() else {
        return f();
    };
    std::thread::Builder::new()
        .name("dhcp-netns".into())
        .spawn(move || {
            let file = File::open(&ns).map_err(|source| DhcpError::Netns {
                path: ns.clone(),
                source,
            })?;
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(DhcpError::Netns {
                    path: ns,
                    source: io::Error::last_os_error(),
                });
            }
            f()
        })
        .map_err(io_err("spawn the netns thread"))?
        .join()
        .map_err(|_| io_err("netns thread")(io::Error::other("panicked")))?
}

/// The ifindex of `name` in the calling thread's namespace.
fn ifindex_here(name: &str) -> Result<u32, DhcpError> {
    let cname = CString::new(name).map_err(|_| DhcpError::BadName(name.into()))?;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(DhcpError::BadName(name.into()));
    }
    // SAFETY: `cname` is a valid C string.
    match unsafe { libc::if_nametoindex(cname.as_ptr()) } {
        0 => Err(DhcpError::NoSuchInterface(name.into())),
        i => Ok(i),
    }
}

fn setsockopt<T>(
    fd: RawFd,
    level: i32,
    name: i32,
    v: &T,
    op: &'static str,
) -> Result<(), DhcpError> {
    // SAFETY: passes a live `T` and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io_err(op)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens and binds the socket of `bridge` in the calling thread's netns.
fn open_socket_here(bridge: &str, promisc: bool) -> Result<(OwnedFd, u32), DhcpError> {
    let ifindex = ifindex_here(bridge)?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io_err("socket(AF_PACKET)")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let prog = filter();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_FILTER,
        &fprog,
        "attach the BPF filter",
    )?;
    // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binds to a live sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODEV) {
            return Err(DhcpError::NoSuchInterface(bridge.into()));
        }
        return Err(io_err("bind(AF_PACKET)")(e));
    }
    if promisc {
        // SAFETY: a zeroed packet_mreq is valid; the fields are set below.
        let mut mr: libc::packet_mreq = unsafe { mem::zeroed() };
        mr.mr_ifindex = ifindex as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mr,
            "PACKET_MR_PROMISC",
        )?;
    }
    Ok((sock, ifindex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bridge_is_a_typed_error() {
        let s = DhcpServer::start(ServerConfig::default()).unwrap();
        match s.set_scopes("nubo-nosuchbr0", vec![]) {
            Err(DhcpError::NoSuchInterface(n)) => assert_eq!(n, "nubo-nosuchbr0"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.set_scopes("a-name-far-too-long-for-linux", vec![]),
            Err(DhcpError::BadName(_))
        ));
        assert!(matches!(
            s.set_scopes("nul\0", vec![]),
            Err(DhcpError::BadName(_))
        ));
        assert!(!s.remove("nubo-nosuchbr0"));
        assert!(s.bridges().is_empty());
        s.stop();
    }

    #[test]
    fn missing_netns_is_a_typed_error() {
        let s = DhcpServer::start(ServerConfig {
            netns: Some("/nonexistent/netns".into()),
            promiscuous: false,
        })
        .unwrap();
        assert!(matches!(
            s.set_scopes("lo", vec![]),
            Err(DhcpError::Netns { .. })
        ));
    }
}
