//! The PCI devices of one guest, for as long as it runs: the PCI bus (host
//! bridge, configuration access on ports 0xCF8-0xCFF and ECAM, the BAR
//! window) and the virtio devices on it, each with its MSI-X vectors (KVM GSI
//! routing), its queue ioeventfds and the I/O thread that serves them
//! ([`crate::io_thread`]). Devices can be added and removed while the VM
//! runs. [`EventLoop`] is the control loop's epoll, which no device uses.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::pci::{
    AddressAllocator, BarReprogram, PciBarWindow, PciBus, PciConfigIo, PciConfigMmio,
    SharedPciDevice, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE,
};
use devices::virtio::block::{Block, BlockCounters, BlockOptions};
use devices::virtio::net::{Net, NetCounters};
use devices::virtio::pci::{VirtioPciDevice, BAR_SIZE, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
use devices::virtio::VirtioDevice;
use devices::{MmioBus, MmioDevice, PioBus};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::config::{DiskConfig, NetConfig};
use crate::disk::SharedDisk;
use crate::error::VmError;
use crate::interrupts::{DeviceMsi, GsiRouter};
use crate::io_thread::{IoThread, Ready, Source};
use crate::layout::{MMIO_32BIT_START, PCI_MMCONFIG_SIZE, PCI_MMCONFIG_START};

/// End (exclusive) of the 32-bit BAR window: the ECAM window follows it.
pub const MMIO_32BIT_END: u64 = PCI_MMCONFIG_START;

/// The epoll instance of a VM's control loop (power and reset events, API
/// requests, ejects, stdin). Devices are served by their own I/O threads.
pub struct EventLoop {
    epoll: Epoll,
}

impl EventLoop {
    /// A new, empty loop.
    pub fn new() -> Result<Self, VmError> {
        Ok(Self {
            epoll: Epoll::new().map_err(VmError::Event)?,
        })
    }

    /// Wakes the loop with `token` when `fd` is ready for `events`.
    pub fn add(&self, fd: RawFd, events: EventSet, token: u64) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits up to `timeout_ms` (-1: forever) for ready descriptors.
    pub fn wait(&self, timeout_ms: i32, events: &mut [EpollEvent]) -> std::io::Result<usize> {
        self.epoll.wait(timeout_ms, events)
    }
}

/// Names one device of a [`DeviceManager`] for as long as it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceId(u32);

/// Per-disk I/O counters, for metrics.
pub struct DiskStats {
    /// The disk's --disk id, or its index.
    pub name: String,
    /// The device's counters.
    pub counters: Arc<BlockCounters>,
}

/// What a device is, for metrics.
enum Kind {
    Disk(DiskStats),
    Nic(String, Arc<NetCounters>),
}

struct ManagedDevice {
    // Declared first, so dropped first: the thread is stopped and joined
    // while `device` still holds the device, so the device (its irqfds, its
    // KVM registrations) is never dropped on the I/O thread, whose seccomp
    // filter has no ioctl.
    io: IoThread,
    name: String,
    slot: u8,
    bar: u64,
    device: Arc<Mutex<VirtioPciDevice>>,
    kind: Kind,
}

/// The virtio devices of a running VM on their PCI bus.
pub struct DeviceManager {
    vm: Arc<VmFd>,
    memory: GuestMemoryMmap,
    router: Arc<GsiRouter>,
    pci: Arc<Mutex<PciBus>>,
    allocator: AddressAllocator,
    // Shared with the BAR reprogram handler, which runs on vCPU threads.
    by_slot: Arc<Mutex<BTreeMap<u8, Arc<Mutex<VirtioPciDevice>>>>>,
    devices: BTreeMap<DeviceId, ManagedDevice>,
    next_id: u32,
    // Counts NICs ever added, for their default MACs.
    nics_added: usize,
    // A disk gets at most one request queue per vCPU.
    max_queues: u16,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceManager {
    /// Builds an empty PCI bus (the host bridge alone) and puts its
    /// configuration mechanisms and BAR window on the buses. Disks get at
    /// most `vcpus` request queues.
    pub fn new(
        vm: Arc<VmFd>,
        memory: GuestMemoryMmap,
        router: Arc<GsiRouter>,
        pio: &mut PioBus,
        mmio: &MmioBus,
        vcpus: u8,
    ) -> Result<Self, VmError> {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            PCI_CONFIG_IO_PORT,
            PCI_CONFIG_IO_SIZE,
        )?;
        let ecam: Arc<Mutex<dyn MmioDevice>> =
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone())));
        mmio.insert(ecam, PCI_MMCONFIG_START, PCI_MMCONFIG_SIZE)
            .map_err(|e| VmError::Devices(e.to_string()))?;
        let window: Arc<Mutex<dyn MmioDevice>> =
            Arc::new(Mutex::new(PciBarWindow::new(pci.clone())));
        mmio.insert(window, MMIO_32BIT_START, MMIO_32BIT_END - MMIO_32BIT_START)
            .map_err(|e| VmError::Devices(e.to_string()))?;
        let allocator = AddressAllocator::new(MMIO_32BIT_START, MMIO_32BIT_END)
            .map_err(|e| VmError::Devices(e.to_string()))?;
        let by_slot = Arc::new(Mutex::new(BTreeMap::new()));
        lock(&pci).set_bar_reprogram_handler(bar_mover(vm.clone(), by_slot.clone()));
        Ok(Self {
            vm,
            memory,
            router,
            pci,
            allocator,
            by_slot,
            devices: BTreeMap::new(),
            next_id: 0,
            nics_added: 0,
            max_queues: u16::from(vcpus).max(1),
        })
    }

    /// Adds a virtio-blk device over `image` in the lowest free PCI slot, with
    /// its I/O thread; `name` labels its metrics.
    pub fn add_block(
        &mut self,
        disk: &DiskConfig,
        image: &SharedDisk,
        name: String,
    ) -> Result<DeviceId, VmError> {
        let block = Block::new(
            Box::new(image.clone()),
            BlockOptions {
                read_only: disk.read_only,
                id: disk.id.clone(),
                queues: disk.queues.clamp(1, self.max_queues),
                cache: disk.cache,
                engine: disk.engine,
            },
        )
        .map_err(|e| VmError::Disk {
            path: disk.path.clone(),
            reason: e.to_string(),
        })?;
        let kind = Kind::Disk(DiskStats {
            name: name.clone(),
            counters: block.counters(),
        });
        let id = self.attach_pci(name, Box::new(block), kind)?;
        tracing::info!(slot = self.devices[&id].slot, path = %disk.path.display(), "virtio-blk disk");
        Ok(id)
    }

    /// Adds a virtio-net device over a duplicate of `tap` in the lowest free
    /// PCI slot, with its I/O thread (queues and the TAP); `name` is its
    /// device id.
    pub fn add_net(
        &mut self,
        net: &NetConfig,
        tap: &netstack::Tap,
        name: String,
    ) -> Result<DeviceId, VmError> {
        let fd = tap
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| VmError::Net(format!("cannot duplicate the TAP: {e}")))?;
        let tap = netstack::Tap::from_fd(fd).map_err(|e| VmError::Net(e.to_string()))?;
        let tap_name = tap.name().to_string();
        let mac = net.mac.unwrap_or_else(|| local_mac(self.nics_added));
        self.nics_added += 1;
        let nic = Net::new(Box::new(tap), mac);
        let kind = Kind::Nic(tap_name.clone(), nic.counters());
        let id = self.attach_pci(name, Box::new(nic), kind)?;
        tracing::info!(slot = self.devices[&id].slot, tap = %tap_name, "virtio-net NIC");
        Ok(id)
    }

    /// Takes a device off the PCI bus: its I/O thread stops, its
    /// ioeventfds leave KVM and its BAR space is free again. The guest must
    /// have let go of it first (PCI hot-unplug is the caller's business).
    /// Its MSI-X GSIs are given back when the device is dropped.
    pub fn remove_device(&mut self, id: DeviceId) -> Result<(), VmError> {
        let ManagedDevice {
            slot,
            bar,
            device,
            io,
            ..
        } = self
            .devices
            .remove(&id)
            .ok_or_else(|| VmError::Devices(format!("no device {id:?}")))?;
        drop(io);
        lock(&self.by_slot).remove(&slot);
        lock(&self.pci).remove_device(slot);
        register_notifies(&self.vm, &lock(&device), false)?;
        self.allocator
            .free(bar)
            .map_err(|e| VmError::Devices(e.to_string()))?;
        tracing::info!(slot, "PCI device removed");
        Ok(())
    }

    /// The disks' counters, in the order they were added.
    pub fn disk_stats(&self) -> Vec<DiskStats> {
        self.devices
            .values()
            .filter_map(|d| match &d.kind {
                Kind::Disk(s) => Some(DiskStats {
                    name: s.name.clone(),
                    counters: s.counters.clone(),
                }),
                Kind::Nic(..) => None,
            })
            .collect()
    }

    /// The NICs' counters by TAP name, in the order they were added.
    pub fn net_stats(&self) -> Vec<(String, Arc<NetCounters>)> {
        self.devices
            .values()
            .filter_map(|d| match &d.kind {
                Kind::Nic(name, counters) => Some((name.clone(), counters.clone())),
                Kind::Disk(_) => None,
            })
            .collect()
    }

    /// The PCI slot of device `id`.
    pub fn slot(&self, id: DeviceId) -> Option<u8> {
        Some(self.devices.get(&id)?.slot)
    }

    /// The device named `name`.
    pub fn find(&self, name: &str) -> Option<DeviceId> {
        self.devices
            .iter()
            .find(|(_, d)| d.name == name)
            .map(|(id, _)| *id)
    }

    /// The device in PCI slot `slot`.
    pub fn at_slot(&self, slot: u8) -> Option<DeviceId> {
        self.devices
            .iter()
            .find(|(_, d)| d.slot == slot)
            .map(|(id, _)| *id)
    }

    /// The name of device `id`.
    pub fn name(&self, id: DeviceId) -> Option<&str> {
        Some(self.devices.get(&id)?.name.as_str())
    }

    /// Whether device `id` is a disk.
    pub fn is_disk(&self, id: DeviceId) -> bool {
        self.devices
            .get(&id)
            .is_some_and(|d| matches!(d.kind, Kind::Disk(_)))
    }

    /// Tells device `id` that its configuration changed (a disk grew): it
    /// re-reads it and, when it changed, interrupts the guest. False when
    /// nothing changed.
    pub fn config_changed(&self, id: DeviceId) -> bool {
        match self.devices.get(&id) {
            Some(d) => lock(&d.device).config_changed(),
            None => false,
        }
    }

    /// Puts one virtio device on the PCI bus (a BAR, MSI-X vectors with
    /// GSIs, ioeventfds for its queues) with an I/O thread serving its queues
    /// and its backend descriptor.
    fn attach_pci(
        &mut self,
        name: String,
        virtio: Box<dyn VirtioDevice>,
        kind: Kind,
    ) -> Result<DeviceId, VmError> {
        let vectors = virtio.queue_max_sizes().len() as u16 + 1;
        let msi = Arc::new(
            DeviceMsi::new(self.router.clone(), vectors)
                .map_err(|e| VmError::Devices(e.to_string()))?,
        );
        let bar = self
            .allocator
            .allocate(BAR_SIZE, BAR_SIZE)
            .map_err(|e| VmError::Devices(e.to_string()))?;
        let placed = self.place(name.clone(), virtio, msi, bar);
        let (device, io) = match placed {
            Ok(placed) => placed,
            Err(e) => {
                // Leave nothing behind, so that a failed hot-add is harmless.
                let _ = self.allocator.free(bar);
                return Err(e);
            }
        };
        let shared: SharedPciDevice = device.clone();
        let slot = match lock(&self.pci).add_device(shared) {
            Ok(slot) => slot,
            Err(e) => {
                drop(io);
                let _ = register_notifies(&self.vm, &lock(&device), false);
                let _ = self.allocator.free(bar);
                return Err(VmError::Devices(e.to_string()));
            }
        };
        lock(&self.by_slot).insert(slot, device.clone());
        let id = DeviceId(self.next_id);
        self.next_id += 1;
        tracing::debug!(slot, bar = format_args!("{bar:#x}"), "PCI device placed");
        self.devices.insert(
            id,
            ManagedDevice {
                name,
                slot,
                bar,
                device,
                kind,
                io,
            },
        );
        Ok(id)
    }

    /// The transport around `virtio` at `bar`, its ioeventfds registered,
    /// and its I/O thread running (nothing of it is left on failure).
    fn place(
        &self,
        name: String,
        virtio: Box<dyn VirtioDevice>,
        msi: Arc<DeviceMsi>,
        bar: u64,
    ) -> Result<(Arc<Mutex<VirtioPciDevice>>, IoThread), VmError> {
        let device = VirtioPciDevice::new(virtio, self.memory.clone(), msi, bar)
            .map_err(|e| VmError::Devices(e.to_string()))?;
        let mut sources = Vec::new();
        for notify in device.notify_addresses() {
            if let Some(event) = device.queue_event(notify.queue) {
                let event = event.try_clone().map_err(VmError::Event)?;
                sources.push(Source {
                    fd: event.as_raw_fd(),
                    ready: Ready::Queue(notify.queue),
                    owned: Some(event),
                });
            }
        }
        if let Some(fd) = device.backend_fd() {
            sources.push(Source {
                fd,
                ready: Ready::Backend,
                owned: None,
            });
        }
        register_notifies(&self.vm, &device, true)?;
        let device = Arc::new(Mutex::new(device));
        match IoThread::spawn(&name, device.clone(), sources) {
            Ok(io) => Ok((device, io)),
            Err(e) => {
                let _ = register_notifies(&self.vm, &lock(&device), false);
                Err(e)
            }
        }
    }
}

