//! The image file store: the file backend of the Image (Glance v2) service.
//!
//! Image data lives in one directory (`STATE_DIR/images`), one file per image named by
//! its id. An upload is streamed into `<id>.part` while its MD5 (Glance's `checksum`) and
//! SHA-512 (`os_hash_value`) are computed, is size-limited, fsynced, checked to be what
//! its `disk_format` claims ([`validate_format`]) and only then renamed to `<id>`. On any
//! failure — including the upload future being dropped — the partial file is removed,
//! and [`ImageStore::new`] removes partial files left by a crash.
//!
//! The store does not track image states: callers (the API layer) make sure an image
//! is uploaded at most once and not deleted while it is being uploaded. A second upload
//! of an id whose `<id>.part` exists fails with [`StoreError::UploadInProgress`]; an
//! upload to an id that already has data replaces it.

mod format;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use md5::{Digest, Md5};
use sha2::Sha512;
use tokio::io::AsyncWriteExt;

pub use format::{validate_format, DiskFormat, UnknownDiskFormat, ALLOWED_DISK_FORMATS};

/// Suffix of files being uploaded.
const PART_SUFFIX: &str = ".part";

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The image data is larger than the store's limit (HTTP 413).
    #[error("image data exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The file system is full or the quota is exhausted (HTTP 413 in Glance).
    #[error("no space left in the image store")]
    NoSpace,
    /// The data is not an image of the claimed disk format (HTTP 400).
    #[error("the uploaded data is not a valid {claimed} image: {reason}")]
    InvalidFormat {
        /// The disk format the image was declared with.
        claimed: DiskFormat,
        /// Why the data is not of that format.
        reason: String,
    },
    /// An I/O error of the store itself (HTTP 500).
    #[error("image store I/O error while {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the request body failed (the client went away, ...).
    #[error("reading the image data from the client failed: {0}")]
    Client(String),
    /// The image id is not a lowercase hyphenated UUID (HTTP 400/404).
    #[error("invalid image id {0:?}")]
    InvalidId(String),
    /// Another upload of the same image is in progress (HTTP 409).
    #[error("an upload of image {0} is already in progress")]
    UploadInProgress(String),
    /// The image has no data in the store (HTTP 204/404 for downloads).
    #[error("image {0} has no data")]
    NotFound(String),
}

/// What [`ImageStore::upload`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// Size of the data in bytes (Glance's `size`).
    pub size: u64,
    /// MD5 of the data, lowercase hex (Glance's `checksum`).
    pub md5: String,
    /// SHA-512 of the data, lowercase hex (Glance's `os_hash_value`, algo `sha512`).
    pub sha512: String,
    /// Where the data is stored.
    pub path: PathBuf,
    /// Size of the virtual disk for raw and qcow2 images (Glance's `virtual_size`);
    /// `None` for kernels and ramdisks.
    pub virtual_size: Option<u64>,
}

/// The image file store; cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    max_image_size: u64,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Like [`io_err`], but a full file system or exhausted quota becomes [`StoreError::NoSpace`].
fn write_err(context: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    move |source| match source.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            StoreError::NoSpace
        }
        _ => StoreError::Io {
            context: context.into(),
            source,
        },
    }
}

/// Checks that `id` is a lowercase hyphenated UUID (`8-4-4-4-12` hex digits), so that
/// it can be used as a file name.
fn check_id(id: &str) -> Result<(), StoreError> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.chars().take(64).collect()))
    }
}

/// Removes a partial upload file when dropped, unless disarmed.
struct PartGuard {
    path: Option<PathBuf>,
}

impl PartGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove partial upload");
                }
            }
        }
    }
}

