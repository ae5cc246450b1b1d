//! A running guest: builds the KVM VM from a [`VmConfig`] (memory, irqchip,
//! devices, ACPI, kernel, vCPUs), runs one thread per vCPU, and gives back a
//! [`VmHandle`] to wait for the guest's end or stop it from another thread.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::acpi_pm::{self, AcpiPmDevice};
use devices::i8042::I8042Device;
use devices::pci_hotplug::{PciHotplug, PCI_HOTPLUG_SIZE};
use devices::serial::SerialDevice;
use devices::trigger::EventFdTrigger;
use devices::{MmioBus, PioBus};
use kvm_bindings::{
    kvm_clock_data, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;

use crate::acpi::{create_acpi_tables, AcpiConfig};
use crate::boot::{self, BootSource};
use crate::config::{SerialConfig, VmConfig};
use crate::control::{Command, ControlError, ControlShared, Reply, VmController, VmState};
use crate::cpu::cpuid::CpuidContext;
use crate::cpu::regs::{setup_boot_vcpu, BootEntry};
use crate::device_manager::{DeviceManager, EventLoop};
use crate::error::VmError;
use crate::interrupts::GsiRouter;
use crate::layout::{
    ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT, COM1_IRQ, COM1_PORT, GED_IRQ,
    HOTPLUG_IRQ, I8042_DATA_PORT, I8042_IRQ, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS,
    PCI_HOTPLUG_START,
};
use crate::memory::create_guest_memory;
use crate::vcpu::{self, install_kick_handler, kick_signal, VcpuShared, VcpuStop};

mod hotplug;
use hotplug::device_list;

/// Why a guest's VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitReason {
    /// The guest powered itself off.
    PowerOff,
    /// The guest rebooted (reset register, i8042 reset or triple fault).
    Reboot,
    /// A controller asked for a restart ([`VmController::reboot`]).
    Restart,
    /// A controller stopped the VM ([`VmController::stop`], or a shutdown
    /// whose timeout ran out).
    Stopped,
}

/// A guest whose vCPUs are running.
pub struct VmHandle {
    vcpu_threads: Vec<JoinHandle<()>>,
    shared: Arc<VcpuShared>,
    control: Arc<ControlShared>,
    power_off_evt: EventFd,
    reset_evt: EventFd,
    power_button: EventFd,
    serial: Arc<Mutex<SerialDevice>>,
    stdin_input: bool,
    paused_clock: Option<kvm_clock_data>,
    shutdown_deadline: Option<Instant>,
    event_loop: EventLoop,
    devices: DeviceManager,
    hotplug: PciHotplug,
    hotplug_irq: EventFd,
    // Removals waiting for the guest to eject, by PCI slot.
    removals: BTreeMap<u8, Vec<SyncSender<Result<(), ControlError>>>>,
    vm: Arc<VmFd>,
    // Kept alive for as long as the vCPUs run.
    _memory: GuestMemoryMmap,
}

/// Things the control loop can wake up for (devices have their own I/O
/// threads).
#[derive(Clone, Copy)]
#[repr(u64)]
enum Wake {
    PowerOff = 1,
    Reset,
    Control,
    VcpuStopped,
    Stdin,
    Eject,
}

impl VmHandle {
    /// Builds the VM described by `config`, loads the kernel and starts the vCPUs.
    pub fn start(config: &VmConfig) -> Result<Self, VmError> {
        Self::start_with(config, ControlShared::new(config)?)
    }

