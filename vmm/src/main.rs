//! `nubo-vmm`: runs one guest per process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmm::{ExitReason, MemorySize, SerialConfig, VmConfig, VmHandle};

/// Nubo's virtual machine monitor: one guest per process.
#[derive(Parser)]
#[command(name = "nubo-vmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux kernel and run it until it powers off or reboots.
    Run(RunArgs),
    /// Write a tiny test guest (an ELF that prints a line and powers off).
    TinyGuest {
        /// Where to write the ELF image.
        #[arg(long)]
        out: PathBuf,
        /// Enter it with PVH (32-bit) instead of the 64-bit entry.
        #[arg(long)]
        pvh: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel image: a bzImage or an ELF vmlinux (PVH or 64-bit entry).
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs to load.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = vmm::config::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u64,
    /// Guest RAM, e.g. 512M or 2G.
    #[arg(long, default_value = "512M")]
    memory: MemorySize,
    /// Serial console: stdio, off or file=PATH.
    #[arg(long, default_value = "stdio")]
    serial: SerialConfig,
}

fn run(args: RunArgs) -> anyhow::Result<ExitReason> {
    let mut builder = VmConfig::builder(&args.kernel)
        .cmdline(args.cmdline)
        .vcpus(args.cpus)
        .memory_bytes(args.memory.0)
        .serial(args.serial);
    if let Some(initrd) = &args.initrd {
        builder = builder.initrd(initrd);
    }
    let config = builder.build()?;
    let vm = VmHandle::start(&config).context("cannot start the guest")?;
    Ok(vm.wait()?)
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message before it already contains.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).map(|reason| {
            tracing::info!(?reason, "guest exited");
        }),
        Command::TinyGuest { out, pvh } => {
            let entry = if pvh {
                vmm::tiny_guest::TinyEntry::Pvh32
            } else {
                vmm::tiny_guest::TinyEntry::Long64
            };
            let image = vmm::tiny_guest::elf(entry, vmm::tiny_guest::TinyEnd::AcpiPowerOff);
            std::fs::write(&out, image).with_context(|| format!("cannot write {}", out.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nubo-vmm: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
