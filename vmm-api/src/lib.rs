//! What `nubo-vmm` shares with the programs that run it (Cloud
//! Hypervisor's `vm_config` and `api_client` in one small crate): the
//! [`VmConfig`] of a guest, serde both ways, with the CLI forms of its parts
//! and the `nubo-vmm run` command line ([`VmConfig::run_args`]), and an
//! async [`client`] for the API socket that runs on its caller's tokio
//! runtime.

mod args;
pub mod client;
pub mod config;
pub mod fd_passing;

pub use client::{request, ClientError};
pub use config::{
    AddNetRequest, ConfigError, DeviceInfo, DeviceKind, DiskConfig, ImageFormat, MemorySize,
    NetConfig, SerialConfig, VmConfig, VmConfigBuilder,
};
pub use fd_passing::request_with_fds;
