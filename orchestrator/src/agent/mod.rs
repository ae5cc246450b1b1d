//! The compute agent: runs, adopts and stops one `nubo-vmm` process per server.
