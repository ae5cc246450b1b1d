//! Instance actions (Nova's os-instance-actions): what was asked of a server,
//! by whom, under which request id, and how it ended. An action is recorded
//! when the API accepts it and finished when its lifecycle task returns, from
//! the state the task left the server in (ERROR, with its fault, is a
//! failure). The records go with the server row (`lifecycle::delete`).

use std::future::Future;
use std::sync::Arc;

use rusqlite::{params, Connection};

use super::model::status;
use super::Compute;
use crate::util::now_iso;

/// One recorded action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The server it was asked of.
    pub server_id: String,
    /// The API request that asked for it (`x-openstack-request-id`).
    pub request_id: String,
    /// Nova's action name: create, stop, start, reboot.
    pub action: String,
    /// Who asked.
    pub project_id: String,
    /// Who asked.
    pub user_id: String,
    /// When it was accepted.
    pub start_time: String,
    /// When its task ended (None while it runs).
    pub finish_time: Option<String>,
    /// "Success" or "Error" once finished.
    pub result: Option<String>,
    /// Why it failed (the server's fault message).
    pub detail: Option<String>,
}

impl Action {
    /// Nova's event name for the compute-side work of this action.
    pub fn event_name(&self) -> String {
        match self.action.as_str() {
            "create" => "compute__do_build_and_run_instance".into(),
            other => format!("compute_{other}_instance"),
        }
    }
}

/// Who asked for an action, and in which request.
#[derive(Debug, Clone)]
pub struct Requester<'a> {
    /// `x-openstack-request-id` of the request.
    pub request_id: &'a str,
    /// The caller's project.
    pub project_id: &'a str,
    /// The caller.
    pub user_id: &'a str,
}

/// Records `action` on `server_id` as started now; returns its row id.
pub fn record(
    conn: &Connection,
    server_id: &str,
    action: &str,
    by: &Requester<'_>,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO instance_actions (server_id, request_id, action, project_id, user_id, start_time) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![server_id, by.request_id, action, by.project_id, by.user_id, now_iso()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Marks action `row` finished now: a success, or a failure with `error`.
pub fn finish(conn: &Connection, row: i64, error: Option<&str>) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE instance_actions SET finish_time = ?2, result = ?3, detail = ?4 WHERE id = ?1",
        params![
            row,
            now_iso(),
            if error.is_some() { "Error" } else { "Success" },
            error
        ],
    )?;
    Ok(())
}

/// Runs a lifecycle task, then finishes action `row` from the state the
/// task left server `id` in.
pub async fn track(c: Arc<Compute>, row: i64, id: String, task: impl Future<Output = ()>) {
    task.await;
    let conn = c.db.lock();
    let error = match super::store::server(&conn, &id) {
        Ok(Some(s)) if s.status == status::ERROR => Some(fault_message(s.fault.as_deref())),
        Ok(_) => None,
        Err(e) => Some(format!("cannot read the server's state: {e}")),
    };
    if let Err(e) = finish(&conn, row, error.as_deref()) {
        tracing::warn!(server = %id, error = %e, "cannot finish the instance action");
    }
}

/// The message of a stored fault (Nova's `{code, created, message}`).
fn fault_message(fault: Option<&str>) -> String {
    fault
        .and_then(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| "the server went to ERROR".into())
}

/// The actions of `server_id`, newest first.
pub fn list(conn: &Connection, server_id: &str) -> rusqlite::Result<Vec<Action>> {
    let mut stmt = conn.prepare(
        "SELECT server_id, request_id, action, project_id, user_id, start_time, finish_time, \
         result, detail FROM instance_actions WHERE server_id = ?1 ORDER BY id DESC",
    )?;
    let rows = stmt.query_map(params![server_id], |r| {
        Ok(Action {
            server_id: r.get(0)?,
            request_id: r.get(1)?,
            action: r.get(2)?,
            project_id: r.get(3)?,
            user_id: r.get(4)?,
            start_time: r.get(5)?,
            finish_time: r.get(6)?,
            result: r.get(7)?,
            detail: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// Forgets the actions of `server_id` (it was deleted).
pub fn forget(conn: &Connection, server_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM instance_actions WHERE server_id = ?1",
        params![server_id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_finish_list_forget() {
        let db = crate::db::Db::open_in_memory().expect("db");
        let conn = db.lock();
        let by = Requester {
            request_id: "req-1",
            project_id: "p",
            user_id: "u",
        };
        let a = record(&conn, "s1", "create", &by).expect("record");
        let b = record(
            &conn,
            "s1",
            "stop",
            &Requester {
                request_id: "req-2",
                ..by.clone()
            },
        )
        .expect("record");
        record(&conn, "s2", "create", &by).expect("record");
        finish(&conn, a, None).expect("finish");
        finish(&conn, b, Some("No valid host")).expect("finish");
        let l = list(&conn, "s1").expect("list");
        assert_eq!(
            l.iter().map(|x| x.action.as_str()).collect::<Vec<_>>(),
            ["stop", "create"],
            "newest first, only s1's"
        );
        assert_eq!(l[0].result.as_deref(), Some("Error"));
        assert_eq!(l[0].detail.as_deref(), Some("No valid host"));
        assert_eq!(l[1].result.as_deref(), Some("Success"));
        assert!(l[1].finish_time.is_some());
        assert_eq!(l[1].event_name(), "compute__do_build_and_run_instance");
        assert_eq!(l[0].event_name(), "compute_stop_instance");
        assert_eq!(
            fault_message(Some(r#"{"code":500,"message":"No valid host"}"#)),
            "No valid host"
        );
        assert_eq!(fault_message(None), "the server went to ERROR");
        forget(&conn, "s1").expect("forget");
        assert!(list(&conn, "s1").expect("list").is_empty());
        assert_eq!(list(&conn, "s2").expect("list").len(), 1);
    }
}
