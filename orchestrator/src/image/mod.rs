//! Image v2 (a Glance subset): create, upload, download, list, show, patch
//! (JSON patch), delete, tags and the image schemas. Bodies are flat (no
//! envelope), as in Glance; extra properties are top-level string keys.
//!
//! Statuses: `queued` (no data) → `saving` (upload running) → `active`, and
//! `killed` when an upload fails (the partial file is removed by the store).
//! Visibility: a non-admin sees its project's images and public and community
//! ones (`shared` images only by their owner: there are no members); admin
//! sees everything. Only the owner project (member role) or an admin changes
//! an image.

pub mod api;
pub mod files;
pub mod model;
pub mod service;
pub mod store;