impl ImageStore {
    /// Opens the store in `dir` (created if missing), removing partial uploads left by
    /// a crash. Uploads larger than `max_image_size` bytes are refused.
    pub fn new(dir: PathBuf, max_image_size: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let entries =
            std::fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(PART_SUFFIX) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing partial upload left by a crash");
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::Io {
                            context: format!("removing {}", path.display()),
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(ImageStore {
            dir,
            max_image_size,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The upload size limit in bytes.
    pub fn max_image_size(&self) -> u64 {
        self.max_image_size
    }

    /// Where the data of `image_id` is (or would be) stored. Fails with
    /// [`StoreError::InvalidId`] unless the id is a lowercase hyphenated UUID.
    pub fn path(&self, image_id: &str) -> Result<PathBuf, StoreError> {
        check_id(image_id)?;
        Ok(self.dir.join(image_id))
    }

    fn part_path(&self, image_id: &str) -> Result<PathBuf, StoreError> {
        check_id(image_id)?;
        Ok(self.dir.join(format!("{image_id}{PART_SUFFIX}")))
    }

    /// Streams `body` into the store as the data of `image_id`, checking that it is a
    /// `format` image; see the module documentation for the steps. Nothing is left
    /// behind on failure or when the returned future is dropped before completion.
    pub async fn upload<S, E>(
        &self,
        image_id: &str,
        format: DiskFormat,
        mut body: S,
    ) -> Result<StoredImage, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let final_path = self.path(image_id)?;
        let part_path = self.part_path(image_id)?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part_path)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::AlreadyExists {
                    StoreError::UploadInProgress(image_id.to_string())
                } else {
                    write_err("creating the upload file")(e)
                }
            })?;
        let mut guard = PartGuard {
            path: Some(part_path.clone()),
        };

        let mut md5 = Md5::new();
        let mut sha512 = Sha512::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Client(e.to_string()))?;
            size = match size.checked_add(chunk.len() as u64) {
                Some(n) if n <= self.max_image_size => n,
                _ => {
                    return Err(StoreError::TooLarge {
                        limit: self.max_image_size,
                    })
                }
            };
            md5.update(&chunk);
            sha512.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(write_err("writing image data"))?;
        }
        // tokio's File reports the error of its last background write only here:
        // sync_all alone would drop it.
        file.flush()
            .await
            .map_err(write_err("writing image data"))?;
        file.sync_all()
            .await
            .map_err(write_err("syncing image data"))?;
        drop(file);

        let check_path = part_path.clone();
        let virtual_size =
            tokio::task::spawn_blocking(move || format::check_format(&check_path, format))
                .await
                .unwrap_or_else(|e| Err(format!("the format check failed: {e}")))
                .map_err(|reason| StoreError::InvalidFormat {
                    claimed: format,
                    reason,
                })?;

        // Synchronous on purpose: no await point between the rename and disarming the
        // guard, so a dropped future never leaves a renamed file behind.
        std::fs::rename(&part_path, &final_path).map_err(io_err("moving the upload into place"))?;
        guard.disarm();
        let dir = self.dir.clone();
        match tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot sync the image directory"),
            Err(e) => tracing::warn!(error = %e, "cannot sync the image directory"),
        }

        Ok(StoredImage {
            size,
            md5: hex::encode(md5.finalize()),
            sha512: hex::encode(sha512.finalize()),
            path: final_path,
            virtual_size,
        })
    }

    /// Removes the data of `image_id` (and any partial upload of it, so that an upload
    /// still running fails instead of publishing data for a deleted image). Missing
    /// files are not an error.
    pub fn remove(&self, image_id: &str) -> Result<(), StoreError> {
        for path in [self.path(image_id)?, self.part_path(image_id)?] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        context: format!("removing {}", path.display()),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Opens the data of `image_id` for reading; returns the file and its size.
    pub async fn open_for_download(
        &self,
        image_id: &str,
    ) -> Result<(tokio::fs::File, u64), StoreError> {
        let path = self.path(image_id)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                StoreError::NotFound(image_id.to_string())
            } else {
                io_err(format!("opening {}", path.display()))(e)
            }
        })?;
        let len = file
            .metadata()
            .await
            .map_err(io_err(format!("reading the size of {}", path.display())))?
            .len();
        Ok((file, len))
    }
}
