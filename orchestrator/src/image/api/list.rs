//! `GET /v2/images`: filters, sorting and paging of the image list.

use std::cmp::Ordering;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::image::model::*;
use crate::image::service::*;
use crate::image::store;

// ---------------------------------------------------------------- list

pub(crate) const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "virtual_size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "min_disk",
    "min_ram",
];

pub(crate) fn cmp_key(a: &Image, b: &Image, key: &str) -> Ordering {
    fn s(img: &Image, key: &str) -> Option<String> {
        match key {
            "name" => img.name.clone(),
            "status" => Some(img.status.clone()),
            "container_format" => img.container_format.clone(),
            "disk_format" => img.disk_format.clone(),
            "id" => Some(img.id.clone()),
            "created_at" => Some(img.created_at.clone()),
            "updated_at" => Some(img.updated_at.clone()),
            "visibility" => Some(img.visibility.clone()),
            "owner" => Some(img.owner.clone()),
            _ => None,
        }
    }
    fn n(img: &Image, key: &str) -> Option<i64> {
        match key {
            "size" => img.size,
            "virtual_size" => img.virtual_size,
            "min_disk" => Some(img.min_disk),
            "min_ram" => Some(img.min_ram),
            _ => None,
        }
    }
    match key {
        "size" | "virtual_size" | "min_disk" | "min_ram" => n(a, key).cmp(&n(b, key)),
        _ => s(a, key).cmp(&s(b, key)),
    }
}

pub(crate) fn parse_sort(q: &[(String, String)]) -> ApiResult<Vec<(String, bool)>> {
    let check_key = |k: &str| -> ApiResult<()> {
        if SORT_KEYS.contains(&k) {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "Invalid sort key: {k}. It must be one of the following: {}.",
                SORT_KEYS.join(", ")
            )))
        }
    };
    let check_dir = |d: &str| -> ApiResult<bool> {
        match d {
            "asc" => Ok(false),
            "desc" => Ok(true),
            _ => Err(ApiError::bad_request(format!(
                "Invalid sort direction: {d}. It must be asc or desc."
            ))),
        }
    };
    let sort: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort")
        .map(|(_, v)| v.as_str())
        .collect();
    let keys: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v.as_str())
        .collect();
    let dirs: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut out = Vec::new();
    if !sort.is_empty() {
        if !keys.is_empty() || !dirs.is_empty() {
            return Err(ApiError::bad_request(
                "The sort parameter cannot be combined with sort_key or sort_dir.",
            ));
        }
        for item in sort.iter().flat_map(|s| s.split(',')) {
            let (k, d) = item.split_once(':').unwrap_or((item, "desc"));
            check_key(k.trim())?;
            out.push((k.trim().to_string(), check_dir(d.trim())?));
        }
    } else {
        if dirs.len() > 1 && dirs.len() != keys.len() {
            return Err(ApiError::bad_request(
                "The number of sort_dir values must be 1 or match the number of sort_key values.",
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            check_key(k)?;
            let d = match dirs.len() {
                0 => "desc",
                1 => dirs[0],
                _ => dirs[i],
            };
            out.push((k.to_string(), check_dir(d)?));
        }
        if keys.is_empty() {
            let desc = match dirs.first() {
                Some(d) => check_dir(d)?,
                None => true,
            };
            out.push(("created_at".to_string(), desc));
        }
    }
    if !out.iter().any(|(k, _)| k == "id") {
        let last_desc = out.last().map(|(_, d)| *d).unwrap_or(true);
        out.push(("id".to_string(), last_desc));
    }
    Ok(out)
}

pub(crate) fn parse_bool_param(key: &str, v: &str) -> ApiResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value '{v}' for parameter '{key}': expected true or false."
        ))),
    }
}

pub(crate) fn parse_int_param(key: &str, v: &str) -> ApiResult<i64> {
    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid value '{v}' for parameter '{key}': expected a non-negative integer."
        ))
    })
}

/// `value` or `in:a,b,c` → the accepted values.
pub(crate) fn accepted(v: &str) -> Vec<&str> {
    match v.strip_prefix("in:") {
        Some(list) => list.split(',').collect(),
        None => vec![v],
    }
}

pub(crate) fn matches_opt(field: Option<&str>, want: &str) -> bool {
    let ok = accepted(want);
    field.is_some_and(|f| ok.contains(&f))
}

/// Parameters that never filter.
pub(crate) const IGNORED_PARAMS: &[&str] =
    &["member_status", "all_tenants", "is_public", "paginate"];

pub(crate) fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One list filter.
type Filter = Box<dyn Fn(&Image) -> bool>;

