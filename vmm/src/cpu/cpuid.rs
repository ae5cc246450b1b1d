//! CPUID as the guest sees it: what KVM supports on this host, normalized per
//! vCPU (APIC ids, topology, hypervisor bit) so the guest sees one socket of
//! `n` single-threaded cores.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_PDCM: u32 = 1 << 15;

/// What the host offers that the normalization needs to know.
#[derive(Debug, Clone, Copy)]
pub struct CpuidContext {
    /// This vCPU's index, which is also its APIC id.
    pub vcpu_id: u8,
    /// Number of vCPUs in the guest.
    pub vcpu_count: u8,
    /// Whether KVM emulates the TSC-deadline timer.
    pub tsc_deadline: bool,
}

/// Bits needed to number `count` things.
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `entries` (from `KVM_GET_SUPPORTED_CPUID`) for one vCPU.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], ctx: &CpuidContext) {
    let id = u32::from(ctx.vcpu_id);
    let count = u32::from(ctx.vcpu_count);
    let core_bits = bits_for(count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: APIC id [31:24], logical processors [23:16], CLFLUSH size 8 qwords [15:8].
                e.ebx = (id << 24) | (count.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !ECX_PDCM;
                if ctx.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // Cores per package - 1 in [31:26]; caches are private but the last level.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            LEAF_PMU => {
                // No virtual PMU: the guest must not program counters we do not save.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = id;
                match e.index {
                    // SMT level: one thread per core.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    // Core level: all vCPUs in one package.
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n & 0xff;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                // ECX: APIC id size [15:12], cores - 1 [7:0].
                e.ecx = (core_bits << 12) | ((count - 1) & 0xff);
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = id;
                e.ebx = 0; // one thread per core, core id 0 within its compute unit
                e.ecx = 0; // node 0
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(16), 4);
        assert_eq!(bits_for(17), 5);
    }

    #[test]
    fn leaf1_apic_id_and_flags() {
        let mut e = [entry(1, 0)];
        let ctx = CpuidContext {
            vcpu_id: 3,
            vcpu_count: 4,
            tsc_deadline: false,
        };
        normalize(&mut e, &ctx);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!((e[0].ebx >> 8) & 0xff, 8);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e[0].ecx & ECX_PDCM, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);

        let ctx1 = CpuidContext {
            vcpu_id: 0,
            vcpu_count: 1,
            tsc_deadline: true,
        };
        normalize(&mut e, &ctx1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn topology_leaves() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2), entry(0xa, 0)];
        let ctx = CpuidContext {
            vcpu_id: 5,
            vcpu_count: 6,
            tsc_deadline: true,
        };
        normalize(&mut e, &ctx);
        assert!(e[..3].iter().all(|x| x.edx == 5));
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx), (0, 1, 0x100));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx), (3, 6, 0x201));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx), (0, 0, 2));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (0, 0, 0, 0));
    }

    #[test]
    fn cache_leaf_core_count() {
        let mut l1 = entry(4, 0);
        l1.eax = 1 << 5 | 1; // level 1 data cache
        let mut l3 = entry(4, 3);
        l3.eax = 3 << 5 | 3;
        let mut e = [l1, l3];
        normalize(
            &mut e,
            &CpuidContext {
                vcpu_id: 0,
                vcpu_count: 2,
                tsc_deadline: true,
            },
        );
        assert_eq!(e[0].eax >> 26, 1);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 1);
        assert_eq!(e[0].eax & 0x3fff, 1 << 5 | 1);
    }
}
