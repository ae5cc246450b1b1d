//! `/v2.1/servers`: list, show, create and delete.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::*;
use crate::compute::model::Server;
use crate::compute::service::{self, usable_flavor, visible_server};
use crate::compute::{lifecycle, store, volumes};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, JsonBody, ProjectAuth};
use crate::http::{AppState, RequestId};
use crate::identity::AuthContext;
use crate::network::service::{NicRequest, NicsAsked};

pub(crate) async fn show_server(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (s, addresses) = {
        let conn = st.db.lock();
        let s = visible_server(&conn, &ctx, &id)?;
        let addresses = crate::network::service::server_addresses(&conn, &s.id)?;
        (s, addresses)
    };
    let volumes = volumes::volume_ids_of(&st.compute, vec![s.id.clone()])
        .await?
        .pop()
        .unwrap_or_default();
    Ok(Json(
        json!({ "server": s.to_json(&base, ctx.is_admin(), addresses, volumes) }),
    ))
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
pub(crate) fn server_sort(q: &HashMap<String, String>) -> ApiResult<(&'static str, &'static str)> {
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

pub(crate) async fn list_servers(
    st: &AppState,
    ctx: &AuthContext,
    base: &str,
    q: &HashMap<String, String>,
    detail: bool,
) -> ApiResult<Response> {
    let all_tenants = ctx.is_admin()
        && q.get("all_tenants")
            .is_some_and(|v| !matches!(v.as_str(), "0" | "false" | "False"));
    let filter = store::ServerFilter {
        project_id: if !all_tenants {
            Some(ctx.project_id.clone())
        } else {
            q.get("project_id").or_else(|| q.get("tenant_id")).cloned()
        },
        status: q.get("status").map(|s| s.to_ascii_uppercase()),
        image_id: q.get("image").cloned(),
        flavor_id: q.get("flavor").cloned(),
        // Nova matches `name` as a regular expression; a substring match is
        // the common case (clients then match exactly on their side).
        name_contains: q.get("name").map(|n| n.replace(['^', '$'], "")),
        order: server_sort(q)?,
    };
    let limit = non_negative_param(q, "limit")?.map_or(MAX_PAGE, |l| l.min(MAX_PAGE));
    let mut servers: Vec<Server> = store::list_servers(&st.db.lock(), &filter)?;
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
        let addresses = {
            let conn = st.db.lock();
            servers
                .iter()
                .map(|s| crate::network::service::server_addresses(&conn, &s.id))
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        let ids = servers.iter().map(|s| s.id.clone()).collect();
        let volumes = volumes::volume_ids_of(&st.compute, ids).await?;
        let views: Vec<_> = servers
            .iter()
            .zip(addresses)
            .zip(volumes)
            .map(|((s, a), v)| s.view(base, admin, &host_ids[s.project_id.as_str()], a, v))
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
pub(crate) struct ServersPage<T> {
    servers: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers_links: Option<Value>,
}

pub(crate) async fn list_servers_brief(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_servers(&st, &ctx, &base, &q, false).await
}

pub(crate) async fn list_servers_detail(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_servers(&st, &ctx, &base, &q, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateReq {
    server: CreateFields,
    #[serde(default, rename = "os:scheduler_hints")]
    _hints: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateFields {
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

/// What a server boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BootSource {
    /// An image, on a boot disk of the host (`imageRef`, or a `local`
    /// mapping of an image, which the `openstack` CLI always sends).
    Image(String),
    /// An existing volume (`--volume`).
    Volume {
        /// The volume.
        volume_id: String,
        /// Delete it with the server.
        delete_on_termination: bool,
    },
    /// A new volume made from an image (`--image I --boot-from-volume N`).
    ImageToVolume {
        /// The image.
        image_id: String,
        /// The volume's size in GiB.
        size_gib: u64,
        /// Delete it with the server.
        delete_on_termination: bool,
    },
}

impl BootSource {
    /// The server row's `image_id`: `""` when it boots from a volume.
    fn row_image_id(&self) -> &str {
        match self {
            BootSource::Image(id) => id,
            _ => "",
        }
    }
}

/// Nova's boolean forms.
fn bool_field(name: &str, v: Option<&Value>) -> ApiResult<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if ["true", "True", "1", "yes"].contains(&s.as_str()) => Ok(true),
        Some(Value::String(s)) if ["false", "False", "0", "no"].contains(&s.as_str()) => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {name}. Value: {v}. {v} is not of type 'boolean'"
        ))),
    }
}

/// What the server boots from: `imageRef`, or the `boot_index: 0` entry of
/// `block_device_mapping_v2` (an image to a local disk, a volume, or an
/// image to a new volume). Other mappings are refused (400).
pub(crate) fn boot_source(f: &CreateFields) -> ApiResult<BootSource> {
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
        let uuid = bdm.get("uuid").and_then(Value::as_str).map(String::from);
        let dot = bool_field("delete_on_termination", bdm.get("delete_on_termination"))?;
        if boot.as_deref() != Some("0") {
            if dst == "volume" || src == "volume" || src == "snapshot" {
                return Err(ApiError::bad_request(
                    "only the boot device (boot_index 0) may be a volume: attach more volumes once the server exists",
                ));
            }
            continue;
        }
        let need_uuid = || {
            uuid.clone().ok_or_else(|| {
                ApiError::bad_request("Invalid input for field/attribute uuid: it is required")
            })
        };
        from_bdm = Some(match (src, dst) {
            ("image", "local") => BootSource::Image(need_uuid()?),
            ("volume", "volume") => BootSource::Volume {
                volume_id: need_uuid()?,
                delete_on_termination: dot,
            },
            ("image", "volume") => {
                let size = match bdm.get("volume_size") {
                    None | Some(Value::Null) => {
                        return Err(ApiError::bad_request(
                            "Images with destination_type 'volume' need to have a non-zero size specified",
                        ))
                    }
                    Some(v) => int_field("volume_size", v, 1)?,
                };
                BootSource::ImageToVolume {
                    image_id: need_uuid()?,
                    size_gib: size as u64,
                    delete_on_termination: dot,
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "booting from source_type {src} with destination_type {dst} is not supported: use an image, a volume, or an image to a new volume"
                )))
            }
        });
    }
    let image_ref = f.image_ref.as_deref().filter(|s| !s.is_empty());
    match (image_ref, from_bdm) {
        (Some(a), Some(BootSource::Image(b))) if a != b => Err(ApiError::bad_request(
            "imageRef and the boot block device mapping name different images",
        )),
        (_, Some(b @ BootSource::Image(_))) => Ok(b),
        // Nova ignores imageRef when the boot device is a volume.
        (_, Some(b)) => Ok(b),
        (Some(a), None) => Ok(BootSource::Image(a.to_string())),
        (None, None) => Err(ApiError::bad_request(
            "an image is required (imageRef or a boot block device mapping)",
        )),
    }
}

