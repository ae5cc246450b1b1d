//! The control API on its Unix socket, driven through the real `nubo-vmm`
//! binary with tiny guests on this host's KVM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm::client::request;
mod common;
use common::kvm_available;
use vmm::tiny_guest::{elf, TinyEnd, TinyEntry};

/// A nubo-vmm process serving its API, killed and cleaned up on drop.
struct Vmm {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Vmm {
    fn start(name: &str, end: TinyEnd, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("nubo-api-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("tiny.elf");
        std::fs::write(&kernel, elf(TinyEntry::Long64, end)).unwrap();
        let socket = dir.join("api.sock");
        let console = dir.join("console.log");
        let serial = if extra.contains(&"--serial") {
            vec![]
        } else {
            vec![
                "--serial".to_string(),
                format!("file={}", console.display()),
            ]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_nubo-vmm"))
            .args(["run", "--kernel"])
            .arg(&kernel)
            .args(["--memory", "32M", "--api-socket"])
            .arg(&socket)
            .args(&serial)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // Served, not only there: a stale socket may be there before.
        let served = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
        while !served() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(served(), "the API socket is served");
        let vm = Self { child, dir, socket };
        // The socket answers while the guest is still being built.
        while vm.state() == "starting" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        vm
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        request(&self.socket, method, path, body).unwrap()
    }

    /// One request written on a raw connection by a separate thread, so a
    /// server that answers and closes before reading the whole body (EPIPE
    /// for the writer) still yields its status and body.
    fn call_ignoring_write_errors(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let w = std::thread::spawn(move || {
            let _ = writer.write_all(request.as_bytes());
        });
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let _ = w.join();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    fn state(&self) -> String {
        let (status, body) = self.call("GET", "/vm", None);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn lifecycle_through_the_socket() {
    if !kvm_available() {
        return;
    }
    let mut vm = Vmm::start("lifecycle", TinyEnd::Dots, &[]);
    assert_eq!(mode(&vm.socket), 0o600);
    assert_eq!(vm.state(), "running");
    assert_eq!(vm.call("PUT", "/vm/resume", None).0, 409);
    assert_eq!(vm.call("PUT", "/vm/pause", None).0, 204);
    assert_eq!(vm.state(), "paused");
    assert_eq!(vm.call("PUT", "/vm/shutdown", None).0, 409, "resume first");
    assert_eq!(vm.call("PUT", "/vm/resume", None).0, 204);
    assert_eq!(vm.state(), "running");
    let (status, metrics) = vm.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let io_out: u64 = metrics
        .lines()
        .find(|l| l.starts_with("nubo_vcpu_exits_total{reason=\"io_out\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(io_out > 10, "{metrics}");
    assert_eq!(vm.call("PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn bad_requests_get_4xx_and_the_guest_keeps_running() {
    if !kvm_available() {
        return;
    }
    let vm = Vmm::start("bad", TinyEnd::Dots, &[]);
    let huge = format!("{{\"timeout_s\": 1, \"pad\": \"{}\"}}", "x".repeat(3 << 20));
    for (method, path, body, want) in [
        ("GET", "/nope", None, 404),
        ("PUT", "/vm", None, 405),
        ("PUT", "/vm/shutdown", Some("{not json"), 400),
        ("PUT", "/vm/shutdown", Some("{\"timeout_s\": -1}"), 400),
        (
            "PUT",
            "/vm/shutdown",
            Some("{\"timeout_s\": 1, \"force\": true}"),
            400,
        ),
        ("PUT", "/vm/shutdown", Some("[1,2,3]"), 400),
        ("PUT", "/vm/shutdown", Some(huge.as_str()), 413),
        ("PUT", "/vm/pause", Some(huge.as_str()), 204),
        ("PUT", "/vm/resume", Some(huge.as_str()), 204),
    ] {
        let (status, text) = match body {
            // The server may answer an oversized body (or one it ignores)
            // before reading it all and close: the response is what counts.
            Some(b) if b.len() > 1 << 20 => vm.call_ignoring_write_errors(method, path, b),
            _ => vm.call(method, path, body),
        };
        let shown = body.map(|b| &b[..b.len().min(40)]);
        assert_eq!(status, want, "{method} {path} {shown:?}: {text}");
        if status >= 400 {
            // Every error is JSON, 413 from the body limit included.
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text:?}"));
            assert!(v["error"].is_string(), "{text}");
        }
    }
    assert_eq!(vm.state(), "running");
}

#[test]
fn two_clients_at_once() {
    if !kvm_available() {
        return;
    }
    let vm = Vmm::start("clients", TinyEnd::Dots, &[]);
    let socket = vm.socket.clone();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| request(&socket, "GET", "/vm", None).unwrap().0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // A third client holds a connection open without sending anything.
    let idle = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    for t in threads {
        assert!(t.join().unwrap().iter().all(|&s| s == 200));
    }
    drop(idle);
}

#[test]
fn shutdown_timeout_stops_a_guest_that_ignores_the_button() {
    if !kvm_available() {
        return;
    }
    let mut vm = Vmm::start("shutdown", TinyEnd::Dots, &[]);
    let begin = Instant::now();
    assert_eq!(
        vm.call("PUT", "/vm/shutdown", Some("{\"timeout_s\": 0.5}"))
            .0,
        204
    );
    assert_eq!(vm.state(), "shutting-down");
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(begin.elapsed() >= Duration::from_millis(500));
}

#[test]
fn reboot_request_and_on_reboot_restart() {
    if !kvm_available() {
        return;
    }
    let mut vm = Vmm::start("reboot", TinyEnd::Dots, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !vm.console().contains("NUBO-TINY-READY") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(vm.call("PUT", "/vm/reboot", None).0, 204);
    while vm.console().matches("NUBO-TINY-READY").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(vm.console().matches("NUBO-TINY-READY").count(), 2);
    // The vCPU may print before the control thread counts the boot.
    let mut info = String::new();
    while !info.contains("\"boot_count\":2") && Instant::now() < deadline {
        info = vm.call("GET", "/vm", None).1;
    }
    assert!(info.contains("\"boot_count\":2"), "{info}");
    assert_eq!(vm.call("PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));

    // A guest that reboots itself comes back with --on-reboot restart.
    let mut vm = Vmm::start("restart", TinyEnd::I8042Reset, &["--on-reboot", "restart"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while vm.console().matches("NUBO-TINY-READY").count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(vm.console().matches("NUBO-TINY-READY").count() >= 3);
    while vm.call("PUT", "/vm/stop", None).0 != 204 && Instant::now() < deadline {}
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn console_socket_attach_detach_reattach() {
    use std::io::Read;
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nubo-console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.sock");
    let serial = format!("socket={}", console.display());
    let mut vm = Vmm::start("console", TinyEnd::Dots, &["--serial", &serial]);
    assert_eq!(mode(&console), 0o600);
    let read_some = |want: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(&console).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains(want) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "console closed early");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    // A new client first gets recent output, then the live stream.
    let first = read_some("...");
    assert!(first.contains("NUBO-TINY-READY"), "{first}");
    // Detached: the guest keeps running, and a new client attaches.
    assert_eq!(vm.state(), "running");
    read_some("....");
    assert_eq!(vm.call("PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn runs_unprivileged_after_setup() {
    if !kvm_available() {
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to drop privileges");
        return;
    }
    let jail = std::env::temp_dir().join(format!("nubo-jail-{}", std::process::id()));
    std::fs::create_dir_all(&jail).unwrap();
    let jail_arg = jail.to_str().unwrap();
    let mut vm = Vmm::start(
        "unprivileged",
        TinyEnd::Dots,
        &["--user", "nobody", "--group", "nogroup", "--jail", jail_arg],
    );
    assert_eq!(vm.state(), "running");
    let pid = vm.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "{uid_line}"
    );
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    // Its root is the jail directory, in a mount namespace of its own.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    if ns(&pid.to_string()) != ns("self") {
        std::fs::write(jail.join("marker"), "").unwrap();
        let seen: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(seen, ["marker"]);
    }
    assert_eq!(vm.call("PUT", "/vm/pause", None).0, 204);
    assert_eq!(vm.call("PUT", "/vm/resume", None).0, 204);
    // A jailed VMM opens no image by path; it takes one passed with the request.
    let image = vm.dir.join("jailed.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let body = format!(
        r#"{{"path":"{}","read_only":false,"id":"jailed","format":"raw"}}"#,
        image.display()
    );
    let (status, text) = vm.call("PUT", "/vm/add-disk", Some(&body));
    assert_eq!(status, 400, "by path, in the jail: {text}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let fds = [std::os::fd::AsFd::as_fd(&file)];
    let (status, text) =
        vmm::client::request_with_fds(&vm.socket, "PUT", "/vm/add-disk", Some(&body), &fds)
            .unwrap();
    assert_eq!(status, 200, "with its descriptor: {text}");
    assert_eq!(
        vm.call("PUT", "/vm/reboot", None).0,
        204,
        "restarts reuse the open /dev/kvm and kernel"
    );
    let (_, text) = vm.call("GET", "/vm", None);
    assert!(
        text.contains(r#""id":"jailed""#),
        "the disk is back after the restart: {text}"
    );
    assert_eq!(vm.call("PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));
    let _ = std::fs::remove_dir_all(&jail);
}

/// Runs a second `nubo-vmm run ARGS` that must fail within 5 s; returns
/// its stderr.
fn second_vmm_fails(args: &[&std::ffi::OsStr]) -> String {
    let mut second = Command::new(env!("CARGO_BIN_EXE_nubo-vmm"))
        .args(["run", "--memory", "32M"])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second VMM took over a live socket and kept running");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(1), "{err}");
    err
}

/// A second VMM given the API socket of a live one refuses to start (the
/// first keeps its API); a stale socket nobody serves is replaced.
#[test]
fn a_live_api_socket_is_refused_and_a_stale_one_replaced() {
    if !kvm_available() {
        return;
    }
    let first = Vmm::start("live", TinyEnd::Dots, &[]);
    let kernel = first.dir.join("tiny.elf");
    let err = second_vmm_fails(&[
        "--serial".as_ref(),
        "off".as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--api-socket".as_ref(),
        first.socket.as_os_str(),
    ]);
    assert!(
        err.contains(&format!(
            "API socket {} is in use by a live process",
            first.socket.display()
        )),
        "{err}"
    );
    assert_eq!(first.state(), "running", "the first VMM keeps its API");

    // A socket left by a dead process: bound, never served.
    let dir = std::env::temp_dir().join(format!("nubo-api-{}-stale", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.join("api.sock")).unwrap());
    let stale = Vmm::start("stale", TinyEnd::Dots, &[]);
    assert_eq!(stale.state(), "running");
}

/// The same for the console socket: a second VMM does not take over the
/// console of a live one.
#[test]
fn a_live_console_socket_is_refused() {
    use std::io::Read;
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nubo-console-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.sock");
    let serial = format!("socket={}", console.display());
    let first = Vmm::start("console-live", TinyEnd::Dots, &["--serial", &serial]);
    let kernel = first.dir.join("tiny.elf");
    let err = second_vmm_fails(&[
        "--serial".as_ref(),
        serial.as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
    ]);
    assert!(
        err.contains(&format!(
            "console socket {} is in use by a live process",
            console.display()
        )),
        "{err}"
    );
    // The first VMM's console still answers.
    let mut s = std::os::unix::net::UnixStream::connect(&console).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert!(s.read(&mut buf).unwrap() > 0);
    assert_eq!(first.state(), "running");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The hot-plug endpoints with a guest that never ejects anything (a tiny
/// guest has no ACPI): descriptors passed with the request through the
/// seccomp-filtered API thread, the answers, `GET /vm`'s devices, resize,
/// and the 504 of a removal the guest ignores (the device stays).
#[test]
fn hot_plug_requests_through_the_socket() {
    use std::os::fd::AsFd;
    if !kvm_available() {
        return;
    }
    let mut vm = Vmm::start("hotplug", TinyEnd::Dots, &[]);
    let image = vm.dir.join("hp.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let rw = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap()
    };
    let body = |id: &str| {
        format!(
            r#"{{"path":"{}","read_only":false,"id":"{id}","format":"raw"}}"#,
            image.display()
        )
    };
    let with_fds = |path: &str, body: &str, files: &[&std::fs::File]| {
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        vmm::client::request_with_fds(&vm.socket, "PUT", path, Some(body), &fds).unwrap()
    };

    let file = rw();
    let (status, text) = with_fds("/vm/add-disk", &body("hp-1"), &[&file]);
    assert_eq!(status, 200, "{text}");
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (info["id"].as_str(), info["kind"].as_str()),
        (Some("hp-1"), Some("disk"))
    );
    let slot = info["slot"].as_u64().unwrap();
    assert_eq!(info["bdf"], format!("0000:00:{slot:02x}.0"));

    let (_, text) = vm.call("GET", "/vm", None);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["id"] == "hp-1" && d["slot"] == slot),
        "{text}"
    );
    let disks = v["config"]["disks"].as_array().unwrap();
    assert!(disks.iter().any(|d| d["id"] == "hp-1"), "{text}");

    let (status, text) = with_fds("/vm/add-disk", &body("hp-1"), &[&rw()]);
    assert_eq!(status, 400, "a duplicate id: {text}");
    assert!(text.contains("exists already"), "{text}");
    let (status, text) = with_fds("/vm/add-disk", &body("hp-2"), &[&rw(), &rw()]);
    assert_eq!(status, 400, "two descriptors for a raw image: {text}");
    assert!(text.contains("exactly one"), "{text}");
    let read_only = std::fs::File::open(&image).unwrap();
    let (status, text) = with_fds("/vm/add-disk", &body("hp-2"), &[&read_only]);
    assert_eq!(status, 400, "a read-only descriptor: {text}");
    let no_id = format!(
        r#"{{"path":"{}","read_only":true,"id":null,"format":"raw"}}"#,
        image.display()
    );
    let (status, text) = vm.call("PUT", "/vm/add-disk", Some(&no_id));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("needs an id"), "{text}");
    let (status, _) = vm.call("PUT", "/vm/add-disk", Some("{not json"));
    assert_eq!(status, 400);
    let (status, text) = vm.call("PUT", "/vm/add-net", Some(r#"{"id":"n1"}"#));
    assert_eq!(status, 400, "a NIC without a TAP: {text}");

    // A qcow2 overlay over given files: its backing file is the next one.
    let overlay = vm.dir.join("hp.qcow2");
    images::create_qcow2_overlay(&overlay, &image, images::ImageFormat::Raw).unwrap();
    let qcow2 = format!(
        r#"{{"path":"{}","read_only":false,"id":"hp-q","format":"qcow2"}}"#,
        overlay.display()
    );
    let top = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&overlay)
        .unwrap();
    let base = std::fs::File::open(&image).unwrap();
    let (status, text) = with_fds("/vm/add-disk", &qcow2, &[&top]);
    assert_eq!(status, 400, "the chain needs its backing file: {text}");
    assert!(text.contains("more descriptors"), "{text}");
    let (status, text) = with_fds("/vm/add-disk", &qcow2, &[&top, &base]);
    assert_eq!(status, 200, "{text}");

    let resize = |size: u64| {
        vm.call(
            "PUT",
            "/vm/resize-disk",
            Some(&format!(r#"{{"id":"hp-1","size":{size}}}"#)),
        )
    };
    assert_eq!(resize(2 << 20).0, 204);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 2 << 20);
    let (status, text) = resize(1 << 20);
    assert_eq!(status, 400, "shrinking: {text}");
    let (status, _) = vm.call("PUT", "/vm/resize-disk", Some(r#"{"id":"nope","size":1}"#));
    assert_eq!(status, 404);

    let started = Instant::now();
    let (status, text) = vm.call(
        "PUT",
        "/vm/remove-device",
        Some(r#"{"id":"hp-1","timeout_ms":300}"#),
    );
    assert_eq!(status, 504, "{text}");
    assert!(
        text.contains("did not release device hp-1 within 300 ms"),
        "{text}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (_, text) = vm.call("GET", "/vm", None);
    assert!(text.contains(r#""id":"hp-1""#), "the device stays: {text}");
    let (status, _) = vm.call("PUT", "/vm/remove-device", Some(r#"{"id":"nope"}"#));
    assert_eq!(status, 404);
    let (status, _) = vm.call("PUT", "/vm/remove-device", Some(r#"{"id":"hp-1","x":1}"#));
    assert_eq!(status, 400, "unknown fields");
    assert_eq!(vm.state(), "running");
    assert_eq!(vm.call("PUT", "/vm/stop", None).0, 204);
    assert_eq!(vm.wait_exit(Duration::from_secs(5)), Some(0));
}
