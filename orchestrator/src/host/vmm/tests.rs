//! The agent with real `nubo-vmm` processes running tiny guests on this
//! host's KVM. The VMM binary is `$NUBO_VMM`, else the newer of
//! `target/{release,debug}/nubo-vmm`, else built with
//! `cargo build -p vmm --bin nubo-vmm`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use images::ImageFormat;
use tempfile::TempDir;
use vmm::tiny_guest::{elf, TinyEnd, TinyEntry, READY_LINE};
use vmm_api::config::{DiskConfig, SerialConfig, VmConfig};

use super::*;

#[path = "../../../tests/common/kvm.rs"]
mod kvm;
use kvm::{kvm_available, vmm_binary};

/// An agent on a temporary directory; on drop, SIGKILLs every VMM any test
/// started there (through the pid files), so no process outlives a test.
struct Harness {
    dir: TempDir,
    agent: Option<Agent>,
}

impl Harness {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let agent = Agent::new(vmm_binary(), dir.path().join("instances")).unwrap();
        Harness {
            dir,
            agent: Some(agent),
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    /// A tiny guest kernel that ends with `end`.
    fn kernel(&self, end: TinyEnd) -> PathBuf {
        let path = self.dir.path().join(format!("tiny-{end:?}.elf"));
        std::fs::write(&path, elf(TinyEntry::Long64, end)).unwrap();
        path
    }

    fn spec(&self, id: &str, end: TinyEnd) -> VmmSpec {
        VmmSpec {
            server_id: id.to_owned(),
            vm: guest(self.kernel(end), None, "console=ttyS0", 1, 32, vec![]),
            vmm_uid: None,
        }
    }

    fn instances(&self) -> PathBuf {
        self.dir.path().join("instances").canonicalize().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("instances")) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Ok(Some(pid)) = process::read_pid_file(&dir.join(PID_FILE)) {
                // Compare with the exact socket path the VMM was given.
                let socket = self.instances().join(entry.file_name()).join(SOCKET_FILE);
                if process::is_our_vmm(pid, &socket) {
                    eprintln!("test harness: killing leftover nubo-vmm {pid}");
                    let _ = process::sigkill(pid);
                }
            }
        }
        if let Some(agent) = self.agent.take() {
            // Reap our children (ignoring errors: the test may have failed).
            for id in agent.list_instances().unwrap_or_default() {
                let _ = agent.kill(&id);
            }
        }
    }
}

const ID: &str = "0f0e1d2c-3b4a-4958-8776-a5b4c3d2e1f0";

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn invalid_server_ids_are_rejected() {
    let h = Harness::new();
    let a = h.agent();
    for bad in [
        "",
        "..",
        "../etc",
        "a/b",
        "ABCDEF",
        "g",
        "x y",
        "abc\0",
        &"a".repeat(65),
    ] {
        let is_invalid = |r: Result<(), AgentError>| matches!(r, Err(AgentError::InvalidServerId(ref s)) if s == bad);
        assert!(is_invalid(a.instance_dir(bad).map(drop)), "{bad:?}");
        assert!(is_invalid(a.console_output(bad, None).map(drop)));
        assert!(is_invalid(a.adopt(bad).map(drop)));
        assert!(is_invalid(a.stop(bad)));
        assert!(is_invalid(a.kill(bad)));
        assert!(is_invalid(a.remove_instance(bad)));
        assert!(is_invalid(a.spawn(&h.spec(bad, TinyEnd::Halt)).map(drop)));
        let img = h.kernel(TinyEnd::Halt);
        assert!(is_invalid(
            a.create_boot_disk(bad, &img, ImageFormat::Raw).map(drop)
        ));
    }
    for good in [ID, "0", "abc-def", &"a".repeat(64)] {
        assert_eq!(a.instance_dir(good).unwrap(), h.instances().join(good));
    }
    // Nothing was created for the bad ids.
    assert_eq!(a.list_instances().unwrap(), Vec::<String>::new());
}

