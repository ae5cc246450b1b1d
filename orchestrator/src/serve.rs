//! `nubo serve`: opens the state, seeds identity on first start, reconciles
//! running guests, and serves the API until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use axum::ServiceExt;
use tower_layer::Layer;

use crate::compute::{lifecycle, Compute};
use crate::config::Config;
use crate::db::Db;
use crate::host::vmm::{Agent, VmmHost};
use crate::http::{self, AppState};
use crate::identity::bootstrap;
use crate::image::files::ImageStore;

/// Runs the daemon.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::state_dir::restrict_umask();
    crate::state_dir::secure(&cfg.state_dir)
        .with_context(|| format!("securing state dir {}", cfg.state_dir.display()))?;
    let db = Db::open(&cfg.state_dir.join("nubo.db")).context("opening the state database")?;
    let openrc = cfg.state_dir.join("admin-openrc");
    let password = cfg
        .admin_password
        .clone()
        .unwrap_or_else(bootstrap::generate_password);
    let created = bootstrap::seed(&db.lock(), &password)
        .map_err(|e| anyhow::anyhow!(e))
        .context("creating the admin project and user")?;
    let base = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.listen));
    if created || !openrc.exists() {
        if !created && cfg.admin_password.is_none() {
            tracing::warn!("admin-openrc is missing and the admin password is unknown; writing it without a valid password");
        }
        bootstrap::write_openrc(&openrc, &format!("{base}/identity/v3"), &password)
            .with_context(|| format!("writing {}", openrc.display()))?;
    }
    let images = ImageStore::new(cfg.state_dir.join("images"), cfg.max_image_size)
        .context("opening the image store")?;
    let cfg_arc = Arc::new(cfg.clone());
    let mut agent = Agent::new(cfg.vmm_binary.clone(), cfg.state_dir.join("instances"))
        .context("preparing the instances directory")?;
    if let Some(base) = cfg.vmm_uid_base {
        anyhow::ensure!(
            base.checked_add(crate::host::vmm::VMM_UID_COUNT).is_some(),
            "--vmm-uid-base {base} leaves no room for {} ids",
            crate::host::vmm::VMM_UID_COUNT
        );
        agent = agent.with_vmm_uid_base(Some(base));
    }
    reconcile_images(&db, &images, &agent);
    enable_ksm();
    let images = Arc::new(images);
    let network = start_network(&db, &cfg_arc).await?;
    let volume = start_volume(&db, &cfg_arc).await?;
    let compute = Compute::new(
        db.clone(),
        Arc::clone(&cfg_arc),
        Arc::new(agent),
        Arc::clone(&images),
        Arc::clone(&network),
        Arc::clone(&volume),
    );
    // Extending an attached volume tells its running guest.
    volume.set_online_resize(Arc::new(crate::compute::volumes::VmmResize::new(
        Arc::clone(&compute.vmm),
    )));
    lifecycle::reconcile(Arc::clone(&compute)).await;
    tokio::spawn(lifecycle::power_sync(Arc::clone(&compute)));
    let state = AppState {
        db,
        cfg: cfg_arc,
        images,
        compute,
        network,
        volume,
    };
    let app = http::router::router(state);
    let app = axum::middleware::map_request(|r| async { http::strip_trailing_slash(r) }).layer(app);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, url = %base, "nubo API ready");
    eprintln!(
        "nubo: API at {base} — run `source {}` then `openstack ...`",
        openrc.display()
    );
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    tracing::info!("nubo stopped; guests keep running");
    Ok(())
}

/// The Block Storage service over this host's volume backends: `file`
/// always, `lvm` with `--lvm-volume-group`.
async fn start_volume(
    db: &Db,
    cfg: &Arc<Config>,
) -> anyhow::Result<Arc<crate::volume::VolumeService>> {
    use crate::host::storage::{file::FileDriver, lvm::LvmDriver, VolumeDriver};
    let file_dir = cfg
        .volume
        .file_dir
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("volumes"));
    let lvm = cfg.volume.lvm_volume_group.clone().map(|vg| {
        let pool = cfg
            .volume
            .lvm_thin_pool
            .clone()
            .unwrap_or_else(|| "nubo-pool".into());
        (vg, pool)
    });
    // The drivers look at (and the lvm one may make) their storage: blocking.
    let drivers = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut drivers: Vec<Arc<dyn VolumeDriver>> = Vec::new();
        let file = FileDriver::new(&file_dir)
            .with_context(|| format!("the file volume backend in {}", file_dir.display()))?;
        drivers.push(Arc::new(file));
        if let Some((vg, pool)) = lvm {
            let driver = LvmDriver::new(&vg, &pool)
                .with_context(|| format!("the lvm volume backend on {vg}/{pool}"))?;
            drivers.push(Arc::new(driver));
        }
        Ok(drivers)
    })
    .await
    .context("starting the volume backends")??;
    for d in &drivers {
        tracing::info!(backend = d.backend_name(), "volume backend ready");
    }
    // `new` seeds the `__DEFAULT__` type; the reconcile fails creates a
    // crash interrupted and finishes its deletes in the background.
    let volume = crate::volume::VolumeService::new(db.clone(), Arc::clone(cfg), drivers);
    let pending = volume.reconcile();
    if !pending.is_empty() {
        tracing::info!(
            deletes = pending.len(),
            "finishing interrupted volume deletes"
        );
    }
    Ok(volume)
}

