//! Dropping root: after the VMM has opened /dev/kvm and bound its sockets,
//! it can go on as an unprivileged user and group (`--user`, `--group`).

use std::ffi::CString;

/// Errors of dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user or group.
    #[error("unknown {kind} '{name}'")]
    Unknown {
        /// "user" or "group".
        kind: &'static str,
        /// What was given.
        name: String,
    },
    /// A set*id call failed.
    #[error("cannot {what}: {source}")]
    Set {
        /// Which call.
        what: &'static str,
        /// The errno.
        source: std::io::Error,
    },
}

/// A user id from a number or a name.
pub fn resolve_user(name: &str) -> Result<libc::uid_t, PrivilegeError> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    let unknown = || PrivilegeError::Unknown {
        kind: "user",
        name: name.to_string(),
    };
    let c = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: getpwnam reads a NUL-terminated name; the result points into
    // static storage that we read at once, before any other getpw* call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(unknown());
    }
    // SAFETY: pw is non-null and valid until the next getpw* call.
    Ok(unsafe { (*pw).pw_uid })
}

/// A group id from a number or a name.
pub fn resolve_group(name: &str) -> Result<libc::gid_t, PrivilegeError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let unknown = || PrivilegeError::Unknown {
        kind: "group",
        name: name.to_string(),
    };
    let c = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: as in resolve_user, for the group database.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(unknown());
    }
    // SAFETY: gr is non-null and valid until the next getgr* call.
    Ok(unsafe { (*gr).gr_gid })
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), PrivilegeError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Set {
            what,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Drops supplementary groups, then switches group and user for every
/// thread of the process (glibc's set*id apply process-wide).
pub fn drop_to(uid: Option<libc::uid_t>, gid: Option<libc::gid_t>) -> Result<(), PrivilegeError> {
    if let Some(gid) = gid {
        // SAFETY: setgroups with an empty list and setgid take no pointers we own.
        check("drop supplementary groups", unsafe {
            libc::setgroups(0, std::ptr::null())
        })?;
        // SAFETY: plain system call.
        check("set the group id", unsafe { libc::setgid(gid) })?;
    }
    if let Some(uid) = uid {
        // SAFETY: plain system call.
        check("set the user id", unsafe { libc::setuid(uid) })?;
    }
    tracing::info!(?uid, ?gid, "dropped privileges");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_numbers_and_names() {
        assert_eq!(resolve_user("0").unwrap(), 0);
        assert_eq!(resolve_user("root").unwrap(), 0);
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert!(resolve_user("no-such-user-nubo").is_err());
        assert!(resolve_group("no\\0such").is_err());
    }
}
