//! The typed configuration of one guest, built with [`VmConfigBuilder`]:
//! vmm-api's types, shared with the CLI, the API and embedders.

pub use vmm_api::config::*;
