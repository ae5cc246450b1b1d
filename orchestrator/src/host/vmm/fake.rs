//! A [`VmmHost`] that keeps its servers' "VMMs" in memory, for the API
//! tests: no KVM, no `nubo-vmm`, no files. A spawn's guest runs at once;
//! tests may make starts fail or the guest power off on its own.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use images::ImageFormat;
use vmm_api::config::DiskConfig;

use super::{
    validate_device_id, validate_server_id, AgentError, DeviceInfo, ExitInfo, VmmHost, VmmProcess,
    VmmSpec,
};

/// What the console of every fake guest holds.
pub const CONSOLE_LINE: &str = "fake guest: login:";

/// How the next starts end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// The guest runs.
    Runs,
    /// The VMM exits with status 1 and this line in its log.
    Fails(String),
    /// The guest powers off before it is seen running (status 0).
    PowersOff,
}

/// One server's instance.
#[derive(Debug, Default)]
struct Instance {
    spec: Option<VmmSpec>,
    /// The pid of its running VMM.
    running: Option<i32>,
    /// How its last VMM ended, with the tail of its log.
    exit: Option<(ExitInfo, String)>,
}

/// How the next hot-plug requests end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotplugOutcome {
    /// As asked.
    Works,
    /// The VMM refuses (409) with this reason.
    Fails(String),
    /// The guest does not let go of a device (removals time out; adds work).
    TimesOut,
}

/// One hot-plug request the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotplugCall {
    /// `add-disk` of this disk with these backing files.
    Add {
        /// The server.
        server_id: String,
        /// The disk.
        disk: DiskConfig,
        /// Its backing files, top first.
        backing: Vec<PathBuf>,
    },
    /// `remove-device`.
    Remove {
        /// The server.
        server_id: String,
        /// The device id.
        id: String,
    },
    /// `resize-disk`.
    Resize {
        /// The server.
        server_id: String,
        /// The device id.
        id: String,
        /// The new size in bytes.
        size: u64,
    },
}

#[derive(Debug)]
struct State {
    instances: BTreeMap<String, Instance>,
    next_pid: i32,
    starts: StartOutcome,
    hotplug: HotplugOutcome,
    calls: Vec<HotplugCall>,
}

/// The fake host.
#[derive(Debug)]
pub struct FakeVmmHost {
    state: Mutex<State>,
}

impl Default for FakeVmmHost {
    fn default() -> Self {
        FakeVmmHost {
            state: Mutex::new(State {
                instances: BTreeMap::new(),
                next_pid: 1000,
                starts: StartOutcome::Runs,
                hotplug: HotplugOutcome::Works,
                calls: Vec::new(),
            }),
        }
    }
}

impl FakeVmmHost {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How every start from now on ends.
    pub fn set_starts(&self, outcome: StartOutcome) {
        self.state().starts = outcome;
    }

    /// How every hot-plug request from now on ends.
    pub fn set_hotplug(&self, outcome: HotplugOutcome) {
        self.state().hotplug = outcome;
    }

    /// The hot-plug requests so far, oldest first.
    pub fn hotplug_calls(&self) -> Vec<HotplugCall> {
        self.state().calls.clone()
    }

    /// The disks the server's VMM was last started with, as recorded
    /// (hot-plugs included).
    pub fn disks(&self, server_id: &str) -> Vec<DiskConfig> {
        self.state()
            .instances
            .get(server_id)
            .and_then(|i| i.spec.as_ref())
            .map(|s| s.vm.disks.clone())
            .unwrap_or_default()
    }

    /// Runs `f` on a running instance's recorded spec; `NotRunning` when none.
    fn on_running<T>(
        &self,
        server_id: &str,
        call: HotplugCall,
        f: impl FnOnce(&HotplugOutcome, &mut VmmSpec) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        validate_server_id(server_id)?;
        let mut st = self.state();
        st.calls.push(call);
        let outcome = st.hotplug.clone();
        let not_running = || AgentError::NotRunning {
            server_id: server_id.to_owned(),
        };
        let i = st.instances.get_mut(server_id).ok_or_else(not_running)?;
        if i.running.is_none() {
            return Err(not_running());
        }
        let spec = i.spec.as_mut().ok_or_else(not_running)?;
        f(&outcome, spec)
    }

    /// The guest of `server_id` powers off (its VMM exits with status 0).
    pub fn power_off(&self, server_id: &str) {
        if let Some(i) = self.state().instances.get_mut(server_id) {
            i.running = None;
            i.exit = Some((
                ExitInfo {
                    code: Some(0),
                    signal: None,
                },
                String::new(),
            ));
        }
    }

