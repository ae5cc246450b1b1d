//! The PCI side of the platform: the host bridge and configuration access
//! (ports 0xCF8-0xCFF and ECAM), the BAR window, and the virtio-blk disks
//! placed on it with MSI-X through KVM GSI routing and queue notifications
//! through ioeventfds.

use std::sync::{Arc, Mutex};

use devices::pci::{AddressAllocator, BarReprogram, PciBus};
use devices::pci::{
    PciBarWindow, PciConfigIo, PciConfigMmio, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE,
};
use devices::virtio::block::{Block, BlockCounters, BlockOptions};
use devices::virtio::pci::{VirtioPciDevice, BAR_SIZE, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
use devices::virtio::VirtioDevice;
use devices::PioBus;
use devices::{MmioBus, MmioDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use std::os::fd::AsFd;

use devices::virtio::net::{Net, NetCounters};

use crate::config::VmConfig;
use crate::disk::SharedDisk;
use crate::error::VmError;
use crate::interrupts::{DeviceMsi, GsiRouter};
use crate::layout::{MMIO_32BIT_START, PCI_MMCONFIG_SIZE, PCI_MMCONFIG_START};

/// End (exclusive) of the 32-bit BAR window: the ECAM window follows it.
pub const MMIO_32BIT_END: u64 = PCI_MMCONFIG_START;

/// A virtio queue whose notifications the control loop must serve.
pub struct QueueWatch {
    /// The queue's notification event (also registered as an ioeventfd).
    pub event: EventFd,
    /// The device that owns it.
    pub device: Arc<Mutex<VirtioPciDevice>>,
    /// Queue index.
    pub queue: u16,
}

/// Per-disk I/O counters, for metrics.
pub struct DiskStats {
    /// The disk's --disk id, or its index.
    pub name: String,
    /// The device's counters.
    pub counters: Arc<BlockCounters>,
}

/// A TAP whose readability the control loop watches (edge-triggered): the
/// NIC's RX queue is served when frames arrive.
pub struct TapWatch {
    /// The TAP descriptor (owned by the device).
    pub fd: std::os::fd::RawFd,
    /// The NIC.
    pub device: Arc<Mutex<VirtioPciDevice>>,
}

/// What the PCI platform gives the VM.
pub struct PciPlatform {
    /// Queue notifications to watch.
    pub queues: Vec<QueueWatch>,
    /// TAPs to watch.
    pub taps: Vec<TapWatch>,
    /// NIC counters, by name.
    pub nets: Vec<(String, Arc<NetCounters>)>,
    /// Disk counters.
    pub disks: Vec<DiskStats>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers the ioeventfds of `device`'s queues at its current BAR.
fn register_notifies(vm: &VmFd, device: &VirtioPciDevice, add: bool) -> Result<(), VmError> {
    for notify in device.notify_addresses() {
        let Some(event) = device.queue_event(notify.queue) else {
            continue;
        };
        let addr = IoEventAddress::Mmio(notify.addr);
        let result = if add {
            vm.register_ioevent(event, &addr, NoDatamatch)
        } else {
            vm.unregister_ioevent(event, &addr, NoDatamatch)
        };
        result.map_err(|e| VmError::Kvm("register a queue ioeventfd", e))?;
    }
    Ok(())
}

/// A locally administered MAC for NIC `index` of this process.
fn local_mac(index: usize) -> [u8; 6] {
    let pid = std::process::id().to_be_bytes();
    [0x52, 0x54, pid[2], pid[3], (index >> 8) as u8, index as u8]
}

/// Puts one virtio device on the PCI bus: a BAR, MSI-X vectors with GSIs,
/// ioeventfds for its queues, and queue watches for the control loop.
fn place(
    vm: &Arc<VmFd>,
    memory: &GuestMemoryMmap,
    router: &Arc<GsiRouter>,
    pci: &Arc<Mutex<PciBus>>,
    allocator: &mut AddressAllocator,
    virtio: Box<dyn VirtioDevice>,
    queues: &mut Vec<QueueWatch>,
) -> Result<(u8, Arc<Mutex<VirtioPciDevice>>), VmError> {
    let vectors = virtio.queue_max_sizes().len() as u16 + 1;
    let msi = Arc::new(
        DeviceMsi::new(router.clone(), vectors).map_err(|e| VmError::Devices(e.to_string()))?,
    );
    let bar = allocator
        .allocate(BAR_SIZE, BAR_SIZE)
        .map_err(|e| VmError::Devices(e.to_string()))?;
    let device = VirtioPciDevice::new(virtio, memory.clone(), msi, bar)
        .map_err(|e| VmError::Devices(e.to_string()))?;
    register_notifies(vm, &device, true)?;
    let mut events = Vec::new();
    for notify in device.notify_addresses() {
        if let Some(event) = device.queue_event(notify.queue) {
            events.push((event.try_clone().map_err(VmError::Event)?, notify.queue));
        }
    }
    let device = Arc::new(Mutex::new(device));
    for (event, queue) in events {
        queues.push(QueueWatch {
            event,
            device: device.clone(),
            queue,
        });
    }
    let shared: devices::pci::SharedPciDevice = device.clone();
    let slot = lock(pci)
        .add_device(shared)
        .map_err(|e| VmError::Devices(e.to_string()))?;
    tracing::debug!(slot, bar = format_args!("{bar:#x}"), "PCI device placed");
    Ok((slot, device))
}

/// The host side of the devices, opened once before the VMM was jailed.
pub struct HostBackends<'a> {
    /// The disk images, in the order of the configuration's disks.
    pub images: &'a [SharedDisk],
    /// The TAPs, in the order of the configuration's NICs.
    pub taps: &'a [netstack::Tap],
}

/// Builds the PCI bus with one virtio-blk device per disk, and puts the
/// configuration mechanisms and the BAR window on the buses.
pub fn build(
    vm: &Arc<VmFd>,
    memory: &GuestMemoryMmap,
    router: &Arc<GsiRouter>,
    pio: &mut PioBus,
    mmio: &MmioBus,
    config: &VmConfig,
    host: HostBackends<'_>,
) -> Result<PciPlatform, VmError> {
    let HostBackends { images, taps } = host;
    let (disks, nets) = (&config.disks, &config.nets);
    let pci = Arc::new(Mutex::new(PciBus::new()));
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        PCI_CONFIG_IO_PORT,
        PCI_CONFIG_IO_SIZE,
    )?;
    let ecam: Arc<Mutex<dyn MmioDevice>> = Arc::new(Mutex::new(PciConfigMmio::new(pci.clone())));
    mmio.insert(ecam, PCI_MMCONFIG_START, PCI_MMCONFIG_SIZE)
        .map_err(|e| VmError::Devices(e.to_string()))?;
    let window: Arc<Mutex<dyn MmioDevice>> = Arc::new(Mutex::new(PciBarWindow::new(pci.clone())));
    mmio.insert(window, MMIO_32BIT_START, MMIO_32BIT_END - MMIO_32BIT_START)
        .map_err(|e| VmError::Devices(e.to_string()))?;

    let mut allocator = AddressAllocator::new(MMIO_32BIT_START, MMIO_32BIT_END)
        .map_err(|e| VmError::Devices(e.to_string()))?;
    let mut platform = PciPlatform {
        queues: Vec::new(),
        taps: Vec::new(),
        nets: Vec::new(),
        disks: Vec::new(),
    };
    let mut by_slot: Vec<(u8, Arc<Mutex<VirtioPciDevice>>)> = Vec::new();
    for (index, (disk, image)) in disks.iter().zip(images).enumerate() {
        let block = Block::new(
            Box::new(image.clone()),
            BlockOptions {
                read_only: disk.read_only,
                id: disk.id.clone(),
            },
        );
        platform.disks.push(DiskStats {
            name: disk.id.clone().unwrap_or_else(|| format!("disk{index}")),
            counters: block.counters(),
        });
        let (slot, device) = place(
            vm,
            memory,
            router,
            &pci,
            &mut allocator,
            Box::new(block),
            &mut platform.queues,
        )?;
        tracing::info!(slot, path = %disk.path.display(), "virtio-blk disk");
        by_slot.push((slot, device));
    }
    for (index, (net, tap)) in nets.iter().zip(taps).enumerate() {
        let fd = tap
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| VmError::Net(format!("cannot duplicate the TAP: {e}")))?;
        let tap = netstack::Tap::from_fd(fd).map_err(|e| VmError::Net(e.to_string()))?;
        let name = tap.name().to_string();
        let mac = net.mac.unwrap_or_else(|| local_mac(index));
        let nic = Net::new(Box::new(tap), mac);
        let fd = nic.backend_fd();
        platform.nets.push((name.clone(), nic.counters()));
        let (slot, device) = place(
            vm,
            memory,
            router,
            &pci,
            &mut allocator,
            Box::new(nic),
            &mut platform.queues,
        )?;
        platform.taps.push(TapWatch {
            fd,
            device: device.clone(),
        });
        tracing::info!(slot, tap = %name, "virtio-net NIC");
        by_slot.push((slot, device));
    }

    // A guest that moves a BAR moves the notify addresses with it.
    let vm_for_moves = vm.clone();
    lock(&pci).set_bar_reprogram_handler(Arc::new(move |event: &BarReprogram| {
        let Some((_, device)) = by_slot.iter().find(|(slot, _)| *slot == event.slot) else {
            return;
        };
        let device = lock(device);
        for notify in device.notify_addresses() {
            let Some(queue_event) = device.queue_event(notify.queue) else {
                continue;
            };
            let offset = NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * u64::from(notify.queue);
            let old = IoEventAddress::Mmio(event.old + offset);
            let new = IoEventAddress::Mmio(event.new + offset);
            let _ = vm_for_moves.unregister_ioevent(queue_event, &old, NoDatamatch);
            if let Err(e) = vm_for_moves.register_ioevent(queue_event, &new, NoDatamatch) {
                tracing::warn!(error = %e, "cannot move a queue ioeventfd; notifies take the slow path");
            }
        }
    }));
    Ok(platform)
}
