//! Processes: spawning a detached `nubo-vmm`, pid files, and liveness checks
//! that see through zombies and reused pids.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status, when it exited normally and we could read it (only for
    /// processes this agent spawned).
    pub code: Option<i32>,
    /// The signal that killed it, when known.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// An end whose status nobody can tell (an adopted process).
    pub const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
    };

    pub(crate) fn from_status(status: ExitStatus) -> Self {
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

/// A child process shared between the agent and the [`VmmProcess`] handle,
/// so whoever looks first reaps it and both see the status.
pub(crate) type SharedChild = Arc<Mutex<Child>>;

/// Locks a shared child, ignoring poisoning (a `Child` has no invariant a
/// panic could break).
pub(crate) fn lock(child: &SharedChild) -> MutexGuard<'_, Child> {
    child.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `try_wait` on a shared child says.
pub(crate) enum ChildState {
    /// Still running.
    Running,
    /// Ended (and reaped).
    Exited(ExitInfo),
    /// `waitpid` failed: the caller has to look at the pid.
    Unknown,
}

/// Polls a child without blocking, reaping it if it ended.
pub(crate) fn poll_child(child: &SharedChild) -> ChildState {
    match lock(child).try_wait() {
        Ok(None) => ChildState::Running,
        Ok(Some(status)) => ChildState::Exited(ExitInfo::from_status(status)),
        Err(_) => ChildState::Unknown,
    }
}

/// A running (or recently running) `nubo-vmm` of one server.
pub struct VmmProcess {
    /// The server it runs.
    pub server_id: String,
    /// Its process id.
    pub pid: i32,
    /// Its control API socket.
    pub socket: PathBuf,
    /// The `Child` when this agent spawned it (None for adopted processes).
    pub(crate) child: Option<SharedChild>,
}

impl VmmProcess {
    /// Whether this agent spawned the process (and can read its exit status).
    pub fn is_own_child(&self) -> bool {
        self.child.is_some()
    }
}

impl std::fmt::Debug for VmmProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmmProcess")
            .field("server_id", &self.server_id)
            .field("pid", &self.pid)
            .field("socket", &self.socket)
            .field("own_child", &self.child.is_some())
            .finish()
    }
}

/// Starts `binary args` in its own session (so it outlives the daemon and
/// gets none of the daemon's terminal signals), with an empty environment
/// (the daemon's holds secrets such as `NUBO_ADMIN_PASSWORD`), stdin from
/// /dev/null and stdout and stderr appended to `log`.
///
/// The child writes its own pid to `pid_file` (through `pid_file.tmp` and a
/// rename) *before* it execs `binary`, and keeps `lock` (an exclusive
/// [`InstanceLock`] the caller holds) open across exec, so the lock is held
/// for exactly as long as the VMM lives: a VMM is findable from the moment it
/// exists, whenever the daemon is killed. If either step fails, the child
/// exits before exec and `spawn` fails.
///
/// `inherited` are descriptors the VMM gets at fixed numbers (the TAPs of
/// its NICs, named by `--net fd=N`): each `(fd, n)` is duplicated to `n` in
/// the child, without close-on-exec. The numbers must be at least
/// [`INHERITED_FD_BASE`], one per descriptor, at most [`MAX_INHERITED`].
pub(crate) fn spawn_detached(
    binary: &Path,
    args: &[std::ffi::OsString],
    log: &File,
    pid_file: &Path,
    lock: &InstanceLock,
    inherited: &[(std::os::fd::BorrowedFd<'_>, i32)],
) -> io::Result<Child> {
    let lock_fd = lock.file.as_raw_fd();
    // Copies of the inherited descriptors above every target number, so
    // that no dup2 in the child overwrites a source it still needs.
    let above = INHERITED_FD_BASE + i32::try_from(inherited.len()).unwrap_or(MAX_INHERITED);
    let mut high = Vec::with_capacity(inherited.len());
    for (fd, target) in inherited {
        if !(INHERITED_FD_BASE..above).contains(target) || inherited.len() > MAX_INHERITED as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("inherited descriptor number {target} out of range"),
            ));
        }
        high.push((fd.try_clone_to_owned_above(above)?, *target));
    }
    let moves: Vec<(i32, i32)> = high.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    let final_path = CString::new(pid_file.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut tmp = pid_file.as_os_str().as_bytes().to_vec();
    tmp.extend_from_slice(b".tmp");
    let tmp_path = CString::new(tmp).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, fcntl, getpid, open,
    // write, close, rename) on memory it owns: the two C strings were built
    // before the fork, the digits go to a stack buffer (no allocation, no
    // locks). `lock_fd` is the caller's open lock file, inherited by fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            // Keep the lock's descriptor open in the VMM (it was opened
            // close-on-exec).
            if libc::fcntl(lock_fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // dup2 leaves the new descriptor without close-on-exec.
            for &(src, target) in &moves {
                if libc::dup2(src, target) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            write_own_pid(&tmp_path, &final_path)
        });
    }
    cmd.spawn()
}

/// The lowest descriptor number a VMM inherits a TAP at (`--net fd=N`).
pub const INHERITED_FD_BASE: i32 = 256;

/// At most this many inherited descriptors (NICs) per VMM; the copies go
/// just above the targets, well below the usual 1024 descriptor limit.
const MAX_INHERITED: i32 = 64;

