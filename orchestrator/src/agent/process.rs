//! Processes: spawning a detached `nubo-vmm`, pid files, and liveness checks
//! that see through zombies and reused pids.

use std::fs::File;
use std::io::{self, Write};
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
pub(crate) fn spawn_detached(
    binary: &Path,
    args: &[std::ffi::OsString],
    log: &File,
) -> io::Result<Child> {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setsid(2), which is async-signal-safe; it touches no memory of the
    // parent (no allocation, no locks).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
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