#[test]
fn spec_is_stored_as_json_and_becomes_vmm_arguments() {
    let spec = VmmSpec {
        server_id: ID.into(),
        vm: guest(
            "/k/vmlinuz".into(),
            Some("/k/initrd".into()),
            "-console=ttyS0 root=/dev/vda",
            2,
            512,
            vec![
                disk("/i/disk.qcow2", ImageFormat::Qcow2, false),
                disk("/i/config.img", ImageFormat::Raw, true),
            ],
        ),
        vmm_uid: None,
    };
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"format\":\"qcow2\""), "{json}");
    assert_eq!(serde_json::from_str::<VmmSpec>(&json).unwrap(), spec);
    let args_of = |spec: &VmmSpec| -> Vec<String> {
        spec.vmm_args(
            Path::new("/d/console.log"),
            Path::new("/d/api.sock"),
            Path::new("/d/jail"),
        )
        .unwrap()
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
    };
    let args = args_of(&spec);
    assert_eq!(
        args,
        [
            "run",
            "--kernel=/k/vmlinuz",
            "--initrd=/k/initrd",
            "--cmdline=-console=ttyS0 root=/dev/vda",
            "--cpus=2",
            "--memory=512M",
            "--serial=file=/d/console.log",
            "--api-socket=/d/api.sock",
            "--disk=path=/i/disk.qcow2,format=qcow2",
            "--disk=path=/i/config.img,format=raw,readonly=on",
            "--on-reboot=restart",
            "--seccomp=on",
        ]
    );
    // With an id of its own, the VMM runs as it, jailed.
    let jailed = VmmSpec {
        vmm_uid: Some(2_000_000_007),
        ..spec.clone()
    };
    assert_eq!(
        args_of(&jailed)[args.len()..],
        ["--user=2000000007", "--group=2000000007", "--jail=/d/jail"]
    );
    let json = serde_json::to_string(&jailed).unwrap();
    assert_eq!(serde_json::from_str::<VmmSpec>(&json).unwrap(), jailed);
    let mut bad = spec.clone();
    bad.vm.disks[0].path = "/a,b".into();
    assert!(matches!(
        bad.validate(),
        Err(AgentError::InvalidSpec { .. })
    ));
    let mut bad = spec.clone();
    bad.vm.vcpus = 0;
    assert!(bad.validate().is_err());
    let mut bad = spec;
    bad.vm.memory_bytes = 0;
    assert!(bad.validate().is_err());
}

#[test]
fn boot_disk_is_an_overlay_on_the_image() {
    let h = Harness::new();
    let image = h.dir.path().join("image.raw");
    std::fs::write(&image, vec![0x5a; 8 << 20]).unwrap();
    let disk = h
        .agent()
        .create_boot_disk(ID, &image, ImageFormat::Raw)
        .unwrap();
    assert_eq!(disk, h.instances().join(ID).join("disk.qcow2"));
    let size = std::fs::metadata(&disk).unwrap().len();
    assert!(size < 1 << 20, "the overlay holds no data: {size} bytes");
    let overlay = images::Qcow2Image::open(&disk, true).unwrap();
    assert_eq!(
        overlay.backing_path(),
        Some(image.canonicalize().unwrap().as_path())
    );
    use images::BlockBackend;
    assert_eq!(overlay.size(), 8 << 20);
    // A second boot disk for the same server is refused, not overwritten.
    assert!(matches!(
        h.agent().create_boot_disk(ID, &image, ImageFormat::Raw),
        Err(AgentError::Image { .. })
    ));
    let mode = std::fs::metadata(h.instances().join(ID))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(h.instances())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn spawn_run_console_and_stop() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let mut p = a.spawn(&h.spec(ID, TinyEnd::Halt)).unwrap();
    assert!(p.is_own_child());
    a.wait_running(ID, Duration::from_secs(10)).unwrap();
    assert_eq!(a.vm_state(ID).unwrap(), "running");
    assert!(a.is_alive(&p));
    let dir = h.instances().join(ID);
    assert_eq!(
        std::fs::read_to_string(dir.join("vmm.pid")).unwrap().trim(),
        p.pid.to_string()
    );
    let stored = a.load_spec(ID).unwrap().unwrap();
    assert_eq!(
        VmmSpec {
            vmm_uid: None,
            ..stored
        },
        h.spec(ID, TinyEnd::Halt)
    );
    // Its own session: not in the test's process group.
    // SAFETY: getsid has no memory effects.
    assert_eq!(unsafe { libc::getsid(p.pid) }, p.pid);
    wait_for("the ready line", Duration::from_secs(5), || {
        a.console_output(ID, None).unwrap().contains(READY_LINE)
    });
    assert!(a.console_output(ID, Some(1)).unwrap().contains(READY_LINE));
    // A second VMM for the same server is refused.
    assert!(matches!(
        a.spawn(&h.spec(ID, TinyEnd::Halt)),
        Err(AgentError::AlreadyRunning { pid, .. }) if pid == p.pid
    ));
    a.stop(ID).unwrap();
    assert!(!a.is_alive(&p));
    let exit = a.wait_exit(&mut p, Duration::from_secs(1)).unwrap();
    assert_eq!(exit.and_then(|e| e.code), Some(0));
    // A jailed VMM cannot remove its socket from the root-owned instance
    // directory: it is gone, or stale (the next start replaces it).
    assert!(
        std::os::unix::net::UnixStream::connect(dir.join("api.sock")).is_err(),
        "nobody serves the socket any more"
    );
    // Stopping again is fine.
    a.stop(ID).unwrap();
    a.shutdown(ID, Duration::from_secs(1)).unwrap();
}

