//! Compute v2.1 (Nova subset): flavors, servers, server actions, limits and
//! quota sets; the host views are in `compute_host`. Microversion 2.1
//! shapes only (we advertise max 2.1).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rusqlite::{params, Connection};
use serde::Deserialize;
use serde_json::{json, Value};

use super::instance_actions;
use crate::compute::model::{status, Flavor, Server, SERVER_COLS};
use crate::compute::{actions, flavor_access, lifecycle};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, JsonBody, ProjectAuth};
use crate::http::policy::{self, require_admin_for as require_admin};
use crate::http::versions;
use crate::http::{AppState, RequestId};
use crate::identity::AuthContext;
use crate::quota;
use crate::util::{new_id, now_iso};

/// The compute routes, relative to `/compute`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions::compute_versions))
        .route("/v2.1", get(versions::compute_v21))
        .route("/v2.1/flavors", get(list_flavors_brief).post(create_flavor))
        .route("/v2.1/flavors/detail", get(list_flavors_detail))
        .route("/v2.1/flavors/{id}", get(show_flavor).delete(delete_flavor))
        .route("/v2.1/flavors/{id}/os-extra_specs", get(flavor_extra_specs))
        .route("/v2.1/servers", get(list_servers_brief).post(create_server))
        .route("/v2.1/servers/detail", get(list_servers_detail))
        .route("/v2.1/servers/{id}", get(show_server).delete(delete_server))
        .route("/v2.1/servers/{id}/action", post(server_action))
        .route("/v2.1/limits", get(limits))
        .route(
            "/v2.1/os-quota-sets/{project}",
            get(show_quota).put(update_quota),
        )
        .route(
            "/v2.1/os-quota-sets/{project}/detail",
            get(show_quota_detail),
        )
        .route(
            "/v2.1/os-quota-sets/{project}/defaults",
            get(show_quota_defaults),
        )
        .merge(super::compute_host::router())
        .merge(super::flavor_access::router())
        .merge(super::instance_actions::router())
        .layer(axum::middleware::map_response(version_headers))
}

/// Echoes the microversion we answered with, as Nova does.
async fn version_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "openstack-api-version",
        HeaderValue::from_static("compute 2.1"),
    );
    h.insert(
        "x-openstack-nova-api-version",
        HeaderValue::from_static("2.1"),
    );
    h.insert(
        "vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    resp
}

/// Rejects microversions we do not speak (Nova answers 406).
fn check_microversion(headers: &HeaderMap) -> ApiResult<()> {
    let wanted = headers
        .get("openstack-api-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("compute"))
        .map(str::trim)
        .or_else(|| {
            headers
                .get("x-openstack-nova-api-version")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        });
    match wanted {
        None | Some("2.1") | Some("latest") => Ok(()),
        Some(v) => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {v} is not supported by the API. Minimum is 2.1 and maximum is 2.1."),
        )),
    }
}

fn require_writer(ctx: &AuthContext) -> ApiResult<()> {
    policy::require_member(ctx, "Policy doesn't allow a reader to change servers.")
}

// ---------------------------------------------------------------- flavors

/// A query parameter that must be a non-negative integer when present (400
/// otherwise, as Nova's query schemas answer).
fn non_negative_param(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<usize>> {
    q.get(key)
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid input for query parameters {key}. Value: {v}. \
                     It must be a non-negative integer."
                ))
            })
        })
        .transpose()
}

/// Which flavors a list shows (Nova's `is_public` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublicFilter {
    /// Public flavors and the private ones the caller's project may use.
    Public,
    /// Private flavors only.
    Private,
    /// Every flavor.
    All,
}

/// The `is_public` filter of a flavor list. Only admins choose (Nova
/// ignores the parameter for others): `true`, `false` or `none` (all). An
/// admin's list without the parameter shows every flavor; Nova's shows the
/// public ones, but clients (openstacksdk, so the `openstack` CLI) always
/// send the parameter.
fn public_filter(ctx: &AuthContext, q: &HashMap<String, String>) -> ApiResult<PublicFilter> {
    if !ctx.is_admin() {
        return Ok(PublicFilter::Public);
    }
    let Some(v) = q.get("is_public") else {
        return Ok(PublicFilter::All);
    };
    match v.to_ascii_lowercase().as_str() {
        "none" => Ok(PublicFilter::All),
        "1" | "t" | "true" | "on" | "y" | "yes" => Ok(PublicFilter::Public),
        "0" | "f" | "false" | "off" | "n" | "no" => Ok(PublicFilter::Private),
        _ => Err(ApiError::bad_request(format!(
            "Invalid is_public filter [{v}]"
        ))),
    }
}

