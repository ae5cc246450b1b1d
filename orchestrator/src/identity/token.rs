//! Bearer tokens: random 256-bit secrets; only their SHA-256 is stored, with
//! the user, the project scope, the expiry and the audit chain.
//!
//! As in Keystone, a token got by presenting another token (rescoping) keeps
//! the expiry of the token it came from and joins its audit chain: its
//! `audit_ids` are `[its own id, the chain's id]`, where the chain's id is the
//! audit id of the first token, the one got with a password. Revoking a token
//! revokes every token that came from it. Tokens are also revoked when what
//! they stood for changes: a new password, a disabled or deleted user or
//! project, a removed role assignment ([`revoke_user`], [`revoke_project`],
//! [`revoke_user_on_project`], [`revoke_role`]). Revocation is for good:
//! re-enabling a user does not bring its old tokens back.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngCore;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::model::AuthContext;
use super::store::{self, roles_on};

pub use super::model::TokenRecord;

/// What a new token is got with.
#[derive(Debug, Clone, Copy)]
enum Grant<'a> {
    /// A password: a new chain, valid for this long.
    Password(Duration),
    /// Another (valid) token: same chain and expiry as that one.
    Token(&'a TokenRecord),
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The record of a new token for `user_id` scoped to `project_id`, got with
/// `grant`.
fn new_record(user_id: &str, project_id: &str, grant: Grant<'_>) -> TokenRecord {
    let now = Utc::now();
    let (audit_chain_id, methods, expires_at, expires_unix) = match grant {
        Grant::Password(ttl) => {
            let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
            let expires = now + ttl;
            (
                None,
                vec!["password".to_string()],
                iso(expires),
                expires.timestamp(),
            )
        }
        Grant::Token(parent) => {
            let chain = parent
                .audit_chain_id
                .clone()
                .unwrap_or_else(|| parent.audit_id.clone());
            let mut methods = vec!["token".to_string()];
            methods.extend(parent.methods.iter().filter(|m| *m != "token").cloned());
            (
                Some(chain),
                methods,
                parent.expires_at.clone(),
                parent.expires_unix,
            )
        }
    };
    TokenRecord {
        user_id: user_id.to_string(),
        project_id: project_id.to_string(),
        audit_id: random_hex::<16>(),
        audit_chain_id,
        methods,
        issued_at: iso(now),
        expires_at,
        expires_unix,
    }
}

/// Issues a token for `user_id` scoped to `project_id` ("" = unscoped),
/// got with a password: a new audit chain, valid for `ttl`. Returns the
/// secret and its record.
pub fn issue(
    conn: &Connection,
    user_id: &str,
    project_id: &str,
    ttl: Duration,
) -> rusqlite::Result<(String, TokenRecord)> {
    store(conn, new_record(user_id, project_id, Grant::Password(ttl)))
}

/// Issues a token for the user of `parent` scoped to `project_id` ("" =
/// unscoped), got with the (valid) token `parent`: it expires when `parent`
/// does and joins its audit chain. Returns the secret and its record.
pub fn rescope(
    conn: &Connection,
    parent: &TokenRecord,
    project_id: &str,
) -> rusqlite::Result<(String, TokenRecord)> {
    store(
        conn,
        new_record(&parent.user_id, project_id, Grant::Token(parent)),
    )
}

/// Stores a new token's record under a new secret.
fn store(conn: &Connection, rec: TokenRecord) -> rusqlite::Result<(String, TokenRecord)> {
    let token = format!("nubo{}", random_hex::<32>());
    // Forget long-expired tokens while we are here (cheap with few rows).
    store::forget_tokens_expired_before(conn, Utc::now().timestamp() - 86_400)?;
    store::insert_token(conn, &digest(&token), &rec)?;
    Ok((token, rec))
}

/// The caller behind `token`, if it is known, unexpired, unrevoked, and its
/// user, project and role assignment still exist and are enabled.
pub fn validate(
    conn: &Connection,
    token: &str,
) -> rusqlite::Result<Option<(AuthContext, TokenRecord)>> {
    let row = store::live_token(conn, &digest(token), Utc::now().timestamp())?;
    let Some((rec, user_name)) = row else {
        return Ok(None);
    };
    let (project_name, roles) = if rec.project_id.is_empty() {
        (String::new(), Vec::new())
    } else {
        let name = store::enabled_project_name(conn, &rec.project_id)?;
        let Some(name) = name else { return Ok(None) };
        let roles: Vec<String> = roles_on(conn, &rec.user_id, &rec.project_id)?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        if roles.is_empty() {
            return Ok(None);
        }
        (name, roles)
    };
    Ok(Some((
        AuthContext {
            user_id: rec.user_id.clone(),
            user_name,
            project_id: rec.project_id.clone(),
            project_name,
            roles,
        },
        rec,
    )))
}

/// Revokes `token` and every token got from it (its audit chain, when it
/// is the first of one). Returns whether it was a live token.
pub fn revoke(conn: &Connection, token: &str) -> rusqlite::Result<bool> {
    let audit_id = store::live_token_audit_id(conn, &digest(token))?;
    let Some(audit_id) = audit_id else {
        return Ok(false);
    };
    let n = store::revoke_tokens(conn, store::Revoke::Chain(&audit_id))?;
    tracing::info!(audit_id = %audit_id, tokens = n, "token revoked with its chain");
    Ok(true)
}

/// Revokes every token of `user_id` (a new password, the user disabled or
/// deleted). Returns how many were live.
pub fn revoke_user(conn: &Connection, user_id: &str) -> rusqlite::Result<usize> {
    let n = store::revoke_tokens(conn, store::Revoke::User(user_id))?;
    tracing::info!(user = %user_id, tokens = n, "tokens of the user revoked");
    Ok(n)
}

/// Revokes every token scoped to `project_id` (the project disabled or
/// deleted). Returns how many were live.
pub fn revoke_project(conn: &Connection, project_id: &str) -> rusqlite::Result<usize> {
    let n = store::revoke_tokens(conn, store::Revoke::Project(project_id))?;
    tracing::info!(project = %project_id, tokens = n, "tokens scoped to the project revoked");
    Ok(n)
}

/// Revokes the tokens of `user_id` scoped to `project_id` (a role
/// assignment removed). Returns how many were live.
pub fn revoke_user_on_project(
    conn: &Connection,
    user_id: &str,
    project_id: &str,
) -> rusqlite::Result<usize> {
    let n = store::revoke_tokens(conn, store::Revoke::UserOnProject(user_id, project_id))?;
    tracing::info!(user = %user_id, project = %project_id, tokens = n, "tokens of the user on the project revoked");
    Ok(n)
}

/// Revokes the tokens of every user on every project where they hold
/// `role_id` (the role is about to be deleted). Returns how many were live.
pub fn revoke_role(conn: &Connection, role_id: &str) -> rusqlite::Result<usize> {
    let n = store::revoke_tokens(conn, store::Revoke::Role(role_id))?;
    tracing::info!(role = %role_id, tokens = n, "tokens of the role's holders revoked");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    /// A seeded database, the admin's id and the admin project's id.
    fn seeded() -> (Db, String, String) {
        let db = Db::open_in_memory().expect("db");
        let (admin, project) = {
            let conn = db.lock();
            crate::identity::bootstrap::seed(&conn, "pw").expect("seed");
            let one = |sql: &str| -> String { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
            (
                one("SELECT id FROM users WHERE name='admin'"),
                one("SELECT id FROM projects WHERE name='admin'"),
            )
        };
        (db, admin, project)
    }

    #[test]
    fn issue_validate_revoke_expire() {
        let (db, admin, project) = seeded();
        let conn = db.lock();
        let (tok, _) = issue(&conn, &admin, &project, Duration::from_secs(60)).expect("issue");
        let (ctx, _) = validate(&conn, &tok).expect("query").expect("valid");
        assert!(ctx.is_admin());
        assert_eq!(ctx.project_name, "admin");
        assert!(validate(&conn, "nubo-bogus").expect("query").is_none());
        assert!(revoke(&conn, &tok).expect("revoke"));
        assert!(validate(&conn, &tok).expect("query").is_none());
        let (short, _) = issue(&conn, &admin, &project, Duration::from_secs(0)).expect("issue");
        assert!(validate(&conn, &short).expect("query").is_none(), "expired");
    }

    #[test]
    fn a_rescoped_token_keeps_expiry_and_chain_and_dies_with_its_origin() {
        let (db, admin, _) = seeded();
        let conn = db.lock();
        let (t0, r0) = issue(&conn, &admin, "", Duration::from_secs(60)).expect("issue");
        assert_eq!(r0.audit_ids(), vec![r0.audit_id.as_str()]);
        let (t1, r1) = rescope(&conn, &r0, "").expect("rescope");
        let (t2, r2) = rescope(&conn, &r1, "").expect("rescope");
        for r in [&r1, &r2] {
            assert_eq!(r.expires_at, r0.expires_at);
            assert_eq!(r.expires_unix, r0.expires_unix);
            assert_eq!(
                r.audit_ids(),
                vec![r.audit_id.as_str(), r0.audit_id.as_str()]
            );
            assert_eq!(r.methods, vec!["token", "password"]);
        }
        let (_, v2) = validate(&conn, &t2).expect("query").expect("valid");
        assert_eq!(v2.audit_chain_id.as_deref(), Some(r0.audit_id.as_str()));
        assert_eq!(v2.methods, vec!["token", "password"]);
        // A child's revocation leaves its origin; the origin's takes all.
        assert!(revoke(&conn, &t2).expect("revoke"));
        assert!(validate(&conn, &t0).expect("query").is_some());
        assert!(validate(&conn, &t1).expect("query").is_some());
        assert!(revoke(&conn, &t0).expect("revoke"));
        assert!(validate(&conn, &t1).expect("query").is_none());
        assert!(!revoke(&conn, &t1).expect("revoke"), "already revoked");
    }

    #[test]
    fn revocation_by_user_project_and_role() {
        let (db, admin, project) = seeded();
        let conn = db.lock();
        let role: String = conn
            .query_row("SELECT id FROM roles WHERE name='admin'", [], |r| r.get(0))
            .expect("role");
        let ttl = Duration::from_secs(60);
        let live = |t: &str| validate(&conn, t).expect("query").is_some();
        let (t, _) = issue(&conn, &admin, &project, ttl).expect("issue");
        let (u, _) = issue(&conn, &admin, "", ttl).expect("issue");
        assert_eq!(
            revoke_user_on_project(&conn, &admin, &project).expect("revoke"),
            1
        );
        assert!(!live(&t) && live(&u), "only the token on the project");
        let (t, _) = issue(&conn, &admin, &project, ttl).expect("issue");
        assert_eq!(revoke_project(&conn, &project).expect("revoke"), 1);
        assert!(!live(&t) && live(&u));
        let (t, _) = issue(&conn, &admin, &project, ttl).expect("issue");
        assert_eq!(revoke_role(&conn, &role).expect("revoke"), 1);
        assert!(!live(&t) && live(&u), "unscoped tokens hold no role");
        let (t, _) = issue(&conn, &admin, &project, ttl).expect("issue");
        assert_eq!(revoke_user(&conn, &admin).expect("revoke"), 2);
        assert!(!live(&t) && !live(&u));
    }
}
