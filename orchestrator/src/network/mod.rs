//! Neutron's Networking v2.0 (a subset): networks, subnets and ports with
//! their IPAM, routers and floating IPs, security groups, network quotas.
//! What the API and the database decide; the host side is
//! [`crate::host::net`], told through a [`crate::host::net::NetPlan`].

pub mod api;
pub mod security_groups;
