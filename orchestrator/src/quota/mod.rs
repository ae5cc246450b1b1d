//! Per-project quotas, shared by the services: a limit per resource (the
//! project's own, else the daemon's default; negative means unlimited) and
//! one check of a request against them. Compute counts `instances`, `cores`
//! and `ram`; a volume or network service adds its resources here and
//! counts its own usage. The SQL (the `quotas` table) is in [`store`].

pub mod store;

use rusqlite::Connection;

use crate::config::QuotaDefaults;

/// The resources with limits (compute's).
pub const RESOURCES: [&str; 3] = ["instances", "cores", "ram"];

/// The Networking service's resources with limits (Neutron's names).
pub const NETWORK_RESOURCES: [&str; 7] = [
    "network",
    "subnet",
    "port",
    "router",
    "floatingip",
    "security_group",
    "security_group_rule",
];

/// The Block Storage service's resources with limits (Cinder's names).
pub const VOLUME_RESOURCES: [&str; 3] = ["volumes", "gigabytes", "snapshots"];

/// The daemon's default limit for `resource` (unknown: unlimited).
pub fn default_limit(defaults: &QuotaDefaults, resource: &str) -> i64 {
    match resource {
        "instances" => defaults.instances,
        "cores" => defaults.cores,
        "ram" => defaults.ram,
        "network" => defaults.network,
        "subnet" => defaults.subnet,
        "port" => defaults.port,
        "router" => defaults.router,
        "floatingip" => defaults.floatingip,
        "security_group" => defaults.security_group,
        "security_group_rule" => defaults.security_group_rule,
        "volumes" => defaults.volumes,
        "gigabytes" => defaults.gigabytes,
        "snapshots" => defaults.snapshots,
        _ => -1,
    }
}

/// `project`'s limit for `resource`: its own, else the default.
pub fn limit(
    conn: &Connection,
    defaults: &QuotaDefaults,
    project: &str,
    resource: &str,
) -> rusqlite::Result<i64> {
    Ok(store::hard_limit(conn, project, resource)?
        .unwrap_or_else(|| default_limit(defaults, resource)))
}

/// One resource a request takes: `per` for each unit asked for, with `used`
/// already taken and `limit` the project's limit (negative: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// The resource (`instances`, `cores`, ...).
    pub resource: &'static str,
    /// What the project uses now.
    pub used: i64,
    /// What each unit of the request takes.
    pub per: i64,
    /// The project's limit.
    pub limit: i64,
}

impl Demand {
    fn fits(&self, units: i64) -> bool {
        self.limit < 0 || self.used + self.per * units <= self.limit
    }
}

/// How many units (between `min` and `max`) fit every demand: as many as
/// fit, at least `min`. `Err` lists, in Nova's words, each resource that
/// `min` units would exceed.
pub fn fit(demands: &[Demand], min: i64, max: i64) -> Result<i64, Vec<String>> {
    let exceeded: Vec<String> = demands
        .iter()
        .filter(|d| !d.fits(min))
        .map(|d| {
            format!(
                "{} (requested {}, used {}, limit {})",
                d.resource,
                d.per * min,
                d.used,
                d.limit
            )
        })
        .collect();
    if !exceeded.is_empty() {
        return Err(exceeded);
    }
    let mut count = min;
    while count < max && demands.iter().all(|d| d.fits(count + 1)) {
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(resource: &'static str, used: i64, per: i64, limit: i64) -> Demand {
        Demand {
            resource,
            used,
            per,
            limit,
        }
    }

    #[test]
    fn fit_takes_as_many_as_fit_and_names_what_min_exceeds() {
        let demands = [d("instances", 8, 1, 10), d("cores", 0, 2, -1)];
        assert_eq!(fit(&demands, 1, 5), Ok(2));
        assert_eq!(fit(&demands, 2, 2), Ok(2));
        assert_eq!(
            fit(&demands, 3, 5),
            Err(vec!["instances (requested 3, used 8, limit 10)".to_string()])
        );
    }
}
