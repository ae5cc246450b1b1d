//! Controlling a running guest from other threads: the lifecycle state, the
//! requests (pause, resume, shutdown, reboot, stop) that the VM's control
//! loop carries out, and the counters it exposes. The API socket is a thin
//! layer over [`VmController`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::config::{DiskConfig, NetConfig, SerialConfig, VmConfig};
use crate::console::{ConsoleHub, SharedLog, DEFAULT_LOG_CAP};
use crate::device_manager::DiskStats;
use crate::disk::SharedDisk;
use crate::error::VmError;
use devices::virtio::block::BlockCounters;
use devices::virtio::net::NetCounters;
use images::BlockBackend;
use vmm_api::config::DeviceInfo;

/// The lifecycle state of a guest, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Not started yet, or being rebuilt for a restart.
    Starting,
    /// vCPUs are running.
    Running,
    /// vCPUs are stopped; the guest keeps its state.
    Paused,
    /// The power button was pressed; waiting for the guest to power off.
    ShuttingDown,
    /// The guest is gone; the VMM is exiting.
    Stopped,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The request does not apply in the guest's current state.
    #[error("cannot {action} a guest that is {state}")]
    WrongState {
        /// What was asked.
        action: &'static str,
        /// The state it was in.
        state: VmState,
    },
    /// The VM ended before it could answer.
    #[error("the guest has stopped")]
    Gone,
    /// Carrying out the request failed.
    #[error("{0}")]
    Failed(String),
    /// The request itself is wrong (a bad or duplicate id, an image that
    /// cannot be opened, a size that shrinks).
    #[error("{0}")]
    Invalid(String),
    /// No device has this id.
    #[error("no device '{0}'")]
    NoDevice(String),
    /// The guest did not do its part in time.
    #[error("{0}")]
    Timeout(String),
}

/// A request for the control loop.
pub(crate) enum Command {
    Pause,
    Resume,
    Shutdown {
        timeout: Option<Duration>,
    },
    Reboot,
    Stop,
    /// Hot-adds a disk, over `files` (the image, then its backing chain)
    /// when given, else over its path.
    AddDisk {
        disk: DiskConfig,
        files: Option<Vec<File>>,
    },
    /// Hot-adds a NIC on `tap` when given, else on the TAP its config names.
    AddNet {
        net: NetConfig,
        id: Option<String>,
        tap: Option<OwnedFd>,
    },
    /// Asks the guest to release a device; `done` is answered once it has
    /// been ejected and taken off the bus.
    RemoveDevice {
        id: String,
        done: SyncSender<Result<(), ControlError>>,
    },
    /// Grows a disk and tells the guest.
    ResizeDisk {
        id: String,
        size: u64,
    },
}

/// What the control loop answers.
pub(crate) enum Reply {
    Done,
    Device(DeviceInfo),
}

pub(crate) struct Request {
    pub command: Command,
    pub reply: SyncSender<Result<Reply, ControlError>>,
}

/// A disk of the guest, with its image opened once; it stays across
/// reboots until it is removed.
pub(crate) struct AttachedDisk {
    pub name: String,
    pub config: DiskConfig,
    pub image: SharedDisk,
}

/// A NIC of the guest, with its TAP opened once.
pub(crate) struct AttachedNet {
    pub name: String,
    pub config: NetConfig,
    pub tap: netstack::Tap,
}

/// The guest's current devices: the boot ones and those hot-added since,
/// less those removed. Each boot of this process builds these.
#[derive(Default)]
pub(crate) struct Attached {
    pub disks: Vec<AttachedDisk>,
    pub nets: Vec<AttachedNet>,
}

impl Attached {
    /// Whether a device is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.disks.iter().any(|d| d.name == name) || self.nets.iter().any(|n| n.name == name)
    }
}

/// What the guest's vCPUs did, counted by exit reason.
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Returns to user space on a signal (kicks).
    pub interrupted: AtomicU64,
    /// Shutdown, system events, failures.
    pub system: AtomicU64,
    /// Anything else.
    pub other: AtomicU64,
}

