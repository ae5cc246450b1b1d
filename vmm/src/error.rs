//! The errors of building and running a guest.

use std::path::PathBuf;

/// Why a VM could not be built or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] std::io::Error),
    /// KVM lacks something we need.
    #[error("this host's KVM does not support {0}")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM failed to {0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Guest memory could not be set up.
    #[error(transparent)]
    GuestMemory(#[from] crate::memory::MemoryError),
    /// Guest memory bookkeeping failed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    /// The ACPI tables could not be written.
    #[error("cannot write the ACPI tables: {0}")]
    Acpi(#[from] crate::acpi::AcpiError),
    /// A vCPU could not be configured.
    #[error("cannot configure vCPU {id}: {source}")]
    Vcpu {
        /// The vCPU.
        id: u8,
        /// What failed.
        source: crate::cpu::regs::RegsError,
    },
    /// Devices could not be placed on the bus.
    #[error("cannot place a device: {0}")]
    Bus(#[from] devices::BusError),
    /// A disk image could not be opened.
    #[error("cannot open disk {path}: {reason}")]
    Disk {
        /// The image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A NIC could not be set up.
    #[error("cannot set up a NIC: {0}")]
    Net(String),
    /// PCI devices could not be set up.
    #[error("cannot set up PCI devices: {0}")]
    Devices(String),
    /// The console socket could not be bound.
    #[error(transparent)]
    ConsoleSocket(#[from] crate::socket::SocketError),
    /// The serial log file could not be opened.
    #[error("cannot open the serial log {0}: {1}")]
    SerialFile(PathBuf, #[source] std::io::Error),
    /// An eventfd or epoll operation failed.
    #[error("event handling failed: {0}")]
    Event(#[source] std::io::Error),
    /// The vCPU kick signal could not be installed.
    #[error("cannot install the vCPU signal handler: {0}")]
    Signal(#[source] std::io::Error),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A vCPU stopped because the guest could not run any more.
    #[error("the guest failed: {0}")]
    GuestFailed(String),
}
