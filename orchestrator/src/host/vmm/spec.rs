//! What a server's VMM runs with ([`VmmSpec`]) and how that becomes a
//! `nubo-vmm run` command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use images::ImageFormat;
use serde::{Deserialize, Serialize};
use vmm_api::config::{DiskConfig, SerialConfig, VmConfig};

use super::AgentError;

/// Longest accepted server id (a UUID has 36 characters).
pub const MAX_SERVER_ID_LEN: usize = 64;

/// Most vCPUs `nubo-vmm` accepts.
pub const MAX_VCPUS: u32 = 254;

/// Checks that `server_id` is safe to use as a directory name: 1 to
/// [`MAX_SERVER_ID_LEN`] characters out of `[0-9a-f-]`.
pub fn validate_server_id(server_id: &str) -> Result<(), AgentError> {
    let ok = !server_id.is_empty()
        && server_id.len() <= MAX_SERVER_ID_LEN
        && server_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidServerId(server_id.to_owned()))
    }
}

/// One virtio-blk disk of a server (the first one is the guest's `/dev/vda`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Image file (absolute path recommended: the VMM resolves it against the
    /// daemon's working directory).
    pub path: PathBuf,
    /// Format of the file; never probed.
    pub format: ImageFormat,
    /// Whether the guest may only read the disk.
    #[serde(default)]
    pub readonly: bool,
}

/// Everything one server's `nubo-vmm` is started with; stored as
/// `INSTANCE_DIR/spec.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmSpec {
    /// The server's id (`[0-9a-f-]`, names the instance directory).
    pub server_id: String,
    /// Guest kernel (bzImage or ELF vmlinux).
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// Guest RAM in MiB (lazily allocated by the VMM).
    pub memory_mib: u64,
    /// Disks, in guest order.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// The unprivileged user and group id the VMM runs as; the agent picks
    /// it when it starts the VMM (callers leave it `None`) and keeps it for
    /// the server's later starts. `None` in a stored spec: the VMM ran as
    /// the daemon's user.
    #[serde(default)]
    pub vmm_uid: Option<u32>,
}

impl VmmSpec {
    /// Checks the fields the VMM would reject, so the error names the server.
    pub fn validate(&self) -> Result<(), AgentError> {
        validate_server_id(&self.server_id)?;
        let bad = |reason: String| AgentError::InvalidSpec {
            server_id: self.server_id.clone(),
            reason,
        };
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(bad(format!(
                "vcpus must be 1 to {MAX_VCPUS}, not {}",
                self.vcpus
            )));
        }
        let min_mib = vmm_api::config::MIN_MEMORY_BYTES >> 20;
        if self.memory_mib < min_mib {
            return Err(bad(format!(
                "memory_mib must be at least {min_mib}, not {}",
                self.memory_mib
            )));
        }
        for disk in &self.disks {
            // `--disk path=...,format=...` is split on commas by the VMM.
            match disk.path.to_str() {
                Some(p) if !p.contains(',') && !p.is_empty() => {}
                _ => {
                    return Err(bad(format!(
                        "disk path {} must be non-empty UTF-8 without commas",
                        disk.path.display()
                    )))
                }
            }
        }
        Ok(())
    }

    /// The guest this spec describes, with its console logged to
    /// `console_log`.
    pub fn vm_config(&self, console_log: &Path) -> Result<VmConfig, AgentError> {
        let mut builder = VmConfig::builder(&self.kernel)
            .cmdline(self.cmdline.clone())
            .vcpus(self.vcpus.into())
            .memory_bytes(self.memory_mib.saturating_mul(1 << 20))
            .serial(SerialConfig::File(console_log.to_owned()));
        if let Some(initrd) = &self.initrd {
            builder = builder.initrd(initrd);
        }
        for disk in &self.disks {
            builder = builder.disk(DiskConfig {
                path: disk.path.clone(),
                read_only: disk.readonly,
                id: None,
                format: disk.format,
            });
        }
        builder.build().map_err(|e| AgentError::InvalidSpec {
            server_id: self.server_id.clone(),
            reason: e.to_string(),
        })
    }

    /// The arguments of `nubo-vmm` (after the binary) for this spec, with the
    /// console log and API socket at the given paths: vmm-api's rendering of
    /// [`VmmSpec::vm_config`], then how the process runs (restarting the
    /// guest on reboot, with seccomp, and with a [`VmmSpec::vmm_uid`], as
    /// that user and group, jailed in `jail_root`).
    pub(crate) fn vmm_args(
        &self,
        console_log: &Path,
        api_socket: &Path,
        jail_root: &Path,
    ) -> Result<Vec<OsString>, AgentError> {
        let mut args = self.vm_config(console_log)?.run_args(Some(api_socket));
        args.push("--on-reboot=restart".into());
        args.push("--seccomp=on".into());
        if let Some(id) = self.vmm_uid {
            args.push(format!("--user={id}").into());
            args.push(format!("--group={id}").into());
            let mut jail = OsString::from("--jail=");
            jail.push(jail_root.as_os_str());
            args.push(jail);
        }
        Ok(args)
    }
}
