//! Nubo's virtual machine monitor as a library.
//!
//! Build a [`VmConfig`] with [`VmConfig::builder`], start it with
//! [`VmHandle::start`], and [`VmHandle::wait`] for the guest to end; a
//! [`VmController`] pauses, resumes, shuts down, restarts or stops it from
//! any thread. [`Vmm`] adds restarts on reboot. The `nubo-vmm` binary and its
//! API socket are thin layers over these.
//!
//! Devices come and go while the guest runs (ACPI PCI hot-plug; Linux's
//! `acpiphp`): [`VmController::add_disk`], [`VmController::add_net`],
//! [`VmController::remove_device`] (returns once the guest ejected it, or
//! [`ControlError::Timeout`]), [`VmController::resize_disk`] and
//! [`VmController::devices`]. They stay across reboots in the same process.
//!
//! ```no_run
//! use vmm::{VmConfig, VmHandle, ExitReason};
//! let config = VmConfig::builder("bzImage")
//!     .initrd("initramfs.cpio.gz")
//!     .cmdline("console=ttyS0 quiet")
//!     .vcpus(2)
//!     .memory_bytes(512 << 20)
//!     .build()?;
//! let vm = VmHandle::start(&config)?;
//! assert_eq!(vm.wait()?, ExitReason::PowerOff);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod acpi;
pub mod api;
pub mod boot;
pub mod client;
pub mod config;
pub mod console;
pub mod control;
pub mod cpu;
pub mod device_manager;
pub mod disk;
pub mod error;
pub mod fd_stream;
pub mod interrupts;
pub mod io_thread;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod privileges;
pub mod seccomp;
pub mod socket;
pub mod supervisor;
pub mod tiny_guest;
pub mod vcpu;
pub mod vm;

pub use config::{MemorySize, SerialConfig, VmConfig, VmConfigBuilder};
pub use control::{ControlError, VmController, VmInfo, VmState};
pub use error::VmError;
pub use supervisor::{OnReboot, Vmm};
pub use vm::{ExitReason, VmHandle};
