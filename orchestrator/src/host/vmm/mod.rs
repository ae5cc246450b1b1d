//! The VMM agent: runs, adopts and stops one `nubo-vmm` process per server.
//!
//! Every server has an instance directory `INSTANCES/<server id>/` (mode
//! 0700) holding:
//!
//! | file | what |
//! |---|---|
//! | `spec.json` | the [`VmmSpec`] it was started with |
//! | `vmm.pid` | the VMM's process id |
//! | `vmm.log` | the VMM's stdout and stderr (appended, one marker line per start) |
//! | `console.log` | the guest's serial console (capped at 16 MiB by the VMM) |
//! | `api.sock` | the VMM's control API socket |
//! | `vmm.lock` | `flock`ed by the agent before it forks a VMM and inherited by it: held exactly while the VMM (or its not yet exec'd child) lives |
//! | `disk.qcow2` | the boot disk, a copy-on-write overlay on the image |
//! | `jail/` | empty: the VMM's root directory once it is jailed |
//!
//! The VMM runs in its own session, so it survives the daemon being killed or
//! restarted; a new daemon finds it again with [`Agent::adopt`].
//!
//! A root daemon runs each VMM jailed: with an empty environment, as a user
//! and group id of its own (from [`DEFAULT_VMM_UID_BASE`] on, recorded in
//! `spec.json` as [`VmmSpec::vmm_uid`]), without capabilities, with
//! no_new_privs and seccomp, and with `jail/` as its root in a mount
//! namespace of its own. The VMM opens everything it needs before it jails
//! itself, so every file here stays root's.
//!
//! The API is blocking. From async code call it through
//! `tokio::task::spawn_blocking`: its VMM API requests run on the runtime
//! it was created on ([`Agent::new`]) with `Handle::block_on`, which a
//! runtime's worker thread may not call.
//!
//! Compute calls it only through the [`VmmHost`] trait, which the [`Agent`]
//! implements; the API tests use a fake (`fake.rs`) instead.

mod console;
#[cfg(test)]
pub mod fake;
mod hotplug;
mod interface;
mod process;
mod spec;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use images::ImageFormat;

pub use hotplug::{validate_device_id, DeviceInfo, MAX_DEVICE_ID_LEN};
pub use interface::VmmHost;
pub use process::{ExitInfo, VmmProcess};
pub use spec::{validate_server_id, VmmSpec, MAX_SERVER_ID_LEN, MAX_VCPUS};

use process::{ChildState, SharedChild};

/// Longest Unix socket path (`sun_path` is 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How long a VMM gets to exit after `PUT /vm/stop` (and after the ACPI
/// shutdown timeout) before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest ACPI shutdown timeout the VMM accepts (one day).
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(86_400);

/// How long a process holding an instance's lock gets to identify itself
/// (exec `nubo-vmm` with the pid file written) before it counts as alive
/// under the pid in its pid file.
const LOCK_IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);

/// The first user and group id of the VMMs of a root daemon: above the
/// ranges `/etc/subuid`, systemd's dynamic users and systemd-nspawn hand out,
/// below 2^31.
pub const DEFAULT_VMM_UID_BASE: u32 = 2_000_000_000;

/// How many ids, from the base on, the VMMs may use (one per server).
pub const VMM_UID_COUNT: u32 = 65_536;

/// How long one request to a VMM's API may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts every run's section of `vmm.log`.
const LOG_MARKER: &str = "=== nubo agent: starting nubo-vmm";

/// File names inside an instance directory.
const SPEC_FILE: &str = "spec.json";
const PID_FILE: &str = "vmm.pid";
const LOG_FILE: &str = "vmm.log";
const CONSOLE_FILE: &str = "console.log";
const SOCKET_FILE: &str = "api.sock";
const LOCK_FILE: &str = "vmm.lock";
const DISK_FILE: &str = "disk.qcow2";
const JAIL_DIR: &str = "jail";

