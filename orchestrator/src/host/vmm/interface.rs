//! [`VmmHost`]: what compute asks of a host about its servers' VMMs, and
//! nothing else. The [`Agent`] is the real implementation; tests use
//! `host::vmm::fake::FakeVmmHost`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use images::ImageFormat;
use vmm_api::config::DiskConfig;

use super::{Agent, AgentError, DeviceInfo, VmmProcess, VmmSpec};

/// Runs one VMM per server on this host: its boot disk, its process, its
/// console, its instance files. Blocking (std, no tokio): call it from async
/// code through `tokio::task::spawn_blocking`. Every method is as on
/// [`Agent`], which documents it.
pub trait VmmHost: Send + Sync {
    /// Creates the server's boot disk, a qcow2 overlay on `image_path`;
    /// returns its path (see [`Agent::create_boot_disk`]).
    fn create_boot_disk(
        &self,
        server_id: &str,
        image_path: &Path,
        image_format: ImageFormat,
    ) -> Result<PathBuf, AgentError>;

    /// Starts the server's VMM from `spec` and records the spec (see
    /// [`Agent::spawn`]); returns once the process exists.
    fn spawn(&self, spec: &VmmSpec) -> Result<VmmProcess, AgentError> {
        self.spawn_with_taps(spec, &[])
    }

    /// Starts a guest with NICs: `taps[i]` is inherited at
    /// [`super::tap_fd`]`(i)` (see [`Agent::spawn_with_taps`]).
    fn spawn_with_taps(
        &self,
        spec: &VmmSpec,
        taps: &[std::os::fd::OwnedFd],
    ) -> Result<VmmProcess, AgentError>;

    /// Waits until the guest runs; [`AgentError::VmmExited`] if the VMM
    /// ends first (see [`Agent::wait_running`]).
    fn wait_running(&self, server_id: &str, timeout: Duration) -> Result<(), AgentError>;

    /// Finds a running VMM of the server again after a daemon restart (see
    /// [`Agent::adopt`]).
    fn adopt(&self, server_id: &str) -> Result<Option<VmmProcess>, AgentError>;

    /// Whether the VMM still runs (see [`Agent::is_alive`]).
    fn is_alive(&self, p: &VmmProcess) -> bool;

    /// ACPI shutdown, hard stop after `timeout` (see [`Agent::shutdown`]).
    fn shutdown(&self, server_id: &str, timeout: Duration) -> Result<(), AgentError>;

    /// Stops the guest now (see [`Agent::stop`]).
    fn stop(&self, server_id: &str) -> Result<(), AgentError>;

    /// Kills the VMM (see [`Agent::kill`]).
    fn kill(&self, server_id: &str) -> Result<(), AgentError>;

    /// The guest's console output, or its last `last_lines` lines (see
    /// [`Agent::console_output`]).
    fn console_output(
        &self,
        server_id: &str,
        last_lines: Option<usize>,
    ) -> Result<String, AgentError>;

    /// Kills the VMM and removes the server's files (see
    /// [`Agent::remove_instance`]).
    fn remove_instance(&self, server_id: &str) -> Result<(), AgentError>;

    /// The spec the server was last started with (see [`Agent::load_spec`]).
    fn load_spec(&self, server_id: &str) -> Result<Option<VmmSpec>, AgentError>;

    /// The servers with instance files here, sorted (see
    /// [`Agent::list_instances`]).
    fn list_instances(&self) -> Result<Vec<String>, AgentError>;

    /// After a daemon restart: makes every running VMM tracked or gone,
    /// killing those of servers not in `known` (see
    /// [`Agent::settle_running_vmms`]).
    fn settle_running_vmms(&self, known: &HashSet<String>);

    /// Plugs `disk` (its `id` is the device id and guest serial) into the
    /// running guest; the host opens `disk.path` and its `backing` files
    /// (top first) and passes them to the VMM (see [`Agent::hot_add_disk`]).
    fn hot_add_disk(
        &self,
        server_id: &str,
        disk: &DiskConfig,
        backing: &[PathBuf],
    ) -> Result<DeviceInfo, AgentError>;

    /// Unplugs device `id` once the guest ejected it;
    /// [`AgentError::Timeout`] if it did not within `timeout` (see
    /// [`Agent::hot_remove_device`]).
    fn hot_remove_device(
        &self,
        server_id: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<(), AgentError>;

    /// Tells the running guest that disk `id` is now `size` bytes (see
    /// [`Agent::resize_disk`]).
    fn resize_disk(&self, server_id: &str, id: &str, size: u64) -> Result<(), AgentError>;

    /// The running guest's devices (see [`Agent::devices`]).
    fn devices(&self, server_id: &str) -> Result<Vec<DeviceInfo>, AgentError>;
}

impl VmmHost for Agent {
    fn create_boot_disk(
        &self,
        server_id: &str,
        image_path: &Path,
        image_format: ImageFormat,
    ) -> Result<PathBuf, AgentError> {
        Agent::create_boot_disk(self, server_id, image_path, image_format)
    }

    fn spawn_with_taps(
        &self,
        spec: &VmmSpec,
        taps: &[std::os::fd::OwnedFd],
    ) -> Result<VmmProcess, AgentError> {
        Agent::spawn_with_taps(self, spec, taps)
    }

    fn wait_running(&self, server_id: &str, timeout: Duration) -> Result<(), AgentError> {
        Agent::wait_running(self, server_id, timeout)
    }

    fn adopt(&self, server_id: &str) -> Result<Option<VmmProcess>, AgentError> {
        Agent::adopt(self, server_id)
    }

    fn is_alive(&self, p: &VmmProcess) -> bool {
        Agent::is_alive(self, p)
    }

    fn shutdown(&self, server_id: &str, timeout: Duration) -> Result<(), AgentError> {
        Agent::shutdown(self, server_id, timeout)
    }

    fn stop(&self, server_id: &str) -> Result<(), AgentError> {
        Agent::stop(self, server_id)
    }

    fn kill(&self, server_id: &str) -> Result<(), AgentError> {
        Agent::kill(self, server_id)
    }

    fn console_output(
        &self,
        server_id: &str,
        last_lines: Option<usize>,
    ) -> Result<String, AgentError> {
        Agent::console_output(self, server_id, last_lines)
    }

    fn remove_instance(&self, server_id: &str) -> Result<(), AgentError> {
        Agent::remove_instance(self, server_id)
    }

    fn load_spec(&self, server_id: &str) -> Result<Option<VmmSpec>, AgentError> {
        Agent::load_spec(self, server_id)
    }

    fn list_instances(&self) -> Result<Vec<String>, AgentError> {
        Agent::list_instances(self)
    }

    fn settle_running_vmms(&self, known: &HashSet<String>) {
        Agent::settle_running_vmms(self, known)
    }

    fn hot_add_disk(
        &self,
        server_id: &str,
        disk: &DiskConfig,
        backing: &[PathBuf],
    ) -> Result<DeviceInfo, AgentError> {
        Agent::hot_add_disk(self, server_id, disk, backing)
    }

    fn hot_remove_device(
        &self,
        server_id: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        Agent::hot_remove_device(self, server_id, id, timeout)
    }

    fn resize_disk(&self, server_id: &str, id: &str, size: u64) -> Result<(), AgentError> {
        Agent::resize_disk(self, server_id, id, size)
    }

    fn devices(&self, server_id: &str) -> Result<Vec<DeviceInfo>, AgentError> {
        Agent::devices(self, server_id)
    }
}