    /// Like [`VmHandle::start`], reporting to an existing control plane (so
    /// that controllers outlive a restart).
    pub(crate) fn start_with(
        config: &VmConfig,
        control: Arc<ControlShared>,
    ) -> Result<Self, VmError> {
        let started = Instant::now();
        control.set_state(VmState::Starting);
        if let Some(hub) = &control.console {
            hub.start().map_err(VmError::Thread)?;
        }
        let kvm = &control.kvm;
        let vm = create_vm(kvm)?;
        let memory = create_memory(&vm, config)?;
        setup_irqchip(&vm)?;
        tracing::debug!(
            us = started.elapsed().as_micros() as u64,
            "VM, memory and irqchip ready"
        );
        let events = PlatformEvents::new()?;
        let (mut pio, serial) = add_legacy_devices(&vm, config, &events, &control)?;
        let power_button = irqfd(&vm, GED_IRQ)?;
        let mmio = Arc::new(MmioBus::new());
        let router = setup_msi_routing(&vm)?;
        let event_loop = EventLoop::new()?;
        let mut devices = DeviceManager::new(
            vm.clone(),
            memory.clone(),
            router,
            &mut pio,
            &mmio,
            config.vcpus,
        )?;
        let hotplug = PciHotplug::new(EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?);
        mmio.insert(
            Arc::new(Mutex::new(hotplug.clone())),
            PCI_HOTPLUG_START,
            PCI_HOTPLUG_SIZE,
        )
        .map_err(|e| VmError::Devices(e.to_string()))?;
        let hotplug_irq = irqfd(&vm, HOTPLUG_IRQ)?;
        {
            // The current devices: the boot ones, and those hot-added (and
            // not removed) in earlier boots of this process.
            let attached = control.attached();
            for disk in &attached.disks {
                devices.add_block(&disk.config, &disk.image, disk.name.clone())?;
            }
            for net in &attached.nets {
                devices.add_net(&net.config, &net.tap, net.name.clone())?;
            }
            control.set_devices(device_list(&devices, &attached));
        }
        control.set_disks(&devices.disk_stats());
        control.set_nets(devices.net_stats());
        tracing::debug!(us = started.elapsed().as_micros() as u64, "devices ready");
        let entry = load_kernel(&memory, config, &control)?;
        tracing::debug!(us = started.elapsed().as_micros() as u64, "kernel loaded");
        let vcpus = create_vcpus(kvm, &vm, &memory, config, entry)?;
        let (shared, vcpu_threads) = start_vcpus(vcpus, pio, mmio, &control)?;
        {
            let mut status = control.status();
            status.state = VmState::Running;
            status.booted_at = Instant::now();
            status.boots += 1;
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
            control,
            power_off_evt: events.power_off,
            reset_evt: events.reset,
            power_button,
            serial,
            stdin_input: config.serial == SerialConfig::Stdio,
            paused_clock: None,
            shutdown_deadline: None,
            event_loop,
            devices,
            hotplug,
            hotplug_irq,
            removals: BTreeMap::new(),
            vm,
            _memory: memory,
        })
    }

    /// A controller for this guest, usable from any thread.
    pub fn controller(&self) -> VmController {
        VmController {
            shared: self.control.clone(),
        }
    }

    /// Runs the VM's control loop (serial input from stdin, power events,
    /// controller requests) until the guest ends, then stops every vCPU.
    pub fn wait(mut self) -> Result<ExitReason, VmError> {
        let result = self.control_loop();
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.unpark();
        join_vcpus(std::mem::take(&mut self.vcpu_threads));
        // A device being removed does not come back in the next boot: the
        // guest is gone, so it needs no eject.
        let pending: Vec<u8> = self.removals.keys().copied().collect();
        for slot in pending {
            self.finish_removal(slot);
        }
        // The images outlive this boot: write back what they cache now, as
        // dropping them used to.
        self.control.flush_images();
        if !matches!(result, Ok(ExitReason::Restart | ExitReason::Reboot)) {
            self.control.set_state(VmState::Stopped);
        }
        tracing::info!(?result, "guest ended");
        result
    }

    fn control_loop(&mut self) -> Result<ExitReason, VmError> {
        let epoll = &self.event_loop;
        let watch = |fd: RawFd, wake: Wake| epoll.add(fd, EventSet::IN, wake as u64);
        watch(self.power_off_evt.as_raw_fd(), Wake::PowerOff).map_err(VmError::Event)?;
        watch(self.reset_evt.as_raw_fd(), Wake::Reset).map_err(VmError::Event)?;
        watch(self.control.evt.as_raw_fd(), Wake::Control).map_err(VmError::Event)?;
        watch(self.shared.stop_evt.as_raw_fd(), Wake::VcpuStopped).map_err(VmError::Event)?;
        watch(self.hotplug.eject_event().as_raw_fd(), Wake::Eject).map_err(VmError::Event)?;
        // stdin may be a file or /dev/null, which epoll refuses: then there is no input.
        let mut stdin_open = self.stdin_input && watch(libc::STDIN_FILENO, Wake::Stdin).is_ok();
        // Requests queued before the loop started (e.g. while booting) are served now.
        if let Some(reason) = self.serve_requests()? {
            return Ok(reason);
        }
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let timeout_ms = match self.shutdown_deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::warn!("the guest did not power off in time; stopping it");
                        return Ok(ExitReason::Stopped);
                    }
                    i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
                }
                None => -1,
            };
            let n = match self.event_loop.wait(timeout_ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmError::Event(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    x if x == Wake::PowerOff as u64 => return Ok(ExitReason::PowerOff),
                    x if x == Wake::Reset as u64 => return Ok(ExitReason::Reboot),
                    x if x == Wake::Control as u64 => {
                        let _ = self.control.evt.read();
                        if let Some(reason) = self.serve_requests()? {
                            return Ok(reason);
                        }
                    }
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
                    x if x == Wake::Eject as u64 => self.serve_ejects(),
                    x if x == Wake::Stdin as u64 && stdin_open && !self.forward_stdin() => {
                        let _ = self.event_loop.remove(libc::STDIN_FILENO);
                        stdin_open = false;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Carries out every queued controller request; returns an exit reason
    /// when one of them ends the VM.
    fn serve_requests(&mut self) -> Result<Option<ExitReason>, VmError> {
        while let Some(request) = self.control.next_request() {
            let state = self.control.status().state;
            let (result, exit) = self.apply(request.command, state);
            let _ = request.reply.send(result);
            if exit.is_some() {
                return Ok(exit);
            }
        }
        Ok(None)
    }

    fn apply(
        &mut self,
        command: Command,
        state: VmState,
    ) -> (Result<Reply, ControlError>, Option<ExitReason>) {
        let wrong = |action| (Err(ControlError::WrongState { action, state }), None);
        let done = |r: Result<(), ControlError>| (r.map(|()| Reply::Done), None);
        // Devices come and go while the guest runs (or is paused).
        let live = matches!(state, VmState::Running | VmState::Paused);
        match command {
            Command::Pause if state == VmState::Running => done(self.pause()),
            Command::Pause => wrong("pause"),
            Command::Resume if state == VmState::Paused => done(self.resume()),
            Command::Resume => wrong("resume"),
            Command::AddDisk { disk, files } if live => {
                (self.add_disk(disk, files).map(Reply::Device), None)
            }
            Command::AddDisk { .. } => wrong("add a disk to"),
            Command::AddNet { net, id, tap } if live => {
                (self.add_net(net, id, tap).map(Reply::Device), None)
            }
            Command::AddNet { .. } => wrong("add a NIC to"),
            Command::RemoveDevice { id, done: waiter } if live => {
                done(self.remove_device(id, waiter))
            }
            Command::RemoveDevice { .. } => wrong("remove a device from"),
            Command::ResizeDisk { id, size } if live => done(self.resize_disk(&id, size)),
            Command::ResizeDisk { .. } => wrong("resize a disk of"),
            Command::Shutdown { timeout } if state == VmState::Running => {
                match self.power_button.write(1) {
                    Ok(()) => {
                        tracing::info!(?timeout, "pressed the ACPI power button");
                        self.control.set_state(VmState::ShuttingDown);
                        self.shutdown_deadline = timeout.map(|t| Instant::now() + t);
                        (Ok(Reply::Done), None)
                    }
                    Err(e) => (
                        Err(ControlError::Failed(format!("power button: {e}"))),
                        None,
                    ),
                }
            }
            Command::Shutdown { .. } => wrong("shut down"),
            Command::Reboot => (Ok(Reply::Done), Some(ExitReason::Restart)),
            Command::Stop => (Ok(Reply::Done), Some(ExitReason::Stopped)),
        }
    }

    /// Parks every vCPU and freezes the guest's clock.
    fn pause(&mut self) -> Result<(), ControlError> {
        self.shared.paused.store(true, Ordering::Release);
        let count = self.vcpu_threads.len();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.shared.wait_parked(count, Duration::from_millis(1)) {
            if Instant::now() > deadline {
                self.shared.unpark();
                return Err(ControlError::Failed(
                    "the vCPUs did not stop within 2 s".into(),
                ));
            }
            kick_vcpus(&self.vcpu_threads);
        }
        self.paused_clock = match self.vm.get_clock() {
            Ok(clock) => Some(clock),
            Err(e) => {
                tracing::debug!(error = %e, "KVM_GET_CLOCK failed; guest time will jump");
                None
            }
        };
        self.control.set_state(VmState::Paused);
        tracing::info!("guest paused");
        Ok(())
    }

    /// Restores the guest's clock and lets the vCPUs run.
    fn resume(&mut self) -> Result<(), ControlError> {
        if let Some(mut clock) = self.paused_clock.take() {
            // Only the clock value is restored; the flags describe how KVM read it.
            clock.flags = 0;
            if let Err(e) = self.vm.set_clock(&clock) {
                tracing::debug!(error = %e, "KVM_SET_CLOCK failed; guest time will jump");
            }
        }
        self.shared.unpark();
        self.control.set_state(VmState::Running);
        tracing::info!("guest resumed");
        Ok(())
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
        self.shared.unpark();
        join_vcpus(std::mem::take(&mut self.vcpu_threads));
    }
}

/// Sends the kick signal to every vCPU thread still running.
fn kick_vcpus(threads: &[JoinHandle<()>]) {
    for thread in threads.iter().filter(|t| !t.is_finished()) {
        if let Err(e) = thread.kill(kick_signal()) {
            tracing::debug!(error = %e, "cannot kick a vCPU thread");
        }
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

/// Creates the KVM VM, once /dev/kvm is known to offer what Nubo needs.
fn create_vm(kvm: &Kvm) -> Result<Arc<VmFd>, VmError> {
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
    Ok(Arc::new(
        kvm.create_vm()
            .map_err(|e| VmError::Kvm("create the VM", e))?,
    ))
}

/// Maps the guest's RAM and registers it with KVM.
fn create_memory(vm: &VmFd, config: &VmConfig) -> Result<GuestMemoryMmap, VmError> {
    let memory = create_guest_memory(config.memory_bytes)?;
    register_memory(vm, &memory)?;
    Ok(memory)
}

/// The TSS and identity map pages, the in-kernel PIC, IOAPIC and LAPICs,
/// and the PIT.
fn setup_irqchip(vm: &VmFd) -> Result<(), VmError> {
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
        .map_err(|e| VmError::Kvm("create the PIT", e))
}

/// The GSI routing table that PCI devices' MSI-X vectors are added to.
fn setup_msi_routing(vm: &Arc<VmFd>) -> Result<Arc<GsiRouter>, VmError> {
    let router = Arc::new(GsiRouter::new(vm.clone()));
    router
        .install()
        .map_err(|e| VmError::Devices(format!("interrupt routing: {e}")))?;
    Ok(router)
}

/// Writes the ACPI tables, then the kernel, initramfs and boot parameters;
/// returns the kernel's entry point.
fn load_kernel(
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    control: &ControlShared,
) -> Result<BootEntry, VmError> {
    let rsdp = create_acpi_tables(
        memory,
        &AcpiConfig {
            num_cpus: config.vcpus,
        },
    )?;
    let loaded = boot::load(
        memory,
        &BootSource {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            files: &control.boot_files,
            cmdline: &config.cmdline,
            memory_bytes: config.memory_bytes,
            rsdp,
        },
    )?;
    Ok(loaded.entry)
}

/// Creates and configures the vCPUs (CPUID, and for the boot vCPU the
/// registers that enter the kernel at `entry`).
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    config: &VmConfig,
    entry: BootEntry,
) -> Result<Vec<VcpuFd>, VmError> {
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
        vcpu::configure(&fd, &supported, &ctx).map_err(|source| VmError::Vcpu { id, source })?;
        if id == 0 {
            setup_boot_vcpu(&fd, memory, entry).map_err(|source| VmError::Vcpu { id, source })?;
        }
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// Starts one thread per vCPU, each running the guest over the buses.
fn start_vcpus(
    vcpus: Vec<VcpuFd>,
    pio: PioBus,
    mmio: Arc<MmioBus>,
    control: &Arc<ControlShared>,
) -> Result<(Arc<VcpuShared>, Vec<JoinHandle<()>>), VmError> {
    install_kick_handler().map_err(VmError::Signal)?;
    let shared = Arc::new(VcpuShared::new(
        control.clone(),
        EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?,
    ));
    let bus = Arc::new(pio);
    let mut vcpu_threads = Vec::with_capacity(vcpus.len());
    for (id, fd) in vcpus.into_iter().enumerate() {
        let (bus, mmio, shared) = (bus.clone(), mmio.clone(), shared.clone());
        let id = id as u8;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu::run(id, fd, bus, mmio, shared))
            .map_err(VmError::Thread)?;
        vcpu_threads.push(thread);
    }
    Ok((shared, vcpu_threads))
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

/// The events devices raise to end the guest.
struct PlatformEvents {
    power_off: EventFd,
    reset: EventFd,
}

impl PlatformEvents {
    fn new() -> Result<Self, VmError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VmError::Event);
        Ok(Self {
            power_off: evt()?,
            reset: evt()?,
        })
    }
}

/// An `EventFd` that raises interrupt line `gsi` when written.
fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, VmError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| VmError::Kvm("register an irqfd", e))?;
    Ok(evt)
}

/// Puts COM1, the i8042 and the ACPI power registers on the port I/O bus,
/// with their interrupts wired to the in-kernel irqchip through irqfds.
fn add_legacy_devices(
    vm: &VmFd,
    config: &VmConfig,
    events: &PlatformEvents,
    control: &ControlShared,
) -> Result<(PioBus, Arc<Mutex<SerialDevice>>), VmError> {
    let console = control.console.as_ref();
    let irq = |gsi: u32| irqfd(vm, gsi).map(EventFdTrigger::new);
    let clone = |e: &EventFd| {
        e.try_clone()
            .map(EventFdTrigger::new)
            .map_err(VmError::Event)
    };
    let out: Box<dyn Write + Send> = match &config.serial {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::Off => Box::new(std::io::sink()),
        SerialConfig::File(_) => match &control.console_log {
            Some(log) => Box::new(log.clone()),
            None => Box::new(std::io::sink()),
        },
        SerialConfig::Socket(_) => match console {
            Some(hub) => Box::new(hub.writer()),
            None => Box::new(std::io::sink()),
        },
    };
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq(COM1_IRQ)?, out)));
    if let Some(hub) = console {
        hub.set_serial(serial.clone());
    }
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