/// Errors of the compute agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A server id that is not `[0-9a-f-]{1,64}` (it would become a path).
    #[error("invalid server id {0:?}: only 0-9, a-f and '-' are allowed (1 to 64 characters)")]
    InvalidServerId(String),
    /// A spec the VMM would reject.
    #[error("invalid spec for server {server_id}: {reason}")]
    InvalidSpec {
        /// The server.
        server_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The API socket path does not fit in `sun_path`.
    #[error("API socket path {} is {len} bytes, more than the {MAX_SOCKET_PATH} a Unix socket allows: use a shorter instances directory", path.display())]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Creating the boot disk failed.
    #[error("cannot create the boot disk of server {server_id}: {source}")]
    Image {
        /// The server.
        server_id: String,
        /// What the image library said.
        source: images::ImageError,
    },
    /// The VMM binary could not be started.
    #[error("cannot start {} for server {server_id}: {source}", binary.display())]
    Spawn {
        /// The server.
        server_id: String,
        /// The VMM binary.
        binary: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A VMM for this server is already running.
    #[error("server {server_id} already has a running VMM (pid {pid})")]
    AlreadyRunning {
        /// The server.
        server_id: String,
        /// Its VMM's pid.
        pid: i32,
    },
    /// No VMM runs for this server.
    #[error("server {server_id} has no running VMM")]
    NotRunning {
        /// The server.
        server_id: String,
    },
    /// The VMM ended while we waited for its guest to run.
    #[error("the VMM of server {server_id} exited ({}){}", exit_text(.exit), log_text(.log_tail))]
    VmmExited {
        /// The server.
        server_id: String,
        /// How it ended, when known.
        exit: Option<ExitInfo>,
        /// The last lines it wrote to `vmm.log` in this run.
        log_tail: String,
    },
    /// The API socket could not be reached or answered garbage.
    #[error("API of server {server_id}: {reason}")]
    Api {
        /// The server.
        server_id: String,
        /// What went wrong.
        reason: String,
    },
    /// A live VMM process whose API does not answer.
    #[error(
        "the VMM of server {server_id} (pid {pid}) is alive but its API does not answer: {reason}"
    )]
    Unresponsive {
        /// The server.
        server_id: String,
        /// Its pid.
        pid: i32,
        /// The last API error.
        reason: String,
    },
    /// Every VMM id of the range is taken.
    #[error(
        "no free VMM user id for server {server_id}: all {VMM_UID_COUNT} ids from {base} are taken"
    )]
    NoFreeVmmId {
        /// The server.
        server_id: String,
        /// The first id of the range.
        base: u32,
    },
    /// The VMM refused a device request (`add-disk`, `remove-device`,
    /// `resize-disk`): 400 or 409 with its reason.
    #[error("the VMM of server {server_id} refused the device request ({status}): {reason}")]
    Device {
        /// The server.
        server_id: String,
        /// The VMM's HTTP status.
        status: u16,
        /// What it said.
        reason: String,
    },
    /// Something did not happen in time.
    #[error("server {server_id}: timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The server.
        server_id: String,
        /// What we waited for.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
}

fn exit_text(exit: &Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            code: Some(code), ..
        }) => format!("status {code}"),
        Some(ExitInfo {
            signal: Some(sig), ..
        }) => format!("signal {sig}"),
        _ => "status unknown".into(),
    }
}

fn log_text(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Whether a server's VMM runs, as far as the agent can tell.
enum Liveness {
    /// Running with this pid.
    Alive(i32),
    /// Its process ended (status when it was our child).
    Dead(Option<ExitInfo>),
    /// No pid file: never started (or removed).
    NoProcess,
}

/// The descriptor number the `i`-th TAP of a guest is inherited at: a
/// server's NIC `i` is `--net fd=tap_fd(i),mac=...`.
pub fn tap_fd(i: usize) -> i32 {
    process::INHERITED_FD_BASE + i32::try_from(i).unwrap_or(i32::MAX - process::INHERITED_FD_BASE)
}

/// Runs one `nubo-vmm` per server, each in its instance directory.
pub struct Agent {
    vmm_binary: PathBuf,
    instances_dir: PathBuf,
    /// First id of the VMMs' users and groups; `None`: VMMs run as the
    /// daemon's user (a daemon that is not root cannot switch).
    vmm_uid_base: Option<u32>,
    /// Held while a spawn picks its VMM id and records it in `spec.json`.
    vmm_ids: Mutex<()>,
    /// The VMMs this agent spawned, by server id, with their pid; kept so
    /// they are reaped (no zombies) whoever checks on them first.
    children: Mutex<HashMap<String, (i32, SharedChild)>>,
    /// Where the VMM API requests run.
    client: ClientRuntime,
}

/// The tokio runtime the agent's VMM API requests run on: the daemon's,
/// or, for an agent created outside a runtime (tests, tools), one of its
/// own, made once.
enum ClientRuntime {
    /// The runtime the agent was created on.
    Caller(tokio::runtime::Handle),
    /// The agent's own small runtime.
    Own(tokio::runtime::Runtime),
}

impl ClientRuntime {
    fn new() -> std::io::Result<Self> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return Ok(Self::Caller(handle));
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nubo-vmm-api")
            .enable_all()
            .build()
            .map(Self::Own)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match self {
            Self::Caller(handle) => handle,
            Self::Own(runtime) => runtime.handle(),
        }
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("vmm_binary", &self.vmm_binary)
            .field("instances_dir", &self.instances_dir)
            .field("vmm_uid_base", &self.vmm_uid_base)
            .finish()
    }
}

