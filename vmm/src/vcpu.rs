//! One guest vCPU: its boot-time configuration and the thread that runs it,
//! dispatching port I/O exits to the bus and reporting why it stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};

use devices::{MmioBus, PioBus};
use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::control::{ControlShared, VcpuExitCounters};
use crate::cpu::cpuid::{normalize, CpuidContext};
use crate::cpu::regs::{setup_fpu, setup_lapic, setup_msrs, RegsError};

/// Why the guest stopped running, as seen by a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest asked to power off.
    PowerOff,
    /// The guest asked to reset (reboot), or triple-faulted.
    Reset,
    /// KVM could not run the vCPU, or it exited in a way we cannot handle.
    Failed(String),
}

/// What the vCPU threads share with the VM: the first stop reason and the
/// event that tells the VM's control loop about it, and the pause gate.
pub struct VcpuShared {
    /// Set by the VM when all vCPUs must return.
    pub stopping: AtomicBool,
    /// Set by the VM while the guest is paused.
    pub paused: AtomicBool,
    /// How many vCPUs are parked at the pause gate.
    pub parked: Mutex<usize>,
    /// Wakes parked vCPUs (on resume or stop) and the VM (when one parks).
    pub park_cv: Condvar,
    /// Counters and state shared with controllers.
    pub(crate) control: Arc<ControlShared>,
    /// The first reason a vCPU gave for stopping.
    pub stop_reason: Mutex<Option<VcpuStop>>,
    /// Written when `stop_reason` is set.
    pub stop_evt: EventFd,
}

impl VcpuShared {
    /// Creates the shared state for a VM's vCPUs.
    pub(crate) fn new(control: Arc<ControlShared>, stop_evt: EventFd) -> Self {
        Self {
            stopping: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            parked: Mutex::new(0),
            park_cv: Condvar::new(),
            control,
            stop_reason: Mutex::new(None),
            stop_evt,
        }
    }

    fn lock_parked(&self) -> std::sync::MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits at the pause gate until resumed or stopped.
    fn park(&self, vcpu: &VcpuFd) {
        let mut parked = self.lock_parked();
        *parked += 1;
        self.park_cv.notify_all();
        while self.paused.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire) {
            parked = self.park_cv.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
        drop(parked);
        // Tell the guest it was paused, so its watchdogs do not fire.
        if let Err(e) = vcpu.kvmclock_ctrl() {
            tracing::debug!(error = %e, "KVM_KVMCLOCK_CTRL failed");
        }
    }

    /// Waits until `count` vCPUs are parked, for at most `timeout`.
    pub fn wait_parked(&self, count: usize, timeout: std::time::Duration) -> bool {
        let parked = self.lock_parked();
        let (parked, _) = self
            .park_cv
            .wait_timeout_while(parked, timeout, |n| *n < count)
            .unwrap_or_else(|e| e.into_inner());
        *parked >= count
    }

    /// Releases parked vCPUs.
    pub fn unpark(&self) {
        self.paused.store(false, Ordering::Release);
        let _guard = self.lock_parked();
        self.park_cv.notify_all();
    }

    /// Records `reason` (the first one wins) and wakes the control loop.
    pub fn report(&self, reason: VcpuStop) {
        let mut slot = self.stop_reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        if let Err(e) = self.stop_evt.write(1) {
            tracing::error!(error = %e, "cannot signal a vCPU stop");
        }
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`kick_signal`] once per process, so that
/// the signal interrupts `KVM_RUN` with EINTR instead of killing us.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Configures the parts of a vCPU that do not depend on how the kernel boots.
pub fn configure(
    vcpu: &VcpuFd,
    supported_cpuid: &CpuId,
    ctx: &CpuidContext,
) -> Result<(), RegsError> {
    let mut cpuid = supported_cpuid.clone();
    normalize(cpuid.as_mut_slice(), ctx);
    vcpu.set_cpuid2(&cpuid).map_err(|source| RegsError::Kvm {
        what: "CPUID",
        source,
    })?;
    setup_msrs(vcpu)?;
    setup_fpu(vcpu)?;
    setup_lapic(vcpu)
}

/// Runs `vcpu` until the guest stops it or the VM asks it to return.
pub fn run(
    id: u8,
    mut vcpu: VcpuFd,
    bus: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    shared: Arc<VcpuShared>,
) {
    let span = tracing::info_span!("vcpu", id);
    let _enter = span.enter();
    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
        shared.report(VcpuStop::Failed(e.to_string()));
        return;
    }
    let exits = &shared.control.exits;
    while !shared.stopping.load(Ordering::Acquire) {
        if shared.paused.load(Ordering::Acquire) {
            shared.park(&vcpu);
            continue;
        }
        let stop = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                VcpuExitCounters::bump(&exits.io_in);
                if !bus.read(port, data) {
                    tracing::trace!(port, len = data.len(), "read of an unowned port");
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                VcpuExitCounters::bump(&exits.io_out);
                if !bus.write(port, data) {
                    tracing::trace!(port, ?data, "write to an unowned port");
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                VcpuExitCounters::bump(&exits.mmio_read);
                if !mmio.read(addr, data) {
                    tracing::trace!(addr, len = data.len(), "read of unmapped MMIO");
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                VcpuExitCounters::bump(&exits.mmio_write);
                if !mmio.write(addr, data) {
                    tracing::trace!(addr, ?data, "write to unmapped MMIO");
                }
                None
            }
            Ok(VcpuExit::Hlt) => {
                tracing::info!("vCPU halted");
                return;
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::info!("guest triple-faulted or shut down the CPU: treating as a reset");
                Some(VcpuStop::Reset)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(VcpuStop::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Some(VcpuStop::Reset),
                other => Some(VcpuStop::Failed(format!("unknown system event {other}"))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VcpuStop::Failed(format!(
                "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => Some(VcpuStop::Failed(
                "KVM internal error (the guest ran something KVM cannot emulate)".into(),
            )),
            Ok(other) => {
                VcpuExitCounters::bump(&exits.other);
                tracing::debug!(exit = ?other, "unhandled vCPU exit");
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                VcpuExitCounters::bump(&exits.interrupted);
                None
            }
            Err(e) => Some(VcpuStop::Failed(format!("KVM_RUN failed: {e}"))),
        };
        if let Some(reason) = stop {
            VcpuExitCounters::bump(&exits.system);
            tracing::info!(?reason, "vCPU stopping");
            shared.report(reason);
            return;
        }
    }
}
