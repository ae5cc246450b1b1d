//! Which image files servers still use, so deleting an image never breaks a
//! server booted from it.
//!
//! A server's boot disk is a qcow2 overlay whose backing file is its image's
//! file, and its kernel and initramfs may be image files too (`kernel_id`,
//! `ramdisk_id`). Glance lets an image be deleted while servers use it (in
//! Nova their disks do not depend on it); here the image's record goes at
//! once (404 from then on) but its file stays until the last server that uses
//! it is deleted.

use std::collections::HashSet;
use std::path::Path;

use crate::db::Db;
use crate::host::vmm::VmmHost;
use crate::image::files::ImageStore;

/// The ids of the images whose files some server uses: every server's
/// `image_id` (its boot disk's backing file) and the kernel and initramfs
/// named in its saved VMM spec when they are image files.
pub fn images_in_use(db: &Db, vmm: &dyn VmmHost, images: &ImageStore) -> HashSet<String> {
    let servers: Vec<(String, String)> = {
        let conn = db.lock();
        let rows = super::store::server_images(&conn);
        match rows {
            Ok(rows) => rows,
            Err(e) => {
                // Unknown use: the callers must then keep every file.
                tracing::error!(error = %e, "cannot read which images servers use");
                return HashSet::from(["*".to_string()]);
            }
        }
    };
    let mut used = HashSet::new();
    for (server_id, image_id) in servers {
        used.insert(image_id);
        match vmm.load_spec(&server_id) {
            Ok(Some(spec)) => {
                let files =
                    std::iter::once(spec.vm.kernel.as_path()).chain(spec.vm.initrd.as_deref());
                used.extend(files.filter_map(|f| image_id_of(images, f)));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(server = %server_id, error = %e, "cannot read the server's spec; keeping every image file");
                used.insert("*".to_string());
            }
        }
    }
    used
}

/// Whether `image_id`'s file is in `used` (or use is unknown).
pub fn is_used(used: &HashSet<String>, image_id: &str) -> bool {
    used.contains("*") || used.contains(image_id)
}

/// The image id of `file` when it is a file of the image store.
fn image_id_of(images: &ImageStore, file: &Path) -> Option<String> {
    if file.parent()? != images.dir() {
        return None;
    }
    let name = file.file_name()?.to_str()?;
    crate::util::is_plain_id(name).then(|| name.to_string())
}

/// Removes the files of images that no longer exist (their record was
/// deleted while servers used them) and that no server uses any more.
/// Files of existing images and partial uploads are left alone.
pub fn remove_released_files(db: &Db, vmm: &dyn VmmHost, images: &ImageStore) {
    let used = images_in_use(db, vmm, images);
    let Ok(entries) = std::fs::read_dir(images.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !crate::util::is_plain_id(&name) || is_used(&used, &name) {
            continue;
        }
        let exists = crate::image::service::exists(&db.lock(), &name).unwrap_or(true);
        if exists {
            continue;
        }
        tracing::info!(image = %name, "the last server using this deleted image is gone: removing its file");
        if let Err(e) = images.remove(&name) {
            tracing::warn!(image = %name, error = %e, "cannot remove the image file");
        }
    }
}
