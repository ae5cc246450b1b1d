//! The `lvm` volume driver (Cinder's LVM driver with thin provisioning):
//! volumes are thin LVs `volume-<id>` in a thin pool of a volume group the
//! operator names, snapshots are thin snapshots `_snapshot-<id>` (Cinder's
//! name: LVM reserves names starting with `snapshot`).
//!
//! - create: `lvcreate -T VG/POOL -V SIZE -n volume-<id>`; from a snapshot or
//!   another volume, a thin snapshot of it (`lvcreate -s -kn`, so it is
//!   activated like any LV), then `lvextend` if larger; from an image, a new
//!   thin LV the image's data is converted onto ([`images::convert`]: zero
//!   chunks are skipped, a fresh thin LV reads zeros). A failed create
//!   removes the LV.
//! - Thin snapshots share blocks with their origin but not its lifetime: a
//!   volume, its snapshots and the volumes made from them can be deleted in
//!   any order.
//! - extend: `lvextend -L` (attached or not: the VMM takes up the new size).
//! - target: `/dev/VG/volume-<id>`, raw, no backing files (activated first
//!   if it is not active).
//!
//! The tools run as `lvm <command>` (one binary), with a timeout and
//! `LVM_SUPPRESS_FD_WARNINGS=1`; reports are read as JSON
//! (`--reportformat json`). Errors carry the tool's stderr.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use images::ImageFormat;

use super::file::{check_id, failed, image_failed};
use super::lvm_report::{parse_lvs, parse_vgs, Lv};
use super::{Capacity, StorageError, VolumeDriver, VolumeSource, VolumeTarget};

/// How long one lvm2 command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed lvm2 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CmdError {
    /// Exit code (`None`: killed, timed out, or could not start).
    pub code: Option<i32>,
    /// Its stderr, or why it could not run.
    pub stderr: String,
}

/// Runs lvm2 commands (`argv[0]` is the lvm subcommand: `lvs`, `lvcreate`...);
/// a trait so the unit tests check the exact argv without lvm2.
pub(crate) trait Runner: Send + Sync {
    /// Runs `lvm ARGV...`; its stdout on success.
    fn run(&self, argv: &[String]) -> Result<String, CmdError>;
}

/// Runs the real `lvm` binary.
struct LvmTool {
    binary: PathBuf,
    timeout: Duration,
}

impl Runner for LvmTool {
    fn run(&self, argv: &[String]) -> Result<String, CmdError> {
        let started = Instant::now();
        let mut child = Command::new(&self.binary)
            .args(argv)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CmdError {
                code: None,
                stderr: format!("cannot run {}: {e}", self.binary.display()),
            })?;
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("timed out after {:?}", self.timeout));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => break Err(format!("waiting for lvm: {e}")),
            }
        };
        let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
        tracing::debug!(
            ?argv,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ran lvm"
        );
        match status {
            Ok(s) if s.success() => Ok(stdout),
            Ok(s) => Err(CmdError {
                code: s.code(),
                stderr: stderr.trim().to_string(),
            }),
            Err(why) => Err(CmdError {
                code: None,
                stderr: format!("{why}; stderr: {}", stderr.trim()),
            }),
        }
    }
}

/// Reads a pipe to its end on a thread (so neither pipe can fill and block lvm).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// The `lvm` volume driver over volume group `vg` and its thin pool.
pub struct LvmDriver {
    vg: String,
    pool: String,
    runner: Box<dyn Runner>,
}

impl LvmDriver {
    /// Checks that volume group `vg` exists and creates thin pool
    /// `thin_pool` in it (95% of the VG's free space) if it is missing. Runs
    /// the `lvm` binary found on `PATH`.
    pub fn new(vg: &str, thin_pool: &str) -> Result<Self, StorageError> {
        Self::with_runner(
            vg,
            thin_pool,
            Box::new(LvmTool {
                binary: PathBuf::from("lvm"),
                timeout: COMMAND_TIMEOUT,
            }),
        )
    }

    pub(crate) fn with_runner(
        vg: &str,
        thin_pool: &str,
        runner: Box<dyn Runner>,
    ) -> Result<Self, StorageError> {
        check_name(vg)?;
        check_name(thin_pool)?;
        let d = LvmDriver {
            vg: vg.to_string(),
            pool: thin_pool.to_string(),
            runner,
        };
        let what = format!("checking volume group {vg}");
        let out = d.lvm(
            &what,
            &[
                "vgs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
            ],
            &["-o", "vg_name,vg_size,vg_free", vg],
        )?;
        if !parse_vgs(&out)?.iter().any(|g| g.name == vg) {
            return Err(StorageError::NotFound(format!("volume group {vg}")));
        }
        match d.lv(thin_pool)? {
            Some(lv) if lv.attr.starts_with('t') => {}
            Some(_) => {
                return Err(failed(
                    &what,
                    format!("{vg}/{thin_pool} exists but is not a thin pool"),
                ))
            }
            None => {
                tracing::info!(vg, pool = thin_pool, "creating the thin pool");
                d.lvm(
                    &format!("creating thin pool {vg}/{thin_pool}"),
                    &["lvcreate", "-T", "-l", "95%FREE"],
                    &[&format!("{vg}/{thin_pool}")],
                )?;
            }
        }
        Ok(d)
    }

