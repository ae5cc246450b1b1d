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
    /// Networks per project (Neutron's `quota_network`, 100).
    pub network: i64,
    /// Subnets per project (100).
    pub subnet: i64,
    /// Ports per project (500).
    pub port: i64,
    /// Routers per project (10).
    pub router: i64,
    /// Floating IPs per project (50).
    pub floatingip: i64,
    /// Security groups per project (10).
    pub security_group: i64,
    /// Security group rules per project (100).
    pub security_group_rule: i64,
    /// Volumes per project (Cinder's `quota_volumes`, 10).
    pub volumes: i64,
    /// GiB of volumes and snapshots per project (`quota_gigabytes`, 1000).
    pub gigabytes: i64,
    /// Snapshots per project (`quota_snapshots`, 10).
    pub snapshots: i64,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        QuotaDefaults {
            instances: 10,
            cores: 20,
            ram: 51200,
            network: 100,
            subnet: 100,
            port: 500,
            router: 10,
            floatingip: 50,
            security_group: 10,
            security_group_rule: 100,
            volumes: 10,
            gigabytes: 1000,
            snapshots: 10,
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
    /// The Networking service's segments and this host's network side.
    pub network: NetworkConfig,
    /// The Block Storage service's backends.
    pub volume: VolumeConfig,
}

/// The Block Storage service's backends (Cinder's `enabled_backends`).
/// The `file` backend is always there; `lvm` when a volume group is named.
#[derive(Debug, Clone, Default)]
pub struct VolumeConfig {
    /// The `file` backend's directory; `None`: `STATE/volumes`.
    pub file_dir: Option<PathBuf>,
    /// The volume group of the `lvm` backend (Cinder's `volume_group`),
    /// which must exist; `None`: no `lvm` backend.
    pub lvm_volume_group: Option<String>,
    /// The thin pool in that group, created (over 95% of the group's free
    /// space) when missing; `None`: `nubo-pool`.
    pub lvm_thin_pool: Option<String>,
    /// The backend of the `__DEFAULT__` volume type (`file` unless given).
    pub default_backend: Option<String>,
}

/// What type a project network gets (Neutron's `tenant_network_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TenantNetworkType {
    /// VXLAN with a VNI from `vni_ranges`.
    #[default]
    Vxlan,
    /// VLAN with an id from `network_vlan_ranges`.
    Vlan,
}

/// A physical network and, if tenant networks may use it, its VLAN range
/// (Neutron's `network_vlan_ranges = physnet1:100:199`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanRange {
    /// The physical network.
    pub physnet: String,
    /// First and last VLAN id for tenant networks, if any.
    pub range: Option<(u16, u16)>,
}

/// The Networking service's configuration (Neutron's ML2 and linuxbridge
/// agent options).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The type of a project network.
    pub tenant_network_type: TenantNetworkType,
    /// VNIs for tenant VXLAN networks (`vni_ranges`, default 1000:1999).
    pub vni_range: (u32, u32),
    /// Physical networks usable for VLANs (`network_vlan_ranges`).
    pub vlan_ranges: Vec<VlanRange>,
    /// Physical network → host interface (`physical_interface_mappings`).
    pub physical_interface_mappings: Vec<(String, String)>,
    /// This host's VXLAN underlay address (`local_ip`).
    pub vxlan_local_ip: Option<std::net::Ipv4Addr>,
    /// The other hosts' VTEPs.
    pub vxlan_peers: Vec<std::net::Ipv4Addr>,
    /// The one-host external network (`--external-network CIDR`): a flat
    /// `router:external` network `public` on physnet `external`, whose
    /// gateway is this host (the CIDR's first address, with masquerade out
    /// of the host's default route), like libvirt's `virbr0`.
    pub external_network: Option<netstack::Ipv4Net>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            tenant_network_type: TenantNetworkType::Vxlan,
            vni_range: (1000, 1999),
            vlan_ranges: Vec::new(),
            physical_interface_mappings: Vec::new(),
            vxlan_local_ip: None,
            vxlan_peers: Vec::new(),
            external_network: None,
        }
    }
}

impl NetworkConfig {
    /// Whether `physnet` is a physical network this daemon knows (in
    /// `network_vlan_ranges` or `physical_interface_mappings`).
    pub fn knows_physnet(&self, physnet: &str) -> bool {
        self.vlan_ranges.iter().any(|r| r.physnet == physnet)
            || (self.external_network.is_some()
                && physnet == crate::host::net::agent::EXTERNAL_PHYSNET)
            || self
                .physical_interface_mappings
                .iter()
                .any(|(p, _)| p == physnet)
    }
}
