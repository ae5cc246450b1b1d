//! The Block Storage service's SQL: the `volume_types`, `volumes`,
//! `volume_snapshots`, `volume_attachments` and `volume_messages` tables.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::attachments::{Attachment, AttachmentStatus};
use super::model::{AttachmentView, Snapshot, Volume, VolumeType};
use crate::host::storage::VolumeTarget;

fn map_of(s: Option<String>) -> BTreeMap<String, String> {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn text_of(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_string())
}

// ---- volume types ----

const TYPE_COLS: &str = "id, name, description, is_public, extra_specs";

fn type_of(r: &Row) -> rusqlite::Result<VolumeType> {
    Ok(VolumeType {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        is_public: r.get(3)?,
        extra_specs: map_of(r.get(4)?),
    })
}

/// Adds a volume type.
pub fn insert_type(conn: &Connection, t: &VolumeType) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO volume_types (id, name, description, is_public, extra_specs, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            t.id,
            t.name,
            t.description,
            t.is_public,
            text_of(&t.extra_specs),
            crate::util::now_iso()
        ],
    )?;
    Ok(())
}

/// The type with this id, or else this name.
pub fn find_type(conn: &Connection, id_or_name: &str) -> rusqlite::Result<Option<VolumeType>> {
    conn.query_row(
        &format!("SELECT {TYPE_COLS} FROM volume_types WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"),
        params![id_or_name],
        type_of,
    )
    .optional()
}

/// Every type (the private ones too with `all`), by name.
pub fn list_types(conn: &Connection, all: bool) -> rusqlite::Result<Vec<VolumeType>> {
    let mut st = conn.prepare(&format!(
        "SELECT {TYPE_COLS} FROM volume_types WHERE is_public = 1 OR ?1 ORDER BY name"
    ))?;
    let rows = st.query_map(params![all], type_of)?;
    rows.collect()
}

/// Replaces a type's name, description, visibility and extra specs.
pub fn update_type(conn: &Connection, t: &VolumeType) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE volume_types SET name = ?2, description = ?3, is_public = ?4, extra_specs = ?5 \
         WHERE id = ?1",
        params![
            t.id,
            t.name,
            t.description,
            t.is_public,
            text_of(&t.extra_specs)
        ],
    )?;
    Ok(())
}

/// Removes a type.
pub fn delete_type(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM volume_types WHERE id = ?1", params![id])?;
    Ok(())
}

/// Whether any volume has this type.
pub fn type_in_use(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM volumes WHERE volume_type_id = ?1)",
        params![id],
        |r| r.get(0),
    )
}

// ---- volumes ----

const VOL_COLS: &str = "id, project_id, user_id, name, description, size, status, \
    volume_type_id, backend, bootable, multiattach, metadata, image_metadata, snapshot_id, \
    source_volid, created_at, updated_at";

fn volume_of(r: &Row) -> rusqlite::Result<Volume> {
    Ok(Volume {
        id: r.get(0)?,
        project_id: r.get(1)?,
        user_id: r.get(2)?,
        name: r.get(3)?,
        description: r.get(4)?,
        size: r.get(5)?,
        status: r.get(6)?,
        volume_type_id: r.get(7)?,
        backend: r.get(8)?,
        bootable: r.get(9)?,
        multiattach: r.get(10)?,
        metadata: map_of(r.get(11)?),
        image_metadata: r.get::<_, Option<String>>(12)?.map(|s| map_of(Some(s))),
        snapshot_id: r.get(13)?,
        source_volid: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
    })
}

/// Adds a volume row.
pub fn insert_volume(conn: &Connection, v: &Volume) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT INTO volumes ({VOL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
        params![
            v.id,
            v.project_id,
            v.user_id,
            v.name,
            v.description,
            v.size,
            v.status,
            v.volume_type_id,
            v.backend,
            v.bootable,
            v.multiattach,
            text_of(&v.metadata),
            v.image_metadata.as_ref().map(text_of),
            v.snapshot_id,
            v.source_volid,
            v.created_at,
            v.updated_at
        ],
    )?;
    Ok(())
}

/// The volume `id`.
pub fn find_volume(conn: &Connection, id: &str) -> rusqlite::Result<Option<Volume>> {
    conn.query_row(
        &format!("SELECT {VOL_COLS} FROM volumes WHERE id = ?1"),
        params![id],
        volume_of,
    )
    .optional()
}

