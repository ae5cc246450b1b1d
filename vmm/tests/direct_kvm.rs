//! Direct tests on this host's /dev/kvm with tiny hand-made guests: the boot
//! paths (64-bit long mode with paging, PVH 32-bit), serial output, and every
//! way a guest can end (ACPI power-off and reset, i8042 reset, triple fault,
//! an outside stop). They run anywhere KVM does, including PVM hosts that
//! cannot boot Linux.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::kvm_available;
use vmm::tiny_guest::{elf, TinyEnd, TinyEntry, READY_LINE};
use vmm::{ControlError, ExitReason, OnReboot, SerialConfig, VmConfig, VmHandle, VmState, Vmm};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nubo-direct-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots a tiny guest with the console in a file; returns how it ended and what it printed.
fn boot_tiny(entry: TinyEntry, end: TinyEnd, vcpus: u64) -> (ExitReason, String) {
    let scratch = Scratch::new(&format!("{entry:?}-{end:?}-{vcpus}"));
    let kernel = scratch.file("tiny.elf", &elf(entry, end));
    let console = scratch.0.join("console.log");
    let config = VmConfig::builder(&kernel)
        .vcpus(vcpus)
        .memory_bytes(64 << 20)
        .serial(SerialConfig::File(console.clone()))
        .build()
        .unwrap();
    let vm = VmHandle::start(&config).expect("the tiny guest starts");
    let reason = vm.wait().expect("the tiny guest ends cleanly");
    (
        reason,
        std::fs::read_to_string(&console).unwrap_or_default(),
    )
}

#[test]
fn long_mode_with_paging_prints_and_powers_off() {
    if !kvm_available() {
        return;
    }
    let (reason, out) = boot_tiny(TinyEntry::Long64, TinyEnd::AcpiPowerOff, 1);
    assert_eq!(reason, ExitReason::PowerOff);
    assert_eq!(out, format!("{READY_LINE} mode=LONGMODE paging=1\n"));
}

#[test]
fn pvh_entry_in_protected_mode() {
    if !kvm_available() {
        return;
    }
    let (reason, out) = boot_tiny(TinyEntry::Pvh32, TinyEnd::AcpiPowerOff, 1);
    assert_eq!(reason, ExitReason::PowerOff);
    assert_eq!(out, format!("{READY_LINE}\n"));
}

#[test]
fn many_vcpus_boot() {
    if !kvm_available() {
        return;
    }
    for n in [2, 16] {
        let (reason, out) = boot_tiny(TinyEntry::Long64, TinyEnd::AcpiPowerOff, n);
        assert_eq!(reason, ExitReason::PowerOff, "{n} vCPUs");
        assert!(out.starts_with(READY_LINE));
    }
}

#[test]
fn every_reset_path_is_a_reboot() {
    if !kvm_available() {
        return;
    }
    for end in [
        TinyEnd::AcpiReset,
        TinyEnd::I8042Reset,
        TinyEnd::TripleFault,
    ] {
        let (reason, out) = boot_tiny(TinyEntry::Long64, end, 1);
        assert_eq!(reason, ExitReason::Reboot, "{end:?}");
        assert!(out.starts_with(READY_LINE), "{end:?}: {out}");
    }
}

#[test]
fn a_halted_guest_is_stopped_from_another_thread() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("halt");
    let kernel = scratch.file("tiny.elf", &elf(TinyEntry::Long64, TinyEnd::Halt));
    let config = VmConfig::builder(&kernel)
        .vcpus(2)
        .memory_bytes(64 << 20)
        .serial(SerialConfig::Off)
        .build()
        .unwrap();
    let vm = VmHandle::start(&config).unwrap();
    let controller = vm.controller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        controller.stop().unwrap();
    });
    let begin = Instant::now();
    assert_eq!(vm.wait().unwrap(), ExitReason::Stopped);
    assert!(begin.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}

fn nubo_vmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nubo-vmm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exits_zero_after_guest_power_off() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("bin");
    let kernel = scratch.file("tiny.elf", &elf(TinyEntry::Long64, TinyEnd::AcpiPowerOff));
    let k = kernel.to_str().unwrap();
    let (rc, out, err) = nubo_vmm(&["run", "--kernel", k, "--memory", "32M", "--cpus", "2"]);
    assert_eq!(rc, 0, "stderr: {err}");
    assert!(out.contains(READY_LINE));
    let reboot = scratch.file("reboot.elf", &elf(TinyEntry::Pvh32, TinyEnd::I8042Reset));
    let (rc, _, err) = nubo_vmm(&["run", "--kernel", reboot.to_str().unwrap()]);
    assert_eq!(rc, 0, "a guest reboot also exits 0; stderr: {err}");
}