impl Agent {
    /// An agent that starts `vmm_binary` and keeps instance directories in
    /// `instances_dir` (created with mode 0700 if missing, and made
    /// absolute).
    pub fn new(vmm_binary: PathBuf, instances_dir: PathBuf) -> Result<Self, AgentError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&instances_dir)
            .map_err(io_err("cannot create instances directory", &instances_dir))?;
        std::fs::set_permissions(&instances_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot set mode 0700 on", &instances_dir))?;
        let instances_dir = instances_dir
            .canonicalize()
            .map_err(io_err("cannot resolve", &instances_dir))?;
        // A UUID server id gives the longest usual socket path.
        let sample = instances_dir.join("0".repeat(36)).join(SOCKET_FILE);
        if sample.as_os_str().len() > MAX_SOCKET_PATH {
            tracing::warn!(
                dir = %instances_dir.display(),
                "instances directory is too long for API socket paths of UUID servers"
            );
        }
        if !vmm_binary.is_file() {
            tracing::warn!(binary = %vmm_binary.display(), "the VMM binary does not exist");
        }
        let client = ClientRuntime::new().map_err(io_err(
            "cannot start the VMM API client runtime for",
            &instances_dir,
        ))?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Ok(Agent {
            vmm_binary,
            instances_dir,
            vmm_uid_base: root.then_some(DEFAULT_VMM_UID_BASE),
            vmm_ids: Mutex::new(()),
            children: Mutex::new(HashMap::new()),
            client,
        })
    }

    /// Runs the VMMs as ids from `base` on (one per server), or as the
    /// daemon's user with `None`. The default is [`DEFAULT_VMM_UID_BASE`]
    /// for a root daemon and `None` otherwise.
    pub fn with_vmm_uid_base(mut self, base: Option<u32>) -> Self {
        self.vmm_uid_base = base;
        self
    }

    /// The user and group id the server's VMM runs as: the one its
    /// `spec.json` recorded, else the lowest one no other instance has.
    fn vmm_uid_for(&self, server_id: &str) -> Result<Option<u32>, AgentError> {
        let Some(base) = self.vmm_uid_base else {
            return Ok(None);
        };
        let ids = base..base.saturating_add(VMM_UID_COUNT);
        if let Ok(Some(old)) = self.load_spec(server_id) {
            if let Some(id) = old.vmm_uid.filter(|id| ids.contains(id)) {
                return Ok(Some(id));
            }
        }
        let mut taken = std::collections::HashSet::new();
        for other in self.list_instances()? {
            if other != server_id {
                if let Ok(Some(spec)) = self.load_spec(&other) {
                    taken.extend(spec.vmm_uid);
                }
            }
        }
        ids.into_iter()
            .find(|id| !taken.contains(id))
            .map(Some)
            .ok_or_else(|| AgentError::NoFreeVmmId {
                server_id: server_id.to_owned(),
                base,
            })
    }

    /// The VMM binary this agent starts.
    pub fn vmm_binary(&self) -> &Path {
        &self.vmm_binary
    }

    /// The directory holding every instance directory.
    pub fn instances_dir(&self) -> &Path {
        &self.instances_dir
    }

    /// The instance directory of a server (not created); fails for an id
    /// that is not `[0-9a-f-]{1,64}`.
    pub fn instance_dir(&self, server_id: &str) -> Result<PathBuf, AgentError> {
        validate_server_id(server_id)?;
        Ok(self.instances_dir.join(server_id))
    }

    /// The API socket path of a server.
    pub fn socket_path(&self, server_id: &str) -> Result<PathBuf, AgentError> {
        Ok(self.instance_dir(server_id)?.join(SOCKET_FILE))
    }

    /// Creates the instance directory (mode 0700) if needed.
    fn ensure_instance_dir(&self, server_id: &str) -> Result<PathBuf, AgentError> {
        let dir = self.instance_dir(server_id)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(dir),
            Err(e) => Err(io_err("cannot create instance directory", &dir)(e)),
        }
    }

    /// Creates the server's boot disk `INSTANCE_DIR/disk.qcow2`: a qcow2
    /// overlay whose backing file is `image_path` (nothing is copied; the
    /// image must stay in place). Fails if the disk exists.
    pub fn create_boot_disk(
        &self,
        server_id: &str,
        image_path: &Path,
        image_format: ImageFormat,
    ) -> Result<PathBuf, AgentError> {
        let dir = self.ensure_instance_dir(server_id)?;
        let disk = dir.join(DISK_FILE);
        images::create_qcow2_overlay(&disk, image_path, image_format).map_err(|source| {
            AgentError::Image {
                server_id: server_id.to_owned(),
                source,
            }
        })?;
        tracing::info!(
            server_id,
            image = %image_path.display(),
            format = image_format.name(),
            "boot disk created"
        );
        Ok(disk)
    }

    /// Starts the server's VMM, detached from the daemon (own session, stdin
    /// /dev/null, output appended to `vmm.log`), and records `vmm.pid` and
    /// `spec.json`. Returns as soon as the process exists; see
    /// [`Agent::wait_running`].
    pub fn spawn(&self, spec: &VmmSpec) -> Result<VmmProcess, AgentError> {
        self.spawn_with_taps(spec, &[])
    }

    /// [`Agent::spawn`] for a guest with NICs: `taps[i]` is the open TAP of
    /// the NIC whose `--net fd=` is [`tap_fd`]`(i)`; the VMM inherits each at
    /// that number (so it needs no network privileges), the daemon's copies
    /// stay the caller's.
    pub fn spawn_with_taps(
        &self,
        spec: &VmmSpec,
        taps: &[std::os::fd::OwnedFd],
    ) -> Result<VmmProcess, AgentError> {
        spec.validate()?;
        let fd_nets: Vec<i32> = spec.vm.nets.iter().filter_map(|n| n.fd).collect();
        let expected: Vec<i32> = (0..taps.len()).map(tap_fd).collect();
        if fd_nets != expected {
            return Err(AgentError::InvalidSpec {
                server_id: spec.server_id.clone(),
                reason: format!(
                    "the NICs name descriptors {fd_nets:?} but {} TAPs were given",
                    taps.len()
                ),
            });
        }
        let id = spec.server_id.as_str();
        if let Liveness::Alive(pid) = self.liveness(id)? {
            return Err(AgentError::AlreadyRunning {
                server_id: id.to_owned(),
                pid,
            });
        }
        let dir = self.ensure_instance_dir(id)?;
        let socket = dir.join(SOCKET_FILE);
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(AgentError::SocketPathTooLong { path: socket, len });
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => tracing::debug!(server_id = id, "removed a stale API socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove stale socket", &socket)(e)),
        }
        let jail = dir.join(JAIL_DIR);
        let ids = self.vmm_ids.lock().unwrap_or_else(|e| e.into_inner());
        let mut spec = spec.clone();
        spec.vmm_uid = self.vmm_uid_for(id)?;
        if spec.vmm_uid.is_some() {
            match std::fs::DirBuilder::new().mode(0o555).create(&jail) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && jail.is_dir() => {}
                Err(e) => return Err(io_err("cannot create the jail directory", &jail)(e)),
            }
        }
        let args = spec.vmm_args(&dir.join(CONSOLE_FILE), &socket, &jail)?;
        let spec_path = dir.join(SPEC_FILE);
        let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| AgentError::InvalidSpec {
            server_id: id.to_owned(),
            reason: e.to_string(),
        })?;
        crate::state_dir::write_atomic(&spec_path, &spec_json)
            .map_err(io_err("cannot write", &spec_path))?;
        drop(ids);

        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_err("cannot open", &log_path))?;
        writeln!(
            log,
            "{LOG_MARKER} for server {id} at {} ===",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
        .map_err(io_err("cannot write", &log_path))?;

        // The lock is held from before the fork for as long as the VMM
        // lives, and the child records its pid in `vmm.pid` itself before it
        // execs: a daemon killed at any point leaves a findable VMM.
        let lock_path = dir.join(LOCK_FILE);
        let lock = match process::InstanceLock::try_acquire(&lock_path)
            .map_err(io_err("cannot lock", &lock_path))?
        {
            process::LockState::Acquired(lock) => lock,
            process::LockState::Held => {
                let pid = process::read_pid_file(&dir.join(PID_FILE))
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                return Err(AgentError::AlreadyRunning {
                    server_id: id.to_owned(),
                    pid,
                });
            }
        };
        let pid_path = dir.join(PID_FILE);
        let inherited: Vec<(std::os::fd::BorrowedFd<'_>, i32)> = taps
            .iter()
            .enumerate()
            .map(|(i, t)| (std::os::fd::AsFd::as_fd(t), tap_fd(i)))
            .collect();
        let child =
            process::spawn_detached(&self.vmm_binary, &args, &log, &pid_path, &lock, &inherited)
                .map_err(|source| AgentError::Spawn {
                    server_id: id.to_owned(),
                    binary: self.vmm_binary.clone(),
                    source,
                })?;
        let raw_pid = child.id();
        let child: SharedChild = Arc::new(Mutex::new(child));
        let Ok(pid) = i32::try_from(raw_pid) else {
            let mut c = process::lock(&child);
            let _ = c.kill();
            let _ = c.wait();
            return Err(AgentError::Spawn {
                server_id: id.to_owned(),
                binary: self.vmm_binary.clone(),
                source: io::Error::other("pid does not fit in i32"),
            });
        };
        self.children_lock()
            .insert(id.to_owned(), (pid, Arc::clone(&child)));
        tracing::info!(
            server_id = id,
            pid,
            vmm_uid = ?spec.vmm_uid,
            vcpus = spec.vm.vcpus,
            memory_mib = spec.vm.memory_bytes >> 20,
            "nubo-vmm started"
        );
        Ok(VmmProcess {
            server_id: id.to_owned(),
            pid,
            socket,
            child: Some(child),
        })
    }

    fn children_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i32, SharedChild)>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_child(&self, server_id: &str) -> Option<(i32, SharedChild)> {
        self.children_lock()
            .get(server_id)
            .map(|(pid, c)| (*pid, Arc::clone(c)))
    }

    /// Whether the server's VMM runs: through our `Child` when we spawned
    /// it, else through the pid file, `/proc` and its command line.
    fn liveness(&self, server_id: &str) -> Result<Liveness, AgentError> {
        let dir = self.instance_dir(server_id)?;
        if let Some((pid, child)) = self.own_child(server_id) {
            match process::poll_child(&child) {
                ChildState::Running => return Ok(Liveness::Alive(pid)),
                ChildState::Exited(info) => return Ok(Liveness::Dead(Some(info))),
                ChildState::Unknown => {}
            }
        }
        let pid_path = dir.join(PID_FILE);
        let socket = dir.join(SOCKET_FILE);
        let read_pid =
            || process::read_pid_file(&pid_path).map_err(io_err("cannot read", &pid_path));
        let pid = read_pid()?;
        if let Some(pid) = pid.filter(|p| process::is_our_vmm(*p, &socket)) {
            return Ok(Liveness::Alive(pid));
        }
        // Not identified by its pid file: a process of this instance may
        // still exist between fork and exec (a daemon killed while spawning)
        // — then it holds the lock, and identifies itself within moments.
        let lock_path = dir.join(LOCK_FILE);
        let held = || {
            process::InstanceLock::is_held(&lock_path)
                .map_err(io_err("cannot check the lock", &lock_path))
        };
        if held()? {
            let deadline = Instant::now() + LOCK_IDENTIFY_TIMEOUT;
            loop {
                std::thread::sleep(Duration::from_millis(5));
                let pid = read_pid()?;
                if let Some(pid) = pid.filter(|p| process::is_our_vmm(*p, &socket)) {
                    return Ok(Liveness::Alive(pid));
                }
                if !held()? {
                    break;
                }
                if Instant::now() >= deadline {
                    // Holds the lock but never became a VMM: the pid file
                    // (written before exec) names it.
                    return match pid.filter(|p| process::pid_alive(*p)) {
                        Some(pid) => Ok(Liveness::Alive(pid)),
                        None => Err(AgentError::Unresponsive {
                            server_id: server_id.to_owned(),
                            pid: 0,
                            reason: "a process holds the instance lock but cannot be identified"
                                .into(),
                        }),
                    };
                }
            }
        }
        Ok(match read_pid()? {
            None => Liveness::NoProcess,
            Some(pid) if process::is_our_vmm(pid, &socket) => Liveness::Alive(pid),
            Some(_) => Liveness::Dead(None),
        })
    }

    /// Polls until the server's VMM is gone; false if it still runs after
    /// `timeout`.
    fn wait_gone(&self, server_id: &str, timeout: Duration) -> Result<bool, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if !matches!(self.liveness(server_id)?, Liveness::Alive(_)) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// One request to the server's API, bounded by [`API_TIMEOUT`], on the
    /// agent's client runtime; the calling thread waits for it (so it must
    /// not be one of a runtime's worker threads).
    fn api(
        &self,
        server_id: &str,
        method: &'static str,
        path: &'static str,
        body: Option<String>,
    ) -> Result<(u16, String), AgentError> {
        let socket = self.socket_path(server_id)?;
        let answer = self.client.handle().block_on(vmm_api::client::request(
            &socket,
            method,
            path,
            body.as_deref(),
            Some(API_TIMEOUT),
        ));
        answer.map_err(|e| AgentError::Api {
            server_id: server_id.to_owned(),
            reason: format!("{method} {path}: {e}"),
        })
    }

    /// The guest state from `GET /vm` (`starting`, `running`, `paused`,
    /// `shutting-down` or `stopped`).
    pub fn vm_state(&self, server_id: &str) -> Result<String, AgentError> {
        let (status, body) = self.api(server_id, "GET", "/vm", None)?;
        let bad = |reason: String| AgentError::Api {
            server_id: server_id.to_owned(),
            reason,
        };
        if status != 200 {
            return Err(bad(format!("GET /vm answered {status}: {body}")));
        }
        let value: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| bad(format!("GET /vm answered bad JSON: {e}")))?;
        value["state"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("GET /vm has no state: {body}")))
    }

    /// Waits until the guest is `running` (polling `GET /vm`). Fails early,
    /// with the tail of this run's `vmm.log`, if the VMM exits.
    pub fn wait_running(&self, server_id: &str, timeout: Duration) -> Result<(), AgentError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.liveness(server_id)? {
                Liveness::Alive(_) => {}
                Liveness::Dead(exit) => {
                    let log_tail = console::log_tail_since(
                        &self.instance_dir(server_id)?.join(LOG_FILE),
                        LOG_MARKER,
                        20,
                    );
                    tracing::warn!(server_id, exit = %exit_text(&exit), log_tail, "nubo-vmm exited before the guest ran");
                    return Err(AgentError::VmmExited {
                        server_id: server_id.to_owned(),
                        exit,
                        log_tail,
                    });
                }
                Liveness::NoProcess => {
                    return Err(AgentError::NotRunning {
                        server_id: server_id.to_owned(),
                    })
                }
            }
            // The socket appears shortly after the process starts.
            if self.socket_path(server_id)?.exists() {
                match self.vm_state(server_id) {
                    Ok(state) if state == "running" => {
                        tracing::debug!(server_id, "guest running");
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::trace!(server_id, error = %e, "API not ready"),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::Timeout {
                    server_id: server_id.to_owned(),
                    what: "the guest to run",
                    timeout,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Finds the server's VMM again after a daemon restart: `Some` when the
    /// pid file names a live `nubo-vmm` serving this server's socket and the
    /// socket answers `GET /vm`; `None` when no such process runs. A live
    /// VMM whose API does not answer is an error (the caller may
    /// [`Agent::kill`] it).
    pub fn adopt(&self, server_id: &str) -> Result<Option<VmmProcess>, AgentError> {
        let pid = match self.liveness(server_id)? {
            Liveness::Alive(pid) => pid,
            Liveness::Dead(_) | Liveness::NoProcess => {
                tracing::debug!(server_id, "no live VMM to adopt");
                return Ok(None);
            }
        };
        // A VMM that has just started may not serve its socket yet.
        let deadline = Instant::now() + Duration::from_secs(2);
        let state = loop {
            match self.vm_state(server_id) {
                Ok(state) => break state,
                Err(e) if Instant::now() >= deadline => {
                    return Err(AgentError::Unresponsive {
                        server_id: server_id.to_owned(),
                        pid,
                        reason: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if !matches!(self.liveness(server_id)?, Liveness::Alive(p) if p == pid) {
            return Ok(None);
        }
        let child = self
            .own_child(server_id)
            .filter(|(p, _)| *p == pid)
            .map(|(_, c)| c);
        tracing::info!(server_id, pid, state, "adopted running nubo-vmm");
        Ok(Some(VmmProcess {
            server_id: server_id.to_owned(),
            pid,
            socket: self.socket_path(server_id)?,
            child,
        }))
    }

    /// Whether the process is alive. Our own children are reaped here
    /// (`try_wait`); adopted ones count as dead once they are gone, a
    /// zombie, or their pid runs something else.
    pub fn is_alive(&self, p: &VmmProcess) -> bool {
        if let Some(child) = &p.child {
            match process::poll_child(child) {
                ChildState::Running => return true,
                ChildState::Exited(_) => return false,
                ChildState::Unknown => {}
            }
        } else if let Some((pid, child)) = self.own_child(&p.server_id) {
            if pid == p.pid {
                match process::poll_child(&child) {
                    ChildState::Running => return true,
                    ChildState::Exited(_) => return false,
                    ChildState::Unknown => {}
                }
            }
        }
        process::is_our_vmm(p.pid, &p.socket)
    }

    /// Waits up to `timeout` for the process to end: `Some` with its exit
    /// status (known for our own children only) once it has, `None` if it
    /// still runs.
    pub fn wait_exit(
        &self,
        p: &mut VmmProcess,
        timeout: Duration,
    ) -> Result<Option<ExitInfo>, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if !self.is_alive(p) {
                let info = match &p.child {
                    Some(child) => match process::poll_child(child) {
                        ChildState::Exited(info) => info,
                        _ => ExitInfo::UNKNOWN,
                    },
                    None => ExitInfo::UNKNOWN,
                };
                tracing::debug!(server_id = p.server_id, pid = p.pid, exit = %exit_text(&Some(info)), "nubo-vmm ended");
                return Ok(Some(info));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Shuts the guest down: presses the ACPI power button with
    /// `PUT /vm/shutdown {"timeout_s": timeout}` (the VMM stops the guest
    /// hard after that), waits for the process to exit, and kills it if it
    /// still runs [`STOP_GRACE`] later (`timeout` is capped at
    /// [`MAX_SHUTDOWN_TIMEOUT`]). A guest that is not `running`
    /// (starting, paused) is stopped hard. Succeeds at once if no VMM runs.
    pub fn shutdown(&self, server_id: &str, timeout: Duration) -> Result<(), AgentError> {
        let Liveness::Alive(pid) = self.liveness(server_id)? else {
            tracing::debug!(server_id, "shutdown: no VMM running");
            return Ok(());
        };
        let timeout = timeout.min(MAX_SHUTDOWN_TIMEOUT);
        let secs = timeout.as_secs_f64();
        let body = format!("{{\"timeout_s\": {secs:.3}}}");
        tracing::info!(server_id, pid, timeout_s = secs, "ACPI shutdown");
        let answer = self.api(server_id, "PUT", "/vm/shutdown", Some(body));
        let pressed = match answer {
            Ok((204, _)) => true,
            Ok((409, _)) if self.vm_state(server_id).ok().as_deref() == Some("shutting-down") => {
                true
            }
            Ok((status, text)) => {
                tracing::warn!(server_id, status, text, "shutdown refused; stopping hard");
                false
            }
            Err(e) => {
                tracing::warn!(server_id, error = %e, "shutdown request failed; stopping hard");
                false
            }
        };
        if pressed {
            let limit = timeout + STOP_GRACE;
            if self.wait_gone(server_id, limit)? {
                tracing::info!(server_id, pid, "VMM exited after shutdown");
                return Ok(());
            }
            tracing::warn!(server_id, pid, "VMM still runs after the shutdown timeout");
            return self.kill(server_id);
        }
        self.stop(server_id)
    }

    /// Stops the guest now (`PUT /vm/stop`), waits for the VMM to exit and
    /// kills it if it still runs after [`STOP_GRACE`]. Succeeds at once if
    /// no VMM runs.
    pub fn stop(&self, server_id: &str) -> Result<(), AgentError> {
        let Liveness::Alive(pid) = self.liveness(server_id)? else {
            tracing::debug!(server_id, "stop: no VMM running");
            return Ok(());
        };
        tracing::info!(server_id, pid, "stopping VMM");
        match self.api(server_id, "PUT", "/vm/stop", None) {
            Ok((204, _)) => {}
            Ok((status, text)) => tracing::warn!(server_id, status, text, "stop refused"),
            Err(e) => tracing::warn!(server_id, error = %e, "stop request failed"),
        }
        if self.wait_gone(server_id, STOP_GRACE)? {
            tracing::info!(server_id, pid, "VMM exited");
            return Ok(());
        }
        tracing::warn!(server_id, pid, "VMM ignored the stop request");
        self.kill(server_id)
    }

    /// Kills the server's VMM with SIGKILL (found through our `Child` or the
    /// pid file, checked against `/proc` so a reused pid is never hit) and
    /// waits for it to be gone. Succeeds if no VMM runs.
    pub fn kill(&self, server_id: &str) -> Result<(), AgentError> {
        let Liveness::Alive(pid) = self.liveness(server_id)? else {
            return Ok(());
        };
        tracing::warn!(server_id, pid, "killing VMM (SIGKILL)");
        let killed = match self.own_child(server_id) {
            Some((p, child)) if p == pid => process::lock(&child).kill(),
            _ => process::sigkill(pid),
        };
        if let Err(e) = killed {
            tracing::debug!(server_id, pid, error = %e, "SIGKILL failed (already gone?)");
        }
        if self.wait_gone(server_id, STOP_GRACE)? {
            Ok(())
        } else {
            Err(AgentError::Timeout {
                server_id: server_id.to_owned(),
                what: "the VMM to die after SIGKILL",
                timeout: STOP_GRACE,
            })
        }
    }

    /// The guest's console output (lossy UTF-8), or only its last
    /// `last_lines` lines; empty if there is no console log yet.
    pub fn console_output(
        &self,
        server_id: &str,
        last_lines: Option<usize>,
    ) -> Result<String, AgentError> {
        let path = self.instance_dir(server_id)?.join(CONSOLE_FILE);
        console::read_tail(&path, last_lines).map_err(io_err("cannot read", &path))
    }

    /// Kills the server's VMM if it runs and deletes its instance directory
    /// (boot disk included). Succeeds if there is nothing to remove.
    pub fn remove_instance(&self, server_id: &str) -> Result<(), AgentError> {
        let dir = self.instance_dir(server_id)?;
        self.kill(server_id)?;
        self.kill_untracked(server_id);
        self.children_lock().remove(server_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(server_id, "instance removed");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &dir)(e)),
        }
    }

    /// Every live VMM serving a socket in this agent's instances directory,
    /// as `(server id, pid)`, found in `/proc` by command line (whatever the
    /// pid files say).
    pub fn running_vmms(&self) -> Vec<(String, i32)> {
        process::vmms_under(&self.instances_dir, SOCKET_FILE)
    }

    /// Kills every VMM of `server_id` that its pid file does not name (a VMM
    /// whose pid file was lost or overwritten); returns how many.
    fn kill_untracked(&self, server_id: &str) -> usize {
        let tracked = match self.liveness(server_id) {
            Ok(Liveness::Alive(pid)) => Some(pid),
            _ => None,
        };
        let mut killed = 0;
        for (id, pid) in self.running_vmms() {
            if id != server_id || Some(pid) == tracked {
                continue;
            }
            tracing::warn!(server_id, pid, "killing an untracked VMM of this server");
            match process::sigkill(pid) {
                Ok(()) => killed += 1,
                Err(e) => tracing::warn!(server_id, pid, error = %e, "cannot kill untracked VMM"),
            }
        }
        killed
    }

    /// After a daemon restart, before adopting: makes every running VMM
    /// either tracked or gone. A VMM of a server not in `known` (deleted, or
    /// never recorded) is killed; a VMM of a known server that its pid file
    /// does not name is recorded there if the pid file names no live VMM, and
    /// killed otherwise (one VMM per server, never two).
    pub fn settle_running_vmms(&self, known: &std::collections::HashSet<String>) {
        for (id, pid) in self.running_vmms() {
            if !known.contains(&id) {
                tracing::warn!(
                    server_id = id,
                    pid,
                    "a VMM runs for no known server: killing it"
                );
                if let Err(e) = process::sigkill(pid) {
                    tracing::warn!(server_id = id, pid, error = %e, "cannot kill stray VMM");
                }
                continue;
            }
            match self.liveness(&id) {
                Ok(Liveness::Alive(p)) if p == pid => {}
                Ok(Liveness::Alive(p)) => {
                    tracing::warn!(
                        server_id = id,
                        pid,
                        tracked = p,
                        "a second VMM runs for this server: killing it"
                    );
                    if let Err(e) = process::sigkill(pid) {
                        tracing::warn!(server_id = id, pid, error = %e, "cannot kill duplicate VMM");
                    }
                }
                Ok(_) => {
                    let Ok(dir) = self.instance_dir(&id) else {
                        continue;
                    };
                    let pid_path = dir.join(PID_FILE);
                    tracing::warn!(
                        server_id = id,
                        pid,
                        "a VMM runs without a pid file: recording it"
                    );
                    if let Err(e) =
                        crate::state_dir::write_atomic(&pid_path, format!("{pid}\n").as_bytes())
                    {
                        tracing::warn!(server_id = id, pid, error = %e, "cannot record the VMM; killing it");
                        let _ = process::sigkill(pid);
                    }
                }
                Err(e) => tracing::warn!(server_id = id, error = %e, "cannot check the VMM"),
            }
        }
    }

    /// The server ids that have an instance directory (for orphan cleanup),
    /// sorted; entries that are not valid ids are skipped.
    pub fn list_instances(&self) -> Result<Vec<String>, AgentError> {
        let entries = std::fs::read_dir(&self.instances_dir)
            .map_err(io_err("cannot list", &self.instances_dir))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", &self.instances_dir))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let name = entry.file_name();
            match name.to_str() {
                Some(id) if is_dir && validate_server_id(id).is_ok() => ids.push(id.to_owned()),
                _ => tracing::debug!(
                    name = %String::from_utf8_lossy(name.as_bytes()),
                    "skipping a non-instance entry"
                ),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The spec a server was last started with (`spec.json`), if any.
    pub fn load_spec(&self, server_id: &str) -> Result<Option<VmmSpec>, AgentError> {
        let path = self.instance_dir(server_id)?.join(SPEC_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| AgentError::InvalidSpec {
                server_id: server_id.to_owned(),
                reason: format!("{}: {e}", path.display()),
            })
    }
}
