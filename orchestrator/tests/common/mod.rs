//! Shared harness of the daemon integration tests: a tiny blocking HTTP/1.1
//! client, and [`Cloud`], which runs the real `nubo` daemon on a temporary
//! state directory with real `nubo-vmm` processes and kills all of them on
//! drop (also when a test panics).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm::tiny_guest::{elf, TinyEnd, TinyEntry};

/// The admin password every test daemon is started with.
pub const ADMIN_PASSWORD: &str = "test-admin-secret";

// ---------------------------------------------------------------- HTTP client

mod http_client;
use http_client::find;
pub use http_client::{http, Resp};

// ---------------------------------------------------------------- binaries and KVM

mod kvm;
pub use kvm::{kvm_available, vmm_binary};

// ---------------------------------------------------------------- processes

fn proc_cmdline(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

fn proc_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether `pid` is a live (not zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists() && !proc_is_zombie(pid)
}

/// Live `nubo-vmm` processes whose command line mentions `dir`.
pub fn vmm_pids_under(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Some(cmd) = proc_cmdline(pid) else {
            continue;
        };
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or(&[]);
        if argv0.ends_with(b"nubo-vmm") && find(&cmd, &needle).is_some() && !proc_is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

fn sigkill(pid: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory effects; pid is a positive process id
        // the caller identified as one of its own.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------- the cloud

/// Daemon options beyond the defaults every test uses.
#[derive(Debug, Clone)]
pub struct Opts {
    /// How the guest kernel ends (`Halt` stays up; `AcpiPowerOff` powers off).
    pub end: TinyEnd,
    /// Extra `nubo serve` arguments.
    pub args: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            end: TinyEnd::Halt,
            args: vec!["--shutdown-timeout".into(), "1".into()],
        }
    }
}

impl Opts {
    /// Adds `--flag value`.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }
}

/// A `nubo serve` on its own state directory, and everything it started.
pub struct Cloud {
    dir: tempfile::TempDir,
    /// The state directory.
    pub state: PathBuf,
    /// Where the API listens.
    pub addr: SocketAddr,
    kernel: PathBuf,
    opts: Opts,
    child: Option<Child>,
    starts: u32,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl Cloud {
    /// Starts a daemon and waits until it answers.
    pub fn start(opts: Opts) -> Cloud {
        // Short path: STATE/instances/<36-char id>/api.sock must fit 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("nb")
            .tempdir_in("/tmp")
            .expect("create a temporary directory");
        let state = dir.path().join("s");
        let kernel = dir.path().join("tiny.elf");
        std::fs::write(&kernel, elf(TinyEntry::Long64, opts.end)).unwrap();
        let mut c = Cloud {
            state,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            kernel,
            opts,
            child: None,
            starts: 0,
            dir,
        };
        c.spawn_daemon();
        c
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("daemon-{n}.log"))
    }

    fn spawn_daemon(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nubo"))
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--vmm")
            .arg(vmm_binary())
            .arg("--default-kernel")
            .arg(&self.kernel)
            .args(&self.opts.args)
            .env("NUBO_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("NUBO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the nubo daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before answering\n{}",
                    self.log_tail()
                );
            }
            if let Ok(r) = http(self.addr, "GET", "/", &[], None) {
                if r.status < 500 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer on {} within 30 s\n{}",
                self.addr,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the daemon (its VMMs keep running).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a new daemon on the same state directory and port.
    pub fn restart(&mut self) {
        self.kill_daemon();
        self.spawn_daemon();
    }

    /// The last lines of the daemon's output (every run), for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            out.push_str(&format!(
                "--- daemon run {n} output (last {} lines) ---\n",
                lines.len() - from
            ));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The instance directory of a server.
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.state.join("instances").join(id)
    }

    /// The pid in the server's `vmm.pid`, if any.
    pub fn pid_file(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.instance_dir(id).join("vmm.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The live VMM of a server: its pid file names a live nubo-vmm of this cloud.
    pub fn vmm_pid(&self, id: &str) -> Option<i32> {
        let pid = self.pid_file(id)?;
        self.vmm_pids().contains(&pid).then_some(pid)
    }

    /// Every live nubo-vmm of this cloud.
    pub fn vmm_pids(&self) -> Vec<i32> {
        vmm_pids_under(&self.state)
    }

    // ------------------------------------------------------------ API

    /// A request; panics (with the daemon's log) if it cannot be made.
    pub fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let mut headers = vec![("Accept", "application/json")];
        if let Some(t) = token {
            headers.push(("X-Auth-Token", t));
        }
        if bytes.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.raw(method, path, &headers, bytes.as_deref())
    }

    /// A request with exactly these headers and body bytes.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        match http(self.addr, method, path, headers, body) {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} failed: {e}\n{}", self.log_tail()),
        }
    }

    /// Asserts the status of a response, with the body and daemon log on failure.
    #[track_caller]
    pub fn expect(&self, what: &str, r: &Resp, status: u16) {
        assert_eq!(
            r.status,
            status,
            "{what}: expected HTTP {status}, got {r}\n{}",
            self.log_tail()
        );
    }

    /// A project-scoped token (`Default` domain) for `user` on `project`.
    pub fn token_for(&self, user: &str, password: &str, project: &str) -> String {
        self.auth(user, password, project).0
    }

    /// A project-scoped token and the token body.
    pub fn auth(&self, user: &str, password: &str, project: &str) -> (String, Value) {
        let body = json!({ "auth": {
            "identity": { "methods": ["password"], "password": { "user": {
                "name": user, "domain": { "id": "default" }, "password": password
            } } },
            "scope": { "project": { "name": project, "domain": { "id": "default" } } }
        } });
        let r = self.req("POST", "/identity/v3/auth/tokens", None, Some(&body));
        self.expect(&format!("token for {user}"), &r, 201);
        let token = r
            .header("x-subject-token")
            .unwrap_or_else(|| panic!("no X-Subject-Token in {r}"))
            .to_string();
        (token, r.json())
    }

    /// The admin's token.
    pub fn admin_token(&self) -> String {
        self.token_for("admin", ADMIN_PASSWORD, "admin")
    }

    /// Creates a flavor (as admin); returns its id.
    pub fn flavor(&self, token: &str, name: &str, vcpus: u32, ram_mib: u32) -> String {
        let r = self.req(
            "POST",
            "/compute/v2.1/flavors",
            Some(token),
            Some(&json!({ "flavor": { "name": name, "vcpus": vcpus, "ram": ram_mib, "disk": 0 } })),
        );
        self.expect(&format!("create flavor {name}"), &r, 200);
        r.json()["flavor"]["id"].as_str().unwrap().to_string()
    }

    /// Creates an image record; returns its id.
    pub fn image_record(&self, token: &str, name: &str, disk_format: &str) -> String {
        self.image_record_with(
            token,
            json!({ "name": name, "disk_format": disk_format, "container_format": "bare" }),
        )
    }

    /// Creates an image record from this body; returns its id.
    pub fn image_record_with(&self, token: &str, body: Value) -> String {
        let r = self.req("POST", "/image/v2/images", Some(token), Some(&body));
        self.expect(&format!("create image {body}"), &r, 201);
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// `GET /image/v2/images/{id}`.
    pub fn image(&self, token: &str, id: &str) -> Resp {
        self.req("GET", &format!("/image/v2/images/{id}"), Some(token), None)
    }

    /// Files in `STATE/images/` whose names start with `id`.
    pub fn image_files(&self, id: &str) -> Vec<String> {
        std::fs::read_dir(self.state.join("images"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Uploads image data.
    pub fn upload(&self, token: &str, id: &str, data: &[u8]) -> Resp {
        self.raw(
            "PUT",
            &format!("/image/v2/images/{id}/file"),
            &[
                ("X-Auth-Token", token),
                ("Content-Type", "application/octet-stream"),
            ],
            Some(data),
        )
    }

    /// Creates and uploads a 1 MiB raw image of zeros; returns its id.
    pub fn raw_image(&self, token: &str, name: &str) -> String {
        let id = self.image_record(token, name, "raw");
        let r = self.upload(token, &id, &vec![0u8; 1 << 20]);
        self.expect("upload the raw image", &r, 204);
        id
    }

    /// The admin token, a 64 MiB one-vCPU flavor and a 1 MiB raw image.
    pub fn basics(&self) -> (String, String, String) {
        let t = self.admin_token();
        let flavor = self.flavor(&t, "tiny", 1, 64);
        let image = self.raw_image(&t, "zeros");
        (t, flavor, image)
    }

    /// A new project `name` with a user `NAME-user` holding the member role
    /// there; returns that user's project-scoped token and the project id.
    pub fn member_of_new_project(&self, admin: &str, name: &str) -> (String, String) {
        let r = self.req(
            "POST",
            "/identity/v3/projects",
            Some(admin),
            Some(&json!({ "project": { "name": name, "domain_id": "default" } })),
        );
        self.expect("create project", &r, 201);
        let project = r.json()["project"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let user_name = format!("{name}-user");
        let r = self.req(
            "POST",
            "/identity/v3/users",
            Some(admin),
            Some(&json!({ "user": { "name": user_name, "domain_id": "default", "password": "member-pw-1" } })),
        );
        self.expect("create user", &r, 201);
        let user = r.json()["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let roles = self.req("GET", "/identity/v3/roles?name=member", Some(admin), None);
        let role = roles.json()["roles"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let r = self.req(
            "PUT",
            &format!("/identity/v3/projects/{project}/users/{user}/roles/{role}"),
            Some(admin),
            None,
        );
        self.expect("grant member", &r, 204);
        (self.token_for(&user_name, "member-pw-1", name), project)
    }

    /// `POST /servers`.
    pub fn create_server_resp(&self, token: &str, name: &str, image: &str, flavor: &str) -> Resp {
        self.req(
            "POST",
            "/compute/v2.1/servers",
            Some(token),
            Some(&json!({ "server": {
                "name": name, "imageRef": image, "flavorRef": flavor, "networks": "none"
            } })),
        )
    }

    /// Creates a server (202); returns its id.
    pub fn create_server(&self, token: &str, name: &str, image: &str, flavor: &str) -> String {
        let r = self.create_server_resp(token, name, image, flavor);
        self.expect(&format!("create server {name}"), &r, 202);
        r.json()["server"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no server id in {r}"))
            .to_string()
    }

    /// `GET /servers/{id}` → the `server` object (panics unless 200).
    pub fn server(&self, token: &str, id: &str) -> Value {
        let r = self.req(
            "GET",
            &format!("/compute/v2.1/servers/{id}"),
            Some(token),
            None,
        );
        self.expect(&format!("show server {id}"), &r, 200);
        r.json()["server"].clone()
    }

    /// Polls the server until its status is `want`; every status seen
    /// before must be in `before`. Returns the server.
    #[track_caller]
    pub fn wait_status(
        &self,
        token: &str,
        id: &str,
        want: &str,
        before: &[&str],
        limit: Duration,
    ) -> Value {
        let deadline = Instant::now() + limit;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let s = self.server(token, id);
            let st = s["status"].as_str().unwrap_or("?").to_string();
            if seen.last() != Some(&st) {
                seen.push(st.clone());
            }
            if st == want {
                return s;
            }
            assert!(
                before.contains(&st.as_str()),
                "server {id}: waiting for {want}, it went {seen:?} (only {before:?} allowed on the way); server: {s}\n{}",
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "server {id}: not {want} within {limit:?}, went {seen:?}; server: {s}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until the server's status is one of `want`; returns it.
    pub fn wait_any(&self, token: &str, id: &str, want: &[&str], limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.server(token, id);
            if want.contains(&s["status"].as_str().unwrap_or("?")) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server {id}: not in {want:?} within {limit:?}; server: {s}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's console output.
    pub fn console(&self, token: &str, id: &str) -> String {
        let r = self.action(token, id, json!({ "os-getConsoleOutput": {} }));
        self.expect(&format!("console of {id}"), &r, 200);
        r.json()["output"].as_str().unwrap_or("").to_string()
    }

    /// Polls the console until it contains `needle` `times` times.
    pub fn wait_console(&self, token: &str, id: &str, needle: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.console(token, id);
            if out.matches(needle).count() >= times {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "console of {id}: {needle:?} not seen {times} time(s) within 15 s; console: {out:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `POST /servers/{id}/action`.
    pub fn action(&self, token: &str, id: &str, body: Value) -> Resp {
        self.req(
            "POST",
            &format!("/compute/v2.1/servers/{id}/action"),
            Some(token),
            Some(&body),
        )
    }

    /// Deletes a server and waits until it is gone (404).
    pub fn delete_server(&self, token: &str, id: &str) {
        let r = self.req(
            "DELETE",
            &format!("/compute/v2.1/servers/{id}"),
            Some(token),
            None,
        );
        self.expect(&format!("delete server {id}"), &r, 204);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.req(
                "GET",
                &format!("/compute/v2.1/servers/{id}"),
                Some(token),
                None,
            );
            if r.status == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {id} still there 15 s after DELETE: {r}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill_daemon();
        // Every VMM this cloud started: by pid file, then by command line
        // (covers a VMM whose pid file was not written yet).
        let instances = self.state.join("instances");
        if let Ok(entries) = std::fs::read_dir(&instances) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = self.pid_file(&id) {
                    if self.vmm_pids().contains(&pid) {
                        sigkill(pid);
                    }
                }
            }
        }
        for _ in 0..3 {
            let left = self.vmm_pids();
            if left.is_empty() {
                break;
            }
            for pid in left {
                eprintln!("test harness: killing leftover nubo-vmm {pid}");
                sigkill(pid);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
