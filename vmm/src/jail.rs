//! The VMM's jail, after Firecracker's jailer but done by the VMM itself on
//! the descriptors it already holds: once /dev/kvm, the TAPs, the kernel,
//! initrd and disks (with their backing chains), the console log and the
//! sockets are open, [`enter`]
//!
//! 1. moves the process into a mount namespace of its own whose root is an
//!    empty directory (`--jail DIR`, bind-mounted read-only, nosuid, nodev,
//!    noexec, with `pivot_root`; a plain `chroot` where the host refuses
//!    namespaces, and nothing but a warning where it refuses that too),
//! 2. empties the capability bounding set and the ambient set,
//! 3. drops supplementary groups and switches to the unprivileged group and
//!    user (`--group`, `--user`),
//! 4. clears every remaining capability (effective, permitted, inheritable),
//! 5. sets `PR_SET_NO_NEW_PRIVS`,
//!
//! after which each thread installs its seccomp filter. Everything here acts
//! on the calling thread only (namespaces, root directory, capabilities and
//! no_new_privs are per thread), so it must run while the process has a
//! single thread: threads started later inherit it all.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::privileges::{self, PrivilegeError};

/// What the jail is made of; every part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jail {
    /// The directory that becomes `/` (empty is best: the VMM then sees no
    /// file at all).
    pub root: Option<PathBuf>,
    /// The user to run as.
    pub uid: Option<libc::uid_t>,
    /// The group to run as.
    pub gid: Option<libc::gid_t>,
}

/// How the file system was closed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// A mount namespace of its own whose only mount is the jail root.
    MountNamespace,
    /// `chroot` into the jail root, in the host's mount namespace.
    Chroot,
    /// Not at all: no root was asked for, or the host refused both.
    None,
}

/// Errors of entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail root is not a directory.
    #[error("jail root {}: {source}", path.display())]
    Root {
        /// The directory.
        path: PathBuf,
        /// Why it cannot be used.
        source: io::Error,
    },
    /// Capabilities could not be dropped.
    #[error("cannot {what}: {source}")]
    Capabilities {
        /// Which step.
        what: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// The user or group could not be switched.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// Threads were running: they would stay outside the jail.
    #[error("the jail must be entered before any thread starts ({0} threads run)")]
    Threads(usize),
}

/// Enters the jail described by `jail` (see the module documentation).
/// Must be called while the process has one thread.
pub fn enter(jail: &Jail) -> Result<RootKind, JailError> {
    if let Some(n) = thread_count().filter(|n| *n > 1) {
        return Err(JailError::Threads(n));
    }
    let root = match &jail.root {
        Some(dir) => enter_root(dir)?,
        None => RootKind::None,
    };
    drop_bounding_set()?;
    privileges::drop_to(jail.uid, jail.gid)?;
    clear_capabilities()?;
    // SAFETY: prctl with integer arguments only.
    check("set no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    tracing::info!(?root, uid = ?jail.uid, gid = ?jail.gid, "jailed");
    Ok(root)
}

/// The process's thread count, from /proc/self/status.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(JailError::Capabilities {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Root {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// Makes `dir` the root: a mount namespace where the host allows one, else
/// chroot, else (with a warning) nothing.
fn enter_root(dir: &Path) -> Result<RootKind, JailError> {
    let meta = std::fs::metadata(dir).map_err(|source| JailError::Root {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(JailError::Root {
            path: dir.to_path_buf(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    let c_dir = c_path(dir)?;
    match pivot_into(&c_dir) {
        Ok(()) => return Ok(RootKind::MountNamespace),
        Err(e) => tracing::warn!(
            error = %e,
            "the host refuses a mount namespace for the jail; falling back to chroot"
        ),
    }
    // SAFETY: chroot and chdir read NUL-terminated paths we own.
    let chrooted = unsafe { libc::chroot(c_dir.as_ptr()) == 0 && libc::chdir(c"/".as_ptr()) == 0 };
    if chrooted {
        return Ok(RootKind::Chroot);
    }
    tracing::warn!(
        error = %io::Error::last_os_error(),
        "the host refuses chroot too; the VMM sees the host's file system"
    );
    Ok(RootKind::None)
}

/// A new mount namespace whose root is `dir`, read-only, nosuid, nodev and
/// noexec; the host's mounts are gone from it.
fn pivot_into(dir: &CString) -> io::Result<()> {
    let ok = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: every call below takes NUL-terminated strings we own (or
    // null where the kernel allows it) and integer flags; none keeps a
    // pointer past the call.
    unsafe {
        ok(libc::unshare(libc::CLONE_NEWNS))?;
        // Nothing we do here may propagate back to the host.
        ok(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        // pivot_root wants the new root to be a mount point.
        ok(libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        ok(libc::chdir(dir.as_ptr()))?;
        // pivot_root(".", "."): the old root ends up stacked on the new one
        // and is detached right away (see pivot_root(2)).
        ok(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        ok(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        ok(libc::chdir(c"/".as_ptr()))?;
        let flags = libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC;
        if libc::mount(none, c"/".as_ptr(), none, flags, std::ptr::null()) != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot make the jail root read-only");
        }
    }
    Ok(())
}

/// Empties the capability bounding set (needs CAP_SETPCAP: a VMM started
/// without privileges has nothing to lose there) and the ambient set.
fn drop_bounding_set() -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3) has none.
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        check("clear the ambient capabilities", rc)?;
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only; EINVAL past the last
        // capability this kernel knows.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } {
            rc if rc < 0 => break,
            0 => continue,
            _ => {}
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                tracing::debug!("no CAP_SETPCAP: the capability bounding set stays");
                return Ok(());
            }
            return Err(JailError::Capabilities {
                what: "drop a capability from the bounding set",
                source: e,
            });
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two `CapData`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Clears the effective, permitted and inheritable sets (setuid away from
/// root already emptied the first two; this also covers a VMM that stays
/// uid 0).
fn clear_capabilities() -> Result<(), JailError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs, laid out as the
    // kernel's (repr(C)), for the calling thread (pid 0).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check("clear the capabilities", rc as libc::c_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child enters a jail without a root and reports its status
    /// lines through a pipe; the test process itself stays untouched.
    #[test]
    fn drops_capabilities_and_sets_no_new_privs() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes system calls and _exits; it never
        // returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match enter(&Jail::default()) {
                Ok(_) => {
                    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                    // SAFETY: writing our buffer to the pipe.
                    unsafe { libc::write(fds[1], status.as_ptr().cast(), status.len()) };
                    0
                }
                Err(_) => 1,
            };
            // SAFETY: leave the child without running destructors.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our buffer from the pipe's read end.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 0);
        let text = String::from_utf8_lossy(&out);
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(field("CapEff:"), "0000000000000000", "{text}");
        assert_eq!(field("CapPrm:"), "0000000000000000", "{text}");
        assert_eq!(field("CapInh:"), "0000000000000000", "{text}");
        assert_eq!(field("NoNewPrivs:"), "1", "{text}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(field("CapBnd:"), "0000000000000000", "{text}");
        }
    }
}