#[test]
fn shutdown_stops_a_guest_that_ignores_acpi_after_the_timeout() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let mut p = a.spawn(&h.spec(ID, TinyEnd::Halt)).unwrap();
    a.wait_running(ID, Duration::from_secs(10)).unwrap();
    let begin = Instant::now();
    a.shutdown(ID, Duration::from_millis(500)).unwrap();
    let took = begin.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "the VMM's timeout ended it: {took:?}"
    );
    let exit = a.wait_exit(&mut p, Duration::ZERO).unwrap();
    assert_eq!(exit.and_then(|e| e.code), Some(0));
}

#[test]
fn adopt_after_a_daemon_restart() {
    if !kvm_available() {
        return;
    }
    let mut h = Harness::new();
    let p = h.agent().spawn(&h.spec(ID, TinyEnd::Dots)).unwrap();
    h.agent().wait_running(ID, Duration::from_secs(10)).unwrap();
    let pid = p.pid;
    // The daemon goes away: its agent and process handles with it.
    drop(p);
    drop(h.agent.take());
    let agent = Agent::new(vmm_binary(), h.dir.path().join("instances")).unwrap();
    let mut adopted = agent.adopt(ID).unwrap().expect("the VMM is adopted");
    assert_eq!(adopted.pid, pid);
    assert!(!adopted.is_own_child());
    assert_eq!(adopted.socket, h.instances().join(ID).join("api.sock"));
    assert!(agent.is_alive(&adopted));
    assert_eq!(agent.vm_state(ID).unwrap(), "running");
    assert_eq!(agent.list_instances().unwrap(), vec![ID.to_string()]);
    agent.stop(ID).unwrap();
    assert!(!agent.is_alive(&adopted));
    assert_eq!(
        agent.wait_exit(&mut adopted, Duration::ZERO).unwrap(),
        Some(ExitInfo::UNKNOWN)
    );
    assert!(agent.adopt(ID).unwrap().is_none());
    h.agent = Some(agent);
}