async fn list_flavors(
    st: &AppState,
    ctx: &AuthContext,
    base: &str,
    q: &HashMap<String, String>,
    detail: bool,
) -> ApiResult<Json<Value>> {
    let filter = public_filter(ctx, q)?;
    let conn = st.db.lock();
    let mut flavors = Flavor::all(&conn)?;
    match filter {
        PublicFilter::All => {}
        PublicFilter::Private => flavors.retain(|f| !f.is_public),
        PublicFilter::Public => {
            let granted = flavor_access::flavors_of(&conn, &ctx.project_id)?;
            flavors.retain(|f| f.is_public || granted.contains(&f.id));
        }
    }
    if let Some(min) = non_negative_param(q, "minRam")? {
        flavors.retain(|f| f.ram >= min as i64);
    }
    if let Some(min) = non_negative_param(q, "minDisk")? {
        flavors.retain(|f| f.disk >= min as i64);
    }
    if let Some(marker) = q.get("marker") {
        let pos = flavors
            .iter()
            .position(|f| &f.id == marker)
            .ok_or_else(|| ApiError::bad_request(format!("marker [{marker}] not found")))?;
        flavors.drain(..=pos);
    }
    if let Some(limit) = non_negative_param(q, "limit")? {
        flavors.truncate(limit);
    }
    let list: Vec<Value> = flavors
        .iter()
        .map(|f| {
            if detail {
                f.to_json(base)
            } else {
                json!({ "id": f.id, "name": f.name, "links": f.to_json(base)["links"] })
            }
        })
        .collect();
    Ok(Json(json!({ "flavors": list })))
}

async fn list_flavors_brief(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list_flavors(&st, &ctx, &base, &q, false).await
}

async fn list_flavors_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list_flavors(&st, &ctx, &base, &q, true).await
}

/// The flavor `id`, whoever may use it; 404 if there is none.
pub(super) fn get_flavor(conn: &Connection, id: &str) -> ApiResult<Flavor> {
    Flavor::get(conn, id)?.ok_or_else(|| flavor_not_found(id))
}

fn flavor_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Flavor {id} could not be found."))
}

/// The flavor `id` if the caller may use it (public, admin, or on its access
/// list); `None` otherwise, also when it exists (never tell a private
/// flavor's id to a project without access).
fn usable_flavor(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Option<Flavor>> {
    match Flavor::get(conn, id)? {
        Some(f) if flavor_access::may_use(conn, ctx, &f)? => Ok(Some(f)),
        _ => Ok(None),
    }
}

/// [`usable_flavor`], 404 when `None`.
fn visible_flavor(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Flavor> {
    usable_flavor(conn, ctx, id)?.ok_or_else(|| flavor_not_found(id))
}

async fn show_flavor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    Ok(Json(
        json!({ "flavor": visible_flavor(&conn, &ctx, &id)?.to_json(&base) }),
    ))
}

async fn flavor_extra_specs(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_flavor(&st.db.lock(), &ctx, &id)?;
    Ok(Json(json!({ "extra_specs": {} })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorReq {
    flavor: FlavorFields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorFields {
    name: String,
    ram: Value,
    vcpus: Value,
    disk: Value,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    swap: Option<Value>,
    #[serde(default, rename = "OS-FLV-EXT-DATA:ephemeral")]
    ephemeral: Option<Value>,
    #[serde(default, rename = "os-flavor-access:is_public")]
    is_public: Option<bool>,
    #[serde(default)]
    rxtx_factor: Option<f64>,
    #[serde(default)]
    description: Option<String>,
}

/// Nova accepts integers as numbers or numeric strings.
fn int_field(name: &str, v: &Value, min: i64) -> ApiResult<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= min && n <= i32::MAX as i64 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {name}. Value: {v}. It must be an integer >= {min}."
        ))),
    }
}