impl VcpuExitCounters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The state shared between the control loop, the vCPUs and the controllers.
pub(crate) struct ControlShared {
    pub requests: Mutex<VecDeque<Request>>,
    pub evt: EventFd,
    pub status: Mutex<Status>,
    pub exits: VcpuExitCounters,
    pub config: VmConfig,
    /// The console socket, when the serial console is one; it outlives restarts.
    pub console: Option<ConsoleHub>,
    /// The console log file, when the serial console is one; opened once.
    pub console_log: Option<SharedLog>,
    /// /dev/kvm, opened once so that restarts work after privileges are dropped.
    pub kvm: kvm_ioctls::Kvm,
    /// The kernel and initramfs, opened once for the same reason.
    pub boot_files: crate::boot::BootFiles,
    /// The disks (images with their backing chains) and the NICs' TAPs,
    /// opened once (before privileges are dropped, or handed over with a
    /// hot-add); each boot's devices share them.
    pub attached: Mutex<Attached>,
    /// The current devices, for `GET /vm`.
    pub devices: Mutex<Vec<DeviceInfo>>,
    /// The current boot's NICs, for metrics.
    pub nets: Mutex<Vec<(String, Arc<NetCounters>)>>,
    /// The current boot's disks, for metrics.
    pub disks: Mutex<Vec<(String, Arc<BlockCounters>)>>,
}

/// Lifecycle bookkeeping.
pub(crate) struct Status {
    pub state: VmState,
    pub booted_at: Instant,
    pub boots: u64,
}

impl ControlShared {
    /// Opens everything the guest needs from the host (files, sockets,
    /// TAPs, /dev/kvm), so that nothing has to be opened by path later, when
    /// the VMM may be jailed.
    pub fn new(config: &VmConfig) -> Result<Arc<Self>, VmError> {
        crate::memory::check_fits_host(config.memory_bytes)?;
        let boot_files = crate::boot::BootFiles::open(&config.kernel, config.initrd.as_deref())?;
        let mut attached = Attached::default();
        for (index, disk) in config.disks.iter().enumerate() {
            attached.disks.push(AttachedDisk {
                name: disk.id.clone().unwrap_or_else(|| format!("disk{index}")),
                config: disk.clone(),
                image: SharedDisk::open(disk)?,
            });
        }
        let console = match &config.serial {
            SerialConfig::Socket(path) => Some(ConsoleHub::listen(path)?),
            _ => None,
        };
        let console_log = match &config.serial {
            SerialConfig::File(path) => Some(
                SharedLog::open(path, DEFAULT_LOG_CAP)
                    .map_err(|e| VmError::SerialFile(path.clone(), e))?,
            ),
            _ => None,
        };
        for (index, net) in config.nets.iter().enumerate() {
            attached.nets.push(AttachedNet {
                name: format!("net{index}"),
                config: net.clone(),
                tap: open_tap(net)?,
            });
        }
        let kvm = kvm_ioctls::Kvm::new()
            .map_err(|e| VmError::OpenKvm(std::io::Error::from_raw_os_error(e.errno())))?;
        Ok(Arc::new(Self {
            kvm,
            boot_files,
            attached: Mutex::new(attached),
            devices: Mutex::new(Vec::new()),
            console,
            console_log,
            disks: Mutex::new(Vec::new()),
            nets: Mutex::new(Vec::new()),
            requests: Mutex::new(VecDeque::new()),
            evt: EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?,
            status: Mutex::new(Status {
                state: VmState::Starting,
                booted_at: Instant::now(),
                boots: 0,
            }),
            exits: VcpuExitCounters::default(),
            config: config.clone(),
        }))
    }

    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_state(&self, state: VmState) {
        self.status().state = state;
    }

    /// Records the current boot's disks for metrics.
    pub fn set_disks(&self, disks: &[DiskStats]) {
        *self.disks.lock().unwrap_or_else(|e| e.into_inner()) = disks
            .iter()
            .map(|d| (d.name.clone(), d.counters.clone()))
            .collect();
    }

    /// Records the current boot's NICs for metrics.
    pub fn set_nets(&self, nets: Vec<(String, Arc<NetCounters>)>) {
        *self.nets.lock().unwrap_or_else(|e| e.into_inner()) = nets;
    }

    /// Writes back what the disk images cache (qcow2 metadata) and syncs
    /// them: done at the end of every boot, as the images outlive it.
    pub fn flush_images(&self) {
        for disk in &self.attached().disks {
            if let Err(e) = disk.image.clone().flush() {
                tracing::error!(disk = %disk.name, error = %e, "cannot flush a disk");
            }
        }
    }

    /// The guest's current disks and NICs.
    pub fn attached(&self) -> std::sync::MutexGuard<'_, Attached> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the current devices for `GET /vm`.
    pub fn set_devices(&self, devices: Vec<DeviceInfo>) {
        *self.devices.lock().unwrap_or_else(|e| e.into_inner()) = devices;
    }

