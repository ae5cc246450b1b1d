//! The `lvm` volume driver (in progress).
