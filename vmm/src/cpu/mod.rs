//! Per-vCPU state at boot: CPUID, registers, segments, page tables, MSRs and
//! the local APIC.

pub mod cpuid;
pub mod gdt;
pub mod regs;
