//! Nubo VMM.
pub mod acpi;
pub mod layout;
