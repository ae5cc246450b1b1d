//! Typed errors of the image library.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while opening, creating, reading or writing an image.
///
/// Images are untrusted input: every malformed value found in a file is reported as
/// [`ImageError::Corrupt`] (or [`ImageError::Unsupported`] for valid but unimplemented
/// features) and never causes a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An operating-system I/O error, with what the library was doing at the time.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the library was doing, e.g. "reading the L1 table".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image is malformed (bad magic, offsets out of bounds, inconsistent tables, ...).
    #[error("invalid or corrupt image: {0}")]
    Corrupt(String),
    /// The image uses a feature this library does not implement (encryption, compressed
    /// clusters, external data files, extended L2 entries, unknown incompatible features, ...).
    #[error("unsupported image feature: {0}")]
    Unsupported(String),
    /// A write, discard or write-zeroes was attempted on an image opened read-only.
    #[error("image is opened read-only")]
    ReadOnly,
    /// A request reaches beyond the end of the virtual disk.
    #[error("request out of range: offset {offset} + length {len} exceeds disk size {size}")]
    OutOfRange {
        /// Byte offset of the request.
        offset: u64,
        /// Length of the request in bytes.
        len: u64,
        /// Virtual size of the disk in bytes.
        size: u64,
    },
    /// Opening a backing file failed; `source` says why.
    #[error("backing file {}: {source}", path.display())]
    Backing {
        /// The backing file as resolved from the image header.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: Box<ImageError>,
    },
    /// The chain of backing files is longer than [`crate::MAX_BACKING_DEPTH`].
    #[error("backing chain is deeper than {0} images")]
    BackingChainTooDeep(usize),
    /// A backing file refers (directly or indirectly) back to an image already in the chain.
    #[error("backing file loop: {} is already part of the chain", .0.display())]
    BackingLoop(PathBuf),
    /// A caller-supplied argument is invalid (e.g. a zero or too large virtual size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ImageError {
    /// Wraps an I/O error with a short description of the operation.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Returns a closure that wraps an `io::Error` with `context`, for `map_err`.
pub(crate) fn ioe(context: &'static str) -> impl FnOnce(io::Error) -> ImageError {
    move |e| ImageError::io(context, e)
}
