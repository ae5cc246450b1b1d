//! Tiny hand-made guests: ELF images of a few dozen bytes of x86 code that
//! print a line on COM1 and then power off, reset or fault. They exercise the
//! VMM's boot paths and exits on any KVM (including PVM, which cannot boot
//! Linux) and serve the start-up benchmark, where QEMU boots the same image.

use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT, COM1_PORT,
    I8042_COMMAND_PORT,
};

/// The line every tiny guest prints first.
pub const READY_LINE: &str = "NUBO-TINY-READY";

/// Where the code is loaded and entered (1 MiB, where kernels go).
const LOAD_ADDR: u64 = 0x10_0000;
/// The I/O port of QEMU's `isa-debug-exit` device, written after our own
/// power-off so the same image also ends a QEMU run.
const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;

/// How a tiny guest ends after printing its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyEnd {
    /// Writes S5 to the ACPI sleep control register.
    AcpiPowerOff,
    /// Writes the ACPI reset register.
    AcpiReset,
    /// Sends the i8042 CPU reset command.
    I8042Reset,
    /// Executes `ud2` with no IDT: a triple fault.
    TripleFault,
    /// Halts forever (the VM must be stopped from outside).
    Halt,
    /// Prints a dot every few milliseconds, forever.
    Dots,
}

/// How a tiny guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyEntry {
    /// ELF without a PVH note: the VMM enters it in 64-bit long mode with
    /// paging. The code proves it by printing through a 64-bit register and
    /// printing CR0.PG.
    Long64,
    /// ELF with a PVH note: entered in 32-bit protected mode, paging off.
    Pvh32,
}

fn out_byte(code: &mut Vec<u8>, port: u16, value: u8) {
    code.extend_from_slice(&[0x66, 0xba]); // mov dx, imm16
    code.extend_from_slice(&port.to_le_bytes());
    code.extend_from_slice(&[0xb0, value, 0xee]); // mov al, imm8; out dx, al
}

fn print(code: &mut Vec<u8>, text: &str) {
    for b in text.bytes() {
        out_byte(code, COM1_PORT, b);
    }
}

/// The machine code of a tiny guest (position independent).
pub fn code(entry: TinyEntry, end: TinyEnd) -> Vec<u8> {
    let mut code = Vec::new();
    print(&mut code, READY_LINE);
    if entry == TinyEntry::Long64 {
        print(&mut code, " mode=");
        // mov rax, "LONGMODE": decodes differently outside 64-bit mode.
        code.extend_from_slice(&[0x48, 0xb8]);
        code.extend_from_slice(b"LONGMODE");
        code.extend_from_slice(&[0x66, 0xba]);
        code.extend_from_slice(&COM1_PORT.to_le_bytes());
        for _ in 0..8 {
            code.extend_from_slice(&[0xee, 0x48, 0xc1, 0xe8, 0x08]); // out dx, al; shr rax, 8
        }
        print(&mut code, " paging=");
        // mov rax, cr0; shr rax, 31; add al, '0'; out dx, al
        code.extend_from_slice(&[0x0f, 0x20, 0xc0, 0x48, 0xc1, 0xe8, 0x1f, 0x04, b'0', 0xee]);
    }
    print(&mut code, "\n");
    match end {
        TinyEnd::AcpiPowerOff => {
            out_byte(
                &mut code,
                ACPI_SLEEP_CONTROL_PORT,
                (ACPI_S5_SLP_TYP << 2) | 0x20,
            );
            out_byte(&mut code, QEMU_DEBUG_EXIT_PORT, 0);
        }
        TinyEnd::AcpiReset => out_byte(&mut code, ACPI_RESET_PORT, ACPI_RESET_VALUE),
        TinyEnd::I8042Reset => out_byte(&mut code, I8042_COMMAND_PORT, 0xfe),
        TinyEnd::TripleFault => code.extend_from_slice(&[0x0f, 0x0b]),
        TinyEnd::Halt => {}
        TinyEnd::Dots => {
            code.extend_from_slice(&[0x66, 0xba]);
            code.extend_from_slice(&COM1_PORT.to_le_bytes());
            // top: mov al, '.'; out dx, al; mov ecx, 2^15; spin: dec ecx; jnz spin; jmp top
            // (about 20 ms a dot on PVM, which runs this loop slowly; far less on hardware)
            code.extend_from_slice(&[0xb0, b'.', 0xee, 0xb9, 0, 0x80, 0, 0]);
            code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xeb, 0xf2]);
        }
    }
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt
    code
}

/// A complete ELF64 executable of the tiny guest, loaded and entered at 1 MiB.
pub fn elf(entry: TinyEntry, end: TinyEnd) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let code = code(entry, end);
    let pvh = entry == TinyEntry::Pvh32;
    let phnum: u16 = if pvh { 2 } else { 1 };
    // The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), 4-byte entry.
    let mut note = Vec::new();
    if pvh {
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    }
    let note_off = EHDR + PHDR * usize::from(phnum);
    let code_off = (note_off + note.len() + 15) & !15;

    let mut f = Vec::with_capacity(code_off + code.len());
    // ELF header.
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // PT_LOAD: the code at LOAD_ADDR, readable and executable.
    let mut phdr = |p_type: u32, flags: u32, off: usize, addr: u64, len: usize, align: u64| {
        f.extend_from_slice(&p_type.to_le_bytes());
        f.extend_from_slice(&flags.to_le_bytes());
        f.extend_from_slice(&(off as u64).to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        f.extend_from_slice(&(len as u64).to_le_bytes()); // p_filesz
        f.extend_from_slice(&(len as u64).to_le_bytes()); // p_memsz
        f.extend_from_slice(&align.to_le_bytes());
    };
    phdr(1, 5, code_off, LOAD_ADDR, code.len(), 0x1000);
    if pvh {
        phdr(4, 4, note_off, 0, note.len(), 4);
    }
    f.extend_from_slice(&note);
    f.resize(code_off, 0);
    f.extend_from_slice(&code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_are_consistent() {
        for entry in [TinyEntry::Long64, TinyEntry::Pvh32] {
            let f = elf(entry, TinyEnd::AcpiPowerOff);
            assert_eq!(&f[..4], b"\x7fELF");
            let phnum = u16::from_le_bytes([f[56], f[57]]);
            assert_eq!(phnum, if entry == TinyEntry::Pvh32 { 2 } else { 1 });
            let code_off = u64::from_le_bytes(f[72..80].try_into().unwrap()) as usize;
            let filesz = u64::from_le_bytes(f[96..104].try_into().unwrap()) as usize;
            assert_eq!(code_off + filesz, f.len());
        }
    }

    #[test]
    fn code_prints_ready_line_first() {
        let c = code(TinyEntry::Pvh32, TinyEnd::Halt);
        // mov dx, 0x3f8; mov al, 'N'; out dx, al
        assert_eq!(&c[..7], &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'N', 0xee]);
        assert_eq!(&c[c.len() - 3..], &[0xf4, 0xeb, 0xfd]);
    }
}
