//! Compute (a Nova v2.1 subset): flavors, servers, and their lifecycle.
//! Each server is one `nubo-vmm` process run by the host's [`VmmHost`]; the scheduler
//! claims capacity with overcommit before a server is started.

pub mod actions;
pub mod api;

pub mod image_use;
pub mod lifecycle;
pub mod model;
pub mod service;
pub mod store;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::db::Db;
use crate::host::vmm::{VmmHost, VmmProcess};
use crate::image::files::ImageStore;
use crate::placement::{self, Capacity, Inventory};

/// This host's name (`/proc/sys/kernel/hostname`, read once): the
/// hypervisor's and compute service's name, and servers' `host`.
pub fn host_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            // "(none)" is the kernel's name for "never set".
            .filter(|s| !s.is_empty() && s != "(none)")
            .unwrap_or_else(|| "localhost".into())
    })
}

/// The compute service: shared by the API handlers and the background tasks.
pub struct Compute {
    /// State database.
    pub db: Db,
    /// Daemon configuration.
    pub cfg: Arc<Config>,
    /// Runs the VMMs (the `Agent`, or a fake in tests).
    pub vmm: Arc<dyn VmmHost>,
    /// Image files (boot disks' backing files, kernels, ramdisks).
    pub images: Arc<ImageStore>,
    /// The Networking service: a server's ports, and the host's network
    /// side that opens their TAPs.
    pub network: Arc<crate::network::NetworkService>,
    /// The host's inventory (read at start).
    pub inventory: Inventory,
    /// Capacity after reservations and ratios.
    pub capacity: Capacity,
    /// Running VMMs by server id.
    /// The Block Storage service (servers' volumes).
    pub volume: Arc<crate::volume::VolumeService>,
    procs: Mutex<HashMap<String, VmmProcess>>,
    /// Servers with an operation in progress (the power-state sync skips them).
    busy: Mutex<HashSet<String>>,
}

/// Marks a server busy for as long as it lives.
pub struct BusyGuard {
    compute: Arc<Compute>,
    id: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.compute
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Compute {
    /// The service for `cfg`, with the host inventory read now.
    pub fn new(
        db: Db,
        cfg: Arc<Config>,
        vmm: Arc<dyn VmmHost>,
        images: Arc<ImageStore>,
        network: Arc<crate::network::NetworkService>,
        volume: Arc<crate::volume::VolumeService>,
    ) -> Arc<Compute> {
        let inventory = Inventory::of_host(&cfg.state_dir);
        let capacity = placement::capacity(&inventory, &cfg.overcommit);
        tracing::info!(?inventory, ?capacity, "compute capacity");
        Arc::new(Compute {
            db,
            cfg,
            vmm,
            images,
            network,
            volume,
            inventory,
            capacity,
            procs: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// Marks `id` busy; `None` if another operation holds it.
    pub fn try_busy(self: &Arc<Self>, id: &str) -> Option<BusyGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id.to_string()) {
            return None;
        }
        Some(BusyGuard {
            compute: Arc::clone(self),
            id: id.to_string(),
        })
    }

    fn is_busy(&self, id: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn set_proc(&self, id: &str, p: Option<VmmProcess>) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        match p {
            Some(p) => {
                procs.insert(id.to_string(), p);
            }
            None => {
                procs.remove(id);
            }
        }
    }

    fn take_proc(&self, id: &str) -> Option<VmmProcess> {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}
