//! Nubo VMM.