/// Each bad input ends with status 1 and one clear line on stderr.
#[test]
fn binary_rejects_bad_input_with_one_line() {
    let scratch = Scratch::new("errors");
    let garbage = scratch.file("garbage", &[0x5a; 4096]);
    let empty = scratch.file("empty", b"");
    let kernel = scratch.file("tiny.elf", &elf(TinyEntry::Long64, TinyEnd::AcpiPowerOff));
    let k = kernel.to_str().unwrap();
    let long_cmdline = "x".repeat(5000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--kernel", "/nonexistent/bzImage"],
            "cannot read kernel",
        ),
        (
            vec!["run", "--kernel", garbage.to_str().unwrap()],
            "not a Linux kernel",
        ),
        (
            vec!["run", "--kernel", empty.to_str().unwrap()],
            "not a Linux kernel",
        ),
        (
            vec!["run", "--kernel", k, "--initrd", "/nonexistent/initrd"],
            "cannot read initrd",
        ),
        (
            vec!["run", "--kernel", k, "--memory", "0"],
            "at least 16 MiB",
        ),
        (
            vec!["run", "--kernel", k, "--memory", "1"],
            "guest memory must be at least 16 MiB (--memory 16M), got 1 MiB",
        ),
        (
            vec!["run", "--kernel", k, "--memory", "100000G"],
            "more than this host",
        ),
        (vec!["run", "--kernel", k, "--cpus", "0"], "vCPUs"),
        (
            vec!["run", "--kernel", k, "--cmdline", &long_cmdline],
            "command line",
        ),
    ];
    for (args, expect) in cases {
        let begin = Instant::now();
        let (rc, _, err) = nubo_vmm(&args);
        let shown: Vec<&str> = args.iter().map(|a| &a[..a.len().min(40)]).collect();
        assert_ne!(rc, 0, "{shown:?} should fail");
        assert!(!err.contains("panicked"), "{shown:?}: {err}");
        assert!(
            err.contains(expect),
            "{shown:?}: expected '{expect}' in: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{shown:?}: one line: {err}");
        assert!(begin.elapsed() < Duration::from_secs(5));
    }
}

fn console_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn pause_stops_output_and_resume_continues_it() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("pause");
    let kernel = scratch.file("dots.elf", &elf(TinyEntry::Long64, TinyEnd::Dots));
    let console = scratch.0.join("console.log");
    let config = VmConfig::builder(&kernel)
        .vcpus(2)
        .memory_bytes(32 << 20)
        .serial(SerialConfig::File(console.clone()))
        .build()
        .unwrap();
    let vm = VmHandle::start(&config).unwrap();
    let ctl = vm.controller();
    let waiter = std::thread::spawn(move || vm.wait());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        console_len(&console) > READY_LINE.len() as u64,
        "dots are printed"
    );
    assert_eq!(ctl.info().state, VmState::Running);
    assert!(matches!(ctl.resume(), Err(ControlError::WrongState { .. })));

    ctl.pause().unwrap();
    assert_eq!(ctl.info().state, VmState::Paused);
    assert!(matches!(ctl.pause(), Err(ControlError::WrongState { .. })));
    let frozen = console_len(&console);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console_len(&console), frozen, "no output while paused");

    ctl.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        console_len(&console) > frozen,
        "output continues after resume"
    );
    let metrics = ctl.metrics();
    assert!(
        metrics.contains("nubo_vcpu_exits_total{reason=\"io_out\"}"),
        "{metrics}"
    );

    ctl.stop().unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), ExitReason::Stopped);
    assert_eq!(ctl.info().state, VmState::Stopped);
    assert!(matches!(ctl.pause(), Err(ControlError::Gone)));
}

#[test]
fn shutdown_of_a_guest_that_ignores_the_button_times_out() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("shutdown");
    let kernel = scratch.file("dots.elf", &elf(TinyEntry::Long64, TinyEnd::Dots));
    let config = VmConfig::builder(&kernel)
        .memory_bytes(32 << 20)
        .serial(SerialConfig::Off)
        .build()
        .unwrap();
    let vm = VmHandle::start(&config).unwrap();
    let ctl = vm.controller();
    let waiter = std::thread::spawn(move || vm.wait());
    let begin = Instant::now();
    ctl.shutdown(Some(Duration::from_millis(300))).unwrap();
    assert_eq!(ctl.info().state, VmState::ShuttingDown);
    assert_eq!(waiter.join().unwrap().unwrap(), ExitReason::Stopped);
    let took = begin.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn restart_on_reboot_boots_again_until_stopped() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("restart");
    let kernel = scratch.file("reboot.elf", &elf(TinyEntry::Long64, TinyEnd::I8042Reset));
    let console = scratch.0.join("console.log");
    let config = VmConfig::builder(&kernel)
        .memory_bytes(32 << 20)
        .serial(SerialConfig::File(console.clone()))
        .build()
        .unwrap();
    let vmm = Vmm::new(config, OnReboot::Restart).unwrap();
    let ctl = vmm.controller();
    let runner = std::thread::spawn(move || vmm.run());
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait for the third boot's line, not only its start: a stop right
    // after boot_count turns 3 may come before the guest printed.
    let printed = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .matches(READY_LINE)
            .count()
    };
    while printed() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        ctl.info().boot_count >= 3,
        "the guest rebooted and came back"
    );
    // The guest may be between boots; retry the stop until it lands.
    while ctl.stop().is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(runner.join().unwrap().unwrap(), ExitReason::Stopped);
    let out = std::fs::read_to_string(&console).unwrap();
    assert!(out.matches(READY_LINE).count() >= 3, "{out}");
}

/// Log lines written to a file or pipe carry no ANSI colour codes (vmm.log
/// is read by people and by the orchestrator's error messages).
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("ansi");
    let kernel = scratch.file("tiny.elf", &elf(TinyEntry::Long64, TinyEnd::AcpiPowerOff));
    let out = Command::new(env!("CARGO_BIN_EXE_nubo-vmm"))
        .args(["run", "--memory", "32M", "--serial", "off", "--kernel"])
        .arg(&kernel)
        .env("NUBO_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("guest exited"), "{err}");
    assert!(!err.contains('\x1b'), "ANSI escape in {err:?}");
}
