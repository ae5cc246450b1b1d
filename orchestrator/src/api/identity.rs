//! Identity v3 (Keystone subset): tokens, domains, projects, users, roles and
//! role assignments. Management calls need the `admin` role.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::http::catalog;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, BaseUrl, JsonBody};
use crate::http::policy::{is_self_or_admin, owns_or_admin, require_admin};
use crate::http::versions;
use crate::http::AppState;
use crate::identity::{find_domain, password, roles_on, token, DEFAULT_DOMAIN_ID};
use crate::util::new_hex_id;

/// The identity routes, relative to `/identity`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions::identity_versions))
        .route("/v3", get(versions::identity_v3))
        .route(
            "/v3/auth/tokens",
            get(check_token)
                .head(check_token)
                .post(issue_token)
                .delete(revoke_token),
        )
        .route("/v3/auth/projects", get(auth_projects))
        .route("/v3/auth/catalog", get(auth_catalog))
        .route("/v3/domains", get(list_domains))
        .route("/v3/domains/{id}", get(show_domain))
        .route("/v3/projects", get(list_projects).post(create_project))
        .route(
            "/v3/projects/{id}",
            get(show_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/v3/users", get(list_users).post(create_user))
        .route(
            "/v3/users/{id}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/v3/users/{id}/projects", get(user_projects))
        .route("/v3/roles", get(list_roles).post(create_role))
        .route("/v3/roles/{id}", get(show_role).delete(delete_role))
        .route("/v3/role_assignments", get(list_assignments))
        .route(
            "/v3/projects/{p}/users/{u}/roles",
            get(list_user_project_roles),
        )
        .route(
            "/v3/projects/{p}/users/{u}/roles/{r}",
            put(grant).head(check_grant).get(check_grant).delete(revoke),
        )
        .merge(super::identity_catalog::router())
}

/// A collection's `links` (one page: no previous, no next).
pub(super) fn links(base: &str, path: &str) -> Value {
    json!({ "self": format!("{base}/identity/v3/{path}"), "previous": null, "next": null })
}

// ---------------------------------------------------------------- tokens

#[derive(Deserialize)]
struct AuthRequest {
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
        }) => find_domain(conn, name)?.map(|d| d.id).ok_or_else(|| {
            ApiError::unauthorized("the request you have made requires authentication")
        }),
        Some(_) => Err(ApiError::bad_request("a domain needs an id or a name")),
    }
}