/// What a volume list asks for.
#[derive(Debug, Default, Clone)]
pub struct VolumeFilter {
    /// Only this project's (`None`: every project's).
    pub project_id: Option<String>,
    /// Only with this name.
    pub name: Option<String>,
    /// Only with this status.
    pub status: Option<String>,
    /// Only those after this volume (newest first).
    pub marker: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// Volumes matching `f`, newest first. `None` when the marker is unknown.
pub fn list_volumes(conn: &Connection, f: &VolumeFilter) -> rusqlite::Result<Option<Vec<Volume>>> {
    let marker_rowid: Option<i64> = match &f.marker {
        Some(m) => {
            let found = conn
                .query_row("SELECT rowid FROM volumes WHERE id = ?1", params![m], |r| {
                    r.get(0)
                })
                .optional()?;
            match found {
                Some(r) => Some(r),
                None => return Ok(None),
            }
        }
        None => None,
    };
    let limit = f.limit.map(|l| l as i64).unwrap_or(-1);
    let mut st = conn.prepare(&format!(
        "SELECT {VOL_COLS} FROM volumes WHERE (?1 IS NULL OR project_id = ?1) \
         AND (?2 IS NULL OR name = ?2) AND (?3 IS NULL OR status = ?3) \
         AND (?4 IS NULL OR rowid < ?4) ORDER BY rowid DESC LIMIT ?5"
    ))?;
    let rows = st.query_map(
        params![f.project_id, f.name, f.status, marker_rowid, limit],
        volume_of,
    )?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map(Some)
}

/// Sets a volume's status.
pub fn set_status(conn: &Connection, id: &str, status: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE volumes SET status = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, status, crate::util::now_iso()],
    )?;
    Ok(())
}

/// Sets a volume's status to `to` if it is one of `from`; whether it was.
pub fn move_status(conn: &Connection, id: &str, from: &[&str], to: &str) -> rusqlite::Result<bool> {
    let Some(v) = find_volume(conn, id)? else {
        return Ok(false);
    };
    if !from.contains(&v.status.as_str()) {
        return Ok(false);
    }
    set_status(conn, id, to)?;
    Ok(true)
}

/// Saves a volume's name, description, size, bootable flag, metadata and
/// image metadata.
pub fn update_volume(conn: &Connection, v: &Volume) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE volumes SET name = ?2, description = ?3, size = ?4, bootable = ?5, \
         metadata = ?6, image_metadata = ?7, updated_at = ?8 WHERE id = ?1",
        params![
            v.id,
            v.name,
            v.description,
            v.size,
            v.bootable,
            text_of(&v.metadata),
            v.image_metadata.as_ref().map(text_of),
            crate::util::now_iso()
        ],
    )?;
    Ok(())
}

/// Removes a volume row (its attachments go with it).
pub fn delete_volume(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM volumes WHERE id = ?1", params![id])?;
    Ok(())
}

/// Volumes in one of `statuses` (for the reconcile at startup).
pub fn volumes_in(conn: &Connection, statuses: &[&str]) -> rusqlite::Result<Vec<Volume>> {
    let mut st = conn.prepare(&format!("SELECT {VOL_COLS} FROM volumes ORDER BY rowid"))?;
    let rows = st.query_map([], volume_of)?;
    let all = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(all
        .into_iter()
        .filter(|v| statuses.contains(&v.status.as_str()))
        .collect())
}

/// What a project uses: (volumes, GiB of volumes and snapshots, snapshots).
pub fn usage(conn: &Connection, project: &str) -> rusqlite::Result<(i64, i64, i64)> {
    let (vols, vgib): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM volumes WHERE project_id = ?1",
        params![project],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (snaps, sgib): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM volume_snapshots WHERE project_id = ?1",
        params![project],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((vols, vgib + sgib, snaps))
}

/// Whether a project still has volumes or snapshots.
pub fn project_has_volumes(conn: &Connection, project: &str) -> rusqlite::Result<bool> {
    let (v, _, s) = usage(conn, project)?;
    Ok(v + s > 0)
}

// ---- snapshots ----

const SNAP_COLS: &str = "id, project_id, user_id, volume_id, name, description, size, status, \
    metadata, created_at, updated_at";