    /// Whether a VMM runs for `server_id`.
    pub fn is_running(&self, server_id: &str) -> bool {
        self.state()
            .instances
            .get(server_id)
            .is_some_and(|i| i.running.is_some())
    }

    /// Whether `server_id` has an instance (files, on a real host).
    pub fn has_instance(&self, server_id: &str) -> bool {
        self.state().instances.contains_key(server_id)
    }

    fn down(&self, server_id: &str) -> Result<(), AgentError> {
        validate_server_id(server_id)?;
        if let Some(i) = self.state().instances.get_mut(server_id) {
            if i.running.take().is_some() {
                i.exit = Some((ExitInfo::UNKNOWN, String::new()));
            }
        }
        Ok(())
    }
}

impl VmmHost for FakeVmmHost {
    fn create_boot_disk(
        &self,
        server_id: &str,
        _image_path: &Path,
        _image_format: ImageFormat,
    ) -> Result<PathBuf, AgentError> {
        validate_server_id(server_id)?;
        self.state()
            .instances
            .entry(server_id.to_owned())
            .or_default();
        Ok(PathBuf::from(format!(
            "/fake-host/instances/{server_id}/disk.qcow2"
        )))
    }

    fn spawn_with_taps(
        &self,
        spec: &VmmSpec,
        taps: &[std::os::fd::OwnedFd],
    ) -> Result<VmmProcess, AgentError> {
        spec.validate()?;
        let fd_nets = spec.vm.nets.iter().filter(|n| n.fd.is_some()).count();
        if fd_nets != taps.len() {
            return Err(AgentError::InvalidSpec {
                server_id: spec.server_id.clone(),
                reason: format!("{fd_nets} NICs by descriptor but {} TAPs", taps.len()),
            });
        }
        let id = spec.server_id.clone();
        let mut st = self.state();
        st.next_pid += 1;
        let pid = st.next_pid;
        let starts = st.starts.clone();
        let i = st.instances.entry(id.clone()).or_default();
        if let Some(pid) = i.running {
            return Err(AgentError::AlreadyRunning { server_id: id, pid });
        }
        i.spec = Some(spec.clone());
        let code = |code| ExitInfo {
            code: Some(code),
            signal: None,
        };
        match starts {
            StartOutcome::Runs => {
                i.running = Some(pid);
                i.exit = None;
            }
            StartOutcome::Fails(log) => i.exit = Some((code(1), log)),
            StartOutcome::PowersOff => i.exit = Some((code(0), String::new())),
        }
        Ok(VmmProcess {
            server_id: id,
            pid,
            socket: PathBuf::new(),
            child: None,
        })
    }

    fn wait_running(&self, server_id: &str, _timeout: Duration) -> Result<(), AgentError> {
        let st = self.state();
        let Some(i) = st.instances.get(server_id) else {
            return Err(AgentError::NotRunning {
                server_id: server_id.to_owned(),
            });
        };
        match (&i.running, &i.exit) {
            (Some(_), _) => Ok(()),
            (None, Some((exit, log_tail))) => Err(AgentError::VmmExited {
                server_id: server_id.to_owned(),
                exit: Some(*exit),
                log_tail: log_tail.clone(),
            }),
            (None, None) => Err(AgentError::NotRunning {
                server_id: server_id.to_owned(),
            }),
        }
    }

    fn adopt(&self, server_id: &str) -> Result<Option<VmmProcess>, AgentError> {
        validate_server_id(server_id)?;
        let st = self.state();
        let running = st.instances.get(server_id).and_then(|i| i.running);
        Ok(running.map(|pid| VmmProcess {
            server_id: server_id.to_owned(),
            pid,
            socket: PathBuf::new(),
            child: None,
        }))
    }

    fn is_alive(&self, p: &VmmProcess) -> bool {
        let st = self.state();
        st.instances
            .get(&p.server_id)
            .is_some_and(|i| i.running == Some(p.pid))
    }

    fn shutdown(&self, server_id: &str, _timeout: Duration) -> Result<(), AgentError> {
        self.down(server_id)
    }

    fn stop(&self, server_id: &str) -> Result<(), AgentError> {
        self.down(server_id)
    }

    fn kill(&self, server_id: &str) -> Result<(), AgentError> {
        self.down(server_id)
    }

    fn console_output(
        &self,
        server_id: &str,
        last_lines: Option<usize>,
    ) -> Result<String, AgentError> {
        validate_server_id(server_id)?;
        let has = self.has_instance(server_id) && last_lines != Some(0);
        Ok(if has {
            format!("{CONSOLE_LINE}\n")
        } else {
            String::new()
        })
    }