/// Resolves the scope object of an auth request to a project id ("" = unscoped).
fn scope_project(conn: &Connection, scope: &Option<Value>, user_id: &str) -> ApiResult<String> {
    let Some(scope) = scope else {
        // Keystone scopes to the default project if the user has one and a role there.
        let default: Option<String> = conn
            .query_row(
                "SELECT default_project_id FROM users WHERE id = ?1",
                params![user_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if let Some(p) = default {
            if !roles_on(conn, user_id, &p)?.is_empty() {
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
        (Some(id), _) => conn
            .query_row(
                "SELECT id FROM projects WHERE id = ?1 AND enabled = 1",
                params![id],
                |r| r.get(0),
            )
            .optional()?,
        (None, Some(name)) => {
            let dom = p.get("domain").cloned().unwrap_or(Value::Null);
            let dref = DomainRef {
                id: dom.get("id").and_then(Value::as_str).map(String::from),
                name: dom.get("name").and_then(Value::as_str).map(String::from),
            };
            let dom_id = domain_id_of(conn, &Some(dref))?;
            conn.query_row(
                "SELECT id FROM projects WHERE name = ?1 AND domain_id = ?2 AND enabled = 1",
                params![name, dom_id],
                |r| r.get(0),
            )
            .optional()?
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
    if roles_on(conn, user_id, &project)?.is_empty() {
        return Err(ApiError::unauthorized(
            "the user has no role on the requested project",
        ));
    }
    Ok(project)
}

/// The `token` body keystoneauth expects (it indexes several keys directly).
fn token_body(conn: &Connection, rec: &token::TokenRecord, base: &str) -> ApiResult<Value> {
    let (user_name, user_domain): (String, String) = conn.query_row(
        "SELECT name, domain_id FROM users WHERE id = ?1",
        params![rec.user_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let dom_name = |id: &str| -> ApiResult<String> {
        Ok(find_domain(conn, id)?.map(|d| d.name).unwrap_or_default())
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
        let (pname, pdom): (String, String) = conn.query_row(
            "SELECT name, domain_id FROM projects WHERE id = ?1",
            params![rec.project_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let roles: Vec<Value> = roles_on(conn, &rec.user_id, &rec.project_id)?
            .into_iter()
            .map(|(id, name)| json!({ "id": id, "name": name }))
            .collect();
        tok["project"] = json!({
            "id": rec.project_id, "name": pname,
            "domain": { "id": pdom, "name": dom_name(&pdom)? }
        });
        tok["is_domain"] = json!(false);
        tok["roles"] = json!(roles);
        tok["catalog"] = catalog::catalog(base);
    }
    Ok(json!({ "token": tok }))
}

fn with_subject(status: StatusCode, token: &str, body: Value) -> ApiResult<Response> {
    let mut resp = (status, Json(body)).into_response();
    let value = HeaderValue::from_str(token).map_err(ApiError::internal)?;
    resp.headers_mut().insert("x-subject-token", value);
    Ok(resp)
}

async fn issue_token(
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
        let row: Option<(String, Option<String>, bool)> = match (&u.id, &u.name) {
            (Some(uid), _) => conn
                .query_row(
                    "SELECT id, password_hash, enabled FROM users WHERE id = ?1",
                    params![uid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?,
            (None, Some(name)) => {
                let dom = domain_id_of(&conn, &u.domain)?;
                conn.query_row(
                    "SELECT id, password_hash, enabled FROM users WHERE name = ?1 AND domain_id = ?2",
                    params![name, dom],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
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

async fn check_token(
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

async fn revoke_token(
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

async fn auth_projects(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let projects = query_projects(
        &conn,
        &base,
        "WHERE enabled = 1 AND id IN (SELECT project_id FROM role_assignments WHERE user_id = ?1)",
        &[&ctx.user_id],
    )?;
    Ok(Json(
        json!({ "projects": projects, "links": links(&base, "auth/projects") }),
    ))
}

async fn auth_catalog(Auth(_): Auth, BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "catalog": catalog::catalog(&base), "links": links(&base, "auth/catalog") }))
}

// ---------------------------------------------------------------- domains

fn domain_json(base: &str, id: &str, name: &str, description: &str, enabled: bool) -> Value {
    json!({
        "id": id, "name": name, "description": description, "enabled": enabled,
        "tags": [], "options": {},
        "links": { "self": format!("{base}/identity/v3/domains/{id}") }
    })
}

async fn list_domains(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let mut stmt =
        conn.prepare("SELECT id, name, description, enabled FROM domains ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, bool>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, desc, en) = row?;
        if q.get("name").is_some_and(|n| *n != name) {
            continue;
        }
        out.push(domain_json(&base, &id, &name, &desc, en));
    }
    Ok(Json(
        json!({ "domains": out, "links": links(&base, "domains") }),
    ))
}

async fn show_domain(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let row = conn
        .query_row(
            "SELECT id, name, description, enabled FROM domains WHERE id = ?1",
            params![id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found(format!("could not find domain: {id}")))?;
    Ok(Json(
        json!({ "domain": domain_json(&base, &row.0, &row.1, &row.2, row.3) }),
    ))
}

// ---------------------------------------------------------------- projects

fn query_projects(
    conn: &Connection,
    base: &str,
    where_sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> ApiResult<Vec<Value>> {
    let sql = format!(
        "SELECT id, name, domain_id, description, enabled FROM projects {where_sql} ORDER BY name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(args, |r| {
        let id: String = r.get(0)?;
        let domain: String = r.get(2)?;
        Ok(json!({
            "id": id, "name": r.get::<_, String>(1)?, "domain_id": domain,
            "description": r.get::<_, String>(3)?, "enabled": r.get::<_, bool>(4)?,
            "is_domain": false, "parent_id": domain, "tags": [], "options": {},
            "links": { "self": format!("{base}/identity/v3/projects/{id}") }
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn one_project(conn: &Connection, base: &str, id: &str) -> ApiResult<Value> {
    query_projects(conn, base, "WHERE id = ?1", &[&id])?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("could not find project: {id}")))
}

async fn list_projects(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let mut projects = if ctx.is_admin() {
        query_projects(&conn, &base, "", &[])?
    } else {
        query_projects(
            &conn,
            &base,
            "WHERE id IN (SELECT project_id FROM role_assignments WHERE user_id = ?1)",
            &[&ctx.user_id],
        )?
    };
    for key in ["name", "domain_id", "enabled"] {
        if let Some(want) = q.get(key) {
            projects.retain(|p| match &p[key] {
                Value::String(s) => s == want,
                Value::Bool(b) => b.to_string() == want.to_ascii_lowercase(),
                _ => false,
            });
        }
    }
    Ok(Json(
        json!({ "projects": projects, "links": links(&base, "projects") }),
    ))
}

#[derive(Deserialize)]
struct ProjectReq {
    project: ProjectFields,
}

#[derive(Deserialize)]
struct ProjectFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

fn valid_name(kind: &str, name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "{kind} name must be 1 to 255 characters"
        )));
    }
    if crate::util::has_control_chars(name) {
        return Err(ApiError::bad_request(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(())
}

fn unique_violation(e: rusqlite::Error, what: String) -> ApiError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            ApiError::conflict(what)
        }
        e => e.into(),
    }
}

async fn create_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<ProjectReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&ctx)?;
    let p = req.project;
    let name = p
        .name
        .ok_or_else(|| ApiError::bad_request("project name is required"))?;
    valid_name("project", &name)?;
    let conn = st.db.lock();
    let domain = p.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string());
    if find_domain(&conn, &domain)?.is_none() {
        return Err(ApiError::bad_request(format!(
            "domain {domain} does not exist"
        )));
    }
    let id = new_hex_id();
    conn.execute(
        "INSERT INTO projects (id, name, domain_id, description, enabled) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, name, domain, p.description.unwrap_or_default(), p.enabled.unwrap_or(true)],
    )
    .map_err(|e| unique_violation(e, format!("a project named {name} already exists in domain {domain}")))?;
    tracing::info!(project = %id, ?name, "project created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "project": one_project(&conn, &base, &id)? })),
    ))
}

async fn show_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    if !owns_or_admin(&ctx, &id) {
        return Err(ApiError::not_found(format!("could not find project: {id}")));
    }
    Ok(Json(json!({ "project": one_project(&conn, &base, &id)? })))
}

async fn update_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ProjectReq>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    one_project(&conn, &base, &id)?;
    let p = req.project;
    if let Some(name) = &p.name {
        valid_name("project", name)?;
        conn.execute(
            "UPDATE projects SET name = ?1 WHERE id = ?2",
            params![name, id],
        )
        .map_err(|e| unique_violation(e, format!("a project named {name} already exists")))?;
    }
    if let Some(d) = &p.description {
        conn.execute(
            "UPDATE projects SET description = ?1 WHERE id = ?2",
            params![d, id],
        )?;
    }
    if let Some(en) = p.enabled {
        conn.execute(
            "UPDATE projects SET enabled = ?1 WHERE id = ?2",
            params![en, id],
        )?;
        if !en {
            token::revoke_project(&conn, &id)?;
        }
    }
    Ok(Json(json!({ "project": one_project(&conn, &base, &id)? })))
}

async fn delete_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    one_project(&conn, &base, &id)?;
    if id == ctx.project_id {
        return Err(ApiError::forbidden(
            "you cannot delete the project your token is scoped to",
        ));
    }
    let servers: i64 = conn.query_row(
        "SELECT count(*) FROM servers WHERE project_id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    if servers > 0 {
        return Err(ApiError::conflict(format!(
            "project {id} still has {servers} server(s); delete them first"
        )));
    }
    token::revoke_project(&conn, &id)?;
    conn.execute("DELETE FROM projects WHERE id = ?1", params![id])?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- users

fn query_users(
    conn: &Connection,
    base: &str,
    where_sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> ApiResult<Vec<Value>> {
    let sql = format!(
        "SELECT id, name, domain_id, default_project_id, email, description, enabled FROM users {where_sql} ORDER BY name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(args, |r| {
        let id: String = r.get(0)?;
        let mut u = json!({
            "id": id, "name": r.get::<_, String>(1)?, "domain_id": r.get::<_, String>(2)?,
            "description": r.get::<_, String>(5)?, "enabled": r.get::<_, bool>(6)?,
            "password_expires_at": null, "options": {},
            "links": { "self": format!("{base}/identity/v3/users/{id}") }
        });
        if let Some(p) = r.get::<_, Option<String>>(3)? {
            u["default_project_id"] = json!(p);
        }
        if let Some(e) = r.get::<_, Option<String>>(4)? {
            u["email"] = json!(e);
        }
        Ok(u)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn one_user(conn: &Connection, base: &str, id: &str) -> ApiResult<Value> {
    query_users(conn, base, "WHERE id = ?1", &[&id])?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("could not find user: {id}")))
}

async fn list_users(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let mut users = if ctx.is_admin() {
        query_users(&conn, &base, "", &[])?
    } else {
        query_users(&conn, &base, "WHERE id = ?1", &[&ctx.user_id])?
    };
    for key in ["name", "domain_id"] {
        if let Some(want) = q.get(key) {
            users.retain(|u| u[key].as_str() == Some(want.as_str()));
        }
    }
    Ok(Json(
        json!({ "users": users, "links": links(&base, "users") }),
    ))
}

#[derive(Deserialize)]
struct UserReq {
    user: UserFields,
}

#[derive(Deserialize)]
struct UserFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    default_project_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

async fn create_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<UserReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&ctx)?;
    let u = req.user;
    let name = u
        .name
        .ok_or_else(|| ApiError::bad_request("user name is required"))?;
    valid_name("user", &name)?;
    let hash = match &u.password {
        Some(p) => Some(password::hash(p).map_err(ApiError::internal)?),
        None => None,
    };
    let conn = st.db.lock();
    let domain = u.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string());
    if find_domain(&conn, &domain)?.is_none() {
        return Err(ApiError::bad_request(format!(
            "domain {domain} does not exist"
        )));
    }
    if let Some(p) = &u.default_project_id {
        one_project(&conn, &base, p)
            .map_err(|_| ApiError::bad_request(format!("project {p} does not exist")))?;
    }
    let id = new_hex_id();
    conn.execute(
        "INSERT INTO users (id, name, domain_id, password_hash, default_project_id, email, description, enabled) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id, name, domain, hash, u.default_project_id, u.email,
            u.description.unwrap_or_default(), u.enabled.unwrap_or(true)
        ],
    )
    .map_err(|e| unique_violation(e, format!("a user named {name} already exists in domain {domain}")))?;
    tracing::info!(user = %id, ?name, "user created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": one_user(&conn, &base, &id)? })),
    ))
}

async fn show_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !is_self_or_admin(&ctx, &id) {
        return Err(ApiError::not_found(format!("could not find user: {id}")));
    }
    let conn = st.db.lock();
    Ok(Json(json!({ "user": one_user(&conn, &base, &id)? })))
}

async fn update_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UserReq>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    let u = req.user;
    let hash = match &u.password {
        Some(p) => Some(password::hash(p).map_err(ApiError::internal)?),
        None => None,
    };
    let conn = st.db.lock();
    one_user(&conn, &base, &id)?;
    if let Some(name) = &u.name {
        valid_name("user", name)?;
        conn.execute(
            "UPDATE users SET name = ?1 WHERE id = ?2",
            params![name, id],
        )
        .map_err(|e| unique_violation(e, format!("a user named {name} already exists")))?;
    }
    if let Some(h) = hash {
        conn.execute(
            "UPDATE users SET password_hash = ?1 WHERE id = ?2",
            params![h, id],
        )?;
        token::revoke_user(&conn, &id)?;
    }
    if let Some(v) = &u.default_project_id {
        conn.execute(
            "UPDATE users SET default_project_id = ?1 WHERE id = ?2",
            params![v, id],
        )?;
    }
    if let Some(v) = &u.email {
        conn.execute("UPDATE users SET email = ?1 WHERE id = ?2", params![v, id])?;
    }
    if let Some(v) = &u.description {
        conn.execute(
            "UPDATE users SET description = ?1 WHERE id = ?2",
            params![v, id],
        )?;
    }
    if let Some(v) = u.enabled {
        conn.execute(
            "UPDATE users SET enabled = ?1 WHERE id = ?2",
            params![v, id],
        )?;
        if !v {
            token::revoke_user(&conn, &id)?;
        }
    }
    Ok(Json(json!({ "user": one_user(&conn, &base, &id)? })))
}

async fn delete_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    if id == ctx.user_id {
        return Err(ApiError::forbidden("you cannot delete yourself"));
    }
    let conn = st.db.lock();
    one_user(&conn, &base, &id)?;
    conn.execute("DELETE FROM tokens WHERE user_id = ?1", params![id])?;
    conn.execute("DELETE FROM users WHERE id = ?1", params![id])?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_projects(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !is_self_or_admin(&ctx, &id) {
        return Err(ApiError::forbidden("you may only list your own projects"));
    }
    let conn = st.db.lock();
    let projects = query_projects(
        &conn,
        &base,
        "WHERE id IN (SELECT project_id FROM role_assignments WHERE user_id = ?1)",
        &[&id],
    )?;
    Ok(Json(
        json!({ "projects": projects, "links": links(&base, &format!("users/{id}/projects")) }),
    ))
}

// ---------------------------------------------------------------- roles

fn role_json(base: &str, id: &str, name: &str) -> Value {
    json!({
        "id": id, "name": name, "domain_id": null, "description": null, "options": {},
        "links": { "self": format!("{base}/identity/v3/roles/{id}") }
    })
}

fn all_roles(conn: &Connection) -> ApiResult<Vec<(String, String)>> {
    let mut stmt = conn.prepare("SELECT id, name FROM roles ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

async fn list_roles(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let roles: Vec<Value> = all_roles(&conn)?
        .into_iter()
        .filter(|(_, n)| q.get("name").is_none_or(|w| w == n))
        .map(|(id, n)| role_json(&base, &id, &n))
        .collect();
    Ok(Json(
        json!({ "roles": roles, "links": links(&base, "roles") }),
    ))
}

#[derive(Deserialize)]
struct RoleReq {
    role: RoleFields,
}

#[derive(Deserialize)]
struct RoleFields {
    name: String,
}

async fn create_role(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<RoleReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&ctx)?;
    valid_name("role", &req.role.name)?;
    let conn = st.db.lock();
    let id = new_hex_id();
    conn.execute(
        "INSERT INTO roles (id, name) VALUES (?1, ?2)",
        params![id, req.role.name],
    )
    .map_err(|e| unique_violation(e, format!("a role named {} already exists", req.role.name)))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "role": role_json(&base, &id, &req.role.name) })),
    ))
}

