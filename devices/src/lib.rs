//! Nubo's emulated devices.
//!
//! Legacy x86 platform devices (16550 serial, i8042, ACPI power management
//! registers) sit on the port I/O bus; virtio devices arrive with the PCI
//! transport. Every device takes guest-controlled input and must never panic
//! on it.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pci;
pub mod pci_hotplug;
pub mod serial;
pub mod trigger;
pub mod virtio;

pub use bus::{BusError, MmioBus, MmioBusError, MmioDevice, PioBus, PioDevice};
#[cfg(feature = "fuzzing")]
pub use virtio::fuzz::{fuzz_blk_request, fuzz_net_tx};