pub(crate) async fn list_images(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let mut limit = DEFAULT_LIMIT;
    let mut marker: Option<String> = None;
    let mut hidden_filter: Option<bool> = Some(false);
    let mut visibility_filter: Option<String> = None;
    let mut checks: Vec<Filter> = Vec::new();
    for (k, v) in &q {
        let v = v.clone();
        match k.as_str() {
            "limit" => {
                limit = usize::try_from(parse_int_param(k, &v)?)
                    .unwrap_or(MAX_LIMIT)
                    .min(MAX_LIMIT)
            }
            "marker" => marker = Some(v),
            "sort" | "sort_key" | "sort_dir" => {}
            "os_hidden" => hidden_filter = Some(parse_bool_param(k, &v)?),
            "visibility" => {
                if v != "all" && !VISIBILITIES.contains(&v.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid visibility value: {v}. It must be one of: all, {}.",
                        VISIBILITIES.join(", ")
                    )));
                }
                visibility_filter = Some(v);
            }
            "protected" => {
                let want = parse_bool_param(k, &v)?;
                checks.push(Box::new(move |i| i.protected == want));
            }
            "size_min" => {
                let n = parse_int_param(k, &v)?;
                checks.push(Box::new(move |i| i.size.is_some_and(|s| s >= n)));
            }
            "size_max" => {
                let n = parse_int_param(k, &v)?;
                checks.push(Box::new(move |i| i.size.is_some_and(|s| s <= n)));
            }
            "tag" => checks.push(Box::new(move |i| i.tags.contains(&v))),
            "name" => checks.push(Box::new(move |i| matches_opt(i.name.as_deref(), &v))),
            "id" => checks.push(Box::new(move |i| matches_opt(Some(&i.id), &v))),
            "status" => checks.push(Box::new(move |i| matches_opt(Some(&i.status), &v))),
            "owner" => checks.push(Box::new(move |i| matches_opt(Some(&i.owner), &v))),
            "disk_format" => {
                checks.push(Box::new(move |i| matches_opt(i.disk_format.as_deref(), &v)))
            }
            "container_format" => checks.push(Box::new(move |i| {
                matches_opt(i.container_format.as_deref(), &v)
            })),
            key if IGNORED_PARAMS.contains(&key) => {}
            // Glance filters on any other key as an extra property.
            key => {
                let key = key.to_string();
                checks.push(Box::new(move |i| {
                    matches_opt(i.properties.get(&key).and_then(Value::as_str), &v)
                }))
            }
        }
    }
    let sort = parse_sort(&q)?;

    let mut images: Vec<Image> = {
        let conn = st.db.lock();
        store::list_all(&conn)?
    };
    images.retain(|i| visible(&ctx, i));
    // Which images a listing includes by default: Glance leaves out community
    // images of other projects unless they are asked for.
    images.retain(|i| match visibility_filter.as_deref() {
        Some("all") => true,
        Some(vis) => i.visibility == vis,
        None => ctx.is_admin() || i.visibility != "community" || i.owner == ctx.project_id,
    });
    if let Some(h) = hidden_filter {
        images.retain(|i| i.os_hidden == h);
    }
    images.retain(|i| checks.iter().all(|c| c(i)));
    images.sort_by(|a, b| {
        for (key, desc) in &sort {
            let o = cmp_key(a, b, key);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    let start = match &marker {
        None => 0,
        Some(m) => match images.iter().position(|i| i.id == *m) {
            Some(p) => p + 1,
            None => {
                // The marker may be filtered out but still visible: Glance
                // accepts any visible image as marker.
                let conn = st.db.lock();
                let Some(mimg) = store::load(&conn, m)?.filter(|i| visible(&ctx, i)) else {
                    return Err(ApiError::bad_request(format!(
                        "Invalid marker. Image {m} could not be found."
                    )));
                };
                drop(conn);
                images
                    .iter()
                    .position(|i| {
                        sort.iter()
                            .map(|(key, desc)| {
                                let o = cmp_key(i, &mimg, key);
                                if *desc {
                                    o.reverse()
                                } else {
                                    o
                                }
                            })
                            .find(|o| *o != Ordering::Equal)
                            == Some(Ordering::Greater)
                    })
                    .unwrap_or(images.len())
            }
        },
    };
    let page: Vec<&Image> = images.iter().skip(start).take(limit).collect();
    let more = start + page.len() < images.len();
    let mut out = json!({
        "images": page.iter().map(|i| render(i)).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if more {
        if let Some(last) = page.last() {
            let mut qs: Vec<String> = q
                .iter()
                .filter(|(k, _)| k != "marker" && k != "limit")
                .map(|(k, v)| format!("{}={}", pct_encode(k), pct_encode(v)))
                .collect();
            qs.push(format!("marker={}", pct_encode(&last.id)));
            qs.push(format!("limit={limit}"));
            out["next"] = json!(format!("/v2/images?{}", qs.join("&")));
        }
    }
    Ok(Json(out))
}
