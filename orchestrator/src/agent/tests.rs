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

use super::*;

#[path = "../../tests/common/kvm.rs"]
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
            kernel: self.kernel(end),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_mib: 32,
            disks: vec![],
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
        kernel: "/k/vmlinuz".into(),
        initrd: Some("/k/initrd".into()),
        cmdline: "-console=ttyS0 root=/dev/vda".into(),
        vcpus: 2,
        memory_mib: 512,
        disks: vec![
            DiskSpec {
                path: "/i/disk.qcow2".into(),
                format: ImageFormat::Qcow2,
                readonly: false,
            },
            DiskSpec {
                path: "/i/config.img".into(),
                format: ImageFormat::Raw,
                readonly: true,
            },
        ],
    };
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"format\":\"qcow2\""), "{json}");
    assert_eq!(serde_json::from_str::<VmmSpec>(&json).unwrap(), spec);
    let args: Vec<String> = spec
        .vmm_args(Path::new("/d/console.log"), Path::new("/d/api.sock"))
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
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
    let mut bad = spec.clone();
    bad.disks[0].path = "/a,b".into();
    assert!(matches!(
        bad.validate(),
        Err(AgentError::InvalidSpec { .. })
    ));
    let mut bad = spec.clone();
    bad.vcpus = 0;
    assert!(bad.validate().is_err());
    let mut bad = spec;
    bad.memory_mib = 0;
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
    assert_eq!(a.load_spec(ID).unwrap().unwrap(), h.spec(ID, TinyEnd::Halt));
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
    assert!(!dir.join("api.sock").exists(), "the VMM removed its socket");
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
    spec.kernel = h.dir.path().join("no-such-kernel");
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
            kernel,
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 32,
            disks: vec![],
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
            "agent::tests::helper_daemon_that_gets_killed",
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