async fn create_flavor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    headers: HeaderMap,
    JsonBody(req): JsonBody<FlavorReq>,
) -> ApiResult<Response> {
    check_microversion(&headers)?;
    require_admin(&ctx, "os_compute_api:os-flavor-manage:create")?;
    let f = req.flavor;
    let name = f.name.trim().to_string();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request(
            "flavor name must be 1 to 255 characters",
        ));
    }
    if crate::util::has_control_chars(&name) {
        return Err(ApiError::bad_request(
            "flavor name must not contain control characters",
        ));
    }
    let flavor = Flavor {
        id: match f.id {
            None | Some(Value::Null) => new_id(),
            Some(Value::String(s)) if s == "auto" => new_id(),
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= 255
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_. ".contains(&b)) =>
            {
                s
            }
            Some(Value::Number(n)) => n.to_string(),
            Some(v) => return Err(ApiError::bad_request(format!("invalid flavor id {v}"))),
        },
        name,
        ram: int_field("ram", &f.ram, 1)?,
        vcpus: int_field("vcpus", &f.vcpus, 1)?,
        disk: int_field("disk", &f.disk, 0)?,
        swap: match &f.swap {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) if s.is_empty() => 0,
            Some(v) => int_field("swap", v, 0)?,
        },
        ephemeral: match &f.ephemeral {
            None | Some(Value::Null) => 0,
            Some(v) => int_field("OS-FLV-EXT-DATA:ephemeral", v, 0)?,
        },
        is_public: f.is_public.unwrap_or(true),
        rxtx_factor: f
            .rxtx_factor
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(1.0),
        description: f.description,
    };
    let conn = st.db.lock();
    let r = conn.execute(
        "INSERT INTO flavors (id, name, vcpus, ram, disk, swap, ephemeral, is_public, rxtx_factor, description, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            flavor.id, flavor.name, flavor.vcpus, flavor.ram, flavor.disk, flavor.swap,
            flavor.ephemeral, flavor.is_public, flavor.rxtx_factor, flavor.description, now_iso()
        ],
    );
    if let Err(rusqlite::Error::SqliteFailure(e, _)) = &r {
        if e.code == rusqlite::ErrorCode::ConstraintViolation {
            return Err(ApiError::conflict(format!(
                "Flavor with name {} or ID {} already exists.",
                flavor.name, flavor.id
            )));
        }
    }
    r?;
    tracing::info!(flavor = %flavor.id, name = ?flavor.name, "flavor created");
    Ok(Json(json!({ "flavor": flavor.to_json(&base) })).into_response())
}

async fn delete_flavor(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx, "os_compute_api:os-flavor-manage:delete")?;
    let conn = st.db.lock();
    get_flavor(&conn, &id)?;
    conn.execute("DELETE FROM flavors WHERE id = ?1", params![id])?;
    Ok(StatusCode::ACCEPTED)
}

// ---------------------------------------------------------------- servers

/// A server the caller may see: its own project's, or any for admin.
/// The server `id` if the caller may see it, else 404 (never 403: that
/// would tell that the id exists).
pub(super) fn visible_server(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Server> {
    match Server::get(conn, id)? {
        Some(s) if ctx.is_admin() || s.project_id == ctx.project_id => Ok(s),
        _ => Err(ApiError::not_found(format!(
            "Instance {id} could not be found."
        ))),
    }
}

async fn show_server(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let s = visible_server(&conn, &ctx, &id)?;
    Ok(Json(json!({ "server": s.to_json(&base, ctx.is_admin()) })))
}

/// Nova's server sort keys this store can sort by, with their columns.
const SERVER_SORT_COLUMNS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
    ("launched_at", "launched_at"),
    ("display_name", "name"),
    ("uuid", "id"),
    ("project_id", "project_id"),
    ("user_id", "user_id"),
    ("image_ref", "image_id"),
    ("instance_type_id", "flavor_id"),
    ("vm_state", "status"),
    ("task_state", "task_state"),
    ("power_state", "power_state"),
    ("host", "host"),
    ("node", "host"),
];

/// Sort keys Nova accepts that mean nothing here (no such data): accepted,
/// and the default order is used.
const SERVER_SORT_IGNORED: &[&str] = &[
    "access_ip_v4",
    "access_ip_v6",
    "auto_disk_config",
    "availability_zone",
    "config_drive",
    "display_description",
    "hostname",
    "kernel_id",
    "key_name",
    "launch_index",
    "locked_by",
    "progress",
    "ramdisk_id",
    "root_device_name",
    "terminated_at",
];

/// The `ORDER BY` column and direction from `sort_key` and `sort_dir`
/// (default `created_at desc`); unknown keys or directions are 400, as in
/// Nova (a key such as `password` must never become SQL).
fn server_sort(q: &HashMap<String, String>) -> ApiResult<(&'static str, &'static str)> {
    let dir = match q.get("sort_dir").map(String::as_str) {
        None | Some("desc") => "DESC",
        Some("asc") => "ASC",
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for query parameters sort_dir. Value: {other}. \
                 It must be asc or desc."
            )))
        }
    };
    let column = match q.get("sort_key").map(String::as_str) {
        None => "created_at",
        Some(key) => match SERVER_SORT_COLUMNS.iter().find(|(k, _)| *k == key) {
            Some((_, col)) => col,
            None if SERVER_SORT_IGNORED.contains(&key) => "created_at",
            None => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for query parameters sort_key. Value: {key}. \
                     It is not a sort key servers can be sorted by."
                )))
            }
        },
    };
    Ok((column, dir))
}

/// Nova's default and largest page (`max_limit`).
const MAX_PAGE: usize = 1000;

