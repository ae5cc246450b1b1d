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

/// Everything one server's `nubo-vmm` is started with; stored as
/// `INSTANCE_DIR/spec.json`. The guest is vmm-api's [`VmConfig`], the type
/// the VMM itself parses its command line into (its serial is set to the
/// instance's console log when the VMM starts). A `spec.json` written before
/// the guest was a `VmConfig` (kernel, initrd, cmdline, vcpus, memory_mib and
/// disks at the top level) still loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredSpec")]
pub struct VmmSpec {
    /// The server's id (`[0-9a-f-]`, names the instance directory).
    pub server_id: String,
    /// The guest: kernel, initramfs, command line, vCPUs, memory, disks.
    pub vm: VmConfig,
    /// The unprivileged user and group id the VMM runs as; the agent picks
    /// it when it starts the VMM (callers leave it `None`) and keeps it for
    /// the server's later starts. `None` in a stored spec: the VMM ran as
    /// the daemon's user.
    #[serde(default)]
    pub vmm_uid: Option<u32>,
}

/// A `spec.json` as written now or by an earlier version.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredSpec {
    /// `{"server_id", "vm": VmConfig, "vmm_uid"}`.
    Current {
        server_id: String,
        vm: VmConfig,
        #[serde(default)]
        vmm_uid: Option<u32>,
    },
    /// The guest's fields at the top level (before the guest was a VmConfig).
    Legacy(LegacySpec),
}

/// The `spec.json` of servers created before [`VmmSpec::vm`] existed.
#[derive(Deserialize)]
struct LegacySpec {
    server_id: String,
    kernel: PathBuf,
    #[serde(default)]
    initrd: Option<PathBuf>,
    cmdline: String,
    vcpus: u32,
    memory_mib: u64,
    #[serde(default)]
    disks: Vec<LegacyDisk>,
    #[serde(default)]
    vmm_uid: Option<u32>,
}

/// A disk of a [`LegacySpec`].
#[derive(Deserialize)]
struct LegacyDisk {
    path: PathBuf,
    format: ImageFormat,
    #[serde(default)]
    readonly: bool,
}

impl From<StoredSpec> for VmmSpec {
    fn from(stored: StoredSpec) -> Self {
        match stored {
            StoredSpec::Current {
                server_id,
                vm,
                vmm_uid,
            } => VmmSpec {
                server_id,
                vm,
                vmm_uid,
            },
            StoredSpec::Legacy(old) => VmmSpec {
                server_id: old.server_id,
                vm: VmConfig {
                    kernel: old.kernel,
                    initrd: old.initrd,
                    cmdline: old.cmdline,
                    // Out of range stays out of range: validate() refuses it.
                    vcpus: u8::try_from(old.vcpus).unwrap_or(0),
                    memory_bytes: old.memory_mib.saturating_mul(1 << 20),
                    serial: SerialConfig::Off,
                    disks: old
                        .disks
                        .into_iter()
                        .map(|d| DiskConfig {
                            path: d.path,
                            read_only: d.readonly,
                            id: None,
                            format: d.format,
                            ..Default::default()
                        })
                        .collect(),
                    nets: Vec::new(),
                },
                vmm_uid: old.vmm_uid,
            },
        }
    }
}

impl VmmSpec {
    /// Checks the fields the VMM would reject, so the error names the server.
    pub fn validate(&self) -> Result<(), AgentError> {
        validate_server_id(&self.server_id)?;
        let bad = |reason: String| AgentError::InvalidSpec {
            server_id: self.server_id.clone(),
            reason,
        };
        let vcpus = u32::from(self.vm.vcpus);
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(bad(format!("vcpus must be 1 to {MAX_VCPUS}, not {vcpus}")));
        }
        let min = vmm_api::config::MIN_MEMORY_BYTES;
        if self.vm.memory_bytes < min {
            return Err(bad(format!(
                "memory must be at least {} MiB, not {} bytes",
                min >> 20,
                self.vm.memory_bytes
            )));
        }
        for disk in &self.vm.disks {
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
    pub fn vm_config(&self, console_log: &Path) -> VmConfig {
        VmConfig {
            serial: SerialConfig::File(console_log.to_owned()),
            ..self.vm.clone()
        }
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
        self.validate()?;
        let mut args = self.vm_config(console_log).run_args(Some(api_socket));
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
