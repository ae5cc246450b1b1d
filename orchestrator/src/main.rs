//! `nubo`: the orchestrator daemon (`nubo serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator::config::{
    Config, NetworkConfig, Overcommit, QuotaDefaults, TenantNetworkType, VlanRange,
};

#[derive(Parser)]
#[command(
    name = "nubo",
    version,
    about = "Nubo: a small cloud that speaks OpenStack's core APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Identity, Image and Compute APIs and run the servers' VMMs.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory for the state database, images, instances and admin-openrc.
    #[arg(long)]
    state_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8774")]
    listen: SocketAddr,
    /// URL clients reach the API at, when it differs from the listen address
    /// (port forwards, proxies). Default: the request's Host.
    #[arg(long)]
    public_url: Option<String>,
    /// The nubo-vmm binary (default: next to this binary, else on PATH).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Guest kernel for images without a kernel_id property.
    #[arg(long)]
    default_kernel: Option<PathBuf>,
    /// Initramfs for images without a ramdisk_id property.
    #[arg(long)]
    default_initrd: Option<PathBuf>,
    /// Kernel command line for images without an os_command_line property.
    #[arg(long, default_value = "console=ttyS0 root=/dev/vda rw quiet")]
    default_cmdline: String,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    token_ttl: u64,
    /// Largest image upload in MiB.
    #[arg(long, default_value_t = 10_240)]
    max_image_mib: u64,
    /// vCPUs per host CPU.
    #[arg(long, default_value_t = 4.0)]
    cpu_allocation_ratio: f64,
    /// Guest RAM per host RAM.
    #[arg(long, default_value_t = 1.0)]
    ram_allocation_ratio: f64,
    /// Guest disk per host disk.
    #[arg(long, default_value_t = 1.0)]
    disk_allocation_ratio: f64,
    /// Host memory (MiB) never given to guests.
    #[arg(long, default_value_t = 512)]
    reserved_host_memory_mb: u64,
    /// Seconds a guest gets to power off on the ACPI button before a hard stop.
    #[arg(long, default_value_t = 60)]
    shutdown_timeout: u64,
    /// Default per-project quota: servers.
    #[arg(long, default_value_t = 10)]
    quota_instances: i64,
    /// Default per-project quota: vCPUs.
    #[arg(long, default_value_t = 20)]
    quota_cores: i64,
    /// Default per-project quota: RAM in MiB.
    #[arg(long, default_value_t = 51_200)]
    quota_ram: i64,
    /// First user and group id of the VMMs, one per server (default
    /// 2000000000 when the daemon runs as root; otherwise the VMMs run as
    /// the daemon's user).
    #[arg(long)]
    vmm_uid_base: Option<u32>,
    /// The type of project networks: vxlan or vlan (Neutron's
    /// tenant_network_types).
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "vlan"])]
    tenant_network_type: String,
    /// VNIs for project VXLAN networks, MIN:MAX.
    #[arg(long, default_value = "1000:1999")]
    vni_ranges: String,
    /// A physical network usable for VLANs, with the range project networks
    /// may take: PHYSNET[:MIN:MAX] (repeatable).
    #[arg(long)]
    network_vlan_ranges: Vec<String>,
    /// Physical network to host interface, PHYSNET:IFACE (repeatable).
    #[arg(long)]
    physical_interface_mappings: Vec<String>,
    /// This host's VXLAN underlay address.
    #[arg(long)]
    vxlan_local_ip: Option<std::net::Ipv4Addr>,
    /// Another host's VXLAN underlay address (repeatable).
    #[arg(long)]
    vxlan_peer: Vec<std::net::Ipv4Addr>,
    /// Make this host the gateway of a flat external network `public` with
    /// this CIDR (the host takes its first address and masquerades it out
    /// of its default route): floating IPs then answer from this host. For
    /// a single host or a lab; never on a host whose NAT you do not own.
    #[arg(long)]
    external_network: Option<netstack::Ipv4Net>,
    /// Default per-project quota: networks.
    #[arg(long, default_value_t = 100)]
    quota_network: i64,
    /// Default per-project quota: subnets.
    #[arg(long, default_value_t = 100)]
    quota_subnet: i64,
    /// Default per-project quota: ports.
    #[arg(long, default_value_t = 500)]
    quota_port: i64,
    /// Default per-project quota: routers.
    #[arg(long, default_value_t = 10)]
    quota_router: i64,
    /// Default per-project quota: floating IPs.
    #[arg(long, default_value_t = 50)]
    quota_floatingip: i64,
    /// Default per-project quota: security groups.
    #[arg(long, default_value_t = 10)]
    quota_security_group: i64,
    /// Default per-project quota: security group rules.
    #[arg(long, default_value_t = 100)]
    quota_security_group_rule: i64,
    /// Default per-project quota: volumes.
    #[arg(long, default_value_t = 10)]
    quota_volumes: i64,
    /// Default per-project quota: GiB of volumes and snapshots.
    #[arg(long, default_value_t = 1000)]
    quota_gigabytes: i64,
    /// Default per-project quota: volume snapshots.
    #[arg(long, default_value_t = 10)]
    quota_snapshots: i64,
    /// Directory of the `file` volume backend (default STATE/volumes).
    #[arg(long)]
    volume_dir: Option<PathBuf>,
    /// Volume group of the `lvm` volume backend (thin LVs); without it
    /// there is no `lvm` backend.
    #[arg(long)]
    lvm_volume_group: Option<String>,
    /// Thin pool of the `lvm` backend in that group (created when missing).
    #[arg(long)]
    lvm_thin_pool: Option<String>,
    /// Backend of the default volume type `__DEFAULT__`: file or lvm.
    #[arg(long)]
    default_volume_backend: Option<String>,
}

