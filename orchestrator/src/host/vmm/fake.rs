//! A [`VmmHost`] that keeps its servers' "VMMs" in memory, for the API
//! tests: no KVM, no `nubo-vmm`, no files. A spawn's guest runs at once;
//! tests may make starts fail or the guest power off on its own.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use images::ImageFormat;

use super::{validate_server_id, AgentError, ExitInfo, VmmHost, VmmProcess, VmmSpec};

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

#[derive(Debug)]
struct State {
    instances: BTreeMap<String, Instance>,
    next_pid: i32,
    starts: StartOutcome,
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
}
