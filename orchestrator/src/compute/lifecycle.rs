//! Server lifecycle in the background: build (schedule, boot disk, VMM),
//! stop, start, reboot, delete; the power-state sync that notices guests that
//! ended on their own; and reconciliation after a daemon restart.
//!
//! Every transition ends in a state a user can act on: BUILD ends in ACTIVE
//! or ERROR, a failed action leaves a `fault`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::model::{power, status, Server};
use super::Compute;
use crate::host::vmm::{AgentError, ExitInfo, VmmSpec};
use crate::identity::AuthContext;
use crate::placement::{self, ClaimError, Request};
use crate::util::now_iso;
use vmm_api::config::{DiskConfig, NetConfig, SerialConfig, VmConfig};

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;

/// How long a new VMM gets to report its guest running.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the power-state sync looks at the VMMs.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Runs a blocking closure off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("background task failed: {e}"))
}

/// Sets status, task state and power state (and the fault, if given).
pub fn set_state(
    c: &Compute,
    id: &str,
    st: &str,
    task: Option<&str>,
    pw: i64,
    fault: Option<&str>,
) {
    let fault_json =
        fault.map(|m| json!({ "code": 500, "message": m, "created": now_iso() }).to_string());
    let conn = c.db.lock();
    let r = if st == status::ACTIVE && task.is_none() {
        super::store::set_launched(&conn, id, st, pw)
    } else {
        super::store::set_state(&conn, id, st, task, pw, fault_json.as_deref())
    };
    if let Err(e) = r {
        tracing::error!(server = %id, error = %e, "cannot record the server's state");
    } else {
        tracing::info!(server = %id, status = st, task = ?task, fault = ?fault, "server state");
    }
}

/// Puts the server in ERROR with `message` as its fault.
fn set_error(c: &Compute, id: &str, message: &str) {
    set_state(c, id, status::ERROR, None, power::NOSTATE, Some(message));
}

fn load(c: &Compute, id: &str) -> Option<Server> {
    match super::store::server(&c.db.lock(), id) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(server = %id, error = %e, "cannot read the server");
            None
        }
    }
}

/// Where an image's file is (the image store decides).
fn image_file(c: &Compute, image_id: &str) -> Result<PathBuf, String> {
    c.images.path(image_id).map_err(|e| e.to_string())
}

/// What the lifecycle needs of an image row.
struct ImageInfo {
    /// Glance status.
    status: String,
    /// Disk format (`raw` when unset).
    disk_format: String,
    /// Owning project.
    owner: String,
    /// Glance visibility.
    visibility: String,
    /// Extra properties (`kernel_id`, `ramdisk_id`, `os_command_line`).
    properties: serde_json::Map<String, serde_json::Value>,
}

/// An image's row.
fn image_row(c: &Compute, image_id: &str) -> Result<ImageInfo, String> {
    let row = crate::image::service::find(&c.db.lock(), image_id)
        .map_err(|e| format!("state database: {e}"))?
        .ok_or_else(|| format!("image {image_id} does not exist"))?;
    Ok(ImageInfo {
        status: row.status,
        disk_format: row.disk_format.unwrap_or_else(|| "raw".into()),
        owner: row.owner,
        visibility: row.visibility,
        properties: row.properties,
    })
}

/// An image's row, if the image is active.
fn active(image_id: &str, info: ImageInfo) -> Result<ImageInfo, String> {
    if info.status != "active" {
        return Err(format!("image {image_id} is {}, not active", info.status));
    }
    Ok(info)
}

/// An active image's row.
fn image_info(c: &Compute, image_id: &str) -> Result<ImageInfo, String> {
    active(image_id, image_row(c, image_id)?)
}

/// Who the server's build acts as, for what images it may use.
fn server_context(c: &Compute, s: &Server) -> Result<AuthContext, String> {
    AuthContext::of_user_on_project(&c.db.lock(), &s.user_id, &s.project_id)
        .map_err(|e| format!("state database: {e}"))?
        .ok_or_else(|| format!("the server's user {} no longer exists", s.user_id))
}