fn snapshot_of(r: &Row) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot {
        id: r.get(0)?,
        project_id: r.get(1)?,
        user_id: r.get(2)?,
        volume_id: r.get(3)?,
        name: r.get(4)?,
        description: r.get(5)?,
        size: r.get(6)?,
        status: r.get(7)?,
        metadata: map_of(r.get(8)?),
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

/// Adds a snapshot row.
pub fn insert_snapshot(conn: &Connection, s: &Snapshot) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT INTO volume_snapshots ({SNAP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            s.id,
            s.project_id,
            s.user_id,
            s.volume_id,
            s.name,
            s.description,
            s.size,
            s.status,
            text_of(&s.metadata),
            s.created_at,
            s.updated_at
        ],
    )?;
    Ok(())
}

/// The snapshot `id`.
pub fn find_snapshot(conn: &Connection, id: &str) -> rusqlite::Result<Option<Snapshot>> {
    conn.query_row(
        &format!("SELECT {SNAP_COLS} FROM volume_snapshots WHERE id = ?1"),
        params![id],
        snapshot_of,
    )
    .optional()
}

/// Snapshots of a project (`None`: all), newest first, optionally by name
/// or status, after `marker`, at most `limit`. `None` for an unknown marker.
pub fn list_snapshots(
    conn: &Connection,
    project: Option<&str>,
    name: Option<&str>,
    status: Option<&str>,
    marker: Option<&str>,
    limit: Option<usize>,
) -> rusqlite::Result<Option<Vec<Snapshot>>> {
    let marker_rowid: Option<i64> = match marker {
        Some(m) => match conn
            .query_row(
                "SELECT rowid FROM volume_snapshots WHERE id = ?1",
                params![m],
                |r| r.get(0),
            )
            .optional()?
        {
            Some(r) => Some(r),
            None => return Ok(None),
        },
        None => None,
    };
    let limit = limit.map(|l| l as i64).unwrap_or(-1);
    let mut st = conn.prepare(&format!(
        "SELECT {SNAP_COLS} FROM volume_snapshots WHERE (?1 IS NULL OR project_id = ?1) \
         AND (?2 IS NULL OR name = ?2) AND (?3 IS NULL OR status = ?3) \
         AND (?4 IS NULL OR rowid < ?4) ORDER BY rowid DESC LIMIT ?5"
    ))?;
    let rows = st.query_map(
        params![project, name, status, marker_rowid, limit],
        snapshot_of,
    )?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map(Some)
}

/// How many snapshots a volume has.
pub fn snapshot_count(conn: &Connection, volume_id: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM volume_snapshots WHERE volume_id = ?1",
        params![volume_id],
        |r| r.get(0),
    )
}

/// Sets a snapshot's status.
pub fn set_snapshot_status(conn: &Connection, id: &str, status: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE volume_snapshots SET status = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, status, crate::util::now_iso()],
    )?;
    Ok(())
}

/// Saves a snapshot's name, description and metadata.
pub fn update_snapshot(conn: &Connection, s: &Snapshot) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE volume_snapshots SET name = ?2, description = ?3, metadata = ?4, updated_at = ?5 \
         WHERE id = ?1",
        params![
            s.id,
            s.name,
            s.description,
            text_of(&s.metadata),
            crate::util::now_iso()
        ],
    )?;
    Ok(())
}

/// Removes a snapshot row.
pub fn delete_snapshot(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM volume_snapshots WHERE id = ?1", params![id])?;
    Ok(())
}

/// Snapshots in one of `statuses` (for the reconcile at startup).
pub fn snapshots_in(conn: &Connection, statuses: &[&str]) -> rusqlite::Result<Vec<Snapshot>> {
    let all = list_snapshots(conn, None, None, None, None, None)?.unwrap_or_default();
    Ok(all
        .into_iter()
        .filter(|s| statuses.contains(&s.status.as_str()))
        .collect())
}

// ---- attachments ----

const ATT_COLS: &str = "id, volume_id, server_id, device, status, delete_on_termination, \
    boot_index, attached_at";

fn status_name(s: AttachmentStatus) -> &'static str {
    match s {
        AttachmentStatus::Reserved => "reserved",
        AttachmentStatus::Attached => "attached",
        AttachmentStatus::Detaching => "detaching",
    }
}

fn status_from(s: &str) -> AttachmentStatus {
    match s {
        "attached" => AttachmentStatus::Attached,
        "detaching" => AttachmentStatus::Detaching,
        _ => AttachmentStatus::Reserved,
    }
}

/// An attachment row, without its target (the driver's).
pub struct AttachmentRow {
    /// The attachment, its target empty.
    pub attachment: Attachment,
    /// When it was attached.
    pub attached_at: Option<String>,
}

