//! The modern (virtio 1.x) PCI transport.
//!
//! One 64-bit memory BAR (BAR 0, [`BAR_SIZE`] bytes) holds every register
//! block, each described by a vendor-specific capability:
//!
//! ```text
//! 0x0000  common configuration (feature bits, status, queue setup)
//! 0x1000  ISR status (read clears)
//! 0x2000  device configuration
//! 0x3000  queue notify: queue n at 0x3000 + 4 * n  (notify_off_multiplier 4)
//! 0x4000  MSI-X table (one vector per queue + one for config changes)
//! 0x5000  MSI-X PBA
//! ```
//!
//! A `VIRTIO_PCI_CAP_PCI_CFG` window is also present, as the spec requires.
//! Interrupts are MSI-X only (no INTx pin).

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    GuestMemory, VirtioDevice, VirtioInterrupt, VirtioInterruptType, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use crate::pci::msix::{
    msix_capability_body, MSIX_CAP_ID, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK,
};
use crate::pci::{
    BarKind, MsiInterrupts, MsixConfig, PciConfiguration, PciDevice, PciError, PciHeader,
};

/// PCI vendor id of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio devices have PCI device id 0x1040 + device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// The BAR holding every virtio register block.
pub const VIRTIO_BAR: u8 = 0;
/// Offset of the common configuration in BAR 0.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Size of the common configuration structure.
pub const COMMON_CFG_SIZE: u64 = 0x38;
/// Offset of the ISR status byte in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR 0.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Size reserved for the device configuration.
pub const DEVICE_CFG_SIZE: u64 = 0x1000;
/// Offset of the notify region in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Distance between the notify addresses of consecutive queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in BAR 0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X PBA in BAR 0.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// "No MSI-X vector" in `msix_config` / `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// Most queues a transport supports (bounded by the notify and MSI-X space).
pub const MAX_QUEUES: usize = 255;

const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
const PCI_CAP_VENDOR: u8 = 0x09;

/// Errors of building a virtio-pci device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The PCI configuration could not be built.
    #[error("PCI configuration: {0}")]
    Pci(#[from] PciError),
    /// The device has no queues or more than [`MAX_QUEUES`], or a max size
    /// that is not a power of two.
    #[error("device declares unusable queues")]
    BadQueues,
    /// Creating a queue EventFd failed.
    #[error("creating a queue event: {0}")]
    EventFd(#[source] io::Error),
}

/// Where the driver notifies a queue: the VMM registers the queue's
/// [`EventFd`] as an ioeventfd at `addr` (any write length, no datamatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyAddress {
    /// Guest-physical address of the queue's notify register.
    pub addr: u64,
    /// Queue index.
    pub queue: u16,
}