async fn list_servers(
    st: &AppState,
    ctx: &AuthContext,
    base: &str,
    q: &HashMap<String, String>,
    detail: bool,
) -> ApiResult<Response> {
    let all_tenants = ctx.is_admin()
        && q.get("all_tenants")
            .is_some_and(|v| !matches!(v.as_str(), "0" | "false" | "False"));
    let mut sql = format!("SELECT {SERVER_COLS} FROM servers WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    if !all_tenants {
        args.push(ctx.project_id.clone());
        sql.push_str(&format!(" AND project_id = ?{}", args.len()));
    } else if let Some(p) = q.get("project_id").or_else(|| q.get("tenant_id")) {
        args.push(p.clone());
        sql.push_str(&format!(" AND project_id = ?{}", args.len()));
    }
    if let Some(s) = q.get("status") {
        args.push(s.to_ascii_uppercase());
        sql.push_str(&format!(" AND status = ?{}", args.len()));
    }
    for (key, col) in [("image", "image_id"), ("flavor", "flavor_id")] {
        if let Some(v) = q.get(key) {
            args.push(v.clone());
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    }
    if let Some(n) = q.get("name") {
        // Nova matches `name` as a regular expression; a substring match is
        // the common case (clients then match exactly on their side).
        args.push(n.replace(['^', '$'], ""));
        sql.push_str(&format!(" AND instr(name, ?{}) > 0", args.len()));
    }
    let (column, dir) = server_sort(q)?;
    sql.push_str(&format!(" ORDER BY {column} {dir}, id {dir}"));
    let limit = non_negative_param(q, "limit")?.map_or(MAX_PAGE, |l| l.min(MAX_PAGE));
    let mut servers: Vec<Server> = {
        let conn = st.db.lock();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), Server::from_row)?;
        rows.collect::<Result<_, _>>()?
    };
    if let Some(marker) = q.get("marker") {
        let pos = servers
            .iter()
            .position(|s| &s.id == marker)
            .ok_or_else(|| ApiError::bad_request(format!("marker [{marker}] not found")))?;
        servers.drain(..=pos);
    }
    let more = servers.len() > limit;
    servers.truncate(limit);
    let admin = ctx.is_admin();
    let mut next = None;
    if more {
        if let Some(last) = servers.last() {
            let path = if detail { "servers/detail" } else { "servers" };
            let mut qs: Vec<String> = q
                .iter()
                .filter(|(k, _)| k.as_str() != "marker" && k.as_str() != "limit")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            qs.push(format!("limit={limit}"));
            qs.push(format!("marker={}", last.id));
            next = Some(json!([{
                "rel": "next",
                "href": format!("{base}/compute/v2.1/{path}?{}", qs.join("&"))
            }]));
        }
    }
    // Serialize straight from borrowed views (no intermediate JSON tree);
    // hostId is one hash per project, not per server.
    let mut host_ids: HashMap<&str, String> = HashMap::new();
    for s in &servers {
        host_ids
            .entry(s.project_id.as_str())
            .or_insert_with(|| Server::host_id(&s.project_id));
    }
    let body = if detail {
        let views: Vec<_> = servers
            .iter()
            .map(|s| s.view(base, admin, &host_ids[s.project_id.as_str()]))
            .collect();
        serde_json::to_vec(&ServersPage { servers: views, servers_links: next })
    } else {
        let briefs: Vec<Value> = servers
            .iter()
            .map(|s| json!({ "id": s.id, "name": s.name, "links": crate::compute::model::links(base, "servers", &s.id) }))
            .collect();
        serde_json::to_vec(&ServersPage { servers: briefs, servers_links: next })
    }
    .map_err(ApiError::internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `{"servers": [...], "servers_links": [...]}`.
#[derive(serde::Serialize)]
struct ServersPage<T> {
    servers: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers_links: Option<Value>,
}

async fn list_servers_brief(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_servers(&st, &ctx, &base, &q, false).await
}

async fn list_servers_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_servers(&st, &ctx, &base, &q, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    server: CreateFields,
    #[serde(default, rename = "os:scheduler_hints")]
    _hints: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFields {
    name: String,
    #[serde(default, rename = "imageRef")]
    image_ref: Option<String>,
    #[serde(rename = "flavorRef")]
    flavor_ref: Value,
    #[serde(default)]
    min_count: Option<Value>,
    #[serde(default)]
    max_count: Option<Value>,
    #[serde(default)]
    networks: Option<Value>,
    #[serde(default)]
    block_device_mapping_v2: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    key_name: Option<Value>,
    #[serde(default)]
    security_groups: Option<Value>,
    #[serde(default)]
    user_data: Option<Value>,
    #[serde(default)]
    availability_zone: Option<Value>,
    #[serde(default)]
    config_drive: Option<Value>,
    #[serde(default, rename = "adminPass")]
    _admin_pass: Option<Value>,
    #[serde(default, rename = "OS-DCF:diskConfig")]
    _disk_config: Option<Value>,
    #[serde(default, rename = "accessIPv4")]
    _ipv4: Option<Value>,
    #[serde(default, rename = "accessIPv6")]
    _ipv6: Option<Value>,
    #[serde(default)]
    return_reservation_id: Option<Value>,
}

/// The image to boot: `imageRef`, or the `boot_index: 0` image entry of
/// `block_device_mapping_v2` (which the `openstack` CLI always sends).
fn boot_image_id(f: &CreateFields) -> ApiResult<String> {
    let mut from_bdm = None;
    for bdm in f.block_device_mapping_v2.iter().flatten() {
        let src = bdm.get("source_type").and_then(Value::as_str).unwrap_or("");
        let dst = bdm
            .get("destination_type")
            .and_then(Value::as_str)
            .unwrap_or("local");
        let boot = bdm
            .get("boot_index")
            .map(|v| v.to_string().trim_matches('"').to_string());
        if dst == "volume" || src == "volume" || src == "snapshot" {
            return Err(ApiError::bad_request(
                "block device mappings to volumes are not supported yet: boot from an image (destination_type local)",
            ));
        }
        if src == "image" && boot.as_deref() == Some("0") {
            from_bdm = bdm.get("uuid").and_then(Value::as_str).map(String::from);
        }
    }
    match (f.image_ref.as_deref().filter(|s| !s.is_empty()), from_bdm) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(
            "imageRef and the boot block device mapping name different images",
        )),
        (Some(a), _) => Ok(a.to_string()),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(ApiError::bad_request(
            "an image is required (imageRef or a boot block device mapping)",
        )),
    }
}