/// The VMM spec of a server: its boot disk (none for a server booted from
/// a volume: its volumes are added at every start, root first), and the
/// kernel, initramfs and command line from `props` (the image's
/// properties, or a root volume's `volume_image_metadata`):
/// `kernel_id`/`ramdisk_id`/`os_command_line`, or the daemon's defaults. A
/// kernel or ramdisk image must be visible to the server's project, as the
/// boot image is (the API checked that when the server was created; the
/// image's properties may have changed since).
fn spec_for(
    c: &Compute,
    s: &Server,
    props: &serde_json::Map<String, serde_json::Value>,
    disk: Option<PathBuf>,
) -> Result<VmmSpec, String> {
    let prop = |k: &str| props.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let side_image = |key: &str, want: &str| -> Result<Option<PathBuf>, String> {
        let Some(id) = prop(key) else { return Ok(None) };
        let info = image_row(c, &id).map_err(|e| format!("{key}: {e}"))?;
        if !server_context(c, s)?.may_see_image(&info.owner, &info.visibility) {
            tracing::warn!(server = %s.id, image = %id, key, "kernel or ramdisk image not visible to the server's project");
            // The same words as for an image that does not exist.
            return Err(format!("{key}: image {id} does not exist"));
        }
        let info = active(&id, info).map_err(|e| format!("{key}: {e}"))?;
        if info.disk_format != want {
            return Err(format!(
                "{key} {id} has disk_format {}, expected {want}",
                info.disk_format
            ));
        }
        image_file(c, &id).map(Some)
    };
    let kernel = match side_image("kernel_id", "aki")? {
        Some(k) => k,
        None => c.cfg.default_kernel.clone().ok_or_else(|| {
            "the image has no kernel_id and the daemon has no --default-kernel".to_string()
        })?,
    };
    let initrd = match side_image("ramdisk_id", "ari")? {
        Some(r) => Some(r),
        None if prop("kernel_id").is_some() => None,
        None => c.cfg.default_initrd.clone(),
    };
    let cmdline = prop("os_command_line").unwrap_or_else(|| c.cfg.default_cmdline.clone());
    Ok(VmmSpec {
        server_id: s.id.clone(),
        vm: VmConfig {
            kernel,
            initrd,
            cmdline,
            vcpus: s.vcpus.clamp(1, 254) as u8,
            memory_bytes: (s.ram.max(16) as u64) << 20,
            // The agent points the console at the instance's log when it starts.
            serial: SerialConfig::Off,
            disks: disk
                .into_iter()
                .map(|path| DiskConfig {
                    path,
                    read_only: false,
                    id: None,
                    format: images::ImageFormat::Qcow2,
                    ..Default::default()
                })
                .collect(),
            nets: Vec::new(),
        },
        vmm_uid: None,
    })
}

/// [`spec_for`] a server booted from its image, with its boot disk `disk`.
fn spec_for_image(c: &Compute, s: &Server, disk: PathBuf) -> Result<VmmSpec, String> {
    let props = image_info(c, &s.image_id)?.properties;
    spec_for(c, s, &props, Some(disk))
}

/// How a start ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// The guest runs.
    Running,
    /// The guest ran and powered off before we saw it running (the VMM
    /// exited with status 0): the server is SHUTOFF, not failed.
    PoweredOff,
}

/// The state a server is in after a start that ended so.
fn record_start(c: &Compute, id: &str, how: Started) {
    match how {
        Started::Running => set_state(c, id, status::ACTIVE, None, power::RUNNING, None),
        Started::PoweredOff => {
            tracing::info!(server = %id, "the guest powered off right after it started");
            set_state(c, id, status::SHUTOFF, None, power::SHUTDOWN, None)
        }
    }
}

/// The server's ports in NIC order (what its VMM gets TAPs for).
async fn server_ports(
    c: &Arc<Compute>,
    id: &str,
) -> Result<Vec<crate::host::net::plan::PortPlan>, String> {
    let db = c.db.clone();
    let id = id.to_string();
    blocking(move || crate::network::service::server_ports(&db.lock(), &id))
        .await?
        .map_err(|e| format!("the server's ports: {e}"))
}

