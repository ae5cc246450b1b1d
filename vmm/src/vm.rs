//! A running guest: builds the KVM VM from a [`VmConfig`] (memory, irqchip,
//! devices, ACPI, kernel, vCPUs), runs one thread per vCPU, and gives back a
//! [`VmHandle`] to wait for the guest's end or stop it from another thread.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::acpi_pm::{self, AcpiPmDevice};
use devices::i8042::I8042Device;
use devices::serial::SerialDevice;
use devices::trigger::EventFdTrigger;
use devices::PioBus;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::acpi::{create_acpi_tables, AcpiConfig};
use crate::boot::{self, BootSource};
use crate::config::{SerialConfig, VmConfig};
use crate::cpu::cpuid::CpuidContext;
use crate::cpu::regs::setup_boot_vcpu;
use crate::error::VmError;
use crate::layout::{
    ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT, COM1_IRQ, COM1_PORT,
    I8042_DATA_PORT, I8042_IRQ, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS,
};
use crate::memory::create_guest_memory;
use crate::vcpu::{self, install_kick_handler, kick_signal, VcpuShared, VcpuStop};

/// Why a guest's VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered itself off.
    PowerOff,
    /// The guest rebooted (reset register, i8042 reset or triple fault).
    Reboot,
    /// The VM was stopped through [`VmStopper::stop`].
    Stopped,
}

/// Stops a running VM from any thread.
#[derive(Debug)]
pub struct VmStopper {
    evt: EventFd,
}

impl VmStopper {
    /// Asks the VM to stop now; [`VmHandle::wait`] then returns [`ExitReason::Stopped`].
    pub fn stop(&self) -> Result<(), VmError> {
        self.evt.write(1).map_err(VmError::Event)
    }
}

/// A guest whose vCPUs are running.
pub struct VmHandle {
    vcpu_threads: Vec<JoinHandle<()>>,
    shared: Arc<VcpuShared>,
    power_off_evt: EventFd,
    reset_evt: EventFd,
    stop_evt: EventFd,
    serial: Arc<Mutex<SerialDevice>>,
    stdin_input: bool,
    started: Instant,
    // Kept alive for as long as the vCPUs run.
    _vm: VmFd,
    _memory: GuestMemoryMmap,
}

/// Things the control loop can wake up for.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Wake {
    PowerOff = 1,
    Reset,
    Stop,
    VcpuStopped,
    Stdin,
}