/// 400 unless the images an image names as its `kernel_id` and
/// `ramdisk_id` are visible to the caller, by the rule of `imageRef` (as
/// Nova, which fetches them with the request's context when the server is
/// created). A hidden image is answered as one that does not exist.
fn check_kernel_images(
    conn: &Connection,
    ctx: &AuthContext,
    props: &serde_json::Map<String, Value>,
) -> ApiResult<()> {
    for key in ["kernel_id", "ramdisk_id"] {
        let Some(id) = props.get(key).and_then(Value::as_str) else {
            continue;
        };
        if crate::image::service::lookup_visible(conn, ctx, id)?.is_none() {
            tracing::warn!(image = %id, key, project = %ctx.project_id, "kernel or ramdisk image not visible to the project");
            return Err(ApiError::bad_request(format!(
                "Image {id} could not be found."
            )));
        }
    }
    Ok(())
}

/// An image the project may boot: active, raw or qcow2, and visible to it,
/// as are its kernel and ramdisk images.
fn bootable_image(
    conn: &Connection,
    ctx: &AuthContext,
    id: &str,
) -> ApiResult<(Option<i64>, i64, i64)> {
    let Some(img) = crate::image::service::lookup_visible(conn, ctx, id)? else {
        return Err(ApiError::bad_request(format!(
            "Image {id} could not be found."
        )));
    };
    if img.status != "active" {
        return Err(ApiError::bad_request(format!("Image {id} is not active.")));
    }
    match img.disk_format.as_deref() {
        Some("raw") | Some("qcow2") => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "Image {id} has disk_format {}; only raw and qcow2 images can boot a server",
                other.unwrap_or("none")
            )))
        }
    }
    check_kernel_images(conn, ctx, &img.properties)?;
    Ok((img.virtual_size, img.min_disk, img.min_ram))
}

/// `project`'s limit for `resource`.
fn quota_limit(st: &AppState, conn: &Connection, project: &str, resource: &str) -> ApiResult<i64> {
    Ok(quota::limit(conn, &st.cfg.quotas, project, resource)?)
}

fn quota_usage(conn: &Connection, project: &str) -> ApiResult<(i64, i64, i64)> {
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(vcpus),0), coalesce(sum(ram),0) FROM servers WHERE project_id = ?1",
        params![project],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?)
}

fn count_field(name: &str, v: &Option<Value>) -> ApiResult<i64> {
    match v {
        None | Some(Value::Null) => Ok(1),
        Some(v) => int_field(name, v, 1),
    }
}

/// Most servers one request may create.
const MAX_COUNT: i64 = 50;

