//! Who may do what, in one place: admin-only calls, the reader role (which
//! may look but not change), and project visibility. Each service words a
//! refusal the way its OpenStack counterpart does, because clients show
//! the message as is; the rules themselves are the same everywhere.

use super::error::{ApiError, ApiResult};
use crate::identity::AuthContext;

/// 403 in Keystone's words unless the caller has the admin role.
pub fn require_admin(ctx: &AuthContext) -> ApiResult<()> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "you are not authorized to perform the requested action (admin required)",
        ))
    }
}

/// 403 in Nova's words (naming the policy `rule`) unless the caller is an
/// admin.
pub fn require_admin_for(ctx: &AuthContext, rule: &str) -> ApiResult<()> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(denied(rule))
    }
}

/// Nova's refusal of the policy `rule`.
pub fn denied(rule: &str) -> ApiError {
    ApiError::forbidden(format!("Policy doesn't allow {rule} to be performed."))
}

/// 403 with `refusal` unless the caller may change things (admin or member;
/// a reader only looks).
pub fn require_member(ctx: &AuthContext, refusal: &str) -> ApiResult<()> {
    if ctx.can_write() {
        Ok(())
    } else {
        Err(ApiError::forbidden(refusal))
    }
}

/// Whether the caller may act on `project`'s things: its own project, or any
/// project for an admin.
pub fn owns_or_admin(ctx: &AuthContext, project: &str) -> bool {
    ctx.is_admin() || ctx.project_id == project
}

/// Whether the caller may act on `user`'s things: itself, or anyone for an
/// admin.
pub fn is_self_or_admin(ctx: &AuthContext, user: &str) -> bool {
    ctx.is_admin() || ctx.user_id == user
}