    /// Runs `lvm` with `fixed` then `rest` as arguments.
    fn lvm(&self, what: &str, fixed: &[&str], rest: &[&str]) -> Result<String, StorageError> {
        let argv: Vec<String> = fixed.iter().chain(rest).map(|s| s.to_string()).collect();
        self.runner.run(&argv).map_err(|e| {
            let low = e.stderr.to_lowercase();
            if low.contains("insufficient") || low.contains("no space") {
                StorageError::NoSpace(format!("{what}: {}", e.stderr))
            } else {
                failed(
                    what,
                    format!(
                        "lvm {} failed ({}): {}",
                        argv.first().map(String::as_str).unwrap_or(""),
                        e.code
                            .map_or_else(|| "no exit code".to_string(), |c| format!("exit {c}")),
                        e.stderr
                    ),
                )
            }
        })
    }

    /// All LVs of the VG.
    fn lvs(&self) -> Result<Vec<Lv>, StorageError> {
        let out = self.lvm(
            "listing logical volumes",
            &[
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
            ],
            &[
                "-o",
                "lv_name,lv_size,lv_attr,pool_lv,data_percent",
                &self.vg,
            ],
        )?;
        parse_lvs(&out)
    }

    fn lv(&self, name: &str) -> Result<Option<Lv>, StorageError> {
        Ok(self.lvs()?.into_iter().find(|l| l.name == name))
    }

    fn full(&self, name: &str) -> String {
        format!("{}/{}", self.vg, name)
    }

    fn device(&self, name: &str) -> PathBuf {
        PathBuf::from("/dev").join(&self.vg).join(name)
    }

    fn remove(&self, name: &str, what: &str) -> Result<(), StorageError> {
        if self.lv(name)?.is_none() {
            return Ok(());
        }
        self.lvm(what, &["lvremove", "-f"], &[&self.full(name)])?;
        Ok(())
    }

    fn grow(&self, name: &str, size: u64, what: &str) -> Result<(), StorageError> {
        let lv = self
            .lv(name)?
            .ok_or_else(|| StorageError::NotFound(name.to_string()))?;
        if lv.size >= size {
            return Ok(());
        }
        self.lvm(
            what,
            &["lvextend", "-L"],
            &[&format!("{size}b"), &self.full(name)],
        )?;
        Ok(())
    }

    /// Makes the LV `name` of `size` bytes from `source`.
    fn build(
        &self,
        name: &str,
        size: u64,
        source: &VolumeSource,
        what: &str,
    ) -> Result<(), StorageError> {
        let thin_snapshot = |origin: String| -> Result<(), StorageError> {
            let lv = self
                .lv(&origin)?
                .ok_or_else(|| StorageError::NotFound(origin.clone()))?;
            if lv.size > size {
                return Err(failed(
                    what,
                    format!(
                        "{origin} is {} bytes, larger than the volume's {size}",
                        lv.size
                    ),
                ));
            }
            self.lvm(
                what,
                &["lvcreate", "-s", "-kn", "-n"],
                &[name, &self.full(&origin)],
            )?;
            self.grow(name, size, what)
        };
        match source {
            VolumeSource::Empty => self.thin_lv(name, size, what),
            VolumeSource::Snapshot { snapshot_id, .. } => {
                check_id(snapshot_id)?;
                thin_snapshot(format!("_snapshot-{snapshot_id}"))
            }
            VolumeSource::Volume { volume_id } => {
                check_id(volume_id)?;
                thin_snapshot(format!("volume-{volume_id}"))
            }
            VolumeSource::Image { path, format } => {
                let mut src = images::open(path, *format, true).map_err(image_failed(what))?;
                if src.size() > size {
                    return Err(failed(
                        what,
                        format!(
                            "the image is {} bytes, larger than the volume's {size}",
                            src.size()
                        ),
                    ));
                }
                self.thin_lv(name, size, what)?;
                let dev = self.device(name);
                let mut dst =
                    images::open(&dev, ImageFormat::Raw, false).map_err(image_failed(what))?;
                let started = Instant::now();
                let stats = images::convert_backend(src.as_mut(), dst.as_mut())
                    .map_err(image_failed(what))?;
                tracing::info!(
                    lv = name,
                    written = stats.written,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "copied an image onto a volume"
                );
                Ok(())
            }
        }
    }

