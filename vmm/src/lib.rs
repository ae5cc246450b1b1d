//! Nubo VMM.
pub mod layout;
