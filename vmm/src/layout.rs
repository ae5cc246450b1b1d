//! The guest physical address map of an x86_64 Nubo guest.
//!
//! Everything a guest finds at a fixed address is named here, so that the
//! loader, the ACPI tables and the device manager agree on one map.
//!
//! ```text
//! 0x0000_0500  GDT                   0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                   0x0000_8ff0  boot stack top
//! 0x0000_6000  PVH start_info        0x0000_9000  PML4, PDPT at 0xa000, PD at 0xb000
//! 0x0002_0000  kernel command line   0x0009_fc00  end of low RAM (EBDA and up reserved)
//! 0x000e_0000  RSDP and ACPI tables  0x0010_0000  high RAM starts (kernel)
//! 0xc000_0000  32-bit MMIO hole for devices, up to ECAM
//! 0xe000_0000  PCI ECAM (256 MiB)    0xfec0_0000  IOAPIC   0xfee0_0000  LAPIC
//! 0x1_0000_0000  RAM above 4 GiB, when the guest has more than 3 GiB
//! ```

use vm_memory::GuestAddress;

/// Where the boot GDT is written.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Where the (empty) boot IDT is written.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// Where the PVH `hvm_start_info` structure is written.
pub const PVH_INFO_START: GuestAddress = GuestAddress(0x6000);
/// Where the PVH memory map entries follow the start_info.
pub const PVH_MEMMAP_START: GuestAddress = GuestAddress(0x6040);
/// Where the Linux zero page (`boot_params`) is written.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the boot identity map.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Level-3 page table of the boot identity map.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// Level-2 page table (2 MiB pages) of the boot identity map.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Where the kernel command line is written.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Largest kernel command line we accept (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of the usable low RAM (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// Where the ACPI RSDP is written; the other tables follow it.
pub const RSDP_START: GuestAddress = GuestAddress(0xe0000);
/// End (exclusive) of the region reserved for ACPI tables.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// The x86 reset vector (F000:FFF0). A kernel that reboots "through the
/// BIOS" jumps here in real mode; we put a stub there that resets the VM.
pub const RESET_VECTOR: GuestAddress = GuestAddress(0xffff0);
/// Start of high RAM; kernels are loaded here.
pub const HIGH_RAM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit memory hole that is never RAM.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// Start of RAM above the 32-bit hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Start of the region where 32-bit device MMIO (PCI BARs) is placed.
pub const MMIO_32BIT_START: u64 = MEM_32BIT_GAP_START;
/// Start of the PCI Express enhanced configuration (ECAM) window.
pub const PCI_MMCONFIG_START: u64 = 0xe000_0000;
/// Size of the ECAM window (bus 0-255).
pub const PCI_MMCONFIG_SIZE: u64 = 0x1000_0000;
/// Physical address of the (in-kernel) IOAPIC.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Physical address of each vCPU's local APIC.
pub const APIC_START: u64 = 0xfee0_0000;
/// Address KVM needs for its TSS (three pages, inside the 32-bit hole).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address KVM needs for its identity map page (just before the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// ACPI sleep control register (FADT `X_SLEEP_CONTROL_REG`), one byte, I/O space.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI sleep status register (FADT `X_SLEEP_STATUS_REG`), one byte, I/O space.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT `RESET_REG`), one byte, I/O space.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The `SLP_TYP` value the DSDT's `\_S5` package gives for soft-off.
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// First I/O port of the COM1 16550 UART.
pub const COM1_PORT: u16 = 0x3f8;
/// Interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// I/O port of the i8042 data register.
pub const I8042_DATA_PORT: u16 = 0x60;
/// I/O port of the i8042 command/status register.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// Interrupt line of the i8042 keyboard.
pub const I8042_IRQ: u32 = 1;
/// Interrupt line of the ACPI Generic Event Device (GED) that signals the
/// power button.
pub const GED_IRQ: u32 = 5;
/// Interrupt line of the GED that signals PCI hot-plug events (the same GED
/// device, a second interrupt: its `_EVT` tells them apart by number).
pub const HOTPLUG_IRQ: u32 = 7;
/// Guest physical address of the PCI hot-plug registers
/// (`devices::pci_hotplug`), above the ECAM window, below the IOAPIC.
pub const PCI_HOTPLUG_START: u64 = 0xfeb0_0000;
/// Number of IOAPIC pins (GSIs) of KVM's in-kernel IOAPIC.
pub const IOAPIC_NUM_PINS: u32 = 24;