/// Starts the server's VMM from its saved spec (its NICs from its ports
/// now) and waits until it runs.
async fn start_vmm(c: &Arc<Compute>, s: &Server, spec: Option<VmmSpec>) -> Result<Started, String> {
    let spec = match spec {
        Some(spec) => spec,
        None => {
            let vmm = Arc::clone(&c.vmm);
            let id = s.id.clone();
            match blocking(move || vmm.load_spec(&id)).await? {
                Ok(Some(spec)) => spec,
                Ok(None) => return Err("the server has no saved VMM spec".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let mut spec = spec;
    // The instance's own disks (no id), then its volumes as attached now.
    spec.vm.disks.retain(|d| d.id.is_none());
    spec.vm
        .disks
        .extend(super::volumes::disks_for_start(c, &s.id).await?);
    if spec.vm.disks.is_empty() {
        return Err("the server has no boot disk and no root volume".into());
    }
    let ports = server_ports(c, &s.id).await?;
    if !ports.is_empty() {
        // The bridges and filters of the server's networks exist before its
        // TAPs are opened in them.
        c.network
            .sync()
            .await
            .map_err(|e| format!("the server's networks: {}", e.message))?;
    }
    // NIC i is the TAP of port i, inherited at tap_fd(i).
    spec.vm.nets = ports
        .iter()
        .enumerate()
        .map(|(i, p)| NetConfig {
            tap: None,
            fd: Some(crate::host::vmm::tap_fd(i)),
            mac: Some(p.mac),
        })
        .collect();
    let vmm = Arc::clone(&c.vmm);
    let net_host = Arc::clone(&c.network.host);
    let id = s.id.clone();
    let port_ids: Vec<String> = ports.iter().map(|p| p.id.clone()).collect();
    let proc = blocking(move || -> Result<_, String> {
        let mut taps = Vec::with_capacity(ports.len());
        for port in &ports {
            taps.push(net_host.open_tap(port).map_err(|e| e.to_string())?);
        }
        let p = vmm
            .spawn_with_taps(&spec, &taps)
            .map_err(|e| e.to_string())?;
        // The VMM holds the TAPs now; the daemon's copies go.
        drop(taps);
        match vmm.wait_running(&spec.server_id, START_TIMEOUT) {
            Ok(()) => Ok(Some(p)),
            Err(AgentError::VmmExited {
                exit: Some(ExitInfo { code: Some(0), .. }),
                ..
            }) => Ok(None),
            Err(e) => {
                let _ = vmm.kill(&spec.server_id);
                Err(e.to_string())
            }
        }
    })
    .await??;
    if !port_ids.is_empty() {
        let conn = c.db.lock();
        if let Err(e) = crate::network::service::set_port_status(&conn, &port_ids, "ACTIVE") {
            tracing::warn!(server = %id, error = %e.message, "cannot mark the server's ports ACTIVE");
        }
    }
    match proc {
        Some(p) => {
            c.set_proc(&id, Some(p));
            Ok(Started::Running)
        }
        None => Ok(Started::PoweredOff),
    }
}

/// The root volume a build makes from an image (`--boot-from-volume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRootVolume {
    /// The image its data comes from.
    pub image_id: String,
    /// Its size in GiB.
    pub size_gib: u64,
    /// Delete it with the server.
    pub delete_on_termination: bool,
}

/// Builds a new server: claim capacity, create the boot disk (or, booting
/// from a volume, make the root volume from `new_root` when asked), start
/// the VMM.
pub async fn build(c: Arc<Compute>, id: String, new_root: Option<NewRootVolume>) {
    let Some(_busy) = c.try_busy(&id) else {
        tracing::warn!(server = %id, "build skipped: another operation holds the server");
        return;
    };
    let Some(s) = load(&c, &id) else { return };
    if s.status != status::BUILD {
        return;
    }
    set_state(
        &c,
        &id,
        status::BUILD,
        Some("scheduling"),
        power::NOSTATE,
        None,
    );
    let from_volume = super::volumes::boots_from_volume(&s);
    let req = Request {
        vcpus: s.vcpus.max(0) as u64,
        memory_mb: s.ram.max(0) as u64,
        // A server booted from a volume has no disk on the host.
        disk_gb: if from_volume { 0 } else { s.disk.max(0) as u64 },
    };
    let claim = {
        let c2 = Arc::clone(&c);
        let id2 = id.clone();
        blocking(move || placement::claim(&mut c2.db.lock(), &id2, req, c2.capacity)).await
    };
    match claim {
        Ok(Ok(())) => {}
        Ok(Err(ClaimError::NoValidHost(why))) => {
            let msg =
                format!("No valid host was found. There are not enough hosts available. ({why})");
            set_error(&c, &id, &msg);
            return;
        }
        Ok(Err(e)) => {
            set_error(&c, &id, &e.to_string());
            return;
        }
        Err(e) => {
            set_error(&c, &id, &e);
            return;
        }
    }
    set_state(
        &c,
        &id,
        status::BUILD,
        Some("spawning"),
        power::NOSTATE,
        None,
    );
    let result = async {
        if from_volume {
            let props = root_volume_props(&c, &s, new_root).await?;
            let vmm = Arc::clone(&c.vmm);
            let sid = id.clone();
            // A previous attempt (daemon killed mid-build) may have left files.
            let _ = blocking(move || vmm.remove_instance(&sid)).await;
            let spec = spec_for(&c, &s, &props, None)?;
            return start_vmm(&c, &s, Some(spec)).await;
        }
        let fmt = image_info(&c, &s.image_id)?.disk_format;
        let format = fmt
            .parse::<crate::image::files::DiskFormat>()
            .ok()
            .and_then(|f| f.image_format())
            .ok_or_else(|| {
                format!(
                    "image {} has disk_format {fmt}, which cannot boot a server",
                    s.image_id
                )
            })?;
        let vmm = Arc::clone(&c.vmm);
        let backing = image_file(&c, &s.image_id)?;
        let sid = id.clone();
        let disk = blocking(move || {
            // A previous attempt (daemon killed mid-build) may have left files.
            let _ = vmm.remove_instance(&sid);
            vmm.create_boot_disk(&sid, &backing, format)
        })
        .await?
        .map_err(|e| e.to_string())?;
        let spec = spec_for_image(&c, &s, disk)?;
        start_vmm(&c, &s, Some(spec)).await
    }
    .await;
    match result {
        Ok(how) => record_start(&c, &id, how),
        Err(e) => {
            tracing::warn!(server = %id, error = %e, "build failed");
            c.set_proc(&id, None);
            let c2 = Arc::clone(&c);
            let id2 = id.clone();
            let _ = blocking(move || {
                let _ = c2.vmm.kill(&id2);
                placement::release(&c2.db.lock(), &id2)
            })
            .await;
            set_error(&c, &id, &format!("Build of instance {id} aborted: {e}"));
        }
    }
}

/// A server booted from a volume: makes its root volume from an image when
/// asked (and reserves it as the root), and returns the root volume's
/// `volume_image_metadata`, which stands for an image's properties.
async fn root_volume_props(
    c: &Arc<Compute>,
    s: &Server,
    new_root: Option<NewRootVolume>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = |e: crate::http::error::ApiError| e.message;
    if let Some(root) = new_root {
        let name = format!("{}-root", s.name);
        let volume_id = c
            .volume
            .create_for_boot(&s.project_id, &root.image_id, root.size_gib, &name)
            .await
            .map_err(|e| format!("the root volume: {}", e.message))?;
        let req = crate::volume::attachments::ReserveRequest {
            project_id: s.project_id.clone(),
            volume_id,
            server_id: s.id.clone(),
            device: super::volumes::ROOT_DEVICE.into(),
            delete_on_termination: root.delete_on_termination,
            boot_index: Some(0),
        };
        let volume = Arc::clone(&c.volume);
        blocking(move || volume.reserve(&req))
            .await?
            .map_err(text)?;
    }
    let atts = super::volumes::attachments(c, &s.id).await.map_err(text)?;
    let root = super::volumes::root_of(&atts)
        .ok_or(
            "the server boots from a volume but has no root volume (its creation was interrupted)",
        )?
        .volume_id
        .clone();
    let volume = Arc::clone(&c.volume);
    let meta = blocking(move || volume.image_metadata(&root))
        .await?
        .map_err(text)?;
    Ok(meta
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect())
}

/// `os-stop`: ACPI shutdown, hard stop after the configured shutdown timeout.
pub async fn stop(c: Arc<Compute>, id: String, busy: super::BusyGuard) {
    let vmm = Arc::clone(&c.vmm);
    let sid = id.clone();
    let timeout = c.cfg.shutdown_timeout;
    let r = blocking(move || vmm.shutdown(&sid, timeout)).await;
    c.take_proc(&id);
    match r {
        Ok(Ok(())) => set_state(&c, &id, status::SHUTOFF, None, power::SHUTDOWN, None),
        Ok(Err(e)) => set_error(&c, &id, &format!("stop failed: {e}")),
        Err(e) => set_error(&c, &id, &e),
    }
    drop(busy);
}

/// `os-start`: a new VMM from the saved spec.
pub async fn start(c: Arc<Compute>, id: String, busy: super::BusyGuard) {
    let Some(s) = load(&c, &id) else { return };
    match start_vmm(&c, &s, None).await {
        Ok(how) => record_start(&c, &id, how),
        Err(e) => set_state(
            &c,
            &id,
            status::SHUTOFF,
            None,
            power::SHUTDOWN,
            Some(&format!("start failed: {e}")),
        ),
    }
    drop(busy);
}

/// `reboot`: SOFT presses the ACPI power button and starts a new VMM once
/// the guest is off (as libvirt's soft reboot does); HARD kills the VMM and
/// starts a new one.
pub async fn reboot(c: Arc<Compute>, id: String, hard: bool, busy: super::BusyGuard) {
    let Some(s) = load(&c, &id) else { return };
    let vmm = Arc::clone(&c.vmm);
    let sid = id.clone();
    let timeout = c.cfg.shutdown_timeout;
    let down = blocking(move || {
        if hard {
            vmm.kill(&sid)
        } else {
            vmm.shutdown(&sid, timeout)
        }
    })
    .await;
    c.take_proc(&id);
    let r = match down {
        Ok(Ok(())) => start_vmm(&c, &s, None).await,
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e),
    };
    match r {
        Ok(how) => record_start(&c, &id, how),
        Err(e) => set_error(&c, &id, &format!("reboot failed: {e}")),
    }
    drop(busy);
}

/// Deletes a server: waits for any running operation, kills the VMM,
/// removes its files and allocation, then the row.
pub async fn delete(c: Arc<Compute>, id: String) {
    let busy = loop {
        if let Some(b) = c.try_busy(&id) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.take_proc(&id);
    let c2 = Arc::clone(&c);
    let sid = id.clone();
    let removed = blocking(move || c2.vmm.remove_instance(&sid).map_err(|e| e.to_string()))
        .await
        .and_then(|r| r);
    if let Err(e) = removed {
        set_error(&c, &id, &format!("delete failed: {e}"));
        return;
    }
    // The VMM is gone: the volumes are free.
    super::volumes::release_all(&c, &id).await;
    let c2 = Arc::clone(&c);
    let sid = id.clone();
    let r = blocking(move || -> Result<(), String> {
        let conn = c2.db.lock();
        placement::release(&conn, &sid).map_err(|e| e.to_string())?;
        // Its ports: the created ones go, the given ones are unbound.
        crate::network::service::release_server_ports(&conn, &sid).map_err(|e| e.message)?;
        super::store::delete_server(&conn, &sid).map_err(|e| e.to_string())?;
        super::store::forget_actions(&conn, &sid).map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
    .and_then(|r| r);
    match r {
        Ok(()) => {
            tracing::info!(server = %id, "server deleted");
            let c2 = Arc::clone(&c);
            let _ = blocking(move || {
                super::image_use::remove_released_files(&c2.db, c2.vmm.as_ref(), &c2.images)
            })
            .await;
        }
        Err(e) => set_error(&c, &id, &format!("delete failed: {e}")),
    }
    drop(busy);
}

/// Notices VMMs that ended on their own (the guest powered off, or the VMM
/// died) and records the server as SHUTOFF, as Nova's power-state sync does.
pub async fn power_sync(c: Arc<Compute>) {
    loop {
        tokio::time::sleep(SYNC_INTERVAL).await;
        let ended: Vec<String> = {
            let procs = c.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs
                .iter()
                .filter(|(id, p)| !c.is_busy(id) && !c.vmm.is_alive(p))
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ended {
            if c.is_busy(&id) {
                continue;
            }
            c.take_proc(&id);
            if let Some(s) = load(&c, &id) {
                if s.status == status::ACTIVE {
                    tracing::info!(server = %id, "the guest stopped on its own");
                    set_state(&c, &id, status::SHUTOFF, None, power::SHUTDOWN, None);
                }
            }
        }
    }
}

/// Plugs and unplugs a running server's volumes as its attachments say
/// (after a daemon restart), in the background.
fn spawn_replug(c: &Arc<Compute>, id: &str) {
    let c = Arc::clone(c);
    let sid = id.to_string();
    tokio::spawn(async move {
        if let Some(_busy) = c.try_busy(&sid) {
            super::volumes::replug(&c, &sid).await;
        }
    });
}

/// After a (re)start of the daemon: adopts running VMMs, finishes or fails
/// interrupted operations, marks servers whose VMM died SHUTOFF, and removes
/// instance directories no server owns.
pub async fn reconcile(c: Arc<Compute>) {
    let servers = match super::store::servers(&c.db.lock()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot read servers to reconcile");
            return;
        }
    };
    let known: std::collections::HashSet<String> = servers.iter().map(|s| s.id.clone()).collect();
    {
        // Before adopting: every VMM that runs is tracked by its server's pid
        // file or killed, so no build restarted below can duplicate one.
        let vmm = Arc::clone(&c.vmm);
        let known = known.clone();
        let _ = blocking(move || vmm.settle_running_vmms(&known)).await;
    }
    for s in servers {
        let vmm = Arc::clone(&c.vmm);
        let sid = s.id.clone();
        let adopted = blocking(move || match vmm.adopt(&sid) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(server = %sid, error = %e, "VMM alive but unusable; killing it");
                let _ = vmm.kill(&sid);
                None
            }
        })
        .await
        .unwrap_or(None);
        let running = adopted.is_some();
        if let Some(p) = adopted {
            c.set_proc(&s.id, Some(p));
        }
        let task = s.task_state.as_deref();
        tracing::info!(server = %s.id, status = %s.status, task = ?task, running, "reconciling");
        if task == Some("deleting") {
            tokio::spawn(delete(Arc::clone(&c), s.id.clone()));
            continue;
        }
        match (s.status.as_str(), running) {
            (status::BUILD, true) | (status::REBOOT, true) | (status::HARD_REBOOT, true) => {
                set_state(&c, &s.id, status::ACTIVE, None, power::RUNNING, None);
                spawn_replug(&c, &s.id);
            }
            (status::BUILD, false) => {
                // Start the build over: claims are idempotent and the
                // instance files are recreated.
                tokio::spawn(build(Arc::clone(&c), s.id.clone(), None));
            }
            (status::REBOOT, false) | (status::HARD_REBOOT, false) => {
                if let Some(b) = c.try_busy(&s.id) {
                    tokio::spawn(start(Arc::clone(&c), s.id.clone(), b));
                }
            }
            (status::ACTIVE, true) if task.is_none() => spawn_replug(&c, &s.id),
            (status::ACTIVE, true) => {
                // An interrupted stop: finish it.
                if task == Some("powering-off") {
                    if let Some(b) = c.try_busy(&s.id) {
                        tokio::spawn(stop(Arc::clone(&c), s.id.clone(), b));
                    }
                } else {
                    set_state(&c, &s.id, status::ACTIVE, None, power::RUNNING, None);
                }
            }
            (status::ACTIVE, false) => {
                if task == Some("powering-off") {
                    set_state(&c, &s.id, status::SHUTOFF, None, power::SHUTDOWN, None);
                } else {
                    set_state(
                        &c,
                        &s.id,
                        status::SHUTOFF,
                        None,
                        power::SHUTDOWN,
                        Some("the server's VMM was not running when nubo started"),
                    );
                }
            }
            (status::SHUTOFF, true) => {
                if task == Some("powering-on") {
                    set_state(&c, &s.id, status::ACTIVE, None, power::RUNNING, None);
                } else {
                    tracing::warn!(server = %s.id, "a VMM runs for a SHUTOFF server; stopping it");
                    let vmm = Arc::clone(&c.vmm);
                    let sid = s.id.clone();
                    let _ = blocking(move || vmm.stop(&sid)).await;
                    c.take_proc(&s.id);
                }
            }
            (status::SHUTOFF, false) if task == Some("powering-on") => {
                if let Some(b) = c.try_busy(&s.id) {
                    tokio::spawn(start(Arc::clone(&c), s.id.clone(), b));
                }
            }
            _ => {}
        }
    }
    let vmm = Arc::clone(&c.vmm);
    let orphans = blocking(move || vmm.list_instances()).await;
    if let Ok(Ok(ids)) = orphans {
        for id in ids.into_iter().filter(|i| !known.contains(i)) {
            tracing::warn!(server = %id, "orphan instance directory (no such server): removing it and its VMM");
            let vmm = Arc::clone(&c.vmm);
            let _ = blocking(move || vmm.remove_instance(&id)).await;
        }
    }
}
