//! The daemon's configuration, from `nubo serve`'s command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Overcommit and reservation knobs, with Nova's (2023.1+) defaults.
#[derive(Debug, Clone)]
pub struct Overcommit {
    /// vCPUs per host CPU (`cpu_allocation_ratio`, default 4.0).
    pub cpu_allocation_ratio: f64,
    /// Guest MiB per host MiB (`ram_allocation_ratio`, default 1.0).
    pub ram_allocation_ratio: f64,
    /// Guest GiB per host GiB of disk (`disk_allocation_ratio`, default 1.0).
    pub disk_allocation_ratio: f64,
    /// Host memory kept for the host (`reserved_host_memory_mb`, default 512).
    pub reserved_host_memory_mb: u64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            reserved_host_memory_mb: 512,
        }
    }
}

/// Default per-project quotas (Nova's defaults).
#[derive(Debug, Clone)]
pub struct QuotaDefaults {
    /// Servers per project.
    pub instances: i64,
    /// vCPUs per project.
    pub cores: i64,
    /// MiB of RAM per project.
    pub ram: i64,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        QuotaDefaults {
            instances: 10,
            cores: 20,
            ram: 51200,
        }
    }
}

/// Everything `nubo serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for `nubo.db`, `admin-openrc`, `images/`, `instances/`.
    pub state_dir: PathBuf,
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Base URL clients reach the API at, if it differs from the request's
    /// `Host` (for example behind a port forward). No trailing slash.
    pub public_url: Option<String>,
    /// The `nubo-vmm` binary.
    pub vmm_binary: PathBuf,
    /// Guest kernel for images without a `kernel_id`.
    pub default_kernel: Option<PathBuf>,
    /// Initramfs for images without a `ramdisk_id`.
    pub default_initrd: Option<PathBuf>,
    /// Kernel command line for images without `os_command_line`.
    pub default_cmdline: String,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Largest image upload, in bytes.
    pub max_image_size: u64,
    /// Overcommit ratios and reservations.
    pub overcommit: Overcommit,
    /// Default project quotas.
    pub quotas: QuotaDefaults,
    /// How long a guest gets to power off on the ACPI button (stop, soft
    /// reboot) before it is stopped hard (Nova's `shutdown_timeout`).
    pub shutdown_timeout: Duration,
    /// Password for the admin user on first start (else one is generated).
    pub admin_password: Option<String>,
    /// First user and group id of the VMMs (one per server); `None`: the
    /// agent's default ([`crate::host::vmm::DEFAULT_VMM_UID_BASE`] for a root
    /// daemon, the daemon's own user otherwise).
    pub vmm_uid_base: Option<u32>,
}
