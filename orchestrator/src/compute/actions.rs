//! Instance actions (Nova's os-instance-actions): what was asked of a server,
//! by whom, under which request id, and how it ended. An action is recorded
//! when the API accepts it and finished when its lifecycle task returns, from
//! the state the task left the server in (ERROR, with its fault, is a
//! failure). The records go with the server row (`lifecycle::delete`).

use std::future::Future;
use std::sync::Arc;

use super::model::status;
use super::store::finish_action;
use super::Compute;

pub use super::model::{Action, Requester};

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
    if let Err(e) = finish_action(&conn, row, error.as_deref()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::store::{
        finish_action as finish, forget_actions as forget, list_actions as list,
        record_action as record,
    };

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
