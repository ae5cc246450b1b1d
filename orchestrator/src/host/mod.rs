//! What a compute host does, as opposed to what the API and the database
//! decide (Neutron's and Cinder's split of controller and agents, Incus's
//! driver interfaces): run the servers' VMMs ([`vmm`]), and next their
//! networks (`net`) and volumes (`storage`).
//!
//! Each concern is a trait the services call and nothing else
//! ([`vmm::VmmHost`]), with the real implementation next to it (the
//! [`vmm::Agent`]) and a fake for the in-process API tests
//! (`vmm::fake::FakeVmmHost`), so they run without KVM or root. A later
//! multi-host split puts these traits behind an RPC; the services do not
//! change.

pub mod net;
pub mod storage;
pub mod vmm;
