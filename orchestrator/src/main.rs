//! `nubo`: the orchestrator daemon (`nubo serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator::config::{Config, Overcommit, QuotaDefaults};

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
                },
                shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
                admin_password: std::env::var("NUBO_ADMIN_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty()),
                vmm_uid_base: a.vmm_uid_base,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(orchestrator::serve::run(cfg))
        }
    }
}