fn attachment_of(r: &Row) -> rusqlite::Result<AttachmentRow> {
    let volume_id: String = r.get(1)?;
    let status: String = r.get(4)?;
    Ok(AttachmentRow {
        attachment: Attachment {
            id: r.get(0)?,
            serial: super::attachments::serial_of(&volume_id),
            volume_id,
            server_id: r.get(2)?,
            device: r.get(3)?,
            status: status_from(&status),
            delete_on_termination: r.get(5)?,
            boot_index: r.get(6)?,
            target: VolumeTarget {
                path: Default::default(),
                format: Default::default(),
                backing: Vec::new(),
            },
        },
        attached_at: r.get(7)?,
    })
}

/// Adds an attachment row.
pub fn insert_attachment(conn: &Connection, a: &Attachment) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO volume_attachments (id, volume_id, server_id, device, status, \
         delete_on_termination, boot_index) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            a.id,
            a.volume_id,
            a.server_id,
            a.device,
            status_name(a.status),
            a.delete_on_termination,
            a.boot_index
        ],
    )?;
    Ok(())
}

/// The attachment `id`.
pub fn find_attachment(conn: &Connection, id: &str) -> rusqlite::Result<Option<AttachmentRow>> {
    conn.query_row(
        &format!("SELECT {ATT_COLS} FROM volume_attachments WHERE id = ?1"),
        params![id],
        attachment_of,
    )
    .optional()
}

/// A volume's attachments, in attach order.
pub fn attachments_of_volume(
    conn: &Connection,
    volume_id: &str,
) -> rusqlite::Result<Vec<AttachmentRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {ATT_COLS} FROM volume_attachments WHERE volume_id = ?1 ORDER BY seq"
    ))?;
    let rows = st.query_map(params![volume_id], attachment_of)?;
    rows.collect()
}

/// A server's attachments: the root volume first, then in attach order.
pub fn attachments_of_server(
    conn: &Connection,
    server_id: &str,
) -> rusqlite::Result<Vec<AttachmentRow>> {
    let mut st = conn.prepare(&format!(
        "SELECT {ATT_COLS} FROM volume_attachments WHERE server_id = ?1 \
         ORDER BY boot_index IS NULL, boot_index, seq"
    ))?;
    let rows = st.query_map(params![server_id], attachment_of)?;
    rows.collect()
}

/// Sets an attachment's status (and its attach time when it becomes attached).
pub fn set_attachment_status(
    conn: &Connection,
    id: &str,
    status: AttachmentStatus,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE volume_attachments SET status = ?2, \
         attached_at = CASE WHEN ?2 = 'attached' AND attached_at IS NULL THEN ?3 ELSE attached_at END \
         WHERE id = ?1",
        params![id, status_name(status), crate::util::now_iso()],
    )?;
    Ok(())
}

/// Removes an attachment row.
pub fn delete_attachment(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM volume_attachments WHERE id = ?1", params![id])?;
    Ok(())
}

/// The attached attachments of a volume, as the volume shows them.
pub fn attachment_views(
    conn: &Connection,
    volume_id: &str,
) -> rusqlite::Result<Vec<AttachmentView>> {
    Ok(attachments_of_volume(conn, volume_id)?
        .into_iter()
        .filter(|a| a.attachment.status != AttachmentStatus::Reserved)
        .map(|a| AttachmentView {
            id: a.attachment.id,
            server_id: a.attachment.server_id,
            device: a.attachment.device,
            attached_at: a.attached_at,
        })
        .collect())
}

// ---- messages ----

/// Records a user-visible message about a resource.
pub fn add_message(
    conn: &Connection,
    project: &str,
    resource_type: &str,
    resource_id: &str,
    message: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO volume_messages (id, project_id, resource_type, resource_id, message, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            crate::util::new_id(),
            project,
            resource_type,
            resource_id,
            message,
            crate::util::now_iso()
        ],
    )?;
    Ok(())
}

/// One message: (id, resource type, resource id, text, time).
pub type MessageRow = (String, String, String, String, String);

/// A project's messages (`None`: all), newest first.
pub fn messages(conn: &Connection, project: Option<&str>) -> rusqlite::Result<Vec<MessageRow>> {
    let mut st = conn.prepare(
        "SELECT id, resource_type, resource_id, message, created_at FROM volume_messages \
         WHERE ?1 IS NULL OR project_id = ?1 ORDER BY rowid DESC",
    )?;
    let rows = st.query_map(params![project], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    rows.collect()
}