    /// Takes the next pending request.
    pub fn next_request(&self) -> Option<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// Opens (or adopts) the TAP of `net` and brings its link up when allowed.
pub(crate) fn open_tap(net: &NetConfig) -> Result<netstack::Tap, VmError> {
    let tap = match (&net.tap, net.fd) {
        (Some(name), _) => netstack::Tap::open(name),
        (None, Some(fd)) => {
            // SAFETY: the user handed this descriptor to the VMM (`--net fd=N`)
            // for it to own; nothing else in the process uses that number.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            netstack::Tap::from_fd(owned)
        }
        (None, None) => return Err(VmError::Net("a NIC needs tap= or fd=".into())),
    }
    .map_err(|e| VmError::Net(e.to_string()))?;
    // An orchestrator may have brought a handed-over TAP up already, and an
    // unprivileged VMM cannot: only a failure on a TAP we created matters.
    if let Err(e) = tap.set_up(true) {
        if net.tap.is_some() {
            return Err(VmError::Net(format!("cannot bring {} up: {e}", tap.name())));
        }
        tracing::debug!(error = %e, "cannot bring the handed-over TAP up");
    }
    Ok(tap)
}

/// A snapshot of the guest for `GET /vm`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmInfo {
    /// Lifecycle state.
    pub state: VmState,
    /// Milliseconds since the guest last booted.
    pub uptime_ms: u64,
    /// How many times the guest has booted in this process.
    pub boot_count: u64,
    /// What the guest runs with: its disks and NICs are the current ones
    /// (hot-added included, removed ones gone).
    pub config: VmConfig,
    /// Every PCI device of the guest, with its slot.
    pub devices: Vec<DeviceInfo>,
}

/// How long [`VmController::remove_device`] waits by default.
pub const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// `10 s`, `1.5 s` or `250 ms`.
fn human_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// How long a controller waits for the control loop to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Controls a guest from any thread; cheap to clone.
#[derive(Clone)]
pub struct VmController {
    pub(crate) shared: Arc<ControlShared>,
}

impl VmController {
    fn send(&self, command: Command) -> Result<(), ControlError> {
        self.ask(command).map(|_| ())
    }

