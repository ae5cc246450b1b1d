//! Host networking for Nubo guests (TAP, bridges, VXLAN, NAT). Not built yet: see the networking issue.
