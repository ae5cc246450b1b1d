//! Security groups and their rules (Neutron's `security-group` extension):
//! each project's lazy `default` group, rules checked as Neutron checks
//! them, quotas, and the rules resolved for a host's plan
//! ([`service::resolve_rules`]).
//!
//! - [`api`]: thin handlers;
//! - [`validate`]: request bodies, in Neutron's words;
//! - [`service`]: the rules, and what the rest of the service asks;
//! - [`store`]: the SQL;
//! - [`model`]: the rows and their JSON.

pub mod api;
pub mod model;
pub mod service;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;