async fn create_server(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    rid: Option<Extension<RequestId>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateReq>,
) -> ApiResult<Response> {
    check_microversion(&headers)?;
    require_writer(&ctx)?;
    let f = req.server;
    let name = f.name.trim().to_string();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request(
            "server name must be 1 to 255 characters",
        ));
    }
    if crate::util::has_control_chars(&name) {
        return Err(ApiError::bad_request(
            "server name must not contain control characters",
        ));
    }
    match &f.networks {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" || s == "auto" => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "networking is not available yet: create the server without networks (networks: [] or \"none\")",
            ))
        }
    }
    for (what, v) in [
        ("key_name", &f.key_name),
        ("user_data", &f.user_data),
        ("config_drive", &f.config_drive),
    ] {
        if matches!(v, Some(x) if !x.is_null() && x != &Value::Bool(false) && x != &Value::String(String::new()))
        {
            tracing::info!(
                field = what,
                "ignoring a server field nubo does not implement yet"
            );
        }
    }
    if let Some(az) = f.availability_zone.as_ref().and_then(Value::as_str) {
        if az != "nova" {
            return Err(ApiError::bad_request(format!(
                "The requested availability zone {az} is not available"
            )));
        }
    }
    if f.security_groups.is_some() {
        tracing::debug!("security groups are ignored without networking");
    }
    let min_count = count_field("min_count", &f.min_count)?;
    let max_count = match &f.max_count {
        None | Some(Value::Null) => min_count,
        Some(_) => count_field("max_count", &f.max_count)?,
    };
    if min_count > max_count {
        return Err(ApiError::bad_request(format!(
            "min_count ({min_count}) must be less than or equal to max_count ({max_count})"
        )));
    }
    if max_count > MAX_COUNT {
        return Err(ApiError::bad_request(format!(
            "max_count may be at most {MAX_COUNT}"
        )));
    }
    let image_id = boot_image_id(&f)?;
    let flavor_id = match &f.flavor_ref {
        Value::String(s) => s.rsplit('/').next().unwrap_or(s).to_string(),
        Value::Number(n) => n.to_string(),
        v => return Err(ApiError::bad_request(format!("invalid flavorRef {v}"))),
    };
    let metadata =
        serde_json::to_string(&f.metadata.unwrap_or_default()).map_err(ApiError::internal)?;
    let ids: Vec<(String, i64)> = {
        let mut conn = st.db.lock();
        let flavor = usable_flavor(&conn, &ctx, &flavor_id)?.ok_or_else(|| {
            ApiError::bad_request(format!("Flavor {flavor_id} could not be found."))
        })?;
        let (vsize, min_disk, min_ram) = bootable_image(&conn, &ctx, &image_id)?;
        if flavor.disk > 0 {
            if let Some(vs) = vsize {
                if vs > flavor.disk.saturating_mul(1 << 30) {
                    return Err(ApiError::bad_request(format!(
                        "Flavor's disk is too small for requested image. Flavor disk is {} bytes, image is {vs} bytes.",
                        flavor.disk.saturating_mul(1 << 30)
                    )));
                }
            }
            if min_disk > flavor.disk {
                return Err(ApiError::bad_request(
                    "Flavor's disk is smaller than the minimum size specified in image metadata.",
                ));
            }
        }
        if min_ram > flavor.ram {
            return Err(ApiError::bad_request(
                "Flavor's memory is too small for requested image.",
            ));
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (n, cores, ram) = quota_usage(&tx, &ctx.project_id)?;
        let mut demands = Vec::new();
        for (resource, used, per) in [
            ("instances", n, 1),
            ("cores", cores, flavor.vcpus),
            ("ram", ram, flavor.ram),
        ] {
            let limit = quota_limit(&st, &tx, &ctx.project_id, resource)?;
            demands.push(quota::Demand {
                resource,
                used,
                per,
                limit,
            });
        }
        // As many as fit the quota, at least min_count.
        let count = quota::fit(&demands, min_count, max_count).map_err(|exceeded| {
            ApiError::forbidden(format!("Quota exceeded for {}.", exceeded.join(", ")))
        })?;
        let now = now_iso();
        let by = instance_actions::requester(&ctx, &rid);
        let mut ids = Vec::new();
        for i in 0..count {
            let id = new_id();
            let sname = if count > 1 {
                format!("{name}-{}", i + 1)
            } else {
                name.clone()
            };
            tx.execute(
                "INSERT INTO servers (id, name, project_id, user_id, image_id, flavor_id, vcpus, ram, disk, \
                 status, task_state, power_state, metadata, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'BUILD', 'scheduling', 0, ?10, ?11, ?11)",
                params![
                    id, sname, ctx.project_id, ctx.user_id, image_id, flavor.id, flavor.vcpus,
                    flavor.ram, flavor.disk, metadata, now
                ],
            )?;
            // The create action, in the same transaction as the server.
            let row = actions::record(&tx, &id, "create", &by)?;
            ids.push((id, row));
        }
        tx.commit()?;
        ids
    };
    let compute = Arc::clone(&st.compute);
    for (id, row) in &ids {
        tracing::info!(server = %id, image = %image_id, flavor = %flavor_id, "server accepted");
        let build = lifecycle::build(Arc::clone(&compute), id.clone());
        tokio::spawn(actions::track(
            Arc::clone(&compute),
            *row,
            id.clone(),
            build,
        ));
    }
    let first = &ids[0].0;
    let body = if f
        .return_reservation_id
        .as_ref()
        .is_some_and(|v| v == &Value::Bool(true) || v == "True" || v == "true")
    {
        json!({ "reservation_id": format!("r-{}", &first[..8]) })
    } else {
        json!({ "server": {
            "id": first,
            "links": crate::compute::model::links(&base, "servers", first),
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{ "name": "default" }],
            "adminPass": crate::identity::bootstrap::generate_password(),
        } })
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/compute/v2.1/servers/{first}")) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

async fn delete_server(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_writer(&ctx)?;
    {
        let conn = st.db.lock();
        let s = visible_server(&conn, &ctx, &id)?;
        if s.task_state.as_deref() == Some("deleting") {
            return Ok(StatusCode::NO_CONTENT);
        }
        conn.execute(
            "UPDATE servers SET task_state = 'deleting', updated_at = ?2 WHERE id = ?1",
            params![id, now_iso()],
        )?;
    }
    tracing::info!(server = %id, "server delete accepted");
    tokio::spawn(lifecycle::delete(Arc::clone(&st.compute), id));
    Ok(StatusCode::NO_CONTENT)
}

fn conflict(action: &str, s: &Server) -> ApiError {
    let state = match (s.status.as_str(), s.task_state.as_deref()) {
        (st, Some(t)) => format!("vm_state {} and task_state {t}", st.to_ascii_lowercase()),
        (st, None) => format!("vm_state {}", st.to_ascii_lowercase()),
    };
    ApiError::conflict(format!(
        "Cannot '{action}' instance {} while it is in {state}",
        s.id
    ))
}

/// The console text without the control characters Nova removes from
/// `os-getConsoleOutput` (`[\x00-\x08\x0B-\x1F]`: everything below a space
/// but tab and newline, so escape sequences, NUL, BEL and carriage returns),
/// nor DEL: a guest must not drive its viewers' terminals.
fn strip_console_controls(text: &str) -> String {
    text.chars()
        .filter(|&c| c == '\t' || c == '\n' || !(c < ' ' || c == '\x7f'))
        .collect()
}

async fn server_action(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    rid: Option<Extension<RequestId>>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> ApiResult<Response> {
    if body.len() != 1 {
        return Err(ApiError::bad_request(
            "an action body has exactly one key, the action's name",
        ));
    }
    let Some((action, arg)) = body.into_iter().next() else {
        return Err(ApiError::bad_request("empty action"));
    };
    let s = visible_server(&st.db.lock(), &ctx, &id)?;
    if action == "os-getConsoleOutput" {
        let length = match arg.get("length") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let n = int_field("length", v, -1)?;
                if n < 0 {
                    None
                } else {
                    Some(n as usize)
                }
            }
        };
        let agent = Arc::clone(&st.compute.agent);
        let sid = id.clone();
        let out = tokio::task::spawn_blocking(move || agent.console_output(&sid, length))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let out = strip_console_controls(&out);
        return Ok(Json(json!({ "output": out })).into_response());
    }
    require_writer(&ctx)?;
    let compute = Arc::clone(&st.compute);
    if s.task_state.is_some() {
        return Err(conflict(&action, &s));
    }
    let Some(busy) = compute.try_busy(&id) else {
        return Err(conflict(&action, &s));
    };
    let by = instance_actions::requester(&ctx, &rid);
    // Sets the transition's state and records the action in one go.
    let now_state = |status: &str, task: &str, action: &str| -> ApiResult<i64> {
        let conn = st.db.lock();
        conn.execute(
            "UPDATE servers SET status = ?2, task_state = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, status, task, now_iso()],
        )?;
        Ok(actions::record(&conn, &id, action, &by)?)
    };

    match action.as_str() {
        "os-stop" => {
            if s.status != status::ACTIVE {
                return Err(conflict("stop", &s));
            }
            let row = now_state(status::ACTIVE, "powering-off", "stop")?;
            tokio::spawn(actions::track(
                Arc::clone(&compute),
                row,
                id.clone(),
                lifecycle::stop(Arc::clone(&compute), id.clone(), busy),
            ));
        }
        "os-start" => {
            if s.status != status::SHUTOFF {
                return Err(conflict("start", &s));
            }
            let row = now_state(status::SHUTOFF, "powering-on", "start")?;
            tokio::spawn(actions::track(
                Arc::clone(&compute),
                row,
                id.clone(),
                lifecycle::start(Arc::clone(&compute), id.clone(), busy),
            ));
        }
        "reboot" => {
            let kind = arg.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_uppercase();
            let hard = match kind.as_str() {
                "SOFT" => false,
                "HARD" => true,
                _ => return Err(ApiError::bad_request("reboot type must be SOFT or HARD")),
            };
            let allowed = if hard {
                [status::ACTIVE, status::SHUTOFF, status::ERROR].contains(&s.status.as_str())
            } else {
                s.status == status::ACTIVE
            };
            if !allowed {
                return Err(conflict("reboot", &s));
            }
            let row = if hard {
                now_state(status::HARD_REBOOT, "reboot_started_hard", "reboot")?
            } else {
                now_state(status::REBOOT, "reboot_started", "reboot")?
            };
            tokio::spawn(actions::track(
                Arc::clone(&compute),
                row,
                id.clone(),
                lifecycle::reboot(Arc::clone(&compute), id.clone(), hard, busy),
            ));
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "action {other} is not supported (supported: os-stop, os-start, reboot, os-getConsoleOutput)"
            )))
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

