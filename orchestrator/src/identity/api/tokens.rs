//! `/v3/auth/*`: issuing, checking and revoking tokens, and what a token's
//! holder may scope to.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::catalog;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, BaseUrl, JsonBody};
use crate::http::policy::is_self_or_admin;
use crate::http::AppState;
use crate::identity::model::*;
use crate::identity::store::{self, Projects};
use crate::identity::{password, token};

#[derive(Deserialize)]
pub(super) struct AuthRequest {
    auth: AuthBody,
}

#[derive(Deserialize)]
struct AuthBody {
    identity: IdentityBody,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct IdentityBody {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordBody>,
    #[serde(default)]
    token: Option<TokenBody>,
}

#[derive(Deserialize)]
struct PasswordBody {
    user: UserRef,
}

#[derive(Deserialize)]
struct UserRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
    password: String,
}

#[derive(Deserialize)]
struct DomainRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    id: String,
}

fn domain_id_of(conn: &Connection, d: &Option<DomainRef>) -> ApiResult<String> {
    match d {
        None => Ok(DEFAULT_DOMAIN_ID.to_string()),
        Some(DomainRef { id: Some(id), .. }) => Ok(id.clone()),
        Some(DomainRef {
            name: Some(name), ..
        }) => store::find_domain(conn, name)?
            .map(|d| d.id)
            .ok_or_else(|| {
                ApiError::unauthorized("the request you have made requires authentication")
            }),
        Some(_) => Err(ApiError::bad_request("a domain needs an id or a name")),
    }
}

/// Resolves the scope object of an auth request to a project id ("" = unscoped).
fn scope_project(conn: &Connection, scope: &Option<Value>, user_id: &str) -> ApiResult<String> {
    let Some(scope) = scope else {
        // Keystone scopes to the default project if the user has one and a role there.
        let default = store::default_project_of(conn, user_id)?;
        if let Some(p) = default {
            if !store::roles_on(conn, user_id, &p)?.is_empty() {
                return Ok(p);
            }
        }
        return Ok(String::new());
    };
    if scope.get("system").is_some() || scope.get("domain").is_some() {
        return Err(ApiError::unauthorized(
            "only project-scoped tokens are supported (system and domain scope are not)",
        ));
    }
    let Some(p) = scope.get("project") else {
        return Err(ApiError::bad_request("scope must name a project"));
    };
    let id = p.get("id").and_then(Value::as_str);
    let name = p.get("name").and_then(Value::as_str);
    let project: Option<String> = match (id, name) {
        (Some(id), _) => store::enabled_project_by_id(conn, id)?,
        (None, Some(name)) => {
            let dom = p.get("domain").cloned().unwrap_or(Value::Null);
            let dref = DomainRef {
                id: dom.get("id").and_then(Value::as_str).map(String::from),
                name: dom.get("name").and_then(Value::as_str).map(String::from),
            };
            let dom_id = domain_id_of(conn, &Some(dref))?;
            store::enabled_project_by_name(conn, name, &dom_id)?
        }
        _ => {
            return Err(ApiError::bad_request(
                "the scope's project needs an id or a name",
            ))
        }
    };
    let project = project.ok_or_else(|| {
        ApiError::unauthorized("the project in the scope does not exist or is disabled")
    })?;
    if store::roles_on(conn, user_id, &project)?.is_empty() {
        return Err(ApiError::unauthorized(
            "the user has no role on the requested project",
        ));
    }
    Ok(project)
}

/// The `token` body keystoneauth expects (it indexes several keys directly).
fn token_body(conn: &Connection, rec: &token::TokenRecord, base: &str) -> ApiResult<Value> {
    let (user_name, user_domain) = store::user_name_and_domain(conn, &rec.user_id)?;
    let dom_name = |id: &str| -> ApiResult<String> {
        Ok(store::find_domain(conn, id)?
            .map(|d| d.name)
            .unwrap_or_default())
    };
    let mut tok = json!({
        "methods": rec.methods,
        "user": {
            "id": rec.user_id, "name": user_name,
            "domain": { "id": user_domain, "name": dom_name(&user_domain)? },
            "password_expires_at": null
        },
        "audit_ids": rec.audit_ids(),
        "issued_at": rec.issued_at,
        "expires_at": rec.expires_at,
    });
    if !rec.project_id.is_empty() {
        let (pname, pdom) = store::project_name_and_domain(conn, &rec.project_id)?;
        let roles: Vec<Value> = store::roles_on(conn, &rec.user_id, &rec.project_id)?
            .into_iter()
            .map(|(id, name)| json!({ "id": id, "name": name }))
            .collect();
        tok["project"] = json!({
            "id": rec.project_id, "name": pname,
            "domain": { "id": pdom, "name": dom_name(&pdom)? }
        });
        tok["is_domain"] = json!(false);
        tok["roles"] = json!(roles);
        tok["catalog"] = catalog::catalog(base, Some(&rec.project_id));
    }
    Ok(json!({ "token": tok }))
}

