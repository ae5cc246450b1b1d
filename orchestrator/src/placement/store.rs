//! Placement's SQL: the `allocations` table and nothing else.

use rusqlite::{params, Connection};

use super::Request;

/// Current usage of every class.
pub fn usage(conn: &Connection) -> rusqlite::Result<Request> {
    conn.query_row(
        "SELECT coalesce(sum(vcpus),0), coalesce(sum(memory_mb),0), coalesce(sum(disk_gb),0) FROM allocations",
        [],
        |r| {
            Ok(Request {
                vcpus: r.get::<_, i64>(0)? as u64,
                memory_mb: r.get::<_, i64>(1)? as u64,
                disk_gb: r.get::<_, i64>(2)? as u64,
            })
        },
    )
}

/// How many allocations there are (one per running server).
pub fn count_allocations(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM allocations", [], |r| r.get(0))
}

/// Whether `consumer` holds an allocation.
pub fn has_claim(conn: &Connection, consumer: &str) -> rusqlite::Result<bool> {
    let existing: i64 = conn.query_row(
        "SELECT count(*) FROM allocations WHERE consumer_id = ?1",
        params![consumer],
        |r| r.get(0),
    )?;
    Ok(existing > 0)
}

/// Records `consumer`'s allocation of `req` (the caller checked it fits).
pub fn insert_claim(conn: &Connection, consumer: &str, req: Request) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO allocations (consumer_id, vcpus, memory_mb, disk_gb) VALUES (?1, ?2, ?3, ?4)",
        params![
            consumer,
            req.vcpus as i64,
            req.memory_mb as i64,
            req.disk_gb as i64
        ],
    )?;
    Ok(())
}

/// Releases `consumer`'s allocation (no-op if it has none).
pub fn release(conn: &Connection, consumer: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM allocations WHERE consumer_id = ?1",
        params![consumer],
    )?;
    Ok(())
}