/// `F_DUPFD_CLOEXEC` at or above a number, for [`spawn_detached`].
trait DupAbove {
    fn try_clone_to_owned_above(&self, min: i32) -> io::Result<std::os::fd::OwnedFd>;
}

impl DupAbove for std::os::fd::BorrowedFd<'_> {
    fn try_clone_to_owned_above(&self, min: i32) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we borrow creates a new
        // descriptor (or fails); nothing else is touched.
        let fd = unsafe { libc::fcntl(self.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by fcntl and is owned by no one else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }
}

/// Writes the calling process's pid and a newline to `tmp`, then renames it
/// to `path`. Async-signal-safe: for a forked child before exec.
fn write_own_pid(tmp: &CString, path: &CString) -> io::Result<()> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut buf = [0u8; 16];
    let mut n = buf.len() - 1;
    buf[n] = b'\n';
    let mut rest = pid.unsigned_abs();
    loop {
        n -= 1;
        buf[n] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let text = &buf[n..];
    // SAFETY: `tmp` is a valid NUL-terminated path; the flags and mode are
    // plain integers.
    let fd = unsafe {
        libc::open(
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened by us; `text` is a valid buffer of that length.
    let written = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    let write_err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    if written != text.len() as isize {
        return Err(write_err);
    }
    // SAFETY: both are valid NUL-terminated paths.
    if unsafe { libc::rename(tmp.as_ptr(), path.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive `flock` on an instance's lock file. The agent takes it
/// before spawning a VMM and the VMM inherits it, so it is held exactly while
/// a process of this instance exists — also between fork and exec, before
/// anything else could identify the process.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    file: File,
}

/// What [`InstanceLock::try_acquire`] found.
pub(crate) enum LockState {
    /// Nobody held it; now we do (released when dropped).
    Acquired(InstanceLock),
    /// A live process holds it.
    Held,
}

impl InstanceLock {
    /// Opens (creating, mode 0600) `path` and tries to lock it without
    /// waiting.
    pub(crate) fn try_acquire(path: &Path) -> io::Result<LockState> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(LockState::Acquired(InstanceLock { file }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(LockState::Held)
        } else {
            Err(err)
        }
    }

    /// Whether a live process holds the lock at `path` (false when the file
    /// does not exist).
    pub(crate) fn is_held(path: &Path) -> io::Result<bool> {
        if !path.exists() {
            return Ok(false);
        }
        Ok(matches!(Self::try_acquire(path)?, LockState::Held))
    }
}

/// Reads a pid file: `Ok(None)` when it is missing or does not hold a
/// positive number.
pub(crate) fn read_pid_file(path: &Path) -> io::Result<Option<i32>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse::<i32>().ok().filter(|p| *p > 0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// State letter and parent pid from `/proc/PID/stat`, if the process exists.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so
    // parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` names a live process: it exists and is neither a zombie nor
/// dead. A zombie that is our own child (an adopted VMM this very process
/// once spawned) is reaped on the way.
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists and we
    // may signal it; it has no memory effects.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match proc_stat(pid) {
        Some(('Z' | 'X' | 'x', ppid)) => {
            // SAFETY: getpid has no preconditions.
            if ppid == unsafe { libc::getpid() } {
                let mut status = 0;
                // SAFETY: WNOHANG waitpid on a zombie child of ours; `status`
                // is a valid out pointer. Nobody else holds a `Child` for it
                // (callers use the shared `Child` first when there is one).
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            }
            false
        }
        Some(_) => true,
        None => false,
    }
}

/// Whether the command line of `pid` names `socket` as its API socket (as
/// `--api-socket=PATH` or a separate `PATH` argument): tells our VMM from a
/// process that reused its pid.
pub(crate) fn cmdline_has_socket(pid: i32, socket: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let sock = socket.as_os_str().as_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == sock || (arg.strip_prefix(b"--api-socket=".as_slice()) == Some(sock)))
}

/// Whether `pid` is alive and is the VMM serving `socket`.
pub(crate) fn is_our_vmm(pid: i32, socket: &Path) -> bool {
    pid_alive(pid) && cmdline_has_socket(pid, socket)
}

/// Every live `nubo-vmm` whose API socket is `INSTANCES/<id>/api.sock`
/// under `instances_dir`, as `(server id, pid)`, found by their command
/// lines in `/proc` whatever any pid file says: a VMM started by a daemon
/// that was killed before it recorded anything is found too.
pub(crate) fn vmms_under(instances_dir: &Path, socket_file: &str) -> Vec<(String, i32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let prefix = instances_dir.as_os_str().as_bytes();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let server = cmdline.split(|b| *b == 0).find_map(|arg| {
            let sock = arg.strip_prefix(b"--api-socket=".as_slice())?;
            let rest = sock.strip_prefix(prefix)?.strip_prefix(b"/")?;
            let id = rest
                .strip_suffix(socket_file.as_bytes())?
                .strip_suffix(b"/")?;
            let id = std::str::from_utf8(id).ok()?;
            super::validate_server_id(id).ok().map(|()| id.to_owned())
        });
        if let Some(id) = server {
            if pid_alive(pid) {
                found.push((id, pid));
            }
        }
    }
    found.sort();
    found
}

/// Sends SIGKILL to `pid`.
pub(crate) fn sigkill(pid: i32) -> io::Result<()> {
    if pid <= 0 {
        // kill(0 or negative) would signal whole process groups.
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) has no memory effects; callers checked that `pid` is
    // the VMM they mean (positive, alive, right command line).
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