// ---------------------------------------------------------------- limits and quotas

/// Which form of a quota set to show.
#[derive(Clone, Copy, PartialEq)]
enum QuotaView {
    /// The project's limits.
    Limits,
    /// Limits with usage (`/detail`).
    Detail,
    /// The defaults a project without its own limits gets (`/defaults`).
    Defaults,
}

fn quota_set(st: &AppState, conn: &Connection, project: &str, view: QuotaView) -> ApiResult<Value> {
    let (n, cores, ram) = quota_usage(conn, project)?;
    let mut v = json!({ "id": project });
    let shape = |limit: i64, used: i64| match view {
        QuotaView::Detail => json!({ "limit": limit, "in_use": used, "reserved": 0 }),
        QuotaView::Limits | QuotaView::Defaults => json!(limit),
    };
    for (key, used) in quota::RESOURCES.iter().zip([n, cores, ram]) {
        let limit = match view {
            QuotaView::Defaults => quota::default_limit(&st.cfg.quotas, key),
            QuotaView::Limits | QuotaView::Detail => quota_limit(st, conn, project, key)?,
        };
        v[*key] = shape(limit, used);
    }
    for key in [
        "key_pairs",
        "metadata_items",
        "server_groups",
        "server_group_members",
        "injected_files",
        "injected_file_content_bytes",
        "injected_file_path_bytes",
    ] {
        v[key] = shape(-1, 0);
    }
    Ok(v)
}