/// Moves the notify ioeventfds of a device whose BAR the guest moved.
fn bar_mover(
    vm: Arc<VmFd>,
    by_slot: Arc<Mutex<BTreeMap<u8, Arc<Mutex<VirtioPciDevice>>>>>,
) -> devices::pci::BarReprogramHandler {
    Arc::new(move |event: &BarReprogram| {
        let Some(device) = lock(&by_slot).get(&event.slot).cloned() else {
            return;
        };
        let device = lock(&device);
        for notify in device.notify_addresses() {
            let Some(queue_event) = device.queue_event(notify.queue) else {
                continue;
            };
            let offset = NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * u64::from(notify.queue);
            let old = IoEventAddress::Mmio(event.old + offset);
            let new = IoEventAddress::Mmio(event.new + offset);
            let _ = vm.unregister_ioevent(queue_event, &old, NoDatamatch);
            if let Err(e) = vm.register_ioevent(queue_event, &new, NoDatamatch) {
                tracing::warn!(error = %e, "cannot move a queue ioeventfd; notifies take the slow path");
            }
        }
    })
}

/// Registers (or unregisters) the ioeventfds of `device`'s queues at its
/// current BAR.
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

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    /// A VM with an irqchip and MSI routing, or None where /dev/kvm is not
    /// usable (outside CI).
    fn kvm_rig() -> Option<(Arc<VmFd>, GuestMemoryMmap, Arc<GsiRouter>)> {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "/dev/kvm: {e}"
                );
                eprintln!("skipped: /dev/kvm is not usable here");
                return None;
            }
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let memory = crate::memory::create_guest_memory(16 << 20).unwrap();
        let router = Arc::new(GsiRouter::new(vm.clone()));
        router.install().unwrap();
        Some((vm, memory, router))
    }

    fn raw_disk(name: &str) -> (DiskConfig, SharedDisk) {
        let path =
            std::env::temp_dir().join(format!("nubo-devmgr-{}-{name}.raw", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let disk = DiskConfig {
            path: path.clone(),
            read_only: false,
            id: None,
            format: images::ImageFormat::Raw,
            ..Default::default()
        };
        let image = SharedDisk::open(&disk).unwrap();
        std::fs::remove_file(&path).unwrap();
        (disk, image)
    }

    /// Whether `event` has a count to read right now (not consumed).
    fn pending(event: &EventFd) -> bool {
        let mut pfd = libc::pollfd {
            fd: event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    /// Waits up to a second for `event`'s count to be consumed (by the
    /// device's I/O thread); true when it was.
    fn consumed(event: &EventFd) -> bool {
        for _ in 0..100 {
            if !pending(event) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    /// Each device's I/O thread serves its queue notifications; once the
    /// device is removed its thread is gone (nothing consumes the
    /// notification any more), and its slot and BAR are free for the next.
    #[test]
    fn io_threads_serve_devices_until_removed() {
        let Some((vm, memory, router)) = kvm_rig() else {
            return;
        };
        let (mut pio, mmio) = (PioBus::new(), MmioBus::new());
        let mut manager = DeviceManager::new(vm, memory, router, &mut pio, &mmio, 2).unwrap();
        let (disk, image) = raw_disk("a");
        let first = manager.add_block(&disk, &image, "a".into()).unwrap();
        let second = manager.add_block(&disk, &image, "b".into()).unwrap();
        assert_eq!(
            (manager.slot(first), manager.slot(second)),
            (Some(1), Some(2))
        );
        let names: Vec<_> = manager.disk_stats().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["a", "b"]);

        let notify = |id: DeviceId| {
            lock(&manager.devices[&id].device)
                .queue_event(0)
                .unwrap()
                .try_clone()
                .unwrap()
        };
        let (kick_first, kick_second) = (notify(first), notify(second));
        kick_second.write(1).unwrap();
        assert!(consumed(&kick_second), "the second disk's thread served it");

        let first_bar = manager.devices[&first].bar;
        manager.remove_device(first).unwrap();
        assert!(manager.remove_device(first).is_err());
        assert_eq!(manager.slot(first), None);
        kick_first.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(pending(&kick_first), "no thread serves a removed device");
        assert_eq!(manager.disk_stats().len(), 1);

        let third = manager.add_block(&disk, &image, "c".into()).unwrap();
        assert_eq!(manager.slot(third), Some(1));
        assert_eq!(manager.devices[&third].bar, first_bar);
        kick_second.write(1).unwrap();
        assert!(consumed(&kick_second), "the other disk is still served");
    }
}
