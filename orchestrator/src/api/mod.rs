//! The services' handlers (moving into one folder per service).

pub mod compute;
pub mod compute_host;
pub mod flavor_access;
pub mod instance_actions;