/// The Networking service over this host's agent: the external network
/// (with `--external-network`), then the whole data plane rebuilt from the
/// database (idempotent: after a restart nothing changes when the host
/// still has it all), before any server starts.
async fn start_network(
    db: &Db,
    cfg: &Arc<Config>,
) -> anyhow::Result<Arc<crate::network::NetworkService>> {
    use crate::host::net::agent::{NetAgent, NetAgentConfig};
    let net = &cfg.network;
    let external_gateway = net.external_network.map(|c| netstack::Ipv4Net {
        addr: std::net::Ipv4Addr::from(u32::from(c.network()).wrapping_add(1)),
        prefix_len: c.prefix_len,
    });
    let agent_cfg = NetAgentConfig {
        physical_interface_mappings: net.physical_interface_mappings.iter().cloned().collect(),
        vxlan_local_ip: net.vxlan_local_ip,
        vxlan_peers: net.vxlan_peers.clone(),
        external_gateway,
    };
    let agent = tokio::task::spawn_blocking(move || NetAgent::new(agent_cfg))
        .await
        .context("starting the network agent")?
        .context("starting the network agent")?;
    let host = crate::compute::host_name();
    if let Some(cidr) = net.external_network {
        crate::network::bootstrap::ensure_public_network(&db.lock(), cfg, host, cidr)
            .map_err(|e| anyhow::anyhow!(e.message))
            .context("creating the external network")?;
    }
    let network =
        crate::network::NetworkService::new(db.clone(), Arc::clone(cfg), Arc::new(agent), host);
    let start = std::time::Instant::now();
    match network.sync().await {
        Ok(report) => tracing::info!(
            changes = report.changes,
            ms = start.elapsed().as_millis() as u64,
            "network reconcile done changes={}",
            report.changes
        ),
        Err(e) => tracing::error!(error = %e.message, "network reconcile failed"),
    }
    Ok(network)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Turns KSM on (when we may), so the mergeable guest memory of idle,
/// overcommitted guests is actually shared.
fn enable_ksm() {
    let run = std::path::Path::new("/sys/kernel/mm/ksm/run");
    match std::fs::read_to_string(run) {
        Ok(v) if v.trim() == "1" => tracing::info!("KSM is on"),
        Ok(_) => match std::fs::write(run, "1") {
            Ok(()) => tracing::info!("turned KSM on"),
            Err(e) => {
                tracing::warn!(error = %e, "KSM is off and cannot be turned on; overcommitted memory is not merged")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no KSM on this kernel; overcommitted memory is not merged")
        }
    }
}

/// After a restart: uploads that were in flight (`saving`) failed with the
/// daemon, so they become `killed` (their partial files were removed by the
/// store); files in the store that no active image owns and no server uses
/// are removed.
fn reconcile_images(db: &Db, images: &ImageStore, vmm: &dyn VmmHost) {
    let used = crate::compute::image_use::images_in_use(db, vmm, images);
    let conn = db.lock();
    match crate::image::store::kill_interrupted_uploads(&conn) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            images = n,
            "uploads interrupted by a restart are now killed"
        ),
        Err(e) => tracing::error!(error = %e, "cannot reconcile interrupted uploads"),
    }
    let Ok(entries) = std::fs::read_dir(images.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".part")
            || !crate::util::is_plain_id(&name)
            || crate::compute::image_use::is_used(&used, &name)
        {
            continue;
        }
        let known = crate::image::store::is_active(&conn, &name).unwrap_or(true);
        if !known {
            tracing::warn!(image = %name, "orphan image file (no active image owns it): removing it");
            if let Err(e) = images.remove(&name) {
                tracing::warn!(image = %name, error = %e, "cannot remove orphan image file");
            }
        }
    }
}
