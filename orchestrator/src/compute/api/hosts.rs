//! Compute v2.1, the host side (Nova's admin views of its hosts): the
//! hypervisor with its inventory and what is allocated on it, hypervisor
//! statistics and uptime, the compute service, host aggregates (none) and
//! availability zones (`nova`). This daemon is one host, so each list has one
//! entry, with id 1 (integer ids at microversion 2.1).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::compute::host_name;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::policy::require_admin_for as require_admin;
use crate::http::AppState;
use crate::placement;
use crate::util::now_iso;

/// The hypervisor's (and the compute service's) id.
const HOST_ID: u64 = 1;

/// The host routes, relative to `/compute` (merged into the compute router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2.1/os-hypervisors", get(list_hypervisors))
        .route("/v2.1/os-hypervisors/detail", get(list_hypervisors_detail))
        .route("/v2.1/os-hypervisors/statistics", get(statistics))
        .route("/v2.1/os-hypervisors/{id}", get(show_hypervisor))
        .route("/v2.1/os-hypervisors/{id}/uptime", get(hypervisor_uptime))
        .route("/v2.1/os-services", get(list_services))
        .route("/v2.1/os-aggregates", get(list_aggregates))
        .route("/v2.1/os-availability-zone", get(list_zones))
        .route("/v2.1/os-availability-zone/detail", get(list_zones_detail))
}

/// What is allocated on the host, and how busy it is.
struct Usage {
    alloc: placement::Request,
    running_vms: u64,
    workload: u64,
}

fn usage(conn: &Connection) -> ApiResult<Usage> {
    let alloc = placement::usage(conn)?;
    let running_vms = placement::store::count_allocations(conn)?;
    // Nova's current_workload: instances with a task in progress.
    let workload = crate::compute::store::count_busy_servers(conn)?;
    Ok(Usage {
        alloc,
        running_vms: running_vms.max(0) as u64,
        workload: workload.max(0) as u64,
    })
}

/// Nova encodes the hypervisor version as one integer (1.2.3 → 1002003).
fn version_number() -> u64 {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    a * 1_000_000 + b * 1_000 + c
}

/// The host CPU as Nova's libvirt driver describes it (a JSON string at 2.1).
fn cpu_info(vcpus: u64) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "arch": std::env::consts::ARCH,
        "model": field("model name"),
        "vendor": field("vendor_id"),
        "topology": { "sockets": 1, "cores": vcpus, "threads": 1 },
        "features": [],
    })
    .to_string()
}

fn hypervisor_brief() -> Value {
    json!({
        "id": HOST_ID,
        "hypervisor_hostname": host_name(),
        "state": "up",
        "status": "enabled",
    })
}

fn hypervisor_detail(st: &AppState, u: &Usage) -> Value {
    let inv = st.compute.inventory;
    // As Nova reports it: physical totals; used memory includes the host's
    // reservation; the overcommitted capacity is the scheduler's business.
    let memory_used = u.alloc.memory_mb + st.cfg.overcommit.reserved_host_memory_mb;
    let mut v = hypervisor_brief();
    if let Value::Object(m) = &mut v {
        let extra = json!({
            "hypervisor_type": "KVM",
            "hypervisor_version": version_number(),
            "host_ip": st.cfg.listen.ip().to_string(),
            "vcpus": inv.vcpus,
            "vcpus_used": u.alloc.vcpus,
            "memory_mb": inv.memory_mb,
            "memory_mb_used": memory_used,
            "free_ram_mb": inv.memory_mb as i64 - memory_used as i64,
            "local_gb": inv.disk_gb,
            "local_gb_used": u.alloc.disk_gb,
            "free_disk_gb": inv.disk_gb as i64 - u.alloc.disk_gb as i64,
            "disk_available_least": placement::fs_gb(&st.cfg.state_dir).map(|f| f.free).unwrap_or(0),
            "running_vms": u.running_vms,
            "current_workload": u.workload,
            "cpu_info": cpu_info(inv.vcpus),
            "service": { "host": host_name(), "id": HOST_ID, "disabled_reason": null },
        });
        if let Value::Object(e) = extra {
            m.extend(e);
        }
    }
    v
}

/// `?hypervisor_hostname_pattern=` (a substring, as Nova matches it).
#[derive(Debug, Deserialize, Default)]
struct ListQuery {
    hypervisor_hostname_pattern: Option<String>,
}