pub(crate) fn count_field(name: &str, v: &Option<Value>) -> ApiResult<i64> {
    match v {
        None | Some(Value::Null) => Ok(1),
        Some(v) => int_field(name, v, 1),
    }
}

/// Most servers one request may create.
const MAX_COUNT: i64 = 50;

/// Nova's `networks`: `"none"`, `"auto"`, `[]`, or a list of
/// `{uuid[, fixed_ip]}` / `{port}` (400 on anything else).
fn nics_asked(v: &Option<Value>) -> ApiResult<NicsAsked> {
    let bad = |what: &str| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute networks. {what}"
        ))
    };
    match v {
        None | Some(Value::Null) => Ok(NicsAsked::Unspecified),
        Some(Value::String(s)) if s == "none" => Ok(NicsAsked::None),
        Some(Value::String(s)) if s == "auto" => Ok(NicsAsked::Auto),
        Some(Value::Array(a)) if a.is_empty() => Ok(NicsAsked::None),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for n in a {
                let Some(o) = n.as_object() else {
                    return Err(bad(&format!("Value: {n}. {n} is not of type 'object'")));
                };
                if let Some(k) = o
                    .keys()
                    .find(|k| !["uuid", "fixed_ip", "port", "tag"].contains(&k.as_str()))
                {
                    return Err(bad(&format!(
                        "Additional properties are not allowed ('{k}' was unexpected)"
                    )));
                }
                let s = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
                let fixed_ip = match s("fixed_ip") {
                    Some(ip) => Some(
                        ip.parse()
                            .map_err(|_| bad(&format!("Value: {ip}. '{ip}' is not a 'ipv4'")))?,
                    ),
                    None => None,
                };
                match (s("port"), s("uuid")) {
                    (Some(p), _) => out.push(NicRequest::Port(p.to_string())),
                    (None, Some(u)) => out.push(NicRequest::Network {
                        id: u.to_string(),
                        fixed_ip,
                    }),
                    (None, None) => {
                        return Err(ApiError::bad_request(
                            "Bad networks format: network uuid is not in proper format",
                        ))
                    }
                }
            }
            Ok(NicsAsked::List(out))
        }
        Some(v) => Err(bad(&format!(
            "Value: {v}. {v} is not valid under any of the given schemas"
        ))),
    }
}