#[test]
fn a_powered_off_guest_ends_and_is_not_adopted() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let mut p = a.spawn(&h.spec(ID, TinyEnd::AcpiPowerOff)).unwrap();
    let exit = a.wait_exit(&mut p, Duration::from_secs(10)).unwrap();
    assert_eq!(exit.and_then(|e| e.code), Some(0));
    assert!(!a.is_alive(&p));
    assert!(a.adopt(ID).unwrap().is_none());
    // A fresh agent (no Child) sees it dead too.
    let other = Agent::new(vmm_binary(), h.dir.path().join("instances")).unwrap();
    assert!(other.adopt(ID).unwrap().is_none());
    assert!(a.console_output(ID, None).unwrap().contains(READY_LINE));
    // A pid file naming a live process that is not this server's VMM (the
    // test itself), or garbage, adopts nothing and kills nothing.
    let pid_file = h.instances().join(ID).join("vmm.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    assert!(other.adopt(ID).unwrap().is_none());
    other.kill(ID).unwrap();
    std::fs::write(&pid_file, "garbage").unwrap();
    assert!(other.adopt(ID).unwrap().is_none());
    std::fs::write(&pid_file, "-1").unwrap();
    assert!(other.adopt(ID).unwrap().is_none());
    other.kill(ID).unwrap();
}

#[test]
fn a_vmm_that_fails_to_start_is_reported_with_its_log() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let mut spec = h.spec(ID, TinyEnd::Halt);
    spec.vm.kernel = h.dir.path().join("no-such-kernel");
    a.spawn(&spec).unwrap();
    match a.wait_running(ID, Duration::from_secs(10)) {
        Err(AgentError::VmmExited { exit, log_tail, .. }) => {
            assert_eq!(exit.and_then(|e| e.code), Some(1));
            assert!(log_tail.contains("no-such-kernel"), "{log_tail}");
            assert!(!log_tail.contains(LOG_MARKER), "{log_tail}");
        }
        other => panic!("expected VmmExited, got {other:?}"),
    }
}

#[test]
fn a_guest_reboot_stays_in_the_same_vmm() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let p = a.spawn(&h.spec(ID, TinyEnd::AcpiReset)).unwrap();
    wait_for("a second boot", Duration::from_secs(10), || {
        a.console_output(ID, None)
            .unwrap()
            .matches(READY_LINE)
            .count()
            >= 2
    });
    assert!(a.is_alive(&p));
    a.kill(ID).unwrap();
    assert!(!a.is_alive(&p));
}

#[test]
fn remove_instance_kills_and_deletes() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let other = "1234";
    let p = a.spawn(&h.spec(ID, TinyEnd::Halt)).unwrap();
    std::fs::create_dir(h.instances().join(other)).unwrap();
    std::fs::create_dir(h.instances().join("not-an-id.tmp")).unwrap();
    assert_eq!(
        a.list_instances().unwrap(),
        vec![ID.to_string(), other.to_string()]
    );
    a.remove_instance(ID).unwrap();
    assert!(!a.is_alive(&p));
    assert!(!h.instances().join(ID).exists());
    assert_eq!(a.list_instances().unwrap(), vec![other.to_string()]);
    // Removing what is not there is fine.
    a.remove_instance(ID).unwrap();
    assert_eq!(a.console_output(ID, None).unwrap(), "");
}

#[test]
fn socket_paths_that_do_not_fit_are_refused() {
    let h = Harness::new();
    let deep = h.dir.path().join("d".repeat(100));
    let agent = Agent::new(vmm_binary(), deep).unwrap();
    assert!(matches!(
        agent.spawn(&h.spec(ID, TinyEnd::Halt)),
        Err(AgentError::SocketPathTooLong { .. })
    ));
}

/// Set for the helper process of [`the_vmm_outlives_a_killed_daemon`].
const HELPER_DIR_ENV: &str = "NUBO_AGENT_TEST_HELPER_DIR";

