//! Virtio 1.x devices and their PCI transport.
//!
//! A [`VirtioDevice`] (e.g. [`block::Block`]) knows its own features, config
//! space and request processing; [`pci::VirtioPciDevice`] wraps it into a PCI
//! function (modern virtio-pci, vendor 0x1af4, device 0x1040 + type) that
//! negotiates features, collects the queue setup, and activates the device on
//! `DRIVER_OK`.
//!
//! There are no threads here: the VMM's I/O thread of each device calls
//! [`pci::VirtioPciDevice::process_queue`] when a queue's `EventFd` fires
//! (signalled by KVM through an ioeventfd, or by the transport itself when a
//! notify write arrives as a plain MMIO exit) and
//! [`pci::VirtioPciDevice::process_backend`] when the host side is ready,
//! all of one wake-up inside one pass (`begin_batch`/`end_batch`) so that
//! each queue raises at most one interrupt per pass.

pub mod block;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod net;
pub mod pci;
mod ring;
#[cfg(test)]
mod test_driver;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;

use std::io;
use std::sync::Arc;

pub use virtio_queue::Queue;

/// The guest memory type devices access (the VMM's `GuestMemoryMmap`).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Copies `data.len()` bytes of a device's config space from `offset`;
/// bytes past its end read as zero (the guest chooses the offset).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = offset
            .checked_add(i as u64)
            .and_then(|o| config.get(usize::try_from(o).ok()?))
            .copied()
            .unwrap_or(0);
    }
}

/// Device status bit: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status bit: the driver is ready; the device may be used.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status bit (set by the device): it hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature bit: descriptors may point to indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Feature bit: virtio 1.x (modern) device; required by the PCI transport.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;

/// Which interrupt a device raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// The device configuration changed (or the device needs a reset).
    Config,
    /// Buffers were used in queue `n`.
    Queue(u16),
}

/// How a device raises interrupts; the transport implements it (MSI-X).
pub trait VirtioInterrupt: Send + Sync {
    /// Raises `kind`.
    fn trigger(&self, kind: VirtioInterruptType) -> io::Result<()>;
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue's size, addresses or alignment are invalid, or its rings are
    /// not inside guest memory.
    #[error("queue {queue} is misconfigured: {reason}")]
    BadQueue {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
    /// The device needs a queue the driver did not enable.
    #[error("queue {0} is required but was not enabled")]
    QueueNotEnabled(u16),
}

/// Errors of processing a queue after which the device needs a reset
/// (`DEVICE_NEEDS_RESET`): the driver broke the ring protocol.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The available ring index moved by more than the queue size.
    #[error("available ring index jumped from {next} to {avail}")]
    AvailIndex {
        /// Next entry the device expected.
        next: u16,
        /// Index the driver published.
        avail: u16,
    },
    /// A descriptor chain is unusable (no writable status byte, a loop,
    /// descriptors outside the table or guest memory).
    #[error("malformed descriptor chain at head {head}: {reason}")]
    MalformedChain {
        /// Head descriptor index.
        head: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// Reading or writing the rings failed.
    #[error("virtqueue access failed: {0}")]
    Ring(String),
}

/// A virtio device behind some transport.
///
/// The transport owns the guest-visible registers; the device sees the
/// negotiated features, its queues and an interrupt once the driver sets
/// `DRIVER_OK`, and processes a queue when asked. All guest-controlled input
/// (config offsets, queue contents) must be bound-checked.
pub trait VirtioDevice: Send {
    /// Virtio device type (2 = block).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers. The transport adds
    /// [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// Maximum size of each queue (powers of two); the length is the number
    /// of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Guest read of the device configuration space at `offset`; bytes past
    /// its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest write of the device configuration space (most devices ignore it).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the features the driver accepted and one
    /// [`Queue`] per queue index (disabled queues are not `ready()`).
    fn activate(
        &mut self,
        mem: GuestMemory,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Processes available buffers of queue `index`. An error means the
    /// device needs a reset; it must not touch the queue again until then.
    fn process_queue(&mut self, index: u16) -> Result<(), QueueError>;
    /// The device's host-side descriptor (a TAP with frames to read, a block
    /// engine with completions to reap; see [`VirtioDevice::backend_fd`]) is
    /// ready: serve it. Watched edge-triggered, so serve everything that is
    /// there. By default: process queue 0 (a NIC's receive queue).
    fn backend_ready(&mut self) -> Result<(), QueueError> {
        self.process_queue(0)
    }
    /// The host-side descriptor the device's I/O thread watches besides the
    /// queue notifications (edge-triggered, readable), if any; it must stay
    /// open as long as the device.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The I/O thread starts serving several ready descriptors in one pass
    /// (queue notifications and the backend): until [`VirtioDevice::end_batch`]
    /// the device may hold back its used-ring interrupts.
    fn begin_batch(&mut self) {}
    /// The pass is over: raise each queue's held-back interrupt at most once
    /// (after returning whatever else finished meanwhile). Not called when
    /// the device stopped during the pass; [`VirtioDevice::reset`] and
    /// [`VirtioDevice::activate`] end batching too.
    fn end_batch(&mut self) -> Result<(), QueueError> {
        Ok(())
    }
    /// Back to the pre-activation state (drops queues and interrupt).
    fn reset(&mut self);
    /// Re-reads what the configuration space reflects (a disk's size);
    /// true when it changed and the driver must be told.
    fn update_config(&mut self) -> bool {
        false
    }
}
