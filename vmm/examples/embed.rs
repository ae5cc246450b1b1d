//! Embedding Nubo's VMM in another program: boot a guest, stop it from
//! another thread after a deadline, and report how it ended.
//!
//! ```text
//! cargo run --release -p vmm --example embed -- KERNEL [INITRD] [CMDLINE]
//! ```
//! With no arguments it boots a tiny built-in guest that prints a line and
//! powers off, which works on any KVM host.

use std::time::Duration;

use vmm::tiny_guest::{elf, TinyEnd, TinyEntry};
use vmm::{ExitReason, SerialConfig, VmConfig, VmHandle};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tiny = std::env::temp_dir().join(format!("nubo-embed-{}.elf", std::process::id()));
    let kernel = match args.next() {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            std::fs::write(&tiny, elf(TinyEntry::Long64, TinyEnd::AcpiPowerOff))?;
            tiny.clone()
        }
    };
    let mut builder = VmConfig::builder(&kernel)
        .vcpus(2)
        .memory_bytes(256 << 20)
        .serial(SerialConfig::Stdio);
    if let Some(initrd) = args.next() {
        builder = builder.initrd(initrd);
    }
    if let Some(cmdline) = args.next() {
        builder = builder.cmdline(cmdline);
    }
    let vm = VmHandle::start(&builder.build()?)?;

    // Any thread may stop the guest; here a watchdog does after 60 s.
    let controller = vm.controller();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = controller.stop();
    });

    let reason = vm.wait();
    let _ = std::fs::remove_file(&tiny);
    match reason? {
        ExitReason::PowerOff => eprintln!("embed: the guest powered off"),
        ExitReason::Reboot => eprintln!("embed: the guest rebooted"),
        ExitReason::Stopped => eprintln!("embed: the watchdog stopped the guest"),
        ExitReason::Restart => eprintln!("embed: a restart was requested"),
    }
    Ok(())
}
