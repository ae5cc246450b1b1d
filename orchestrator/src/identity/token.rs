//! Bearer tokens: random 256-bit secrets; only their SHA-256 is stored, with
//! the user, the project scope and the expiry.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{roles_on, AuthContext};

/// A token as stored: what it was issued for and until when.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// User id.
    pub user_id: String,
    /// Project id ("" when unscoped).
    pub project_id: String,
    /// Keystone's audit id (identifies the token in logs without revealing it).
    pub audit_id: String,
    /// Issue time, `…T…​.ffffffZ`.
    pub issued_at: String,
    /// Expiry time, `…T….ffffffZ`.
    pub expires_at: String,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Issues a token for `user_id` scoped to `project_id` ("" = unscoped),
/// valid for `ttl`. Returns the secret and its record.
pub fn issue(
    conn: &Connection,
    user_id: &str,
    project_id: &str,
    ttl: Duration,
) -> rusqlite::Result<(String, TokenRecord)> {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = format!("nubo{}", hex::encode(secret));
    let mut audit = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut audit);
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
    let expires = now + ttl;
    let rec = TokenRecord {
        user_id: user_id.to_string(),
        project_id: project_id.to_string(),
        audit_id: hex::encode(audit),
        issued_at: now.to_rfc3339_opts(SecondsFormat::Micros, true),
        expires_at: expires.to_rfc3339_opts(SecondsFormat::Micros, true),
    };
    // Forget long-expired tokens while we are here (cheap with few rows).
    conn.execute(
        "DELETE FROM tokens WHERE expires_unix < ?1",
        params![now.timestamp() - 86_400],
    )?;
    conn.execute(
        "INSERT INTO tokens (hash, user_id, project_id, audit_id, issued_at, expires_at, expires_unix) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            digest(&token),
            rec.user_id,
            rec.project_id,
            rec.audit_id,
            rec.issued_at,
            rec.expires_at,
            expires.timestamp()
        ],
    )?;
    Ok((token, rec))
}

/// The caller behind `token`, if it is known, unexpired, unrevoked, and its
/// user, project and role assignment still exist and are enabled.
pub fn validate(
    conn: &Connection,
    token: &str,
) -> rusqlite::Result<Option<(AuthContext, TokenRecord)>> {
    let row = conn
        .query_row(
            "SELECT t.user_id, t.project_id, t.audit_id, t.issued_at, t.expires_at, u.name \
             FROM tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.hash = ?1 AND t.revoked = 0 AND t.expires_unix > ?2 AND u.enabled = 1",
            params![digest(token), Utc::now().timestamp()],
            |r| {
                Ok((
                    TokenRecord {
                        user_id: r.get(0)?,
                        project_id: r.get(1)?,
                        audit_id: r.get(2)?,
                        issued_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    },
                    r.get::<_, String>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((rec, user_name)) = row else {
        return Ok(None);
    };
    let (project_name, roles) = if rec.project_id.is_empty() {
        (String::new(), Vec::new())
    } else {
        let name: Option<String> = conn
            .query_row(
                "SELECT name FROM projects WHERE id = ?1 AND enabled = 1",
                params![rec.project_id],
                |r| r.get(0),
            )
            .optional()?;
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

/// Revokes `token`. Returns whether it was a live token.
pub fn revoke(conn: &Connection, token: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "UPDATE tokens SET revoked = 1 WHERE hash = ?1 AND revoked = 0",
        params![digest(token)],
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn issue_validate_revoke_expire() {
        let db = Db::open_in_memory().expect("db");
        let conn = db.lock();
        crate::identity::bootstrap::seed(&conn, "pw").expect("seed");
        let admin: String = conn
            .query_row("SELECT id FROM users WHERE name='admin'", [], |r| r.get(0))
            .expect("admin");
        let project: String = conn
            .query_row("SELECT id FROM projects WHERE name='admin'", [], |r| {
                r.get(0)
            })
            .expect("project");
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
}
