//! `nubo-vmm`: runs one guest per process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmm::{MemorySize, OnReboot, SerialConfig, VmConfig, Vmm};

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
    /// Attach this terminal to a guest's console socket (Ctrl-] detaches).
    Console {
        /// The VMM's --serial socket=PATH.
        socket: PathBuf,
    },
    /// Send one request to a running VMM's API socket and print the answer.
    Api {
        /// The VMM's --api-socket.
        socket: PathBuf,
        /// GET or PUT.
        method: String,
        /// e.g. /vm, /vm/pause, /metrics.
        path: String,
        /// JSON body.
        body: Option<String>,
        /// Open FILE and pass its descriptor with the request (repeat for
        /// a qcow2 image's backing chain, top-down): for `/vm/add-disk`.
        #[arg(long = "fd-file")]
        fd_files: Vec<PathBuf>,
        /// Open the --fd-file files read-only.
        #[arg(long)]
        fd_readonly: bool,
        /// Open (creating it if needed) TAP NAME and pass its descriptor
        /// with the request: for `/vm/add-net`.
        #[arg(long = "fd-tap")]
        fd_tap: Option<String>,
        /// Send the request N times (a new connection each, no descriptors)
        /// and print one `API-LATENCY` line (p50/p99/max) instead of answers:
        /// for measuring the API under load.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Pause between repeated requests.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// Create a qcow2 overlay on a base image (copy-on-write, in milliseconds).
    Overlay {
        /// The base image (never written).
        #[arg(long)]
        backing: PathBuf,
        /// The base image's format: raw or qcow2.
        #[arg(long, default_value = "raw")]
        backing_format: String,
        /// The overlay to create.
        out: PathBuf,
    },
    /// Write a tiny test guest (an ELF that prints a line and powers off).
    TinyGuest {
        /// Where to write the ELF image.
        #[arg(long)]
        out: PathBuf,
        /// Enter it with PVH (32-bit) instead of the 64-bit entry.
        #[arg(long)]
        pvh: bool,
        /// What it does after its line: poweroff, reboot, halt or dots (prints forever).
        #[arg(long, default_value = "poweroff")]
        then: String,
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
    /// Serial console: stdio, off, file=PATH (a log capped at 16 MiB) or
    /// socket=PATH (attach with `nubo-vmm console PATH`).
    #[arg(long, default_value = "stdio")]
    serial: SerialConfig,
    /// A virtio-blk disk: path=FILE[,readonly=on][,id=SERIAL][,format=raw|qcow2].
    /// Repeatable; the first is /dev/vda.
    #[arg(long = "disk")]
    disks: Vec<vmm::config::DiskConfig>,
    /// A virtio-net NIC: tap=NAME[,mac=MAC] or fd=N[,mac=MAC] (an open TAP
    /// with IFF_VNET_HDR). Repeatable.
    #[arg(long = "net")]
    nets: Vec<vmm::config::NetConfig>,
    /// Serve the control API (HTTP/JSON) on this Unix socket.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// What a guest reboot does: exit the VMM, or boot the guest again.
    #[arg(long, value_enum, default_value = "exit")]
    on_reboot: OnReboot,
    /// Run as this user (name or uid) once everything the guest needs is
    /// open (/dev/kvm, TAPs, kernel, initrd, disks, console, sockets).
    #[arg(long)]
    user: Option<String>,
    /// Run as this group (name or gid), like --user.
    #[arg(long)]
    group: Option<String>,
    /// Once everything is open, make this (best empty) directory the VMM's
    /// root, in a mount namespace of its own (chroot where the host refuses
    /// namespaces).
    #[arg(long)]
    jail: Option<PathBuf>,
    /// Per-thread seccomp filters (off is for debugging only).
    #[arg(long, value_enum, default_value = "on")]
    seccomp: Switch,
}

/// On or off.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

impl RunArgs {
    /// The guest these options describe.
    fn vm_config(&self) -> Result<VmConfig, vmm::config::ConfigError> {
        let mut builder = VmConfig::builder(&self.kernel)
            .cmdline(self.cmdline.clone())
            .vcpus(self.cpus)
            .memory_bytes(self.memory.0)
            .serial(self.serial.clone());
        if let Some(initrd) = &self.initrd {
            builder = builder.initrd(initrd);
        }
        for disk in self.disks.iter().cloned() {
            builder = builder.disk(disk);
        }
        for net in self.nets.iter().cloned() {
            builder = builder.net(net);
        }
        builder.build()
    }
}

fn run(args: RunArgs) -> anyhow::Result<vmm::ExitReason> {
    let config = args.vm_config()?;
    let config_serial = config.serial.clone();
    vmm::seccomp::set_enabled(args.seccomp == Switch::On);
    // Everything that needs privileges or the host's file system is opened
    // here, before the jail; no thread runs yet.
    let vmm = Vmm::new(config, args.on_reboot)?;
    let api_listener = args
        .api_socket
        .as_deref()
        .map(vmm::api::ApiListener::bind)
        .transpose()?;
    let uid = args
        .user
        .as_deref()
        .map(vmm::privileges::resolve_user)
        .transpose()?;
    let gid = args
        .group
        .as_deref()
        .map(vmm::privileges::resolve_group)
        .transpose()?;
    if uid.is_some() || gid.is_some() {
        // The sockets stay ours to remove after the switch.
        let console = match &config_serial {
            SerialConfig::Socket(p) => Some(p.as_path()),
            _ => None,
        };
        for socket in args.api_socket.as_deref().into_iter().chain(console) {
            std::os::unix::fs::chown(socket, uid, gid)
                .with_context(|| format!("cannot hand {} to the new user", socket.display()))?;
        }
    }
    vmm::jail::enter(&vmm::jail::Jail {
        root: args.jail.clone(),
        uid,
        gid,
    })
    .context("cannot enter the jail")?;
    // Threads start jailed, and before this thread's filter (which they
    // would inherit) is installed.
    let api = api_listener
        .map(|listener| vmm::api::serve(listener, vmm.controller()))
        .transpose()?;
    vmm.start_console()?;
    vmm::seccomp::apply(vmm::seccomp::ThreadKind::Control)?;
    let reason = vmm.run().context("cannot start the guest");
    if let Some(api) = api {
        api.shutdown(std::time::Duration::from_millis(500));
    }
    let reason = reason?;
    if let Some(socket) = &args.api_socket {
        let _ = std::fs::remove_file(socket);
    }
    if let SerialConfig::Socket(socket) = &config_serial {
        let _ = std::fs::remove_file(socket);
    }
    Ok(reason)
}

fn overlay(backing: &std::path::Path, format: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let format: images::ImageFormat = format
        .parse()
        .with_context(|| format!("--backing-format {format}"))?;
    images::create_qcow2_overlay(out, backing, format)
        .with_context(|| format!("cannot create the overlay {}", out.display()))
}

/// What `nubo-vmm api` passes along with the request.
struct Passed {
    files: Vec<PathBuf>,
    read_only: bool,
    tap: Option<String>,
    repeat: u32,
    interval_ms: u64,
}

/// Sends `method path` `repeat` times, `interval` apart, and prints
/// `API-LATENCY n=N ok=N p50_ms=… p99_ms=… max_ms=…`.
fn api_latency(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    repeat: u32,
    interval: std::time::Duration,
) -> anyhow::Result<()> {
    let mut ms = Vec::with_capacity(repeat as usize);
    let mut ok = 0u32;
    for _ in 0..repeat {
        let t0 = std::time::Instant::now();
        let answer = vmm::client::request(socket, method, path, body);
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if matches!(answer, Ok((status, _)) if status < 400) {
            ok += 1;
        }
        std::thread::sleep(interval);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
        ms.get(i).copied().unwrap_or(0.0)
    };
    println!(
        "API-LATENCY n={} ok={ok} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        ms.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    anyhow::ensure!(ok == repeat, "{} of {repeat} requests failed", repeat - ok);
    Ok(())
}

fn api(
    socket: PathBuf,
    method: String,
    path: String,
    body: Option<String>,
    passed: Passed,
) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let files = passed
        .files
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(!passed.read_only)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tap = match &passed.tap {
        Some(name) => {
            let tap = netstack::Tap::open(name).with_context(|| format!("TAP {name}"))?;
            tap.set_up(true)
                .with_context(|| format!("cannot bring {name} up"))?;
            Some(tap)
        }
        None => None,
    };
    let mut fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    if let Some(tap) = &tap {
        fds.push(tap.as_fd());
    }
    let method = method.to_uppercase();
    if passed.repeat > 1 {
        anyhow::ensure!(fds.is_empty(), "--repeat cannot pass descriptors");
        return api_latency(
            &socket,
            &method,
            &path,
            body.as_deref(),
            passed.repeat,
            std::time::Duration::from_millis(passed.interval_ms),
        );
    }
    let (status, text) = if fds.is_empty() {
        vmm::client::request(&socket, &method, &path, body.as_deref())?
    } else {
        vmm::client::request_with_fds(&socket, &method, &path, body.as_deref(), &fds)?
    };
    println!("{status}");
    if !text.is_empty() {
        println!("{text}");
    }
    anyhow::ensure!(status < 400, "the VMM answered {status}");
    Ok(())
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
    // One malloc arena for all threads: less memory, and glibc never needs
    // to open /proc/sys/vm/overcommit_memory to shrink a thread's arena,
    // which the threads' seccomp filters would refuse.
    // SAFETY: mallopt only changes allocator tuning; called before any threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: vmm.log and other files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Console { socket } => vmm::console::attach_terminal(&socket)
            .with_context(|| format!("console {}", socket.display())),
        Command::Overlay {
            backing,
            backing_format,
            out,
        } => overlay(&backing, &backing_format, &out),
        Command::Api {
            socket,
            method,
            path,
            body,
            fd_files,
            fd_readonly,
            fd_tap,
            repeat,
            interval_ms,
        } => api(
            socket,
            method,
            path,
            body,
            Passed {
                files: fd_files,
                read_only: fd_readonly,
                tap: fd_tap,
                repeat,
                interval_ms,
            },
        ),
        Command::TinyGuest { out, pvh, then } => {
            let end = match then.as_str() {
                "poweroff" => vmm::tiny_guest::TinyEnd::AcpiPowerOff,
                "reboot" => vmm::tiny_guest::TinyEnd::I8042Reset,
                "halt" => vmm::tiny_guest::TinyEnd::Halt,
                "dots" => vmm::tiny_guest::TinyEnd::Dots,
                other => {
                    eprintln!(
                        "nubo-vmm: error: unknown --then '{other}' (poweroff, reboot, halt, dots)"
                    );
                    return ExitCode::FAILURE;
                }
            };
            let entry = if pvh {
                vmm::tiny_guest::TinyEntry::Pvh32
            } else {
                vmm::tiny_guest::TinyEntry::Long64
            };
            let image = vmm::tiny_guest::elf(entry, end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use vmm::config::{DiskConfig, ImageFormat, NetConfig};

    /// vmm-api's renderer is the inverse of this parser.
    #[test]
    fn rendered_run_args_parse_back() {
        let config = VmConfig::builder("/k/-vmlinuz")
            .initrd("/k/initrd")
            .cmdline("-console=ttyS0 root=/dev/vda")
            .vcpus(3)
            .memory_bytes((100 << 20) + 8192)
            .serial(SerialConfig::File("/d/console.log".into()))
            .disk(DiskConfig {
                path: "/i/disk.qcow2".into(),
                read_only: false,
                id: None,
                format: ImageFormat::Qcow2,
                ..Default::default()
            })
            .disk(DiskConfig {
                path: "/i/config.img".into(),
                read_only: true,
                id: Some("cfg".into()),
                format: ImageFormat::Raw,
                ..Default::default()
            })
            .net(
                "tap=nubo0,mac=52:54:00:12:34:56"
                    .parse::<NetConfig>()
                    .unwrap(),
            )
            .net("fd=7".parse::<NetConfig>().unwrap())
            .build()
            .unwrap();
        for socket in [None, Some(std::path::Path::new("/d/api.sock"))] {
            let mut argv = vec![std::ffi::OsString::from("nubo-vmm")];
            argv.extend(config.run_args(socket));
            let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not a run command");
            };
            assert_eq!(args.vm_config(), Ok(config.clone()));
            assert_eq!(args.api_socket.as_deref(), socket);
        }
    }
}
