//! Identity (a Keystone v3 subset): domains, projects, users, roles, role
//! assignments, password authentication and bearer tokens.
//!
//! - [`api`]: thin handlers, one file per resource;
//! - [`model`]: the things and their JSON;
//! - [`store`]: the SQL (also that of [`token`] and [`bootstrap`]);
//! - [`service`]: the rules (lookups that answer 404, names, whether a
//!   project is still in use — asked of the other services).

pub mod api;
pub mod bootstrap;
pub mod model;
pub mod password;
pub mod service;
pub mod store;
pub mod token;

pub use model::{AuthContext, Domain, DEFAULT_DOMAIN_ID, ROLES};
pub use store::{find_domain, roles_on};