impl VmHandle {
    /// Builds the VM described by `config`, loads the kernel and starts the vCPUs.
    pub fn start(config: &VmConfig) -> Result<Self, VmError> {
        let started = Instant::now();
        let kvm = Kvm::new()
            .map_err(|e| VmError::OpenKvm(std::io::Error::from_raw_os_error(e.errno())))?;
        for (cap, name) in [
            (Cap::Irqchip, "in-kernel irqchip"),
            (Cap::UserMemory, "user memory regions"),
            (Cap::Irqfd, "irqfd"),
            (Cap::Pit2, "PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let vm = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("create the VM", e))?;
        let memory = create_guest_memory(config.memory_bytes)?;
        register_memory(&vm, &memory)?;
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Kvm("set the TSS address", e))?;
        if let Err(e) = vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS) {
            tracing::debug!(error = %e, "KVM_SET_IDENTITY_MAP_ADDR not supported");
        }
        vm.create_irq_chip()
            .map_err(|e| VmError::Kvm("create the in-kernel irqchip", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmError::Kvm("create the PIT", e))?;

        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "VM, memory and irqchip ready"
        );
        let events = PlatformEvents::new()?;
        let (bus, serial) = build_devices(&vm, config, &events)?;

        let rsdp = create_acpi_tables(
            &memory,
            &AcpiConfig {
                num_cpus: config.vcpus,
            },
        )?;
        let loaded = boot::load(
            &memory,
            &BootSource {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                memory_bytes: config.memory_bytes,
                rsdp,
            },
        )?;

        tracing::debug!(us = started.elapsed().as_micros() as u64, "kernel loaded");
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("get the supported CPUID", e))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let mut vcpus: Vec<VcpuFd> = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::Kvm("create a vCPU", e))?;
            let ctx = CpuidContext {
                vcpu_id: id,
                vcpu_count: config.vcpus,
                tsc_deadline,
            };
            vcpu::configure(&fd, &supported, &ctx)
                .map_err(|source| VmError::Vcpu { id, source })?;
            if id == 0 {
                setup_boot_vcpu(&fd, &memory, loaded.entry)
                    .map_err(|source| VmError::Vcpu { id, source })?;
            }
            vcpus.push(fd);
        }

        install_kick_handler().map_err(VmError::Signal)?;
        let shared = Arc::new(VcpuShared {
            stopping: false.into(),
            stop_reason: Mutex::new(None),
            stop_evt: EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?,
        });
        let bus = Arc::new(bus);
        let mut vcpu_threads = Vec::with_capacity(vcpus.len());
        for (id, fd) in vcpus.into_iter().enumerate() {
            let (bus, shared) = (bus.clone(), shared.clone());
            let id = id as u8;
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(id, fd, bus, shared))
                .map_err(VmError::Thread)?;
            vcpu_threads.push(thread);
        }
        tracing::info!(
            vcpus = config.vcpus,
            memory_mib = config.memory_bytes >> 20,
            setup_us = started.elapsed().as_micros() as u64,
            "guest started"
        );
        Ok(Self {
            vcpu_threads,
            shared,
            power_off_evt: events.power_off,
            reset_evt: events.reset,
            stop_evt: events.stop,
            serial,
            stdin_input: config.serial == SerialConfig::Stdio,
            started,
            _vm: vm,
            _memory: memory,
        })
    }

    /// A handle that stops this VM from another thread.
    pub fn stopper(&self) -> Result<VmStopper, VmError> {
        Ok(VmStopper {
            evt: self.stop_evt.try_clone().map_err(VmError::Event)?,
        })
    }

    /// Runs the VM's control loop (serial input from stdin, power events)
    /// until the guest ends or it is stopped, then stops every vCPU.
    pub fn wait(mut self) -> Result<ExitReason, VmError> {
        let result = self.control_loop();
        self.shared.stopping.store(true, Ordering::Release);
        let threads = std::mem::take(&mut self.vcpu_threads);
        join_vcpus(threads);
        tracing::info!(
            uptime_ms = self.started.elapsed().as_millis() as u64,
            ?result,
            "guest ended"
        );
        result
    }

    fn control_loop(&mut self) -> Result<ExitReason, VmError> {
        let epoll = Epoll::new().map_err(VmError::Event)?;
        let watch = |fd: RawFd, wake: Wake| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, wake as u64),
            )
        };
        watch(self.power_off_evt.as_raw_fd(), Wake::PowerOff).map_err(VmError::Event)?;
        watch(self.reset_evt.as_raw_fd(), Wake::Reset).map_err(VmError::Event)?;
        watch(self.stop_evt.as_raw_fd(), Wake::Stop).map_err(VmError::Event)?;
        watch(self.shared.stop_evt.as_raw_fd(), Wake::VcpuStopped).map_err(VmError::Event)?;
        // stdin may be a file or /dev/null, which epoll refuses: then there is no input.
        let mut stdin_open = self.stdin_input && watch(libc::STDIN_FILENO, Wake::Stdin).is_ok();
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmError::Event(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    x if x == Wake::PowerOff as u64 => return Ok(ExitReason::PowerOff),
                    x if x == Wake::Reset as u64 => return Ok(ExitReason::Reboot),
                    x if x == Wake::Stop as u64 => return Ok(ExitReason::Stopped),
                    x if x == Wake::VcpuStopped as u64 => {
                        let reason = self
                            .shared
                            .stop_reason
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone();
                        return match reason {
                            Some(VcpuStop::PowerOff) => Ok(ExitReason::PowerOff),
                            Some(VcpuStop::Reset) => Ok(ExitReason::Reboot),
                            Some(VcpuStop::Failed(msg)) => Err(VmError::GuestFailed(msg)),
                            None => continue,
                        };
                    }
                    x if x == Wake::Stdin as u64 && stdin_open && !self.forward_stdin() => {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            libc::STDIN_FILENO,
                            EpollEvent::default(),
                        );
                        stdin_open = false;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Moves what the user typed into the UART; false once stdin is closed.
    fn forward_stdin(&self) -> bool {
        let mut buf = [0u8; 64];
        // SAFETY: reads into a stack buffer of the given length from fd 0,
        // which stays open for the life of the process.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        serial.enqueue_input(&buf[..n as usize]);
        true
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        join_vcpus(std::mem::take(&mut self.vcpu_threads));
    }
}