    fn ask(&self, command: Command) -> Result<Reply, ControlError> {
        if self.shared.status().state == VmState::Stopped {
            return Err(ControlError::Gone);
        }
        let (reply, answer) = sync_channel(1);
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Request { command, reply });
        self.shared
            .evt
            .write(1)
            .map_err(|e| ControlError::Failed(format!("cannot reach the control loop: {e}")))?;
        answer
            .recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| ControlError::Gone)?
    }

    /// Stops every vCPU; the guest keeps its memory and device state.
    pub fn pause(&self) -> Result<(), ControlError> {
        self.send(Command::Pause)
    }

    /// Lets a paused guest run again.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.send(Command::Resume)
    }

    /// Presses the ACPI power button. With a timeout, the guest is stopped
    /// hard if it has not powered off by then.
    pub fn shutdown(&self, timeout: Option<Duration>) -> Result<(), ControlError> {
        self.send(Command::Shutdown { timeout })
    }

    /// Restarts the guest from scratch (a cold reset of the VM).
    pub fn reboot(&self) -> Result<(), ControlError> {
        self.send(Command::Reboot)
    }

    /// Stops the guest now; the VM ends with [`crate::ExitReason::Stopped`].
    pub fn stop(&self) -> Result<(), ControlError> {
        self.send(Command::Stop)
    }

    /// Hot-adds a virtio-blk disk; `disk.id` is required (the serial and
    /// the device id). With `files` (the image, then a qcow2 image's backing
    /// chain top-down), nothing is opened by path.
    pub fn add_disk(
        &self,
        disk: DiskConfig,
        files: Option<Vec<File>>,
    ) -> Result<DeviceInfo, ControlError> {
        match self.ask(Command::AddDisk { disk, files })? {
            Reply::Device(info) => Ok(info),
            Reply::Done => Err(ControlError::Failed("no device in the answer".into())),
        }
    }

    /// Hot-adds a virtio-net NIC on `tap` (an open TAP) or, without it, on
    /// the TAP `net.tap` names; `id` names the device (`netN` if absent).
    pub fn add_net(
        &self,
        net: NetConfig,
        id: Option<String>,
        tap: Option<OwnedFd>,
    ) -> Result<DeviceInfo, ControlError> {
        match self.ask(Command::AddNet { net, id, tap })? {
            Reply::Device(info) => Ok(info),
            Reply::Done => Err(ControlError::Failed("no device in the answer".into())),
        }
    }

    /// Asks the guest to release device `id` and waits up to `timeout` for
    /// it to do so; then the device is off the bus and its files are
    /// flushed and closed. On [`ControlError::Timeout`] the device stays,
    /// and a later eject by the guest still completes the removal.
    pub fn remove_device(&self, id: &str, timeout: Duration) -> Result<(), ControlError> {
        let (done, finished) = sync_channel(1);
        self.send(Command::RemoveDevice {
            id: id.to_string(),
            done,
        })?;
        match finished.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ControlError::Timeout(format!(
                "the guest did not release device {id} within {}",
                human_duration(timeout)
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Gone),
        }
    }

    /// Grows disk `id` to `size` bytes and tells the guest (a virtio
    /// configuration change).
    pub fn resize_disk(&self, id: &str, size: u64) -> Result<(), ControlError> {
        self.send(Command::ResizeDisk {
            id: id.to_string(),
            size,
        })
    }

    /// The guest's current PCI devices.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.shared
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The guest's state, uptime and configuration.
    pub fn info(&self) -> VmInfo {
        let mut config = self.shared.config.clone();
        {
            let attached = self.shared.attached();
            config.disks = attached.disks.iter().map(|d| d.config.clone()).collect();
            config.nets = attached.nets.iter().map(|n| n.config.clone()).collect();
        }
        let status = self.shared.status();
        VmInfo {
            state: status.state,
            uptime_ms: status.booted_at.elapsed().as_millis() as u64,
            boot_count: status.boots,
            config,
            devices: self.devices(),
        }
    }

    /// Counters in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let e = &self.shared.exits;
        let mut out = String::from(
            "# HELP nubo_vcpu_exits_total vCPU exits to the VMM by reason.\n\
             # TYPE nubo_vcpu_exits_total counter\n",
        );
        for (reason, counter) in [
            ("io_in", &e.io_in),
            ("io_out", &e.io_out),
            ("mmio_read", &e.mmio_read),
            ("mmio_write", &e.mmio_write),
            ("interrupted", &e.interrupted),
            ("system", &e.system),
            ("other", &e.other),
        ] {
            out.push_str(&format!(
                "nubo_vcpu_exits_total{{reason=\"{reason}\"}} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        let disks = self
            .shared
            .disks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (metric, help) in [
            ("read_bytes", "Bytes the guest read from the disk."),
            ("write_bytes", "Bytes the guest wrote to the disk."),
            ("read_ops", "Read requests completed."),
            ("write_ops", "Write requests completed."),
            ("flush_ops", "Flush requests completed."),
        ] {
            out.push_str(&format!(
                "# HELP nubo_disk_{metric}_total {help}\n# TYPE nubo_disk_{metric}_total counter\n"
            ));
            for (name, c) in &disks {
                let value = match metric {
                    "read_bytes" => &c.read_bytes,
                    "write_bytes" => &c.write_bytes,
                    "read_ops" => &c.read_ops,
                    "write_ops" => &c.write_ops,
                    _ => &c.flushes,
                };
                out.push_str(&format!(
                    "nubo_disk_{metric}_total{{disk=\"{name}\"}} {}\n",
                    value.load(Ordering::Relaxed)
                ));
            }
        }
        let nets = self
            .shared
            .nets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (metric, help) in [
            ("rx_bytes", "Bytes delivered to the guest."),
            ("rx_packets", "Frames delivered to the guest."),
            ("tx_bytes", "Bytes the guest sent."),
            ("tx_packets", "Frames the guest sent."),
            ("rx_dropped", "Frames for the guest that were dropped."),
            ("tx_dropped", "Frames from the guest that were dropped."),
        ] {
            out.push_str(&format!(
                "# HELP nubo_net_{metric}_total {help}\n# TYPE nubo_net_{metric}_total counter\n"
            ));
            for (name, c) in &nets {
                let value = match metric {
                    "rx_bytes" => &c.rx_bytes,
                    "rx_packets" => &c.rx_packets,
                    "tx_bytes" => &c.tx_bytes,
                    "tx_packets" => &c.tx_packets,
                    "rx_dropped" => &c.rx_dropped,
                    _ => &c.tx_dropped,
                };
                out.push_str(&format!(
                    "nubo_net_{metric}_total{{nic=\"{name}\"}} {}\n",
                    value.load(Ordering::Relaxed)
                ));
            }
        }
        let info = self.info();
        out.push_str(&format!(
            "# HELP nubo_vm_uptime_seconds Seconds since the guest booted.\n\
             # TYPE nubo_vm_uptime_seconds gauge\n\
             nubo_vm_uptime_seconds {:.3}\n\
             # HELP nubo_vm_boots_total Guest boots in this process.\n\
             # TYPE nubo_vm_boots_total counter\n\
             nubo_vm_boots_total {}\n",
            info.uptime_ms as f64 / 1000.0,
            info.boot_count
        ));
        out
    }
}