/// A create request, checked: everything the quota check, the insert and
/// the builds need.
struct CreateRequest {
    name: String,
    nics: NicsAsked,
    min_count: i64,
    max_count: i64,
    boot: BootSource,
    flavor_id: String,
    metadata: String,
}

/// Checks a create request's fields (400 on what is wrong or not
/// implemented; fields nubo ignores are logged).
fn validate(f: &CreateFields) -> ApiResult<CreateRequest> {
    let name = checked_name("server", &f.name)?;
    let nics = nics_asked(&f.networks)?;
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
        tracing::debug!(
            "server security groups are not applied: new ports get the project's default group"
        );
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
    let boot = boot_source(f)?;
    if matches!(boot, BootSource::Volume { .. }) && max_count > 1 {
        return Err(ApiError::bad_request(
            "Multiple instances cannot boot from the same volume (min_count and max_count must be 1)",
        ));
    }
    let flavor_id = match &f.flavor_ref {
        Value::String(s) => s.rsplit('/').next().unwrap_or(s).to_string(),
        Value::Number(n) => n.to_string(),
        v => return Err(ApiError::bad_request(format!("invalid flavorRef {v}"))),
    };
    let metadata = serde_json::to_string(&f.metadata.clone().unwrap_or_default())
        .map_err(ApiError::internal)?;
    Ok(CreateRequest {
        name,
        nics,
        min_count,
        max_count,
        boot,
        flavor_id,
        metadata,
    })
}

