//! The Image service's SQL: the `images` table and nothing else.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::files::StoredImage;
use super::model::Image;
use crate::util::now_iso;

const COLUMNS: &str = "id, name, owner, status, visibility, protected, os_hidden, disk_format, \
     container_format, size, virtual_size, checksum, os_hash_algo, os_hash_value, min_disk, \
     min_ram, properties, tags, created_at, updated_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Image> {
    let props: String = r.get(16)?;
    let tags: String = r.get(17)?;
    Ok(Image {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        status: r.get(3)?,
        visibility: r.get(4)?,
        protected: r.get(5)?,
        os_hidden: r.get(6)?,
        disk_format: r.get(7)?,
        container_format: r.get(8)?,
        size: r.get(9)?,
        virtual_size: r.get(10)?,
        checksum: r.get(11)?,
        os_hash_algo: r.get(12)?,
        os_hash_value: r.get(13)?,
        min_disk: r.get(14)?,
        min_ram: r.get(15)?,
        properties: serde_json::from_str(&props).unwrap_or_default(),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        created_at: r.get(18)?,
        updated_at: r.get(19)?,
    })
}

/// The image `id`, whatever its visibility.
pub(crate) fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Image>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM images WHERE id = ?1"),
        params![id],
        from_row,
    )
    .optional()
}

/// Adds a new image row.
pub(crate) fn insert(conn: &Connection, img: &Image) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO images ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ),
        params![
            img.id,
            img.name,
            img.owner,
            img.status,
            img.visibility,
            img.protected,
            img.os_hidden,
            img.disk_format,
            img.container_format,
            img.size,
            img.virtual_size,
            img.checksum,
            img.os_hash_algo,
            img.os_hash_value,
            img.min_disk,
            img.min_ram,
            Value::Object(img.properties.clone()).to_string(),
            json!(img.tags).to_string(),
            img.created_at,
            img.updated_at,
        ],
    )?;
    Ok(())
}

/// Writes the user-changeable fields of `img` (not status or data fields,
/// which only the upload changes). Returns whether the row still exists.
pub(crate) fn save_meta(conn: &Connection, img: &Image) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE images SET name = ?2, owner = ?3, visibility = ?4, protected = ?5, \
         os_hidden = ?6, disk_format = ?7, container_format = ?8, min_disk = ?9, min_ram = ?10, \
         properties = ?11, tags = ?12, updated_at = ?13 WHERE id = ?1",
        params![
            img.id,
            img.name,
            img.owner,
            img.visibility,
            img.protected,
            img.os_hidden,
            img.disk_format,
            img.container_format,
            img.min_disk,
            img.min_ram,
            Value::Object(img.properties.clone()).to_string(),
            json!(img.tags).to_string(),
            img.updated_at,
        ],
    )?;
    Ok(n == 1)
}

/// Every image row.
pub(crate) fn list_all(conn: &Connection) -> rusqlite::Result<Vec<Image>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM images"))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

/// Removes the image row.
pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM images WHERE id = ?1", params![id])?;
    Ok(())
}

/// `queued` → `saving`; false if the image was not queued any more.
pub fn start_saving(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE images SET status = 'saving', updated_at = ?2 WHERE id = ?1 AND status = 'queued'",
        params![id, now_iso()],
    )?;
    Ok(n == 1)
}

/// `saving` → `active` with the uploaded data's size and hashes; false if
/// the image is gone (or no longer saving).
pub fn activate(conn: &Connection, id: &str, stored: &StoredImage) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE images SET status = 'active', size = ?2, virtual_size = ?3, \
         checksum = ?4, os_hash_algo = 'sha512', os_hash_value = ?5, updated_at = ?6 \
         WHERE id = ?1 AND status = 'saving'",
        params![
            id,
            stored.size as i64,
            stored.virtual_size.map(|v| v as i64),
            stored.md5,
            stored.sha512,
            now_iso()
        ],
    )?;
    Ok(n == 1)
}

/// `saving` → `killed` (if still saving).
pub fn kill(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE images SET status = 'killed', updated_at = ?2 WHERE id = ?1 AND status = 'saving'",
        params![id, now_iso()],
    )?;
    Ok(())
}

/// After a restart: every upload that was running (`saving`) becomes
/// `killed`. Returns how many.
pub fn kill_interrupted_uploads(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE images SET status = 'killed', updated_at = ?1 WHERE status = 'saving'",
        [now_iso()],
    )
}

/// Whether an active image `id` exists.
pub fn is_active(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM images WHERE id = ?1 AND status = 'active'",
        [id],
        |r| r.get(0),
    )
}