    fn remove_instance(&self, server_id: &str) -> Result<(), AgentError> {
        validate_server_id(server_id)?;
        self.state().instances.remove(server_id);
        Ok(())
    }

    fn load_spec(&self, server_id: &str) -> Result<Option<VmmSpec>, AgentError> {
        validate_server_id(server_id)?;
        let st = self.state();
        Ok(st.instances.get(server_id).and_then(|i| i.spec.clone()))
    }

    fn list_instances(&self) -> Result<Vec<String>, AgentError> {
        Ok(self.state().instances.keys().cloned().collect())
    }

    fn settle_running_vmms(&self, _known: &HashSet<String>) {
        // Every fake VMM is tracked by its instance; none runs untracked.
    }

    fn hot_add_disk(
        &self,
        server_id: &str,
        disk: &DiskConfig,
        backing: &[PathBuf],
    ) -> Result<DeviceInfo, AgentError> {
        let id = disk.id.clone().unwrap_or_default();
        validate_device_id(server_id, &id)?;
        let call = HotplugCall::Add {
            server_id: server_id.to_owned(),
            disk: disk.clone(),
            backing: backing.to_vec(),
        };
        self.on_running(server_id, call, |outcome, spec| {
            if let HotplugOutcome::Fails(reason) = outcome {
                return Err(refused(server_id, reason));
            }
            if spec.vm.disks.iter().any(|d| d.id.as_deref() == Some(&id)) {
                return Err(refused(server_id, &format!("device {id} exists")));
            }
            spec.vm.disks.push(disk.clone());
            let slot = u8::try_from(spec.vm.disks.len() + 2).unwrap_or(u8::MAX);
            Ok(DeviceInfo {
                id: id.clone(),
                kind: vmm_api::config::DeviceKind::Disk,
                slot,
                bdf: DeviceInfo::bdf_of(slot),
                path: Some(disk.path.clone()),
                tap: None,
            })
        })
    }

    fn hot_remove_device(
        &self,
        server_id: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let call = HotplugCall::Remove {
            server_id: server_id.to_owned(),
            id: id.to_owned(),
        };
        self.on_running(server_id, call, |outcome, spec| match outcome {
            HotplugOutcome::Fails(reason) => Err(refused(server_id, reason)),
            HotplugOutcome::TimesOut => Err(AgentError::Timeout {
                server_id: server_id.to_owned(),
                what: "the guest to release the device",
                timeout,
            }),
            HotplugOutcome::Works => {
                let before = spec.vm.disks.len();
                spec.vm.disks.retain(|d| d.id.as_deref() != Some(id));
                if spec.vm.disks.len() == before {
                    return Err(refused(server_id, &format!("no device {id}")));
                }
                Ok(())
            }
        })
    }

    fn resize_disk(&self, server_id: &str, id: &str, size: u64) -> Result<(), AgentError> {
        let call = HotplugCall::Resize {
            server_id: server_id.to_owned(),
            id: id.to_owned(),
            size,
        };
        self.on_running(server_id, call, |outcome, spec| match outcome {
            HotplugOutcome::Fails(reason) => Err(refused(server_id, reason)),
            _ if spec.vm.disks.iter().any(|d| d.id.as_deref() == Some(id)) => Ok(()),
            _ => Err(refused(server_id, &format!("no device {id}"))),
        })
    }

    fn devices(&self, server_id: &str) -> Result<Vec<DeviceInfo>, AgentError> {
        validate_server_id(server_id)?;
        let st = self.state();
        let spec = st
            .instances
            .get(server_id)
            .filter(|i| i.running.is_some())
            .and_then(|i| i.spec.as_ref())
            .ok_or_else(|| AgentError::NotRunning {
                server_id: server_id.to_owned(),
            })?;
        Ok(spec
            .vm
            .disks
            .iter()
            .enumerate()
            .map(|(n, d)| {
                let slot = u8::try_from(n + 1).unwrap_or(u8::MAX);
                DeviceInfo {
                    id: d.id.clone().unwrap_or_else(|| format!("disk{n}")),
                    kind: vmm_api::config::DeviceKind::Disk,
                    slot,
                    bdf: DeviceInfo::bdf_of(slot),
                    path: Some(d.path.clone()),
                    tap: None,
                }
            })
            .collect())
    }
}

/// The VMM's 409.
fn refused(server_id: &str, reason: &str) -> AgentError {
    AgentError::Device {
        server_id: server_id.to_owned(),
        status: 409,
        reason: reason.to_owned(),
    }
}