fn with_subject(status: StatusCode, token: &str, body: Value) -> ApiResult<Response> {
    let mut resp = (status, Json(body)).into_response();
    let value = HeaderValue::from_str(token).map_err(ApiError::internal)?;
    resp.headers_mut().insert("x-subject-token", value);
    Ok(resp)
}

pub(super) async fn issue_token(
    State(st): State<AppState>,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<AuthRequest>,
) -> ApiResult<Response> {
    let id = req.auth.identity;
    let conn = st.db.lock();
    // The token a `token` method presents: the new one joins its chain.
    let (user_id, parent) = if id.methods.iter().any(|m| m == "password") {
        let Some(pw) = id.password else {
            return Err(ApiError::bad_request(
                "the password method needs a password object",
            ));
        };
        let u = pw.user;
        let row = match (&u.id, &u.name) {
            (Some(uid), _) => store::credentials_by_id(&conn, uid)?,
            (None, Some(name)) => {
                let dom = domain_id_of(&conn, &u.domain)?;
                store::credentials_by_name(&conn, name, &dom)?
            }
            _ => return Err(ApiError::bad_request("the user needs an id or a name")),
        };
        // Same answer for unknown user and wrong password.
        let denied = || ApiError::unauthorized("the request you have made requires authentication");
        let (uid, hash, enabled) = row.ok_or_else(denied)?;
        let hash = hash.ok_or_else(denied)?;
        if !enabled || !password::verify(&u.password, &hash) {
            return Err(denied());
        }
        (uid, None)
    } else if id.methods.iter().any(|m| m == "token") {
        let Some(t) = id.token else {
            return Err(ApiError::bad_request(
                "the token method needs a token object",
            ));
        };
        let (ctx, rec) = token::validate(&conn, &t.id)?
            .ok_or_else(|| ApiError::unauthorized("the token is invalid, expired or revoked"))?;
        (ctx.user_id, Some(rec))
    } else {
        return Err(ApiError::unauthorized(
            "only the password and token authentication methods are supported",
        ));
    };
    let project = scope_project(&conn, &req.auth.scope, &user_id)?;
    let (secret, rec) = match &parent {
        None => token::issue(&conn, &user_id, &project, st.cfg.token_ttl)?,
        Some(parent) => token::rescope(&conn, parent, &project)?,
    };
    tracing::info!(user = %user_id, project = %project, audit_ids = ?rec.audit_ids(), "token issued");
    let body = token_body(&conn, &rec, &base)?;
    with_subject(StatusCode::CREATED, &secret, body)
}

fn subject(headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .ok_or_else(|| ApiError::bad_request("X-Subject-Token header missing"))
}

pub(super) async fn check_token(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let subj = subject(&headers)?;
    let conn = st.db.lock();
    let (sctx, rec) = token::validate(&conn, &subj)?
        .ok_or_else(|| ApiError::not_found("the subject token is invalid, expired or revoked"))?;
    if !is_self_or_admin(&ctx, &sctx.user_id) {
        return Err(ApiError::forbidden("you may only validate your own tokens"));
    }
    let body = token_body(&conn, &rec, &base)?;
    with_subject(StatusCode::OK, &subj, body)
}

pub(super) async fn revoke_token(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let subj = subject(&headers)?;
    let conn = st.db.lock();
    let Some((sctx, _)) = token::validate(&conn, &subj)? else {
        return Err(ApiError::not_found(
            "the subject token is invalid, expired or revoked",
        ));
    };
    if !is_self_or_admin(&ctx, &sctx.user_id) {
        return Err(ApiError::forbidden("you may only revoke your own tokens"));
    }
    token::revoke(&conn, &subj)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn auth_projects(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let projects: Vec<Value> = store::projects(&conn, Projects::EnabledOfUser(&ctx.user_id))?
        .iter()
        .map(|p| p.to_json(&base))
        .collect();
    Ok(Json(
        json!({ "projects": projects, "links": links(&base, "auth/projects") }),
    ))
}

pub(super) async fn auth_catalog(Auth(ctx): Auth, BaseUrl(base): BaseUrl) -> Json<Value> {
    let project = (!ctx.project_id.is_empty()).then_some(ctx.project_id.as_str());
    Json(
        json!({ "catalog": catalog::catalog(&base, project), "links": links(&base, "auth/catalog") }),
    )
}