/// The "daemon" of [`the_vmm_outlives_a_killed_daemon`]: starts a VMM, says
/// so with a file, and waits to be killed.
#[test]
#[ignore = "helper process of the_vmm_outlives_a_killed_daemon"]
fn helper_daemon_that_gets_killed() {
    let Some(dir) = std::env::var_os(HELPER_DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let agent = Agent::new(vmm_binary(), dir.join("instances")).unwrap();
    let kernel = dir.join("helper.elf");
    std::fs::write(&kernel, elf(TinyEntry::Long64, TinyEnd::Dots)).unwrap();
    let _p = agent
        .spawn(&VmmSpec {
            server_id: ID.into(),
            vm: guest(kernel, None, "", 1, 32, vec![]),
            vmm_uid: None,
        })
        .unwrap();
    agent.wait_running(ID, Duration::from_secs(10)).unwrap();
    std::fs::write(dir.join("ready"), "").unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_vmm_outlives_a_killed_daemon() {
    if !kvm_available() {
        return;
    }
    let h = Harness::new();
    let mut daemon = Command::new(std::env::current_exe().unwrap())
        .args([
            "host::vmm::tests::helper_daemon_that_gets_killed",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(HELPER_DIR_ENV, h.dir.path())
        .env("NUBO_VMM", vmm_binary())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = h.dir.path().join("ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!("the helper daemon did not start its VMM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let a = h.agent();
    let p = a.adopt(ID).unwrap().expect("the VMM survived its daemon");
    assert_eq!(a.vm_state(ID).unwrap(), "running");
    // The guest keeps printing dots after the daemon's death.
    let before = a.console_output(ID, None).unwrap().len();
    wait_for("more console output", Duration::from_secs(5), || {
        a.console_output(ID, None).unwrap().len() > before
    });
    a.stop(ID).unwrap();
    assert!(!a.is_alive(&p));
}

/// Whether this test process may start jailed VMMs (root) on KVM.
fn can_jail() -> bool {
    if !kvm_available() {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: only a root daemon jails its VMMs");
    }
    root
}

/// Asserts that `pid` runs jailed (see the module doc of `agent`), and
/// returns its `/proc/PID/status` lines that say so.
fn assert_jailed(pid: i32, instance_dir: &Path) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    };
    for key in ["Uid:", "Gid:"] {
        let ids: Vec<&str> = field(key).split_whitespace().collect();
        assert_eq!(ids.len(), 4, "{key} {ids:?}");
        assert!(
            ids.iter().all(|id| *id == ids[0] && *id != "0"),
            "{key} {ids:?}"
        );
    }
    assert_eq!(field("Groups:"), "", "no supplementary groups");
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(key), "0000000000000000", "{key}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(environ.is_empty(), "{}", String::from_utf8_lossy(&environ));
    // Its own mount namespace whose root is the empty jail directory, unless
    // the host refused it (then the VMM said so in its log).
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    if ns(&pid.to_string()) == ns("self") {
        let log = std::fs::read_to_string(instance_dir.join(LOG_FILE)).unwrap();
        assert!(log.contains("refuses a mount namespace"), "{log}");
    } else {
        let seen: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(seen.is_empty(), "the VMM sees {seen:?} at /");
    }
    status
        .lines()
        .filter(|l| {
            ["Uid", "Gid", "Groups", "Cap", "NoNewPrivs", "Seccomp:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A VMM started by a root agent runs jailed, with its boot disk (a qcow2
/// overlay on a raw image), and boots again from the descriptors it opened
/// before the jail.
#[test]
fn a_vmm_runs_jailed_and_restarts_in_its_jail() {
    if !can_jail() {
        return;
    }
    let h = Harness::new();
    let a = h.agent();
    let image = h.dir.path().join("image.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let disk = a.create_boot_disk(ID, &image, ImageFormat::Raw).unwrap();
    let mut spec = h.spec(ID, TinyEnd::Dots);
    spec.vm
        .disks
        .push(self::disk(disk, ImageFormat::Qcow2, false));
    let mut p = a.spawn(&spec).unwrap();
    a.wait_running(ID, Duration::from_secs(10)).unwrap();
    let lines = assert_jailed(p.pid, &h.instances().join(ID));
    eprintln!("jailed VMM {}:\n{lines}", p.pid);
    wait_for("the first boot", Duration::from_secs(5), || {
        a.console_output(ID, None).unwrap().contains(READY_LINE)
    });
    let (status, body) = a.api(ID, "PUT", "/vm/reboot", None).unwrap();
    assert_eq!(status, 204, "{body}");
    wait_for("a second boot in the jail", Duration::from_secs(10), || {
        a.console_output(ID, None)
            .unwrap()
            .matches(READY_LINE)
            .count()
            >= 2
    });
    a.stop(ID).unwrap();
    let exit = a.wait_exit(&mut p, Duration::from_secs(1)).unwrap();
    assert_eq!(exit.and_then(|e| e.code), Some(0));
}

/// A jailed VMM gets its NICs' TAPs at the fixed descriptors its `--net
/// fd=` names, and runs with them: it needs no network privilege of its own.
#[test]
fn a_jailed_vmm_inherits_its_taps() {
    if !can_jail() {
        return;
    }
    // The TAPs live in a namespace of the test's own, held by a thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let taps: Vec<std::os::fd::OwnedFd> = ["nt0", "nt1"]
            .iter()
            .map(|n| netstack::Tap::open(n).unwrap().into_fd())
            .collect();
        tx.send(taps).unwrap();
        let _ = done_rx.recv();
    });
    let taps = rx.recv().unwrap();
    let h = Harness::new();
    let a = h.agent();
    let mut spec = h.spec(ID, TinyEnd::Dots);
    for i in 0..2 {
        spec.vm.nets.push(vmm_api::config::NetConfig {
            tap: None,
            fd: Some(tap_fd(i)),
            mac: Some([0xfa, 0x16, 0x3e, 0, 0, i as u8]),
        });
    }
    assert!(
        matches!(
            a.spawn_with_taps(&spec, &taps[..1]),
            Err(AgentError::InvalidSpec { .. })
        ),
        "a TAP short"
    );
    let mut p = a.spawn_with_taps(&spec, &taps).unwrap();
    a.wait_running(ID, Duration::from_secs(10)).unwrap();
    assert_jailed(p.pid, &h.instances().join(ID));
    for i in 0..2 {
        let link = std::fs::read_link(format!("/proc/{}/fd/{}", p.pid, tap_fd(i))).unwrap();
        assert_eq!(link, Path::new("/dev/net/tun"), "fd {}", tap_fd(i));
    }
    a.stop(ID).unwrap();
    let exit = a.wait_exit(&mut p, Duration::from_secs(2)).unwrap();
    assert_eq!(exit.and_then(|e| e.code), Some(0));
    drop(done_tx);
    holder.join().unwrap();
}

/// Each server's VMM gets an id of its own, recorded in spec.json and kept
/// across its restarts and a daemon restart.
#[test]
fn vmm_ids_are_per_server_and_kept() {
    if !can_jail() {
        return;
    }
    const ID2: &str = "0f0e1d2c-3b4a-4958-8776-a5b4c3d2e1f1";
    let mut h = Harness::new();
    let id_of = |h: &Harness, id: &str| h.agent().load_spec(id).unwrap().unwrap().vmm_uid;
    let uid_line = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let p1 = h.agent().spawn(&h.spec(ID, TinyEnd::Dots)).unwrap();
    let p2 = h.agent().spawn(&h.spec(ID2, TinyEnd::Dots)).unwrap();
    h.agent().wait_running(ID, Duration::from_secs(10)).unwrap();
    h.agent()
        .wait_running(ID2, Duration::from_secs(10))
        .unwrap();
    let (u1, u2) = (id_of(&h, ID).unwrap(), id_of(&h, ID2).unwrap());
    assert_ne!(u1, u2);
    assert!(u1 >= DEFAULT_VMM_UID_BASE && u2 >= DEFAULT_VMM_UID_BASE);
    assert_eq!(uid_line(p1.pid), u1);
    assert_eq!(uid_line(p2.pid), u2);
    h.agent().stop(ID).unwrap();
    let p1 = h.agent().spawn(&h.spec(ID, TinyEnd::Dots)).unwrap();
    h.agent().wait_running(ID, Duration::from_secs(10)).unwrap();
    assert_eq!(id_of(&h, ID), Some(u1), "a restart keeps the id");
    assert_eq!(uid_line(p1.pid), u1);
    // A new daemon adopts the unprivileged VMM.
    drop(h.agent.take());
    let agent = Agent::new(vmm_binary(), h.dir.path().join("instances")).unwrap();
    let adopted = agent.adopt(ID).unwrap().expect("the jailed VMM is adopted");
    assert_eq!(adopted.pid, p1.pid);
    agent.stop(ID).unwrap();
    agent.stop(ID2).unwrap();
    h.agent = Some(agent);
}

/// The agent takes ids from its configured range, skipping those other
/// instances recorded, and reports a full range.
#[test]
fn vmm_ids_come_from_the_configured_range() {
    let h = Harness::new();
    let a = Agent::new(vmm_binary(), h.dir.path().join("instances"))
        .unwrap()
        .with_vmm_uid_base(Some(4_000_000_000));
    let record = |id: &str, uid: Option<u32>| {
        let dir = h.instances().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = VmmSpec {
            vmm_uid: uid,
            ..h.spec(id, TinyEnd::Halt)
        };
        std::fs::write(dir.join(SPEC_FILE), serde_json::to_vec(&spec).unwrap()).unwrap();
    };
    record("aaaa", Some(4_000_000_000));
    record("bbbb", Some(4_000_000_002));
    record("cccc", None);
    assert_eq!(a.vmm_uid_for("dddd").unwrap(), Some(4_000_000_001));
    assert_eq!(a.vmm_uid_for("bbbb").unwrap(), Some(4_000_000_002));
    assert_eq!(a.vmm_uid_for("cccc").unwrap(), Some(4_000_000_001));
    let a = a.with_vmm_uid_base(None);
    assert_eq!(a.vmm_uid_for("dddd").unwrap(), None);
    let full = Agent::new(vmm_binary(), h.dir.path().join("instances"))
        .unwrap()
        .with_vmm_uid_base(Some(u32::MAX - 1));
    record("eeee", Some(u32::MAX - 1));
    assert!(matches!(
        full.vmm_uid_for("ffff"),
        Err(AgentError::NoFreeVmmId { .. })
    ));
}

/// A guest of `vcpus` vCPUs and `memory_mib` MiB (its serial is set when the
/// VMM starts).
fn guest(
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: &str,
    vcpus: u8,
    memory_mib: u64,
    disks: Vec<DiskConfig>,
) -> VmConfig {
    VmConfig {
        kernel,
        initrd,
        cmdline: cmdline.into(),
        vcpus,
        memory_bytes: memory_mib << 20,
        serial: SerialConfig::Off,
        disks,
        nets: vec![],
    }
}

/// A disk without a serial.
fn disk(path: impl Into<PathBuf>, format: ImageFormat, read_only: bool) -> DiskConfig {
    DiskConfig {
        path: path.into(),
        read_only,
        id: None,
        format,
        ..Default::default()
    }
}

#[test]
fn a_spec_json_from_before_the_vm_config_still_loads() {
    // What servers created by an earlier daemon have in INSTANCE/spec.json.
    let old = r#"{
        "server_id": "0123abcd",
        "kernel": "/k/vmlinuz",
        "initrd": null,
        "cmdline": "console=ttyS0",
        "vcpus": 2,
        "memory_mib": 256,
        "disks": [{"path": "/i/disk.qcow2", "format": "qcow2", "readonly": false}],
        "vmm_uid": 2000000003
    }"#;
    let spec: VmmSpec = serde_json::from_str(old).unwrap();
    assert_eq!(
        spec,
        VmmSpec {
            server_id: "0123abcd".into(),
            vm: guest(
                "/k/vmlinuz".into(),
                None,
                "console=ttyS0",
                2,
                256,
                vec![disk("/i/disk.qcow2", ImageFormat::Qcow2, false)],
            ),
            vmm_uid: Some(2_000_000_003),
        }
    );
    // Written again, it is the current shape, and reads back the same.
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"vm\":{"), "{json}");
    assert_eq!(serde_json::from_str::<VmmSpec>(&json).unwrap(), spec);
}
