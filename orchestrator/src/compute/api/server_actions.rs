//! `POST /v2.1/servers/{id}/action`: stop, start, reboot, console output.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::common::*;
use crate::compute::model::{status, Server};
use crate::compute::service::visible_server;
use crate::compute::{actions, lifecycle, store};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::{AppState, RequestId};

pub(crate) fn conflict(action: &str, s: &Server) -> ApiError {
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
pub(crate) fn strip_console_controls(text: &str) -> String {
    text.chars()
        .filter(|&c| c == '\t' || c == '\n' || !(c < ' ' || c == '\x7f'))
        .collect()
}

pub(crate) async fn server_action(
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
        let vmm = Arc::clone(&st.compute.vmm);
        let sid = id.clone();
        let out = tokio::task::spawn_blocking(move || vmm.console_output(&sid, length))
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
    let by = requester(&ctx, &rid);
    // Sets the transition's state and records the action in one go.
    let now_state = |status: &str, task: &str, action: &str| -> ApiResult<i64> {
        let conn = st.db.lock();
        store::set_transition(&conn, &id, status, task)?;
        Ok(store::record_action(&conn, &id, action, &by)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_loses_control_characters_but_tabs_and_newlines() {
        let raw = "a\x1b[31mred\x1b[0m\x07\x00b\r\n\tc\x7f\x0bd\n";
        assert_eq!(strip_console_controls(raw), "a[31mred[0mb\n\tcd\n");
    }
}