fn one_role(conn: &Connection, id: &str) -> ApiResult<String> {
    conn.query_row("SELECT name FROM roles WHERE id = ?1", params![id], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| ApiError::not_found(format!("could not find role: {id}")))
}

async fn show_role(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let name = one_role(&conn, &id)?;
    Ok(Json(json!({ "role": role_json(&base, &id, &name) })))
}

async fn delete_role(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    let name = one_role(&conn, &id)?;
    if crate::identity::ROLES.contains(&name.as_str()) {
        return Err(ApiError::forbidden(format!(
            "the built-in role {name} cannot be deleted"
        )));
    }
    token::revoke_role(&conn, &id)?;
    conn.execute("DELETE FROM roles WHERE id = ?1", params![id])?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- assignments

fn check_triple(conn: &Connection, base: &str, p: &str, u: &str, r: &str) -> ApiResult<()> {
    one_project(conn, base, p)?;
    one_user(conn, base, u)?;
    one_role(conn, r)?;
    Ok(())
}

async fn grant(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path((p, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    check_triple(&conn, &base, &p, &u, &r)?;
    conn.execute(
        "INSERT OR IGNORE INTO role_assignments (user_id, project_id, role_id) VALUES (?1, ?2, ?3)",
        params![u, p, r],
    )?;
    tracing::info!(user = %u, project = %p, role = %r, "role granted");
    Ok(StatusCode::NO_CONTENT)
}

async fn check_grant(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path((p, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    if !is_self_or_admin(&ctx, &u) {
        return Err(ApiError::forbidden("admin required"));
    }
    let conn = st.db.lock();
    check_triple(&conn, &base, &p, &u, &r)?;
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 AND role_id = ?3",
        params![u, p, r],
        |row| row.get(0),
    )?;
    if n == 0 {
        return Err(ApiError::not_found("no such role assignment"));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path((p, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    check_triple(&conn, &base, &p, &u, &r)?;
    let n = conn.execute(
        "DELETE FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 AND role_id = ?3",
        params![u, p, r],
    )?;
    if n == 0 {
        return Err(ApiError::not_found("no such role assignment"));
    }
    token::revoke_user_on_project(&conn, &u, &p)?;
    tracing::info!(user = %u, project = %p, role = %r, "role assignment removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_user_project_roles(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path((p, u)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if !is_self_or_admin(&ctx, &u) {
        return Err(ApiError::forbidden("admin required"));
    }
    let conn = st.db.lock();
    one_project(&conn, &base, &p)?;
    one_user(&conn, &base, &u)?;
    let roles: Vec<Value> = roles_on(&conn, &u, &p)?
        .into_iter()
        .map(|(id, n)| role_json(&base, &id, &n))
        .collect();
    Ok(Json(
        json!({ "roles": roles, "links": links(&base, &format!("projects/{p}/users/{u}/roles")) }),
    ))
}

async fn list_assignments(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let mut stmt = conn.prepare(
        "SELECT a.user_id, a.project_id, a.role_id, r.name, u.name, p.name FROM role_assignments a \
         JOIN roles r ON r.id = a.role_id JOIN users u ON u.id = a.user_id \
         JOIN projects p ON p.id = a.project_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let include_names = q
        .get("include_names")
        .is_some_and(|v| v != "0" && v != "false");
    let mut out = Vec::new();
    for row in rows {
        let (u, p, r, rname, uname, pname) = row?;
        if !is_self_or_admin(&ctx, &u) {
            continue;
        }
        if q.get("user.id").is_some_and(|w| *w != u)
            || q.get("scope.project.id").is_some_and(|w| *w != p)
            || q.get("role.id").is_some_and(|w| *w != r)
        {
            continue;
        }
        let mut a = json!({
            "user": { "id": u }, "scope": { "project": { "id": p } }, "role": { "id": r },
            "links": { "assignment": format!("{base}/identity/v3/projects/{p}/users/{u}/roles/{r}") }
        });
        if include_names {
            a["user"]["name"] = json!(uname);
            a["scope"]["project"]["name"] = json!(pname);
            a["role"]["name"] = json!(rname);
        }
        out.push(a);
    }
    Ok(Json(
        json!({ "role_assignments": out, "links": links(&base, "role_assignments") }),
    ))
}
