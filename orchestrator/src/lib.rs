//! Nubo's orchestrator: the `nubo` daemon. It serves OpenStack's Identity v3,
//! Image v2 and Compute v2.1 APIs (a subset) on one port, keeps its state in
//! SQLite, and runs one `nubo-vmm` process per server.

#[cfg(test)]
mod api_test;
pub mod compute;
pub mod config;
pub mod db;
pub mod host;
pub mod http;
pub mod identity;
pub mod image;
pub mod network;
pub mod placement;
pub mod quota;
pub mod serve;
pub mod state_dir;
pub mod util;
pub mod volume;
