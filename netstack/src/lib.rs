//! Host networking for Nubo guests.
//!
//! The TAP device a virtio-net device sends and receives through
//! ([`tap::Tap`]), the [`NetBackend`] abstraction the device uses so it can
//! be tested without a TAP, named network namespaces ([`netns`]) and the
//! layer 2/3 plumbing over netlink ([`link`]: bridges, VXLAN, VLAN, veth,
//! addresses, routes, FDB) and the nftables rulesets ([`nft`]: security
//! groups, anti-spoofing, router NAT) and the DHCP server ([`dhcp`]) the
//! host agent builds networks from (those four with the `host` feature: the
//! orchestrator's agent has it, `nubo-vmm` does not, so the VMM links
//! none of that). One IPv4 prefix type serves them all: [`Ipv4Net`].

#[cfg(feature = "host")]
pub mod dhcp;
pub mod ipv4net;
#[cfg(feature = "host")]
pub mod link;
#[cfg(feature = "host")]
pub mod netns;
#[cfg(feature = "host")]
pub mod nft;
pub mod tap;

use std::io;
use std::os::fd::AsRawFd;

pub use ipv4net::{Ipv4Net, Ipv4NetError};

pub use tap::{
    set_cloexec, Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO,
};

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), which every
/// frame read from or written to a [`NetBackend`] starts with.
pub const VNET_HDR_LEN: usize = 12;

/// Where a virtio-net device's frames go: a TAP with `IFF_VNET_HDR` (or a
/// fake in tests). Frames keep their boundaries and carry a
/// [`VNET_HDR_LEN`]-byte virtio-net header in front.
///
/// The file descriptor must be non-blocking: `read` returns
/// [`io::ErrorKind::WouldBlock`] when no frame is queued.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame (header included) into `buf`; returns its length.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header included); returns the bytes taken.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Sets the offloads (`TUN_F_*`) the backend may deliver frames with.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}
