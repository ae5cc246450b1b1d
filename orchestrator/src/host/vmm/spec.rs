//! What a server's VMM runs with ([`VmmSpec`]) and how that becomes a
//! `nubo-vmm run` command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use images::ImageFormat;
use serde::{Deserialize, Serialize};

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

    /// The arguments of `nubo-vmm` (after the binary) for this spec, with the
    /// console log and API socket at the given paths; with a [`VmmSpec::vmm_uid`],
    /// the VMM runs as that user and group, jailed in `jail_root`.
    pub(crate) fn vmm_args(
        &self,
        console_log: &Path,
        api_socket: &Path,
        jail_root: &Path,
    ) -> Vec<OsString> {
        // `--opt=value` everywhere, so a value starting with '-' is never
        // taken for an option.
        let opt = |name: &str, value: &Path| {
            let mut s = OsString::from(format!("--{name}="));
            s.push(value.as_os_str());
            s
        };
        let mut args: Vec<OsString> = vec!["run".into(), opt("kernel", &self.kernel)];
        if let Some(initrd) = &self.initrd {
            args.push(opt("initrd", initrd));
        }
        args.push(format!("--cmdline={}", self.cmdline).into());
        args.push(format!("--cpus={}", self.vcpus).into());
        args.push(format!("--memory={}M", self.memory_mib).into());
        let mut serial = OsString::from("--serial=file=");
        serial.push(console_log.as_os_str());
        args.push(serial);
        args.push(opt("api-socket", api_socket));
        for disk in &self.disks {
            let mut d = OsString::from("--disk=path=");
            d.push(disk.path.as_os_str());
            d.push(format!(",format={}", disk.format.name()));
            if disk.readonly {
                d.push(",readonly=on");
            }
            args.push(d);
        }
        args.push("--on-reboot=restart".into());
        args.push("--seccomp=on".into());
        if let Some(id) = self.vmm_uid {
            args.push(format!("--user={id}").into());
            args.push(format!("--group={id}").into());
            args.push(opt("jail", jail_root));
        }
        args
    }
}