pub(crate) async fn create_server(
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
    let CreateRequest {
        name,
        nics,
        min_count,
        max_count,
        boot,
        flavor_id,
        metadata,
    } = validate(&f)?;
    let image_id = boot.row_image_id().to_string();
    // Quota and insert in one transaction, so concurrent creates cannot both
    // take the last of the quota.
    let ids = {
        let mut conn = st.db.lock();
        let flavor = usable_flavor(&conn, &ctx, &flavor_id)?.ok_or_else(|| {
            ApiError::bad_request(format!("Flavor {flavor_id} could not be found."))
        })?;
        match &boot {
            BootSource::Image(id) => {
                let image = crate::image::service::bootable(&conn, &ctx, id)?;
                service::check_flavor_fits_image(&flavor, &image)?;
            }
            BootSource::ImageToVolume { image_id, .. } => {
                let image = crate::image::service::bootable(&conn, &ctx, image_id)?;
                // The root disk is the volume: the flavor's disk does not count.
                let volume_flavor = crate::compute::model::Flavor {
                    disk: 0,
                    ..flavor.clone()
                };
                service::check_flavor_fits_image(&volume_flavor, &image)?;
            }
            BootSource::Volume { .. } => {}
        }
        let nics = crate::network::service::check_nics(&conn, &ctx, &nics, max_count)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let count = service::quota_count(
            &tx,
            &st.cfg.quotas,
            &ctx.project_id,
            &flavor,
            min_count,
            max_count,
        )?;
        let new = service::NewServers {
            name: &name,
            image_id: &image_id,
            flavor: &flavor,
            metadata: &metadata,
            count,
        };
        let ids = service::insert_servers(&tx, &ctx, &requester(&ctx, &rid), &new)?;
        let cx = crate::network::service::Cx {
            auth: &ctx,
            cfg: &st.cfg,
            host: &st.network.host_name,
        };
        for (id, _) in &ids {
            crate::network::service::create_server_ports(&tx, &cx, id, &ctx.project_id, &nics)?;
        }
        tx.commit()?;
        ids
    };
    if let BootSource::Volume {
        volume_id,
        delete_on_termination,
    } = &boot
    {
        // The root volume is reserved now, so a volume that cannot be used
        // fails the request (as Nova's API checks it).
        if let Err(e) = reserve_root(&st, &ctx, &ids, volume_id, *delete_on_termination).await {
            forget_servers(&st, &ids);
            st.network.sync_logged().await;
            return Err(e);
        }
    }
    st.network.sync_logged().await;
    let new_root = match &boot {
        BootSource::ImageToVolume {
            image_id,
            size_gib,
            delete_on_termination,
        } => Some(lifecycle::NewRootVolume {
            image_id: image_id.clone(),
            size_gib: *size_gib,
            delete_on_termination: *delete_on_termination,
        }),
        _ => None,
    };
    service::spawn_builds(&st.compute, &ids, &image_id, &flavor_id, new_root);
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

/// Reserves `volume_id` as the root volume of the one new server.
async fn reserve_root(
    st: &AppState,
    ctx: &AuthContext,
    ids: &[(String, i64)],
    volume_id: &str,
    delete_on_termination: bool,
) -> ApiResult<()> {
    let Some((server_id, _)) = ids.first() else {
        return Ok(());
    };
    let req = crate::volume::attachments::ReserveRequest {
        project_id: ctx.project_id.clone(),
        volume_id: volume_id.to_string(),
        server_id: server_id.clone(),
        device: volumes::ROOT_DEVICE.into(),
        delete_on_termination,
        boot_index: Some(0),
    };
    let volume = Arc::clone(&st.volume);
    tokio::task::spawn_blocking(move || volume.reserve(&req))
        .await
        .map_err(ApiError::internal)?
        .map(|_| ())
}

/// Removes servers whose create failed after they were inserted (rows,
/// actions, ports).
fn forget_servers(st: &AppState, ids: &[(String, i64)]) {
    let conn = st.db.lock();
    for (id, _) in ids {
        let r = crate::network::service::release_server_ports(&conn, id)
            .map_err(|e| e.message)
            .and_then(|()| store::forget_actions(&conn, id).map_err(|e| e.to_string()))
            .and_then(|()| store::delete_server(&conn, id).map_err(|e| e.to_string()));
        if let Err(e) = r {
            tracing::error!(server = %id, error = %e, "cannot remove a server whose create failed");
        }
    }
}

pub(crate) async fn delete_server(
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
        store::mark_deleting(&conn, &id)?;
    }
    tracing::info!(server = %id, "server delete accepted");
    let (compute, network) = (Arc::clone(&st.compute), Arc::clone(&st.network));
    tokio::spawn(async move {
        lifecycle::delete(compute, id).await;
        // The server's ports were released with its row: converge the host.
        network.sync_logged().await;
    });
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

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
