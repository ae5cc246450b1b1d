//! The image file store: streamed uploads with checksums, format validation.
