//! Named network namespaces, compatible with `ip netns`: a namespace `NAME`
//! is kept alive by a bind mount of its `nsfs` file on `/run/netns/NAME`, so
//! `ip netns exec NAME ...` and `ip -n NAME ...` see what nubo creates and
//! the other way round.
//!
//! - [`create`] (idempotent), [`delete`] (absent is fine), [`exists`],
//!   [`list`], [`open`] (the namespace file, for `setns` or
//!   `IFLA_NET_NS_FD`).
//! - [`run_in`]: runs a closure on a temporary thread that entered the
//!   namespace (network namespaces are per thread), e.g. to write a sysctl
//!   ([`sysctl_write`]) or open a socket there.
//! - [`enter`]: `setns` into an opened namespace; async-signal-safe, so it
//!   can run in a `Command::pre_exec` hook to spawn a program (`nft`,
//!   `dnsmasq`) inside the namespace.
//!
//! Everything here needs `CAP_SYS_ADMIN` (root).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is empty, too long, or has `/`, NUL or a leading dot.
    #[error("invalid namespace name {0:?}")]
    InvalidName(String),
    /// The namespace does not exist.
    #[error("network namespace {0:?} does not exist")]
    NotFound(String),
    /// A system call failed; `op` says which and on what.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error (its `raw_os_error` is the errno).
        #[source]
        source: io::Error,
    },
    /// The closure given to [`run_in`] panicked.
    #[error("the thread running in namespace {0:?} panicked")]
    Panicked(String),
}

impl NetnsError {
    fn io(op: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }

    /// The errno of a failed system call, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Checks a namespace name (a file name under [`NETNS_DIR`]).
pub fn check_name(name: &str) -> Result<(), NetnsError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.bytes().any(|b| b == b'/' || b == 0);
    if bad {
        return Err(NetnsError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// The path of namespace `name` (`/run/netns/NAME`).
pub fn path(name: &str) -> Result<PathBuf, NetnsError> {
    check_name(name)?;
    Ok(Path::new(NETNS_DIR).join(name))
}

fn cstring(p: &Path) -> Result<std::ffi::CString, NetnsError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| NetnsError::InvalidName(p.display().to_string()))
}

/// Whether `path` is a mount point of an `nsfs` file (a live namespace),
/// as opposed to a leftover empty file.
fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = cstring(path) else { return false };
    // SAFETY: `statfs` is plain old data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out pointer,
    // both alive across the call.
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    ret == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Makes [`NETNS_DIR`] a shared mount point, as `ip netns add` does, so the
/// namespace mounts propagate to other mount namespaces (e.g. `ip netns
/// exec`'s). Best effort.
fn make_dir_shared(dir: &Path) -> Result<(), NetnsError> {
    let c = cstring(dir)?;
    let none = c"none";
    let mount = |src: &std::ffi::CStr, flags: libc::c_ulong| {
        // SAFETY: every pointer is a NUL-terminated string alive across the
        // call; `data` is null, which mount(2) accepts.
        let ret = unsafe {
            libc::mount(
                src.as_ptr(),
                c.as_ptr(),
                none.as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    match mount(none, libc::MS_SHARED | libc::MS_REC) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it on itself, then share it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => mount(&c, libc::MS_BIND | libc::MS_REC)
            .and_then(|()| mount(none, libc::MS_SHARED | libc::MS_REC))
            .map_err(|e| NetnsError::io(format!("making {} shared", dir.display()), e)),
        Err(e) => Err(NetnsError::io(
            format!("making {} shared", dir.display()),
            e,
        )),
    }
}

/// Creates namespace `name` (a new, empty network namespace mounted on
/// `/run/netns/NAME`). Returns `false` if it already existed.
pub fn create(name: &str) -> Result<bool, NetnsError> {
    let target = path(name)?;
    if is_nsfs(&target) {
        return Ok(false);
    }
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| NetnsError::io(format!("creating {NETNS_DIR}"), e))?;
    if let Err(e) = make_dir_shared(dir) {
        tracing::debug!(error = %e, "cannot make {NETNS_DIR} a shared mount; going on");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&target)
        .map_err(|e| NetnsError::io(format!("creating {}", target.display()), e))?;
    let ctarget = cstring(&target)?;
    let result = std::thread::spawn(move || -> io::Result<()> {
        // SAFETY: unshare(2) with CLONE_NEWNET only moves this fresh thread,
        // which runs nothing else, into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let src = c"/proc/thread-self/ns/net";
        // SAFETY: NUL-terminated strings alive across the call; the type
        // and data may be null for a bind mount.
        let ret = unsafe {
            libc::mount(
                src.as_ptr(),
                ctarget.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(name.to_string()))?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&target);
        return Err(NetnsError::io(format!("creating namespace {name}"), e));
    }
    tracing::info!(namespace = name, "network namespace created");
    Ok(true)
}

/// Deletes namespace `name`: unmounts and removes `/run/netns/NAME`. The
/// namespace itself (and its interfaces) goes away once no process or
/// descriptor holds it. Returns `false` if it did not exist.
pub fn delete(name: &str) -> Result<bool, NetnsError> {
    let target = path(name)?;
    if !target.exists() {
        return Ok(false);
    }
    let c = cstring(&target)?;
    // SAFETY: `c` is a NUL-terminated path alive across the call.
    let ret = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if ret != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (a leftover file): just remove it.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetnsError::io(
                format!("unmounting {}", target.display()),
                e,
            ));
        }
    }
    match std::fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(NetnsError::io(format!("removing {}", target.display()), e));
        }
    }
    tracing::info!(namespace = name, "network namespace deleted");
    Ok(true)
}

