//! Nubo devices.
