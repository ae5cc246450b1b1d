//! Nubo's virtual machine monitor as a library.
//!
//! Build a [`VmConfig`] with [`VmConfig::builder`], start it with
//! [`VmHandle::start`], and either [`VmHandle::wait`] for the guest to end or
//! stop it from another thread with a [`VmStopper`]. The `nubo-vmm` binary is
//! a thin command line over this.
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
pub mod boot;
pub mod config;
pub mod cpu;
pub mod error;
pub mod layout;
pub mod memory;
pub mod tiny_guest;
pub mod vcpu;
pub mod vm;

pub use config::{MemorySize, SerialConfig, VmConfig, VmConfigBuilder};
pub use error::VmError;
pub use vm::{ExitReason, VmHandle, VmStopper};