/// Parses `MIN:MAX` with `lo <= MIN <= MAX <= hi`.
fn parse_range(what: &str, s: &str, lo: u32, hi: u32) -> anyhow::Result<(u32, u32)> {
    let (a, b) = s
        .split_once(':')
        .with_context(|| format!("{what} '{s}': expected MIN:MAX"))?;
    let (a, b): (u32, u32) = (
        a.parse().with_context(|| format!("{what} '{s}'"))?,
        b.parse().with_context(|| format!("{what} '{s}'"))?,
    );
    anyhow::ensure!(
        lo <= a && a <= b && b <= hi,
        "{what} '{s}': expected {lo} <= MIN <= MAX <= {hi}"
    );
    Ok((a, b))
}

/// The network part of the configuration from the flags.
fn network_config(a: &ServeArgs) -> anyhow::Result<NetworkConfig> {
    let mut vlan_ranges = Vec::new();
    for r in &a.network_vlan_ranges {
        let (physnet, range) = match r.split_once(':') {
            None => (r.clone(), None),
            Some((p, rest)) => {
                let (lo, hi) = parse_range("--network-vlan-ranges", rest, 1, 4094)?;
                (p.to_string(), Some((lo as u16, hi as u16)))
            }
        };
        anyhow::ensure!(
            !physnet.is_empty(),
            "--network-vlan-ranges '{r}': no physical network"
        );
        vlan_ranges.push(VlanRange { physnet, range });
    }
    let mut mappings = Vec::new();
    for m in &a.physical_interface_mappings {
        let (p, i) = m
            .split_once(':')
            .filter(|(p, i)| !p.is_empty() && !i.is_empty() && i.len() <= 15)
            .with_context(|| {
                format!("--physical-interface-mappings '{m}': expected PHYSNET:IFACE")
            })?;
        mappings.push((p.to_string(), i.to_string()));
    }
    anyhow::ensure!(
        a.tenant_network_type != "vlan" || vlan_ranges.iter().any(|r| r.range.is_some()),
        "--tenant-network-type vlan needs a --network-vlan-ranges PHYSNET:MIN:MAX for project networks"
    );
    Ok(NetworkConfig {
        tenant_network_type: if a.tenant_network_type == "vlan" {
            TenantNetworkType::Vlan
        } else {
            TenantNetworkType::Vxlan
        },
        vni_range: parse_range("--vni-ranges", &a.vni_ranges, 1, 16_777_215)?,
        vlan_ranges,
        physical_interface_mappings: mappings,
        vxlan_local_ip: a.vxlan_local_ip,
        vxlan_peers: a.vxlan_peer.clone(),
        external_network: a.external_network,
    })
}

fn default_vmm() -> PathBuf {
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("nubo-vmm");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("nubo-vmm")
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => {
            for (name, v) in [
                ("cpu", a.cpu_allocation_ratio),
                ("ram", a.ram_allocation_ratio),
                ("disk", a.disk_allocation_ratio),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    anyhow::bail!("--{name}-allocation-ratio must be a positive number");
                }
            }
            let network = network_config(&a)?;
            let cfg = Config {
                state_dir: a.state_dir,
                listen: a.listen,
                public_url: a.public_url.map(|u| u.trim_end_matches('/').to_string()),
                vmm_binary: a.vmm.unwrap_or_else(default_vmm),
                default_kernel: a.default_kernel,
                default_initrd: a.default_initrd,
                default_cmdline: a.default_cmdline,
                token_ttl: Duration::from_secs(a.token_ttl),
                max_image_size: a.max_image_mib.saturating_mul(1 << 20),
                overcommit: Overcommit {
                    cpu_allocation_ratio: a.cpu_allocation_ratio,
                    ram_allocation_ratio: a.ram_allocation_ratio,
                    disk_allocation_ratio: a.disk_allocation_ratio,
                    reserved_host_memory_mb: a.reserved_host_memory_mb,
                },
                quotas: QuotaDefaults {
                    instances: a.quota_instances,
                    cores: a.quota_cores,
                    ram: a.quota_ram,
                    network: a.quota_network,
                    subnet: a.quota_subnet,
                    port: a.quota_port,
                    router: a.quota_router,
                    floatingip: a.quota_floatingip,
                    security_group: a.quota_security_group,
                    security_group_rule: a.quota_security_group_rule,
                    volumes: a.quota_volumes,
                    gigabytes: a.quota_gigabytes,
                    snapshots: a.quota_snapshots,
                },
                shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
                admin_password: std::env::var("NUBO_ADMIN_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty()),
                vmm_uid_base: a.vmm_uid_base,
                network,
                volume: orchestrator::config::VolumeConfig {
                    file_dir: a.volume_dir.clone(),
                    lvm_volume_group: a.lvm_volume_group.clone(),
                    lvm_thin_pool: a.lvm_thin_pool.clone(),
                    default_backend: a.default_volume_backend.clone(),
                },
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(orchestrator::serve::run(cfg))
        }
    }
}
