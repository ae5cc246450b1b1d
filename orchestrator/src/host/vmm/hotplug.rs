//! Hot-plug on a running VMM: add a disk (its image file and backing chain
//! opened here and passed with the request, since the VMM is jailed), remove
//! a device once the guest let go of it, grow a disk, and list the devices.
//! Every change is written to `spec.json` too, so the next start (or a new
//! daemon's reconcile) plugs the same disks.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vmm_api::config::DiskConfig;

use super::{io_err, Agent, AgentError, Liveness, VmmSpec, API_TIMEOUT, SPEC_FILE};

/// Longest device id the VMM accepts (it is also the guest's disk serial).
pub const MAX_DEVICE_ID_LEN: usize = vmm_api::config::MAX_DEVICE_ID;

/// A device of a running guest, as `GET /vm` and `PUT /vm/add-disk` report
/// it: the VMM's own type.
pub use vmm_api::config::DeviceInfo;

/// Checks a device id: 1 to [`MAX_DEVICE_ID_LEN`] printable ASCII
/// characters without commas or whitespace (it goes into `--disk id=`).
pub fn validate_device_id(server_id: &str, id: &str) -> Result<(), AgentError> {
    // The VMM's own rule, and no commas: the id also goes into `--disk id=`.
    let ok = vmm_api::config::check_device_id(id).is_ok() && !id.contains(',');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidSpec {
            server_id: server_id.to_owned(),
            reason: format!(
                "device id {id:?} must be 1 to {MAX_DEVICE_ID_LEN} printable ASCII characters without commas"
            ),
        })
    }
}

/// The `PUT /vm/add-disk` body for `disk` (vmm-api's `DiskConfig` JSON).
pub fn add_disk_body(disk: &DiskConfig) -> Result<String, serde_json::Error> {
    serde_json::to_string(disk)
}

/// Opens a disk's image read-write (read-only for a read-only disk) and its
/// backing files read-only, top first: the descriptors `add-disk` passes.
pub fn open_disk_files(disk: &DiskConfig, backing: &[PathBuf]) -> Result<Vec<File>, AgentError> {
    let mut files = Vec::with_capacity(1 + backing.len());
    let top = OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path)
        .map_err(io_err("cannot open the disk", &disk.path))?;
    files.push(top);
    for path in backing {
        let f = File::open(path).map_err(io_err("cannot open the backing file", path))?;
        files.push(f);
    }
    if files.len() > vmm_api::fd_passing::MAX_FDS {
        return Err(AgentError::InvalidSpec {
            server_id: String::new(),
            reason: format!(
                "{} has {} backing files, more than one request can pass",
                disk.path.display(),
                backing.len()
            ),
        });
    }
    Ok(files)
}

/// The VMM's error text from an error answer (`{"error": "..."}` or the
/// body as it is).
fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

impl Agent {
    /// [`AgentError::NotRunning`] unless the server's VMM runs.
    fn require_running(&self, server_id: &str) -> Result<(), AgentError> {
        match self.liveness(server_id)? {
            Liveness::Alive(_) => Ok(()),
            _ => Err(AgentError::NotRunning {
                server_id: server_id.to_owned(),
            }),
        }
    }

    /// One request with `fds` passed along and its own time limit.
    fn api_with_fds(
        &self,
        server_id: &str,
        path: &'static str,
        body: &str,
        files: &[File],
        timeout: Duration,
    ) -> Result<(u16, String), AgentError> {
        let socket = self.socket_path(server_id)?;
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        let answer = self.client.handle().block_on(vmm_api::request_with_fds(
            &socket,
            "PUT",
            path,
            Some(body),
            &fds,
            Some(timeout),
        ));
        answer.map_err(|e| AgentError::Api {
            server_id: server_id.to_owned(),
            reason: format!("PUT {path}: {e}"),
        })
    }