/// Kicks each vCPU thread out of `KVM_RUN` until it returns, then joins it.
fn join_vcpus(threads: Vec<JoinHandle<()>>) {
    for thread in threads {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && Instant::now() < deadline {
            if let Err(e) = thread.kill(kick_signal()) {
                tracing::debug!(error = %e, "cannot kick a vCPU thread");
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::error!("a vCPU thread did not stop within 5 s; leaving it behind");
        }
    }
}

/// Registers every region of guest RAM with KVM.
fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host_addr = memory
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Memory(e.to_string()))?;
        let mem_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by
        // `memory`, which the VmHandle keeps alive as long as the VM exists.
        unsafe { vm.set_user_memory_region(mem_region) }
            .map_err(|e| VmError::Kvm("register guest memory", e))?;
    }
    Ok(())
}

/// The events devices raise to end the guest, and the one that stops it from outside.
struct PlatformEvents {
    power_off: EventFd,
    reset: EventFd,
    stop: EventFd,
}

impl PlatformEvents {
    fn new() -> Result<Self, VmError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VmError::Event);
        Ok(Self {
            power_off: evt()?,
            reset: evt()?,
            stop: evt()?,
        })
    }
}

/// Puts COM1, the i8042 and the ACPI power registers on the port I/O bus,
/// with their interrupts wired to the in-kernel irqchip through irqfds.
fn build_devices(
    vm: &VmFd,
    config: &VmConfig,
    events: &PlatformEvents,
) -> Result<(PioBus, Arc<Mutex<SerialDevice>>), VmError> {
    let irq = |gsi: u32| -> Result<EventFdTrigger, VmError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?;
        vm.register_irqfd(&evt, gsi)
            .map_err(|e| VmError::Kvm("register an irqfd", e))?;
        Ok(EventFdTrigger::new(evt))
    };
    let clone = |e: &EventFd| {
        e.try_clone()
            .map(EventFdTrigger::new)
            .map_err(VmError::Event)
    };
    let out: Box<dyn Write + Send> = match &config.serial {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::Off => Box::new(std::io::sink()),
        SerialConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| VmError::SerialFile(path.clone(), e))?,
        ),
    };
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq(COM1_IRQ)?, out)));
    let i8042 = Arc::new(Mutex::new(I8042Device::new(
        clone(&events.reset)?,
        irq(I8042_IRQ)?,
    )));
    let pm = Arc::new(Mutex::new(AcpiPmDevice::new(
        clone(&events.power_off)?,
        clone(&events.reset)?,
        ACPI_S5_SLP_TYP,
        ACPI_RESET_VALUE,
    )));
    let mut bus = PioBus::new();
    bus.insert(serial.clone(), COM1_PORT, 8)?;
    bus.insert(i8042, I8042_DATA_PORT, 5)?;
    bus.insert(pm, ACPI_SLEEP_CONTROL_PORT, acpi_pm::PORT_COUNT)?;
    Ok((bus, serial))
}