fn matches(q: &ListQuery) -> bool {
    q.hypervisor_hostname_pattern
        .as_deref()
        .is_none_or(|p| host_name().contains(p))
}

/// The hypervisor named by `id`: its integer id or its host name.
fn find(id: &str) -> ApiResult<()> {
    if id == HOST_ID.to_string() || id == host_name() {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "Hypervisor with ID {id} could not be found."
        )))
    }
}

async fn list_hypervisors(
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-hypervisors:list")?;
    let list: Vec<Value> = matches(&q).then(hypervisor_brief).into_iter().collect();
    Ok(Json(json!({ "hypervisors": list })))
}

async fn list_hypervisors_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-hypervisors:list-detail")?;
    let u = usage(&st.db.lock())?;
    let list: Vec<Value> = matches(&q)
        .then(|| hypervisor_detail(&st, &u))
        .into_iter()
        .collect();
    Ok(Json(json!({ "hypervisors": list })))
}

async fn show_hypervisor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-hypervisors:show")?;
    find(&id)?;
    let u = usage(&st.db.lock())?;
    Ok(Json(json!({ "hypervisor": hypervisor_detail(&st, &u) })))
}

/// The host's uptime line in the format of `uptime(1)`, which clients parse.
fn uptime_line() -> String {
    let secs = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let l: Vec<&str> = load.split_whitespace().take(3).collect();
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let now = now_iso();
    let clock = now.get(11..19).unwrap_or("00:00:00");
    let up = if days > 0 {
        format!("{days} days, {hours:2}:{mins:02}")
    } else {
        format!("{hours:2}:{mins:02}")
    };
    format!(
        " {clock} up {up},  0 users,  load average: {}, {}, {}",
        l.first().unwrap_or(&"0.00"),
        l.get(1).unwrap_or(&"0.00"),
        l.get(2).unwrap_or(&"0.00")
    )
}

async fn hypervisor_uptime(
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-hypervisors:uptime")?;
    find(&id)?;
    let mut v = hypervisor_brief();
    if let Value::Object(m) = &mut v {
        m.insert("uptime".into(), Value::String(uptime_line()));
    }
    Ok(Json(json!({ "hypervisor": v })))
}

async fn statistics(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-hypervisors:statistics")?;
    let u = usage(&st.db.lock())?;
    let d = hypervisor_detail(&st, &u);
    let mut stats = serde_json::Map::new();
    stats.insert("count".into(), json!(1));
    for k in [
        "vcpus",
        "vcpus_used",
        "memory_mb",
        "memory_mb_used",
        "free_ram_mb",
        "local_gb",
        "local_gb_used",
        "free_disk_gb",
        "disk_available_least",
        "running_vms",
        "current_workload",
    ] {
        stats.insert(k.into(), d.get(k).cloned().unwrap_or(json!(0)));
    }
    Ok(Json(json!({ "hypervisor_statistics": stats })))
}

async fn list_services(ProjectAuth(ctx): ProjectAuth) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-services:list")?;
    Ok(Json(json!({ "services": [{
        "id": HOST_ID,
        "binary": "nova-compute",
        "host": host_name(),
        "zone": "nova",
        "status": "enabled",
        "state": "up",
        "updated_at": now_iso(),
        "disabled_reason": null,
    }] })))
}

async fn list_aggregates(ProjectAuth(ctx): ProjectAuth) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-aggregates:index")?;
    Ok(Json(json!({ "aggregates": [] })))
}

async fn list_zones(ProjectAuth(_ctx): ProjectAuth) -> Json<Value> {
    Json(json!({ "availabilityZoneInfo": [
        { "zoneName": "nova", "zoneState": { "available": true }, "hosts": null }
    ] }))
}

async fn list_zones_detail(ProjectAuth(ctx): ProjectAuth) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-availability-zone:detail")?;
    let mut hosts = serde_json::Map::new();
    hosts.insert(
        host_name().to_string(),
        json!({ "nova-compute": { "available": true, "active": true, "updated_at": now_iso() } }),
    );
    Ok(Json(json!({ "availabilityZoneInfo": [
        { "zoneName": "nova", "zoneState": { "available": true }, "hosts": hosts }
    ] })))
}