    /// Plugs `disk` into the running guest (`PUT /vm/add-disk`), with the
    /// image and its `backing` files (top first) opened here and passed to
    /// the jailed VMM; records it in `spec.json`.
    pub fn hot_add_disk(
        &self,
        server_id: &str,
        disk: &DiskConfig,
        backing: &[PathBuf],
    ) -> Result<DeviceInfo, AgentError> {
        let id = disk.id.as_deref().unwrap_or_default();
        validate_device_id(server_id, id)?;
        self.require_running(server_id)?;
        let files = open_disk_files(disk, backing)?;
        let device = self.send_add_disk(server_id, disk, &files)?;
        // The VMM holds its own duplicates now.
        drop(files);
        tracing::info!(server_id, id, bdf = ?device.bdf, "disk hot-added");
        self.edit_spec_disks(server_id, |disks| {
            disks.retain(|d| d.id.as_deref() != Some(id));
            disks.push(disk.clone());
        })?;
        Ok(device)
    }

    /// `PUT /vm/add-disk` with `files` (the image, then its backing files).
    fn send_add_disk(
        &self,
        server_id: &str,
        disk: &DiskConfig,
        files: &[File],
    ) -> Result<DeviceInfo, AgentError> {
        let body = add_disk_body(disk).map_err(|e| AgentError::InvalidSpec {
            server_id: server_id.to_owned(),
            reason: e.to_string(),
        })?;
        let (status, text) =
            self.api_with_fds(server_id, "/vm/add-disk", &body, files, API_TIMEOUT)?;
        if status != 200 {
            return Err(AgentError::Device {
                server_id: server_id.to_owned(),
                status,
                reason: error_text(&text),
            });
        }
        serde_json::from_str(&text).map_err(|e| AgentError::Api {
            server_id: server_id.to_owned(),
            reason: format!("add-disk answered bad JSON: {e}"),
        })
    }

    /// Unplugs device `id` (`PUT /vm/remove-device`): returns once the guest
    /// ejected it and the VMM closed its file; [`AgentError::Timeout`] when
    /// the guest did not let go within `timeout` (the device stays). Removes
    /// it from `spec.json`.
    pub fn hot_remove_device(
        &self,
        server_id: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        validate_device_id(server_id, id)?;
        self.require_running(server_id)?;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let body = serde_json::json!({ "id": id, "timeout_ms": ms }).to_string();
        let (status, text) = self.api_with_fds(
            server_id,
            "/vm/remove-device",
            &body,
            &[],
            timeout + API_TIMEOUT,
        )?;
        match status {
            204 | 200 => {}
            // Not (or no longer) plugged: nothing holds the file.
            404 => tracing::info!(server_id, id, "device to remove is not plugged"),
            504 => {
                return Err(AgentError::Timeout {
                    server_id: server_id.to_owned(),
                    what: "the guest to release the device",
                    timeout,
                })
            }
            _ => {
                return Err(AgentError::Device {
                    server_id: server_id.to_owned(),
                    status,
                    reason: error_text(&text),
                })
            }
        }
        tracing::info!(server_id, id, "device hot-removed");
        self.edit_spec_disks(server_id, |disks| {
            disks.retain(|d| d.id.as_deref() != Some(id))
        })
    }

    /// Tells the VMM that disk `id` is now `size` bytes
    /// (`PUT /vm/resize-disk`); the guest sees the new capacity.
    pub fn resize_disk(&self, server_id: &str, id: &str, size: u64) -> Result<(), AgentError> {
        validate_device_id(server_id, id)?;
        self.require_running(server_id)?;
        let body = serde_json::json!({ "id": id, "size": size }).to_string();
        let (status, text) =
            self.api_with_fds(server_id, "/vm/resize-disk", &body, &[], API_TIMEOUT)?;
        if status == 204 || status == 200 {
            tracing::info!(server_id, id, size, "disk resized");
            Ok(())
        } else {
            Err(AgentError::Device {
                server_id: server_id.to_owned(),
                status,
                reason: error_text(&text),
            })
        }
    }

    /// The running guest's devices (`GET /vm`'s `devices`).
    pub fn devices(&self, server_id: &str) -> Result<Vec<DeviceInfo>, AgentError> {
        self.require_running(server_id)?;
        let (status, body) = self.api(server_id, "GET", "/vm", None)?;
        let bad = |reason: String| AgentError::Api {
            server_id: server_id.to_owned(),
            reason,
        };
        if status != 200 {
            return Err(bad(format!("GET /vm answered {status}: {body}")));
        }
        devices_of(&body).map_err(|e| bad(format!("GET /vm devices: {e}")))
    }

