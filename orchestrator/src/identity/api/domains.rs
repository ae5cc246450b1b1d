//! `/v3/domains`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, BaseUrl};
use crate::http::AppState;
use crate::identity::model::*;
use crate::identity::store::{self};

pub(super) async fn list_domains(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let out: Vec<Value> = store::domains(&conn)?
        .iter()
        .filter(|d| q.get("name").is_none_or(|n| *n == d.name))
        .map(|d| d.to_json(&base))
        .collect();
    Ok(Json(
        json!({ "domains": out, "links": links(&base, "domains") }),
    ))
}

pub(super) async fn show_domain(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let domain = store::domain(&conn, &id)?
        .ok_or_else(|| ApiError::not_found(format!("could not find domain: {id}")))?;
    Ok(Json(json!({ "domain": domain.to_json(&base) })))
}