/// Whether namespace `name` exists (a live namespace is mounted there).
pub fn exists(name: &str) -> Result<bool, NetnsError> {
    Ok(is_nsfs(&path(name)?))
}

/// The names of the existing namespaces, sorted.
pub fn list() -> Result<Vec<String>, NetnsError> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetnsError::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter(|e| is_nsfs(&e.path()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Opens namespace `name` (read-only, close-on-exec): a descriptor for
/// [`enter`] or for moving links there.
pub fn open(name: &str) -> Result<File, NetnsError> {
    let target = path(name)?;
    if !is_nsfs(&target) {
        return Err(NetnsError::NotFound(name.to_string()));
    }
    File::open(&target).map_err(|e| NetnsError::io(format!("opening {}", target.display()), e))
}

/// Moves the calling thread into the network namespace `ns` (`setns(2)`
/// with `CLONE_NEWNET`). Only a raw system call: safe to use in a
/// `pre_exec` hook (open the namespace with [`open`] before forking).
pub fn enter(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns(2) takes a descriptor and a flag; no memory is passed.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a temporary thread inside namespace `name` and returns its
/// result. The calling thread is not affected.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = open(name)?;
    let owned = name.to_string();
    std::thread::spawn(move || -> Result<T, NetnsError> {
        enter(file.as_fd())
            .map_err(|e| NetnsError::io(format!("entering namespace {owned}"), e))?;
        drop(file);
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(name.to_string()))?
}

/// `/proc/sys/...` for a sysctl named with dots (`net.ipv4.ip_forward`) or
/// slashes (`net/ipv4/conf/eth0.100/forwarding`, needed when a component
/// has a dot), with or without the `/proc/sys/` prefix.
fn sysctl_path(key: &str) -> Result<String, NetnsError> {
    let rel = if key.contains('/') {
        key.trim_start_matches("/proc/sys/").to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "..") {
        return Err(NetnsError::io(
            format!("sysctl {key}"),
            io::Error::new(io::ErrorKind::InvalidInput, "bad sysctl name"),
        ));
    }
    Ok(format!("/proc/sys/{rel}"))
}

/// Writes `value` to the sysctl `key` (dotted, `net.ipv4.ip_forward`, or a
/// path under `/proc/sys`), in namespace `ns` (`None`: the caller's).
pub fn sysctl_write(ns: Option<&str>, key: &str, value: &str) -> Result<(), NetnsError> {
    let file = sysctl_path(key)?;
    let value = value.to_string();
    let write = move || {
        std::fs::write(&file, value.as_bytes())
            .map_err(|e| NetnsError::io(format!("writing {file}"), e))
    };
    match ns {
        Some(ns) => run_in(ns, write)?,
        None => write(),
    }
}

/// Reads the sysctl `key` (as [`sysctl_write`] names it) in namespace `ns`,
/// trimmed.
pub fn sysctl_read(ns: Option<&str>, key: &str) -> Result<String, NetnsError> {
    let file = sysctl_path(key)?;
    let read = move || {
        std::fs::read_to_string(&file)
            .map(|s| s.trim().to_string())
            .map_err(|e| NetnsError::io(format!("reading {file}"), e))
    };
    match ns {
        Some(ns) => run_in(ns, read)?,
        None => read(),
    }
}

/// A namespace with a unique name (`PREFIX-<pid>-<n>`) that is deleted
/// when dropped (also on panic): for probes and tests.
#[derive(Debug)]
pub struct TempNetns {
    name: String,
}

impl TempNetns {
    /// Creates `PREFIX-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<Self, NetnsError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        create(&name)?;
        Ok(Self { name })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name) {
            tracing::warn!(namespace = %self.name, error = %e, "cannot delete namespace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", ".x", "a/b", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(NetnsError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            path("qrouter-1").unwrap(),
            Path::new("/run/netns/qrouter-1")
        );
        assert!(sysctl_write(None, "net/../../etc", "1").is_err());
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("/proc/sys/net/ipv4/conf/eth0.5/forwarding").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.5/forwarding"
        );
    }
}
