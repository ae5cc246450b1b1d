//! Boot-time register state: the GDT and identity page tables in guest
//! memory, segment and control registers, general registers, FPU, MSRs and
//! the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{
    gdt_entry, kvm_segment_from_gdt, CODE32_FLAGS, CODE64_FLAGS, DATA_FLAGS, TSS_FLAGS,
};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};

/// Errors of setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// A KVM vCPU ioctl failed.
    #[error("KVM refused to set the vCPU's {what}: {source}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted only some of the boot MSRs.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    PartialMsrs {
        /// How many were set.
        set: usize,
        /// How many were asked for.
        wanted: usize,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// The Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64 {
        /// 64-bit entry point.
        entry: GuestAddress,
        /// Address of `boot_params`.
        zero_page: GuestAddress,
    },
    /// The PVH boot protocol: 32-bit protected mode, paging off, RBX = start_info.
    Pvh {
        /// PVH entry point (from the ELF note).
        entry: GuestAddress,
        /// Address of `hvm_start_info`.
        start_info: GuestAddress,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS: u64 = 0x80;

/// Writes the boot GDT and an empty IDT, and loads the segment registers.
fn setup_segments(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    code_flags: u16,
) -> Result<(), RegsError> {
    let gdt = [
        0,
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ];
    for (i, entry) in gdt.iter().enumerate() {
        let addr = BOOT_GDT_START.unchecked_add(i as u64 * 8);
        mem.write_obj(*entry, addr)
            .map_err(|source| RegsError::GuestMemory {
                what: "the GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, BOOT_IDT_START)
        .map_err(|source| RegsError::GuestMemory {
            what: "the IDT",
            source,
        })?;
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START.raw_value();
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START.raw_value();
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    Ok(())
}

/// Writes page tables that identity-map the first 1 GiB with 2 MiB pages.
fn setup_identity_map(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |source| RegsError::GuestMemory {
        what: "the page tables",
        source,
    };
    mem.write_obj(PDPTE_START.raw_value() | PAGE_PRESENT_RW, PML4_START)
        .map_err(err)?;
    mem.write_obj(PDE_START.raw_value() | PAGE_PRESENT_RW, PDPTE_START)
        .map_err(err)?;
    let pde: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PAGE_PRESENT_RW | PAGE_PS).to_le_bytes())
        .collect();
    mem.write_slice(&pde, PDE_START).map_err(err)
}

/// Puts the boot vCPU in the state its boot protocol asks for.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: BootEntry,
) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry, zero_page } => {
            setup_segments(mem, &mut sregs, CODE64_FLAGS)?;
            setup_identity_map(mem)?;
            sregs.cr3 = PML4_START.raw_value();
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry.raw_value();
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page.raw_value();
        }
        BootEntry::Pvh { entry, start_info } => {
            setup_segments(mem, &mut sregs, CODE32_FLAGS)?;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry.raw_value();
            regs.rbx = start_info.raw_value();
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

/// Sets the x87/SSE state every vCPU starts with.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU",
        source,
    })
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Loads [`boot_msrs`] into the vCPU.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::PartialMsrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as on a PC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let kvm = |source| RegsError::Kvm {
        what: "local APIC",
        source,
    };
    let mut state = vcpu.get_lapic().map_err(kvm)?;
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    set_lapic_reg(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&state).map_err(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_covers_first_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_identity_map(&mem).unwrap();
        let pml4: u64 = mem.read_obj(PML4_START).unwrap();
        assert_eq!(pml4, PDPTE_START.raw_value() | 3);
        let pdpte: u64 = mem.read_obj(PDPTE_START).unwrap();
        assert_eq!(pdpte, PDE_START.raw_value() | 3);
        let last: u64 = mem.read_obj(PDE_START.unchecked_add(511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn lapic_delivery_modes() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT0, 0x0001_0700);
        let v = with_delivery_mode(lapic_reg(&s, APIC_LVT0), APIC_MODE_NMI);
        assert_eq!(v, 0x0001_0400);
        set_lapic_reg(&mut s, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&s, APIC_LVT1), 0xdead_beef);
    }

    #[test]
    fn msr_list_has_mtrr_writeback() {
        let m = boot_msrs();
        assert!(m
            .iter()
            .any(|e| e.index == MSR_MTRR_DEF_TYPE && e.data == 0x806));
    }
}
