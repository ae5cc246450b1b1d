//! What a host does for the Networking service: converge its bridges, segment
//! devices (VXLAN, VLAN, flat), TAPs, router namespaces, nftables and DHCP to
//! the [`NetPlan`] the service computes from the database, and hand a
//! server's VMM the TAP of each of its ports.
//!
//! [`NetHost`] is the interface (as [`super::vmm::VmmHost`] is for VMMs):
//! the real agent drives `netstack` (netlink, nftables, DHCP), the fake keeps
//! the last plan in memory for the API tests.

pub mod agent;
pub mod fake;
pub mod plan;

use std::os::fd::OwnedFd;

pub use plan::NetPlan;
use plan::{PortPlan, Segment};

/// Why the host could not do what the plan asks.
#[derive(Debug, thiserror::Error)]
pub enum NetHostError {
    /// The host cannot build this kind of segment (a kernel feature or a
    /// physical network mapping is missing); the text names what.
    #[error("{0}")]
    Unsupported(String),
    /// A netlink, nftables or DHCP operation failed.
    #[error("{what}: {reason}")]
    Failed {
        /// What was being done (`creating bridge brq0123456789a`).
        what: String,
        /// The error.
        reason: String,
    },
}

/// What an [`NetHost::apply`] changed: zero on a second pass over the same
/// plan (reconcile is idempotent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Links, addresses, routes, FDB entries, namespaces, nftables tables
    /// and DHCP scopes created, changed or removed.
    pub changes: usize,
}

/// A host's network side. Blocking: call it through `spawn_blocking`.
pub trait NetHost: Send + Sync {
    /// Whether this host can build `segment` now (kernel support, physical
    /// network mapping, underlay address); `Unsupported` names what is
    /// missing. Asked before a network is created, so a network the host
    /// cannot build is refused (400) instead of being half built.
    fn check_segment(&self, segment: &Segment) -> Result<(), NetHostError>;

    /// Converges the host to `plan`: creates what is missing, updates what
    /// differs, removes what nubo owns and the plan no longer names.
    /// Idempotent. A failed step leaves the host as before that step.
    fn apply(&self, plan: &NetPlan) -> Result<ApplyReport, NetHostError>;

    /// Opens (creating if needed) the TAP of a [`plan::PortKind::Vm`] port,
    /// enslaved to its network's bridge and filtered as the port's rules
    /// say, for a VMM to inherit (`--net fd=N`). The port must be in the
    /// last applied plan.
    fn open_tap(&self, port: &PortPlan) -> Result<OwnedFd, NetHostError>;
}

#[cfg(test)]
mod agent_tests;
