//! PCI: configuration space, capabilities, MSI-X, a single root bus with a
//! host bridge, and the two ways a guest reaches configuration space (type-1
//! port I/O at 0xCF8/0xCFC and ECAM).
//!
//! # How the VMM wires it
//!
//! * One [`PciBus`] behind `Arc<Mutex<_>>`; it starts with a host bridge at
//!   00:00.0. Devices go in slots 1..=31 with [`PciBus::add_device`].
//! * [`PciConfigIo`] on the port I/O bus at 0xCF8, length 8.
//! * [`PciConfigMmio`] on the MMIO bus at the ECAM base, length 256 MiB (or
//!   1 MiB: only bus 0 exists).
//! * [`PciBarWindow`] on the MMIO bus over each window where BARs live (the
//!   32-bit hole below ECAM, and a 64-bit window if any). The PCI bus routes
//!   BAR accesses itself, following BAR moves and memory-decode enables, so
//!   the MMIO bus never changes at run time.
//! * BAR addresses are chosen by the VMM (e.g. with [`AddressAllocator`])
//!   before the device is built. When the guest moves a BAR, config writes
//!   return [`BarReprogram`] events, also passed to the handler set with
//!   [`PciBus::set_bar_reprogram_handler`], so that the VMM can move its
//!   ioeventfds.
//!
//! Only function 0 of each slot and only bus 0 exist; no I/O-space BARs, no
//! INTx (devices must use MSI-X), no expansion ROMs, no hotplug.

pub mod allocator;
mod bus;
pub mod configuration;
pub mod msix;

pub use allocator::{AddressAllocator, AllocError};
pub use bus::{
    BarReprogram, BarReprogramHandler, PciBarWindow, PciBus, PciConfigIo, PciConfigMmio,
    PciHostBridge, SharedPciDevice, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_SIZE,
};
pub use configuration::{BarKind, PciBar, PciConfiguration, PciHeader};
pub use msix::{MsiInterrupts, MsiMessage, MsixConfig};

/// Errors of building PCI devices and the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR with a bad index, size, alignment or address, or in a used slot.
    #[error("invalid BAR {index}: address {addr:#x}, size {size:#x}")]
    InvalidBar {
        /// BAR register index.
        index: u8,
        /// Requested address.
        addr: u64,
        /// Requested size.
        size: u64,
    },
    /// No room is left for another capability in the 256-byte space.
    #[error("no room for another PCI capability")]
    CapabilitySpaceFull,
    /// All 31 device slots are taken.
    #[error("the PCI bus has no free slot")]
    BusFull,
    /// The slot number is 0 (host bridge), above 31, or taken.
    #[error("PCI slot {0} is not available")]
    SlotUnavailable(u8),
}

/// A PCI function as the bus sees it.
///
/// Config accesses use byte offsets 0..4096 and 1-4 byte lengths; BAR
/// accesses give the BAR index and the offset inside it. All values come
/// from the guest: implementations must bound-check them.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &PciConfiguration;

    /// The function's configuration space, mutable.
    fn config_mut(&mut self) -> &mut PciConfiguration;

    /// Guest read of configuration space.
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config().read(usize::from(offset), data);
    }

    /// Guest write of configuration space. Devices with guest-writable
    /// capabilities (MSI-X control) override this to react to them.
    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config_mut().write(usize::from(offset), data);
    }

    /// Guest read of `data.len()` bytes at `offset` inside BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// Guest write of `data` at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);
}