    fn thin_lv(&self, name: &str, size: u64, what: &str) -> Result<(), StorageError> {
        self.lvm(
            what,
            &["lvcreate", "-T"],
            &[
                &self.full(&self.pool),
                "-V",
                &format!("{size}b"),
                "-n",
                name,
            ],
        )?;
        Ok(())
    }
}

impl VolumeDriver for LvmDriver {
    fn backend_name(&self) -> &str {
        "lvm"
    }

    fn create(
        &self,
        id: &str,
        size_bytes: u64,
        source: &VolumeSource,
    ) -> Result<VolumeTarget, StorageError> {
        check_id(id)?;
        let name = format!("volume-{id}");
        let what = format!("creating {name}");
        if size_bytes == 0 {
            return Err(failed(&what, "size must not be zero"));
        }
        if self.lv(&name)?.is_some() {
            return Err(failed(&what, "the volume already exists"));
        }
        if let Err(e) = self.build(&name, size_bytes, source, &what) {
            if let Err(cleanup) = self.remove(&name, &format!("removing half-made {name}")) {
                tracing::error!(lv = %name, error = %cleanup, "could not remove a half-made volume");
            }
            return Err(e);
        }
        // lvcreate activates what it makes (`-kn` for snapshots): no lvs again.
        Ok(VolumeTarget {
            path: self.device(&name),
            format: ImageFormat::Raw,
            backing: Vec::new(),
        })
    }

    fn delete(&self, id: &str) -> Result<(), StorageError> {
        check_id(id)?;
        self.remove(&format!("volume-{id}"), &format!("deleting volume-{id}"))
    }

    fn extend(&self, id: &str, new_size_bytes: u64, _attached: bool) -> Result<(), StorageError> {
        check_id(id)?;
        let name = format!("volume-{id}");
        let lv = self
            .lv(&name)?
            .ok_or_else(|| StorageError::NotFound(name.clone()))?;
        if new_size_bytes < lv.size {
            return Err(failed(
                &format!("extending {name}"),
                format!("cannot shrink from {} to {new_size_bytes} bytes", lv.size),
            ));
        }
        self.grow(&name, new_size_bytes, &format!("extending {name}"))
    }

    fn create_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        _attached: bool,
    ) -> Result<(), StorageError> {
        check_id(volume_id)?;
        check_id(snapshot_id)?;
        let vol = format!("volume-{volume_id}");
        let snap = format!("_snapshot-{snapshot_id}");
        let what = format!("creating {snap}");
        if self.lv(&vol)?.is_none() {
            return Err(StorageError::NotFound(vol));
        }
        // Crash-consistent when attached: a thin snapshot is atomic.
        self.lvm(
            &what,
            &["lvcreate", "-s", "-kn", "-n"],
            &[&snap, &self.full(&vol)],
        )?;
        Ok(())
    }

    fn delete_snapshot(&self, _volume_id: &str, snapshot_id: &str) -> Result<(), StorageError> {
        check_id(snapshot_id)?;
        self.remove(
            &format!("_snapshot-{snapshot_id}"),
            &format!("deleting _snapshot-{snapshot_id}"),
        )
    }

    fn target(&self, id: &str) -> Result<VolumeTarget, StorageError> {
        check_id(id)?;
        let name = format!("volume-{id}");
        let lv = self
            .lv(&name)?
            .ok_or_else(|| StorageError::NotFound(name.clone()))?;
        if !lv.active() {
            self.lvm(
                &format!("activating {name}"),
                &["lvchange", "-ay", "-K"],
                &[&self.full(&name)],
            )?;
        }
        Ok(VolumeTarget {
            path: self.device(&name),
            format: ImageFormat::Raw,
            backing: Vec::new(),
        })
    }

    fn capacity(&self) -> Result<Capacity, StorageError> {
        let pool = self
            .lv(&self.pool)?
            .ok_or_else(|| StorageError::NotFound(self.full(&self.pool)))?;
        let used = pool.data_percent.unwrap_or(0.0).clamp(0.0, 100.0);
        let free = (pool.size as f64 * (100.0 - used) / 100.0) as u64;
        Ok(Capacity {
            total_bytes: pool.size,
            free_bytes: free.min(pool.size),
        })
    }
}

/// VG and pool names go into argv: letters, digits and `+_.-`, not starting with `-`.
fn check_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(failed(
            "checking a volume group or pool name",
            format!("{name:?} is not a valid LVM name"),
        ))
    }
}

#[cfg(test)]
mod tests;
