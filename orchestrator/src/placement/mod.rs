//! Placement with overcommit: the host's inventory of vCPUs, memory and disk,
//! capacity = (total − reserved) × allocation ratio, and allocations claimed
//! atomically (one SQLite transaction checks usage and inserts the claim, so
//! concurrent creates cannot both take the last slot). Shared by the
//! services: compute claims VCPU, MEMORY_MB and DISK_GB for servers; a
//! volume service claims DISK_GB the same way. Its SQL (the `allocations`
//! table) is in [`store`].

pub mod store;

use rusqlite::{Connection, TransactionBehavior};

use crate::config::Overcommit;

/// What the host has, before ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inventory {
    /// Host CPUs.
    pub vcpus: u64,
    /// Host memory in MiB.
    pub memory_mb: u64,
    /// Disk of the state directory's filesystem in GiB.
    pub disk_gb: u64,
}

impl Inventory {
    /// Reads this host's CPUs, memory (`/proc/meminfo`) and the disk size of
    /// the filesystem holding `state_dir`.
    pub fn of_host(state_dir: &std::path::Path) -> Inventory {
        let vcpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb / 1024)
            .unwrap_or(0);
        let disk_gb = fs_gb(state_dir).map(|f| f.total).unwrap_or(0);
        Inventory {
            vcpus,
            memory_mb,
            disk_gb,
        }
    }
}

/// Size and free space (for unprivileged users) of a filesystem, in GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FsGb {
    /// Whole filesystem.
    pub total: u64,
    /// Available to unprivileged users.
    pub free: u64,
}

/// [`FsGb`] of the filesystem holding `path`.
pub fn fs_gb(path: &std::path::Path) -> Option<FsGb> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly
    // sized, writable statvfs that the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the pointers are valid for the duration of the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let gb = |blocks: u64| blocks.saturating_mul(st.f_frsize as u64) >> 30;
    Some(FsGb {
        total: gb(st.f_blocks as u64),
        free: gb(st.f_bavail as u64),
    })
}

/// Capacity per resource class after reservations and ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// vCPUs that may be allocated.
    pub vcpus: u64,
    /// MiB that may be allocated.
    pub memory_mb: u64,
    /// GiB that may be allocated.
    pub disk_gb: u64,
}

/// Placement's formula: `(total − reserved) × ratio`, rounded down.
pub fn capacity(inv: &Inventory, oc: &Overcommit) -> Capacity {
    let f = |total: u64, reserved: u64, ratio: f64| {
        ((total.saturating_sub(reserved)) as f64 * ratio).floor() as u64
    };
    Capacity {
        vcpus: f(inv.vcpus, 0, oc.cpu_allocation_ratio),
        memory_mb: f(
            inv.memory_mb,
            oc.reserved_host_memory_mb,
            oc.ram_allocation_ratio,
        ),
        disk_gb: f(inv.disk_gb, 0, oc.disk_allocation_ratio),
    }
}

/// What one server asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// vCPUs.
    pub vcpus: u64,
    /// MiB.
    pub memory_mb: u64,
    /// GiB.
    pub disk_gb: u64,
}

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Not enough capacity left (Nova's message).
    #[error("No valid host was found. There are not enough hosts available. ({0})")]
    NoValidHost(String),
    /// SQLite failed.
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Claims `req` for `consumer` if it fits; idempotent for the same consumer.
pub fn claim(
    conn: &mut Connection,
    consumer: &str,
    req: Request,
    cap: Capacity,
) -> Result<(), ClaimError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if store::has_claim(&tx, consumer)? {
        return Ok(());
    }
    let used = store::usage(&tx)?;
    let mut short = Vec::new();
    if used.vcpus + req.vcpus > cap.vcpus {
        short.push(format!(
            "VCPU: {} used + {} requested > {} capacity",
            used.vcpus, req.vcpus, cap.vcpus
        ));
    }
    if used.memory_mb + req.memory_mb > cap.memory_mb {
        short.push(format!(
            "MEMORY_MB: {} used + {} requested > {} capacity",
            used.memory_mb, req.memory_mb, cap.memory_mb
        ));
    }
    if used.disk_gb + req.disk_gb > cap.disk_gb {
        short.push(format!(
            "DISK_GB: {} used + {} requested > {} capacity",
            used.disk_gb, req.disk_gb, cap.disk_gb
        ));
    }
    if !short.is_empty() {
        return Err(ClaimError::NoValidHost(short.join("; ")));
    }
    store::insert_claim(&tx, consumer, req)?;
    tx.commit()?;
    Ok(())
}

pub use store::{release, usage};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn capacity_follows_placement() {
        let inv = Inventory {
            vcpus: 2,
            memory_mb: 24_000,
            disk_gb: 100,
        };
        let cap = capacity(&inv, &Overcommit::default());
        assert_eq!(
            cap,
            Capacity {
                vcpus: 8,
                memory_mb: 23_488,
                disk_gb: 100
            }
        );
        let oc = Overcommit {
            ram_allocation_ratio: 1.5,
            ..Overcommit::default()
        };
        assert_eq!(capacity(&inv, &oc).memory_mb, 35_232);
    }

    #[test]
    fn claims_until_full_then_refuses_and_release_frees() {
        let db = Db::open_in_memory().expect("db");
        let mut conn = db.lock();
        let cap = Capacity {
            vcpus: 4,
            memory_mb: 1024,
            disk_gb: 10,
        };
        let req = Request {
            vcpus: 2,
            memory_mb: 512,
            disk_gb: 1,
        };
        claim(&mut conn, "a", req, cap).expect("a fits");
        claim(&mut conn, "a", req, cap).expect("idempotent");
        claim(&mut conn, "b", req, cap).expect("b fits");
        let err = claim(&mut conn, "c", req, cap).expect_err("full");
        assert!(
            err.to_string().starts_with("No valid host was found"),
            "{err}"
        );
        assert!(err.to_string().contains("VCPU"), "{err}");
        release(&conn, "a").expect("release");
        claim(&mut conn, "c", req, cap).expect("c fits after release");
        assert_eq!(
            usage(&conn).expect("usage"),
            Request {
                vcpus: 4,
                memory_mb: 1024,
                disk_gb: 2
            }
        );
    }
}