fn quota_project(ctx: &AuthContext, project: &str) -> ApiResult<()> {
    if policy::owns_or_admin(ctx, project) {
        Ok(())
    } else {
        Err(policy::denied("os_compute_api:os-quota-sets:show"))
    }
}

async fn show_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    quota_view(&st, &ctx, &project, QuotaView::Limits)
}

async fn show_quota_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    quota_view(&st, &ctx, &project, QuotaView::Detail)
}

async fn show_quota_defaults(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    quota_view(&st, &ctx, &project, QuotaView::Defaults)
}

fn quota_view(
    st: &AppState,
    ctx: &AuthContext,
    project: &str,
    view: QuotaView,
) -> ApiResult<Json<Value>> {
    quota_project(ctx, project)?;
    let conn = st.db.lock();
    Ok(Json(
        json!({ "quota_set": quota_set(st, &conn, project, view)? }),
    ))
}

#[derive(Deserialize)]
struct QuotaReq {
    quota_set: serde_json::Map<String, Value>,
}

async fn update_quota(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<QuotaReq>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx, "os_compute_api:os-quota-sets:update")?;
    let conn = st.db.lock();
    for (k, v) in &req.quota_set {
        if k == "force" {
            continue;
        }
        if !quota::RESOURCES.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "quota {k} is not supported (supported: instances, cores, ram)"
            )));
        }
        let limit = int_field(k, v, -1)?;
        quota::store::set_hard_limit(&conn, &project, k, limit)?;
    }
    Ok(Json(
        json!({ "quota_set": quota_set(&st, &conn, &project, QuotaView::Limits)? }),
    ))
}

async fn limits(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let (n, cores, ram) = quota_usage(&conn, &ctx.project_id)?;
    let lim = |k| quota_limit(&st, &conn, &ctx.project_id, k);
    Ok(Json(json!({ "limits": { "rate": [], "absolute": {
        "maxTotalInstances": lim("instances")?, "totalInstancesUsed": n,
        "maxTotalCores": lim("cores")?, "totalCoresUsed": cores,
        "maxTotalRAMSize": lim("ram")?, "totalRAMUsed": ram,
        "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
        "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
        "totalServerGroupsUsed": 0, "maxSecurityGroups": -1, "totalSecurityGroupsUsed": 0,
        "maxSecurityGroupRules": -1, "maxTotalFloatingIps": -1, "totalFloatingIpsUsed": 0
    } } })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_loses_control_characters_but_tabs_and_newlines() {
        let raw = "a\x1b[31mred\x1b[0m\x07\x00b\r\n\tc\x7f\x0bd\n";
        assert_eq!(strip_console_controls(raw), "a[31mred[0mb\n\tcd\n");
    }

    #[test]
    fn server_sort_keys_are_checked() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(server_sort(&q(&[])).ok(), Some(("created_at", "DESC")));
        assert_eq!(
            server_sort(&q(&[("sort_key", "display_name"), ("sort_dir", "asc")])).ok(),
            Some(("name", "ASC"))
        );
        assert!(server_sort(&q(&[("sort_dir", "sideways")])).is_err());
        assert!(server_sort(&q(&[("sort_key", "password")])).is_err());
        assert!(server_sort(&q(&[("sort_key", "name; DROP TABLE servers")])).is_err());
    }
}
