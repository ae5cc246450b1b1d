//! Security groups and their rules (Neutron's `security-group` extension).

pub mod api;
pub mod service;
