//! Neutron's Networking v2.0 (a subset): networks, subnets and ports with
//! their IPAM, routers and floating IPs, security groups, network quotas.
//! What the API and the database decide; the host side is
//! [`crate::host::net`], told through a [`crate::host::net::NetPlan`].

pub mod api;
pub mod bootstrap;
pub mod floating_ips;
pub mod ipam;
pub mod l3;
pub mod model;
pub mod networks;
pub mod nics;
pub mod plan;
pub mod ports;
pub mod routers;
pub mod security_groups;
pub mod service;
pub mod store;
pub mod subnets;

use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::host::net::NetHost;
use crate::http::error::{ApiError, ApiResult};

/// The Networking service's state: the host's network side, this host's
/// name, and the lock that serializes syncs.
pub struct NetworkService {
    /// State database.
    pub db: Db,
    /// Daemon configuration.
    pub cfg: Arc<Config>,
    /// This host's network side (the agent, or a fake).
    pub host: Arc<dyn NetHost>,
    /// This host's name (`binding:host_id` of the ports it plumbs).
    pub host_name: String,
    sync_lock: tokio::sync::Mutex<()>,
}

impl NetworkService {
    /// The service over `host`.
    pub fn new(db: Db, cfg: Arc<Config>, host: Arc<dyn NetHost>, host_name: &str) -> Arc<Self> {
        Arc::new(NetworkService {
            db,
            cfg,
            host,
            host_name: host_name.to_string(),
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Converges the host to the database: computes the plan, applies it,
    /// then marks the router and DHCP ports bound here ACTIVE. One sync at a
    /// time.
    pub async fn sync(&self) -> ApiResult<crate::host::net::ApplyReport> {
        let _guard = self.sync_lock.lock().await;
        let (db, host) = (self.db.clone(), self.host_name.clone());
        let external = self.cfg.network.external_network.is_some();
        let plan = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
            let conn = db.lock();
            let mut plan = plan::host_plan(&conn, &host)?;
            if external {
                if let Some(id) = store::network_id_by_name(&conn, bootstrap::PUBLIC_NETWORK)? {
                    plan::add_network(&conn, &mut plan, &id)?;
                }
            }
            Ok(plan)
        })
        .await
        .map_err(ApiError::internal)??;
        let net_host = Arc::clone(&self.host);
        let plan2 = plan.clone();
        let report = tokio::task::spawn_blocking(move || net_host.apply(&plan2))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("applying the network plan: {e}")))?;
        tracing::debug!(changes = report.changes, "network plan applied");
        let conn = self.db.lock();
        let mut active: Vec<String> = Vec::new();
        for p in store::ports_on_host(&conn, &self.host_name)? {
            if p.device_owner == model::OWNER_DHCP
                || p.device_owner == model::OWNER_ROUTER_INTERFACE
                || p.device_owner == model::OWNER_ROUTER_GATEWAY
            {
                active.push(p.std.id);
            }
        }
        store::set_port_status(&conn, &active, "ACTIVE")?;
        Ok(report)
    }

    /// [`Self::sync`], logging a failure instead of returning it: the
    /// database change the caller made stands (Neutron's agents converge
    /// later too).
    pub async fn sync_logged(&self) {
        if let Err(e) = self.sync().await {
            tracing::error!(error = %e.message, "network sync failed");
        }
    }
}