/// Per-queue setup written by the driver through the common configuration.
#[derive(Debug, Clone, Copy)]
struct QueueSetup {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// The interrupt the device raises: sets the ISR bits and sends the MSI-X
/// vector the driver chose for the queue or config changes.
struct TransportInterrupt {
    msix: Arc<Mutex<MsixConfig>>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl VirtioInterrupt for TransportInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> io::Result<()> {
        let (bit, vector) = match kind {
            VirtioInterruptType::Config => (2, self.config_vector.load(Ordering::Acquire)),
            VirtioInterruptType::Queue(q) => (
                1,
                self.queue_vectors
                    .get(usize::from(q))
                    .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Acquire)),
            ),
        };
        self.isr.fetch_or(bit, Ordering::AcqRel);
        if vector != VIRTIO_MSI_NO_VECTOR {
            lock(&self.msix).trigger(vector);
        }
        Ok(())
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A virtio device as a PCI function (modern transport).
pub struct VirtioPciDevice {
    config: PciConfiguration,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    msix: Arc<Mutex<MsixConfig>>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    interrupt: Arc<TransportInterrupt>,
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueSetup>,
    queue_events: Vec<EventFd>,
    activated: bool,
    config_generation: u8,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

fn vendor_cap(cfg_type: u8, offset: u32, length: u32, extra: &[u8]) -> Vec<u8> {
    // struct virtio_pci_cap after cap_vndr and cap_next.
    let mut b = vec![(16 + extra.len()) as u8, cfg_type, VIRTIO_BAR, 0, 0, 0];
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl VirtioPciDevice {
    /// Wraps `device`, with BAR 0 initially at `bar_addr` (aligned to
    /// [`BAR_SIZE`]; the VMM allocates it in its MMIO window). `msi` delivers
    /// the device's MSI-X vectors ([`VirtioPciDevice::msix_vectors`] of
    /// them); `mem` is the guest memory the queues live in.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        msi: Arc<dyn MsiInterrupts>,
        bar_addr: u64,
    ) -> Result<Self, VirtioPciError> {
        let max_sizes = device.queue_max_sizes().to_vec();
        if max_sizes.is_empty()
            || max_sizes.len() > MAX_QUEUES
            || max_sizes.iter().any(|s| !s.is_power_of_two())
        {
            return Err(VirtioPciError::BadQueues);
        }
        let num_queues = max_sizes.len() as u16; // <= 255
        let vectors = num_queues + 1;
        let device_type = device.device_type();
        let (class, subclass) = match device_type {
            super::TYPE_BLOCK => (0x01, 0x00),
            1 => (0x02, 0x00),
            _ => (0xff, 0x00),
        };
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16),
            revision: 1,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: 0x40,
        });
        config.add_bar(VIRTIO_BAR, bar_addr, BAR_SIZE, BarKind::Mem64, false)?;
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(
                CAP_COMMON,
                COMMON_CFG_OFFSET as u32,
                COMMON_CFG_SIZE as u32,
                &[],
            ),
        )?;
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(CAP_ISR, ISR_OFFSET as u32, 1, &[]),
        )?;
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(
                CAP_DEVICE,
                DEVICE_CFG_OFFSET as u32,
                DEVICE_CFG_SIZE as u32,
                &[],
            ),
        )?;
        config.add_capability(
            PCI_CAP_VENDOR,
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET as u32,
                u32::from(num_queues) * NOTIFY_OFF_MULTIPLIER,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
        )?;
        let pci_cfg_cap = usize::from(
            config.add_capability(PCI_CAP_VENDOR, &vendor_cap(CAP_PCI_CFG, 0, 0, &[0; 4]))?,
        );
        // bar, offset, length and data of the PCI_CFG window are writable.
        config.set_wmask(pci_cfg_cap + 4, &[0xff]);
        config.set_wmask(pci_cfg_cap + 8, &[0xff; 8]);
        config.set_wmask(pci_cfg_cap + 16, &[0xff; 4]);
        let msix_cap = usize::from(config.add_capability(
            MSIX_CAP_ID,
            &msix_capability_body(
                vectors,
                VIRTIO_BAR,
                MSIX_TABLE_OFFSET as u32,
                VIRTIO_BAR,
                MSIX_PBA_OFFSET as u32,
            ),
        )?);
        let control_mask = MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK;
        config.set_wmask(msix_cap + 2, &control_mask.to_le_bytes());

        let msix = Arc::new(Mutex::new(MsixConfig::new(vectors, msi)));
        let interrupt = Arc::new(TransportInterrupt {
            msix: msix.clone(),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: max_sizes
                .iter()
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
        });
        let queue_events = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        Ok(Self {
            config,
            device_features: device.features() | 1 << VIRTIO_F_VERSION_1,
            device,
            mem,
            msix,
            msix_cap,
            pci_cfg_cap,
            interrupt,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: max_sizes.into_iter().map(QueueSetup::new).collect(),
            queue_events,
            activated: false,
            config_generation: 0,
        })
    }

    /// Number of MSI-X vectors (queues + 1); the VMM allocates one GSI each.
    pub fn msix_vectors(&self) -> u16 {
        lock(&self.msix).vectors()
    }

    /// Number of queues.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The EventFd of queue `index`: register it as an ioeventfd at the
    /// queue's [`NotifyAddress`] and watch it in the event loop.
    pub fn queue_event(&self, index: u16) -> Option<&EventFd> {
        self.queue_events.get(usize::from(index))
    }

    /// Notify addresses of every queue at BAR 0's current address (after a
    /// `BarReprogram`, call again for the new ones).
    pub fn notify_addresses(&self) -> Vec<NotifyAddress> {
        let base = self.config.bar(VIRTIO_BAR).map_or(0, |b| b.addr);
        (0..self.num_queues())
            .map(|q| NotifyAddress {
                addr: base + NOTIFY_OFFSET + u64::from(q) * u64::from(NOTIFY_OFF_MULTIPLIER),
                queue: q,
            })
            .collect()
    }

    /// The device status register (for logs and tests).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Lets the device re-read its configuration (a disk grew); when it
    /// changed, bumps `config_generation` and raises the configuration
    /// change interrupt (if the driver is running). True when it changed.
    pub fn config_changed(&mut self) -> bool {
        if !self.device.update_config() {
            return false;
        }
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.activated {
            if let Err(e) = self.interrupt.trigger(VirtioInterruptType::Config) {
                tracing::warn!(error = %e, "cannot raise the config change interrupt");
            }
        }
        true
    }

    /// Whether the device was activated (`DRIVER_OK` accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Called by the VMM's event loop when queue `index`'s EventFd is
    /// readable: consumes the event and processes the queue. A queue error
    /// sets `DEVICE_NEEDS_RESET` and raises the config interrupt; nothing is
    /// processed after that until the driver resets the device.
    pub fn process_queue(&mut self, index: u16) {
        if let Some(evt) = self.queue_events.get(usize::from(index)) {
            // EAGAIN just means we got here without a notification.
            let _ = evt.read();
        }
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        if let Err(e) = self.device.process_queue(index) {
            tracing::warn!(queue = index, error = %e, "virtio device needs reset");
            self.set_needs_reset();
        }
    }

    /// Serves the device's host-side descriptor (see
    /// [`VirtioDevice::backend_ready`]), unless the device is not running.
    pub fn process_backend(&mut self) {
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        if let Err(e) = self.device.backend_ready() {
            tracing::warn!(error = %e, "virtio device needs reset");
            self.set_needs_reset();
        }
    }

    /// The I/O thread starts one pass over its ready descriptors (see
    /// [`VirtioDevice::begin_batch`]); end it with [`Self::end_batch`].
    pub fn begin_batch(&mut self) {
        self.device.begin_batch();
    }

    /// Ends the pass [`Self::begin_batch`] started: held-back interrupts
    /// are raised, unless the device is not running.
    pub fn end_batch(&mut self) {
        // A device that stopped during the pass stays quiet until its reset.
        if !self.activated || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        if let Err(e) = self.device.end_batch() {
            tracing::warn!(error = %e, "virtio device needs reset");
            self.set_needs_reset();
        }
    }

    /// The device's host-side descriptor, if it has one.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    fn set_needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            let _ = self.interrupt.trigger(VirtioInterruptType::Config);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSetup> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// The common configuration structure as the guest sees it now.
    fn common_cfg(&self) -> [u8; COMMON_CFG_SIZE as usize] {
        let mut b = [0u8; COMMON_CFG_SIZE as usize];
        let mut put = |off: usize, v: &[u8]| {
            if let Some(dst) = b.get_mut(off..off + v.len()) {
                dst.copy_from_slice(v);
            }
        };
        let features = match self.device_feature_select {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        };
        let driver = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(0x00, &self.device_feature_select.to_le_bytes());
        put(0x04, &features.to_le_bytes());
        put(0x08, &self.driver_feature_select.to_le_bytes());
        put(0x0c, &driver.to_le_bytes());
        put(
            0x10,
            &self
                .interrupt
                .config_vector
                .load(Ordering::Acquire)
                .to_le_bytes(),
        );
        put(0x12, &self.num_queues().to_le_bytes());
        put(0x14, &[self.status]);
        put(0x15, &[self.config_generation]);
        put(0x16, &self.queue_select.to_le_bytes());
        let q = usize::from(self.queue_select);
        if let Some(s) = self.queues.get(q) {
            let vector = self
                .interrupt
                .queue_vectors
                .get(q)
                .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Acquire));
            put(0x18, &s.size.to_le_bytes());
            put(0x1a, &vector.to_le_bytes());
            put(0x1c, &u16::from(s.enabled).to_le_bytes());
            put(0x1e, &self.queue_select.to_le_bytes());
            put(0x20, &s.desc.to_le_bytes());
            put(0x28, &s.driver.to_le_bytes());
            put(0x30, &s.device.to_le_bytes());
        } else {
            // A non-existent queue reads as size 0 (how drivers count queues).
            put(0x1a, &VIRTIO_MSI_NO_VECTOR.to_le_bytes());
        }
        b
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.common_cfg();
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors() {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let v32 = match *data {
            [a] => u32::from(a),
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => {
                tracing::debug!(offset, len = data.len(), "odd-sized common config write");
                return;
            }
        };
        let len = data.len();
        // Queue setup is frozen once the driver is running or the queue is on.
        let setup_open = self.status & STATUS_DRIVER_OK == 0;
        match (offset, len) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    let v = u64::from(v32);
                    match self.driver_feature_select {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                        1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                        _ => {}
                    }
                }
            }
            (0x10, 2) => {
                let v = self.checked_vector(v32 as u16);
                self.interrupt.config_vector.store(v, Ordering::Release);
            }
            (0x14, 1) => self.write_status(v32 as u8),
            (0x16, 2) => self.queue_select = v32 as u16,
            (0x18, 2) => {
                if let Some(q) = self.selected_queue().filter(|q| setup_open && !q.enabled) {
                    q.size = v32 as u16;
                }
            }
            (0x1a, 2) => {
                let v = self.checked_vector(v32 as u16);
                if let Some(slot) = self
                    .interrupt
                    .queue_vectors
                    .get(usize::from(self.queue_select))
                {
                    slot.store(v, Ordering::Release);
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.selected_queue().filter(|_| setup_open) {
                    // Drivers only ever write 1 (disabling is done by reset).
                    if v32 == 1 {
                        q.enabled = true;
                    }
                }
            }
            (0x20..=0x37, 4) if offset & 3 == 0 => {
                if let Some(q) = self.selected_queue().filter(|q| setup_open && !q.enabled) {
                    let field = match offset {
                        0x20 | 0x24 => &mut q.desc,
                        0x28 | 0x2c => &mut q.driver,
                        _ => &mut q.device,
                    };
                    let v = u64::from(v32);
                    *field = if offset & 7 == 0 {
                        (*field & !0xffff_ffff) | v
                    } else {
                        (*field & 0xffff_ffff) | v << 32
                    };
                }
            }
            _ => tracing::debug!(offset, len, "ignored common config write"),
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // NEEDS_RESET belongs to the device; the driver never clears bits
        // other than by writing 0.
        let mut new = (value & !STATUS_DEVICE_NEEDS_RESET) | (old & STATUS_DEVICE_NEEDS_RESET);
        if new & old != old {
            tracing::debug!(old, value, "driver tried to clear status bits; ignored");
            return;
        }
        let added = new & !old;
        let requires = |bit: u8, needed: u8| added & bit == 0 || new & needed == needed;
        if !requires(STATUS_DRIVER, STATUS_ACKNOWLEDGE)
            || !requires(STATUS_FEATURES_OK, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
            || !requires(STATUS_DRIVER_OK, STATUS_FEATURES_OK)
        {
            tracing::debug!(old, value, "out-of-order status write; ignored");
            return;
        }
        if added & STATUS_FEATURES_OK != 0 {
            let unsupported = self.driver_features & !self.device_features;
            if unsupported != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                tracing::info!(
                    driver = self.driver_features,
                    device = self.device_features,
                    "feature negotiation failed"
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        self.status = new;
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FAILED == 0 {
            self.activate();
        }
    }

    fn build_queue(&self, index: usize, s: &QueueSetup) -> Result<Queue, String> {
        let mut q = Queue::new(s.max_size).map_err(|e| e.to_string())?;
        if !s.enabled {
            return Ok(q);
        }
        q.try_set_size(s.size)
            .map_err(|_| format!("size {} (max {})", s.size, s.max_size))?;
        q.try_set_desc_table_address(GuestAddress(s.desc))
            .map_err(|_| format!("descriptor table {:#x} misaligned", s.desc))?;
        q.try_set_avail_ring_address(GuestAddress(s.driver))
            .map_err(|_| format!("available ring {:#x} misaligned", s.driver))?;
        q.try_set_used_ring_address(GuestAddress(s.device))
            .map_err(|_| format!("used ring {:#x} misaligned", s.device))?;
        q.set_ready(true);
        if !q.is_valid(&self.mem) {
            return Err(format!("queue {index} rings are not inside guest memory"));
        }
        Ok(q)
    }

    fn activate(&mut self) {
        let queues: Result<Vec<Queue>, super::ActivateError> = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, s)| {
                self.build_queue(i, s)
                    .map_err(|reason| super::ActivateError::BadQueue {
                        queue: i as u16,
                        reason,
                    })
            })
            .collect();
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        let result = queues.and_then(|q| {
            self.device
                .activate(self.mem.clone(), self.driver_features, q, interrupt)
        });
        match result {
            Ok(()) => {
                tracing::debug!(
                    device_type = self.device.device_type(),
                    "virtio device activated"
                );
                self.activated = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "virtio device activation failed");
                self.set_needs_reset();
            }
        }
    }

    /// Device reset (driver wrote 0 to the status): back to the state after
    /// power-on, except the PCI configuration and the MSI-X table.
    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            tracing::debug!(
                device_type = self.device.device_type(),
                "virtio device reset"
            );
        }
        self.device.reset();
        self.activated = false;
        self.status = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueSetup::new(q.max_size);
        }
        self.interrupt.isr.store(0, Ordering::Release);
        self.interrupt
            .config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for v in &self.interrupt.queue_vectors {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
        for e in &self.queue_events {
            let _ = e.read();
        }
    }

    /// The window of the `VIRTIO_PCI_CAP_PCI_CFG` capability: (bar, offset,
    /// length) as the driver set them, if usable.
    fn pci_cfg_window(&self) -> Option<(u8, u64, usize)> {
        let c = self.pci_cfg_cap;
        let bar = self.config.read_u8(c + 4);
        let offset = u64::from(self.config.read_u32(c + 8));
        let length = self.config.read_u32(c + 12) as usize;
        matches!(length, 1 | 2 | 4).then_some((bar, offset, length))
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        let off = usize::from(offset);
        let window = self.pci_cfg_cap + 16;
        if off == window {
            if let Some((bar, bar_off, length)) = self.pci_cfg_window() {
                let mut buf = [0u8; 4];
                if let Some(b) = buf.get_mut(..length) {
                    self.read_bar(bar, bar_off, b);
                }
                self.config.set_u32(window, u32::from_le_bytes(buf));
            }
        }
        self.config.read(off, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        let off = usize::from(offset);
        self.config.write(off, data);
        let end = off.saturating_add(data.len());
        let control = self.msix_cap + 2;
        if off < control + 2 && end > control {
            let v = self.config.read_u16(control);
            lock(&self.msix).set_control(v);
        }
        let window = self.pci_cfg_cap + 16;
        if off == window {
            if let Some((bar, bar_off, length)) = self.pci_cfg_window() {
                let v = self.config.read_u32(window).to_le_bytes();
                if let Some(b) = v.get(..length.min(data.len())) {
                    self.write_bar(bar, bar_off, b);
                }
            }
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != VIRTIO_BAR {
            return;
        }
        match offset {
            o if o < COMMON_CFG_OFFSET + COMMON_CFG_SIZE => self.read_common(o, data),
            ISR_OFFSET => {
                if let Some(b) = data.first_mut() {
                    *b = self.interrupt.isr.swap(0, Ordering::AcqRel);
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                lock(&self.msix).read_pba(o - MSIX_PBA_OFFSET, data);
            }
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != VIRTIO_BAR {
            return;
        }
        match offset {
            o if o < COMMON_CFG_OFFSET + COMMON_CFG_SIZE => self.write_common(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // A notify that reached us as an MMIO exit (no ioeventfd):
                // signal the queue's event as KVM would.
                let rel = o - NOTIFY_OFFSET;
                let q = rel / u64::from(NOTIFY_OFF_MULTIPLIER);
                if rel & (u64::from(NOTIFY_OFF_MULTIPLIER) - 1) == 0 {
                    if let Some(evt) = usize::try_from(q)
                        .ok()
                        .and_then(|q| self.queue_events.get(q))
                    {
                        if let Err(e) = evt.write(1) {
                            tracing::warn!(queue = q, error = %e, "queue notify failed");
                        }
                    }
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).write_table(o - MSIX_TABLE_OFFSET, data);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_driver::{Driver, SplitQueue, BAR};
    use super::super::{ActivateError, Queue, QueueError, VIRTIO_RING_F_INDIRECT_DESC};
    use super::*;
    use crate::pci::msix::testing::Event;
    use crate::pci::MsiMessage;

    #[derive(Default)]
    struct Shared {
        activations: Vec<(u64, Vec<(bool, u16)>)>,
        processed: Vec<u16>,
        resets: usize,
        fail_next: bool,
    }

    /// A device with two queues (max 8 and 4) that records what happens.
    struct Dummy(Arc<Mutex<Shared>>, Option<Arc<dyn VirtioInterrupt>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            1 | 1 << VIRTIO_RING_F_INDIRECT_DESC
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8, 4]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, d) in data.iter_mut().enumerate() {
                *d = 0xa0u8.wrapping_add((offset as u8).wrapping_add(i as u8));
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _mem: GuestMemory,
            acked: u64,
            queues: Vec<Queue>,
            interrupt: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            let q = queues.iter().map(|q| (q.ready(), q.size())).collect();
            self.0.lock().unwrap().activations.push((acked, q));
            self.1 = Some(interrupt);
            Ok(())
        }
        fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
            let mut s = self.0.lock().unwrap();
            s.processed.push(index);
            if std::mem::take(&mut s.fail_next) {
                return Err(QueueError::Ring("test".into()));
            }
            if let Some(i) = &self.1 {
                i.trigger(VirtioInterruptType::Queue(index)).unwrap();
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
            self.1 = None;
        }
    }

    fn driver() -> (Driver, Arc<Mutex<Shared>>) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        (Driver::new(Box::new(Dummy(shared.clone(), None))), shared)
    }

    const V1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn pci_identity_and_capabilities() {
        let (d, _) = driver();
        assert_eq!(d.cfg_r16(0), 0x1af4);
        assert_eq!(d.cfg_r16(2), 0x1040 + 42);
        assert_eq!(d.cfg_r8(8), 1, "revision 1: modern device");
        assert_eq!(d.cfg_r16(0x2e), 0x40);
        assert_eq!(d.cfg_r8(0x3d), 0, "no INTx pin");
        let c = d.caps;
        assert_eq!(
            (c.common, c.isr, c.device, c.notify, c.notify_mult),
            (
                COMMON_CFG_OFFSET,
                ISR_OFFSET,
                DEVICE_CFG_OFFSET,
                NOTIFY_OFFSET,
                4
            )
        );
        assert!(c.pci_cfg.is_some());
        let msix = c.msix.unwrap();
        assert_eq!(d.cfg_r16(msix + 2) & 0x7ff, 2, "3 vectors");
        assert_eq!(d.cfg_r32(msix + 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(d.cfg_r32(msix + 8), MSIX_PBA_OFFSET as u32);
        // BAR 0 is a 64-bit BAR of BAR_SIZE at BAR.
        assert_eq!(d.cfg_r32(0x10), BAR as u32 | 0b100);
        d.cfg_w32(0x10, 0xffff_ffff);
        assert_eq!(d.cfg_r32(0x10), (!(BAR_SIZE as u32 - 1)) | 0b100);
        d.cfg_w32(0x10, BAR as u32);
        // Device config through the BAR.
        assert_eq!(d.bar_r(DEVICE_CFG_OFFSET + 2, 1), 0xa2);
        assert_eq!(d.common_r(0x12, 2), 2, "num_queues");
    }

    #[test]
    fn feature_negotiation() {
        let (d, shared) = driver();
        let offered = d.device_features();
        assert_eq!(offered, V1 | 1 | 1 << VIRTIO_RING_F_INDIRECT_DESC);
        d.common_w(0, 4, 7);
        assert_eq!(d.common_r(4, 4), 0, "feature words past 1 are empty");
        // Unsupported feature: FEATURES_OK does not stick.
        assert_eq!(d.negotiate(V1 | 1 << 40), 1 | 2);
        // No VERSION_1: refused too.
        assert_eq!(d.negotiate(1), 1 | 2);
        // Skipping steps is ignored.
        d.set_status(0);
        d.set_status(4);
        assert_eq!(d.status(), 0);
        d.set_status(1 | 4);
        assert_eq!(d.status(), 0);
        d.set_status(2);
        assert_eq!(d.status(), 0);
        // A subset of the offer works.
        assert_eq!(d.negotiate(V1 | 1), 1 | 2 | 8);
        d.common_w(8, 4, 0);
        assert_eq!(d.common_r(0xc, 4), 1);
        // Features are frozen after FEATURES_OK.
        d.set_driver_features(V1);
        d.common_w(8, 4, 0);
        assert_eq!(d.common_r(0xc, 4), 1);
        // DRIVER_OK without the queues enabled still activates (the device
        // decides what it needs).
        d.set_status(1 | 2 | 8 | 4);
        assert_eq!(d.status(), 1 | 2 | 8 | 4);
        assert!(d.dev.lock().unwrap().is_activated());
        assert_eq!(
            shared.lock().unwrap().activations,
            vec![(V1 | 1, vec![(false, 8), (false, 4)])]
        );
        // Clearing bits other than by reset is ignored.
        d.set_status(1);
        assert_eq!(d.status(), 1 | 2 | 8 | 4);
        // Reset.
        let resets = shared.lock().unwrap().resets;
        d.set_status(0);
        assert_eq!(d.status(), 0);
        assert!(!d.dev.lock().unwrap().is_activated());
        assert_eq!(shared.lock().unwrap().resets, resets + 1);
        d.common_w(8, 4, 0);
        assert_eq!(d.common_r(0xc, 4), 0, "driver features cleared");
    }

    #[test]
    fn queue_setup_registers() {
        let (d, shared) = driver();
        d.negotiate(V1);
        d.common_w(0x16, 2, 1);
        assert_eq!(d.common_r(0x18, 2), 4, "max size of queue 1");
        assert_eq!(d.common_r(0x1e, 2), 1, "queue_notify_off");
        d.common_w(0x1a, 2, 2);
        assert_eq!(d.common_r(0x1a, 2), 2);
        d.common_w(0x1a, 2, 3);
        assert_eq!(
            d.common_r(0x1a, 2),
            u64::from(VIRTIO_MSI_NO_VECTOR),
            "out of range"
        );
        d.common_w(0x10, 2, 0);
        assert_eq!(d.common_r(0x10, 2), 0);
        // A queue that does not exist reads size 0.
        d.common_w(0x16, 2, 2);
        assert_eq!(d.common_r(0x18, 2), 0);
        d.common_w(0x18, 2, 4);
        // Queue addresses round-trip as written.
        let q0 = SplitQueue::new(&d.mem, 8, 0x1_0000);
        d.setup_queue(0, &q0, 1);
        d.common_w(0x16, 2, 0);
        assert_eq!(d.common_r(0x20, 8), q0.desc);
        assert_eq!(d.common_r(0x28, 4), q0.avail);
        assert_eq!(d.common_r(0x1c, 2), 1);
        // Enabled queue: setup is frozen.
        d.common_w(0x18, 2, 2);
        assert_eq!(d.common_r(0x18, 2), 8);
        d.set_status(1 | 2 | 8 | 4);
        assert_eq!(
            shared.lock().unwrap().activations,
            vec![(V1, vec![(true, 8), (false, 4)])]
        );
        // Notify addresses for the VMM's ioeventfds.
        let n = d.dev.lock().unwrap().notify_addresses();
        assert_eq!(
            n,
            vec![
                NotifyAddress {
                    addr: BAR + NOTIFY_OFFSET,
                    queue: 0
                },
                NotifyAddress {
                    addr: BAR + NOTIFY_OFFSET + 4,
                    queue: 1
                },
            ]
        );
    }

    #[test]
    fn notify_msix_isr_and_needs_reset() {
        let (d, shared) = driver();
        d.enable_msix(3);
        assert_eq!(
            d.msi.take(),
            (0..3)
                .map(|v| Event::Route(
                    v,
                    Some(MsiMessage {
                        address: 0xfee0_0000,
                        data: 0x30 + u32::from(v)
                    })
                ))
                .collect::<Vec<_>>()
        );
        d.negotiate(V1);
        d.common_w(0x10, 2, 0);
        let q0 = SplitQueue::new(&d.mem, 8, 0x1_0000);
        d.setup_queue(0, &q0, 1);
        d.set_status(1 | 2 | 8 | 4);
        // MMIO notify -> EventFd -> process_queue -> MSI-X vector 1, ISR bit 0.
        d.kick(0);
        assert_eq!(shared.lock().unwrap().processed, vec![0]);
        assert_eq!(d.msi.take(), vec![Event::Trigger(1)]);
        assert_eq!(d.bar_r(ISR_OFFSET, 1), 1);
        assert_eq!(d.bar_r(ISR_OFFSET, 1), 0, "read clears");
        // A notify for a queue that does not exist, or misaligned: nothing.
        d.bar_w(NOTIFY_OFFSET + 8, 2, 0);
        d.bar_w(NOTIFY_OFFSET + 2, 2, 0);
        assert!(d
            .dev
            .lock()
            .unwrap()
            .queue_event(0)
            .unwrap()
            .read()
            .is_err());
        // A device error: NEEDS_RESET + config interrupt, then no processing.
        shared.lock().unwrap().fail_next = true;
        d.kick(0);
        assert_eq!(
            d.status() & STATUS_DEVICE_NEEDS_RESET,
            STATUS_DEVICE_NEEDS_RESET
        );
        assert_eq!(d.msi.take(), vec![Event::Trigger(0)]);
        d.kick(0);
        assert_eq!(shared.lock().unwrap().processed, vec![0, 0]);
        // The driver cannot clear NEEDS_RESET except by reset.
        d.set_status(1 | 2 | 8 | 4);
        assert_ne!(d.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        d.set_status(0);
        assert_eq!(d.status(), 0);
        // Function mask: pending, delivered on unmask.
        d.negotiate(V1);
        d.setup_queue(0, &q0, 1);
        d.set_status(1 | 2 | 8 | 4);
        let msix = d.caps.msix.unwrap();
        d.cfg_w16(msix + 2, 0xc000);
        assert!(d
            .msi
            .take()
            .iter()
            .all(|e| matches!(e, Event::Route(_, None))));
        d.kick(0);
        assert_eq!(d.bar_r(MSIX_PBA_OFFSET, 8), 0b10);
        d.cfg_w16(msix + 2, 0x8000);
        let ev = d.msi.take();
        assert!(ev.contains(&Event::Trigger(1)), "{ev:?}");
        assert_eq!(d.bar_r(MSIX_PBA_OFFSET, 8), 0);
    }

    #[test]
    fn activation_rejects_bad_queues() {
        for (size, desc, avail, used) in [
            (6u16, 0x1_0000u64, 0x1_1000u64, 0x1_2000u64), // not a power of two
            (16, 0x1_0000, 0x1_1000, 0x1_2000),            // above max
            (8, 0x1_0008, 0x1_1000, 0x1_2000),             // misaligned descriptors
            (8, 0x1_0000, 0x1_1001, 0x1_2000),             // misaligned avail ring
            (8, 0x1_0000, 0x1_1000, 0x1_2002),             // misaligned used ring
            (8, 0x10_0000, 0x1_1000, 0x1_2000),            // outside guest memory
            (8, 0x1_0000, 0x1_1000, 0xf_fff0),             // used ring runs past the end
        ] {
            let (d, shared) = driver();
            d.negotiate(V1);
            d.common_w(0x16, 2, 0);
            d.common_w(0x18, 2, u64::from(size));
            for (off, v) in [(0x20, desc), (0x28, avail), (0x30, used)] {
                d.common_w(off, 4, v);
                d.common_w(off + 4, 4, 0);
            }
            d.common_w(0x1c, 2, 1);
            d.set_status(1 | 2 | 8 | 4);
            assert_ne!(
                d.status() & STATUS_DEVICE_NEEDS_RESET,
                0,
                "{size} {desc:#x}"
            );
            assert!(!d.dev.lock().unwrap().is_activated());
            assert!(shared.lock().unwrap().activations.is_empty());
        }
    }

    #[test]
    fn pci_cfg_capability_window() {
        let (d, _) = driver();
        let cap = d.caps.pci_cfg.unwrap();
        // Read device_feature (common config 0x04) through the window.
        d.cfg_w8(cap + 4, 0);
        d.cfg_w32(cap + 8, 0x04);
        d.cfg_w32(cap + 12, 4);
        assert_eq!(d.cfg_r32(cap + 16), d.common_r(4, 4) as u32);
        // Write the status through it.
        d.cfg_w32(cap + 8, 0x14);
        d.cfg_w32(cap + 12, 1);
        d.cfg_w32(cap + 16, 1);
        assert_eq!(d.status(), 1);
        // Bad window length or BAR: no effect, no panic.
        d.cfg_w32(cap + 12, 3);
        d.cfg_w32(cap + 16, 0);
        d.cfg_w8(cap + 4, 5);
        d.cfg_w32(cap + 12, 4);
        assert_eq!(d.cfg_r32(cap + 16), 0);
        assert_eq!(d.status(), 1);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (d, _) = driver();
        for off in (0..BAR_SIZE).step_by(1) {
            for len in [1usize, 2, 3, 4, 8] {
                d.bar_r(off, len);
            }
        }
        for off in (0..BAR_SIZE).step_by(3) {
            for len in [1usize, 2, 4, 8] {
                d.bar_w(off, len, 0xffff_ffff_ffff_ffff);
            }
        }
        for reg in 0..4096u16 {
            d.cfg_w32(reg, 0xffff_ffff);
            d.cfg_r32(reg);
        }
        let mut dev = d.dev.lock().unwrap();
        dev.read_bar(1, 0, &mut [0; 4]);
        dev.write_bar(7, u64::MAX, &[1; 4]);
        dev.read_config(u16::MAX, &mut [0; 4]);
        dev.write_config(u16::MAX - 1, &[1; 4]);
        dev.process_queue(9);
    }
}
