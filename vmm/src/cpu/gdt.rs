//! Segment descriptors for the boot GDT, and their `kvm_segment` form.

use kvm_bindings::kvm_segment;

/// Packs a segment descriptor from its flags (G, D/B, L, AVL, P, DPL, S, type
/// as in the descriptor's bits 52-55 and 40-47), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Flags of a 64-bit code segment (L=1, present, ring 0, execute/read, accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a 32-bit flat code segment (D=1, 4 KiB granularity).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat data segment (B=1, 4 KiB granularity, read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a 64-bit TSS (present, busy).
pub const TSS_FLAGS: u16 = 0x808b;

/// Turns descriptor `entry` at GDT index `index` into KVM's segment form.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let limit_raw = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            ((limit_raw as u32) << 12) | 0xfff
        } else {
            limit_raw as u32
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_known_descriptors() {
        // The classic flat 64-bit code and data descriptors.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn unpacks_to_kvm_segment() {
        let s = kvm_segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 1);
        assert_eq!(s.selector, 8);
        assert_eq!(
            (s.l, s.db, s.g, s.present, s.s, s.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.unusable, 0);
        let d = kvm_segment_from_gdt(gdt_entry(DATA_FLAGS, 0x1234_5678, 0xfffff), 2);
        assert_eq!(d.base, 0x1234_5678);
        assert_eq!((d.db, d.type_), (1, 3));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