    /// Changes the disks recorded in `spec.json` (nothing when there is none).
    fn edit_spec_disks(
        &self,
        server_id: &str,
        edit: impl FnOnce(&mut Vec<DiskConfig>),
    ) -> Result<(), AgentError> {
        let Some(mut spec) = self.load_spec(server_id)? else {
            return Ok(());
        };
        edit(&mut spec.vm.disks);
        let path = self.instance_dir(server_id)?.join(SPEC_FILE);
        write_spec(&path, &spec)
    }
}

/// `GET /vm`'s devices (none when the VMM lists none).
pub fn devices_of(body: &str) -> Result<Vec<DeviceInfo>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Vm {
        #[serde(default)]
        devices: Vec<DeviceInfo>,
    }
    serde_json::from_str::<Vm>(body).map(|vm| vm.devices)
}

fn write_spec(path: &Path, spec: &VmmSpec) -> Result<(), AgentError> {
    let json = serde_json::to_vec_pretty(spec).map_err(|e| AgentError::InvalidSpec {
        server_id: spec.server_id.clone(),
        reason: e.to_string(),
    })?;
    crate::state_dir::write_atomic(path, &json).map_err(io_err("cannot write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn device_ids_are_checked() {
        assert!(validate_device_id("s", "0123456789abcdef0123").is_ok());
        assert!(validate_device_id("s", "").is_err());
        assert!(validate_device_id("s", "0123456789abcdef01234").is_err());
        assert!(validate_device_id("s", "a,b").is_err());
        assert!(validate_device_id("s", "a b").is_err());
    }

    #[test]
    fn devices_and_errors_parse() {
        let body = r#"{"state":"running","devices":[{"id":"vol1","kind":"disk","slot":5,"bdf":"0000:00:05.0"}]}"#;
        let d = devices_of(body).unwrap();
        assert_eq!(d[0].id, "vol1");
        assert_eq!(d[0].slot, 5);
        assert!(devices_of(r#"{"state":"running"}"#).unwrap().is_empty());
        assert_eq!(error_text(r#"{"error":"no free slot"}"#), "no free slot");
        assert_eq!(error_text("plain\n"), "plain");
    }

    /// `add-disk` carries the disk JSON and the image, then its backing
    /// files, as descriptors in that order.
    #[test]
    fn add_disk_passes_the_image_and_its_backing_files() {
        let dir = tempfile::tempdir().unwrap();
        let instances = dir.path().join("i");
        let agent = Agent::new(dir.path().join("no-vmm"), instances)
            .unwrap()
            .with_vmm_uid_base(None);
        let sid = "00000000-0000-0000-0000-0000000000a1";
        let idir = agent.instance_dir(sid).unwrap();
        std::fs::create_dir_all(&idir).unwrap();
        let top = dir.path().join("top");
        let base = dir.path().join("base");
        std::fs::write(&top, b"").unwrap();
        std::fs::write(&base, b"base data").unwrap();
        let socket = agent.socket_path(sid).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let (n, fds, _) =
                vmm_api::fd_passing::recv_with_fds(conn.as_raw_fd(), &mut buf).unwrap();
            assert_eq!(fds.len(), 2);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut fds = fds.into_iter().map(File::from);
            let (mut f0, mut f1) = (fds.next().unwrap(), fds.next().unwrap());
            f0.write_all(b"written").unwrap();
            let mut back = String::new();
            f1.rewind().unwrap();
            f1.read_to_string(&mut back).unwrap();
            let answer = r#"{"id":"vol-1","kind":"disk","slot":6,"bdf":"0000:00:06.0"}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            conn.write_all(head.as_bytes()).unwrap();
            conn.write_all(answer.as_bytes()).unwrap();
            (text, back)
        });
        let disk = DiskConfig {
            path: top.clone(),
            read_only: false,
            id: Some("vol-1".into()),
            format: images::ImageFormat::Qcow2,
            ..Default::default()
        };
        let files = open_disk_files(&disk, &[base]).unwrap();
        let dev = agent.send_add_disk(sid, &disk, &files).unwrap();
        let (text, back) = server.join().unwrap();
        assert!(text.starts_with("PUT /vm/add-disk HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\"id\":\"vol-1\""), "{text}");
        assert_eq!(back, "base data");
        assert_eq!(std::fs::read(&top).unwrap(), b"written");
        assert_eq!(dev.bdf, "0000:00:06.0");
    }
}
