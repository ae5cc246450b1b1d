//! Small helpers shared by the services: ids and timestamps.

use chrono::{SecondsFormat, Utc};

/// A new random id in OpenStack's usual form (a UUID4 with dashes).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new random id without dashes (Keystone's style for users, projects, roles).
pub fn new_hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Now as `2026-11-29T21:00:00Z` (Nova and Glance timestamps).
pub fn now_iso() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Now as `2026-11-29T21:00:00.000000Z` (Keystone token timestamps).
pub fn now_iso_micros() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whether `s` holds a control character (Unicode category Cc: C0, DEL,
/// C1), which no name may hold (Nova's and Keystone's name schemas refuse
/// them too): they would reach terminals and logs raw.
pub fn has_control_chars(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Whether `s` looks like an id we generate (hex digits and dashes only), so
/// it can never be a path or a pattern.
pub fn is_plain_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}
