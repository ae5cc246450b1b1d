//! ACPI tables that describe the Nubo platform to the guest.
//!
//! A stock x86_64 Linux guest finds its CPUs (there is no MP table) and its
//! legacy devices through these tables. The platform is "hardware-reduced"
//! ACPI: there is no SCI, no PM1/GPE blocks and no FACS; poweroff and reboot
//! go through the FADT sleep control and reset registers instead.
//!
//! Layout, from [`RSDP_START`] up to [`ACPI_TABLES_END`] (exclusive), each
//! table 8-byte aligned:
//!
//! ```text
//! RSDP (rev 2) -> XSDT -> FADT -> DSDT (AML: \_S5_, \_SB_.COM1, \_SB_.PS2_,
//!                                        \_SB_.GED_, \_SB_.PHPR, \_SB_.PCI0.S001..S031)
//!                      -> MADT (LAPIC per vCPU, IOAPIC, IRQ0->GSI2 override, LAPIC NMI)
//! ```
//!
//! To check the tables with ACPICA's `iasl`, run the ignored test
//! `acpi::tests::iasl_disassembles_tables`:
//!
//! ```text
//! apt-get install acpica-tools
//! cargo test -p vmm acpi::tests::iasl_disassembles_tables -- --ignored --nocapture
//! ```
//!
//! It writes every table to a scratch directory, disassembles each with
//! `iasl -d` and recompiles the resulting `.dsl`, failing on any error. Set
//! `NUBO_KEEP_ACPI=1` to keep the directory (it is printed), e.g. to load the
//! tables into ACPICA's interpreter:
//! `acpiexec -b "evaluate \\_S5_; sleep 5" dsdt.dat facp.dat apic.dat`.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags as FadtFlags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_TABLES_END, APIC_START, COM1_IRQ, COM1_PORT, GED_IRQ, HOTPLUG_IRQ,
    I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_IRQ, IOAPIC_START, MMIO_32BIT_START,
    PCI_HOTPLUG_START, PCI_MMCONFIG_START, RSDP_START,
};
use devices::pci_hotplug::PCI_HOTPLUG_SIZE;

/// OEM ID written into the RSDP and every table header.
const OEM_ID: [u8; 6] = *b"NUBO  ";
/// OEM table ID written into every table header.
const OEM_TABLE_ID: [u8; 8] = *b"NUBOVMM ";
/// OEM revision written into every table header.
const OEM_REVISION: u32 = 1;
/// Creator ID written into every table header (the ACPI "ASL compiler ID").
const CREATOR_ID: [u8; 4] = *b"NUBO";
/// Creator revision written into every table header.
const CREATOR_REVISION: u32 = 1;
/// FADT hypervisor vendor identity (ACPI 6.0+).
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"NUBOVMM ";

/// Alignment of each table placed after the RSDP.
const TABLE_ALIGN: u64 = 8;
/// Offset of the creator ID in a system description table header.
const SDT_CREATOR_ID_OFFSET: usize = 28;
/// Offset of the creator revision in a system description table header.
const SDT_CREATOR_REVISION_OFFSET: usize = 32;
/// Length of a system description table header.
const SDT_HEADER_LEN: u32 = 36;

/// FADT major revision (ACPI 6.x). The FADT layout is the same for 6.0-6.5.
const FADT_REVISION: u8 = 6;
/// FADT minor revision: the tables follow ACPI 6.4.
const FADT_MINOR_REVISION: u8 = 4;
/// MADT revision defined by ACPI 6.3/6.4.
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// XSDT revision.
const XSDT_REVISION: u8 = 1;

/// FADT IAPC_BOOT_ARCH: the platform has user-visible ISA/LPC devices (COM1, i8042).
const IAPC_BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// FADT IAPC_BOOT_ARCH: an i8042 (or equivalent) keyboard controller is present.
/// Linux treats the i8042 as absent unless this is set.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// FADT IAPC_BOOT_ARCH: probing for VGA is not safe (there is none).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IAPC_BOOT_ARCH: there is no CMOS RTC at ports 0x70/0x71.
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// What the FADT claims about legacy hardware. Clear the RTC bit if an
/// MC146818 CMOS RTC device is ever emulated.
const IAPC_BOOT_ARCH: u16 = IAPC_BOOT_ARCH_LEGACY_DEVICES
    | IAPC_BOOT_ARCH_8042
    | IAPC_BOOT_ARCH_VGA_NOT_PRESENT
    | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;

/// MADT flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// MADT structure type: Processor Local APIC.
const MADT_TYPE_LOCAL_APIC: u8 = 0;
/// MADT structure type: I/O APIC.
const MADT_TYPE_IO_APIC: u8 = 1;
/// MADT structure type: Interrupt Source Override.
const MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// MADT structure type: Local APIC NMI.
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Local APIC flags: the processor is enabled.
const LOCAL_APIC_ENABLED: u32 = 1 << 0;
/// MPS INTI flags 0: polarity and trigger mode conform to the bus (ISA: active high, edge).
const MPS_INTI_CONFORMS: u16 = 0;
/// ACPI processor UID meaning "all processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// The local APIC input that NMI is wired to on PCs.
const NMI_LINT: u8 = 1;
/// ID of the single I/O APIC. KVM's in-kernel IOAPIC reports ID 0 in its ID
/// register; x86_64 Linux keeps IOAPIC IDs in their own namespace, so this
/// does not clash with local APIC ID 0.
const IOAPIC_ID: u8 = 0;
/// ISA IRQ of the PIT; on PCs it arrives at IOAPIC pin 2 (and so does KVM's in-kernel PIT).
const PIT_ISA_IRQ: u8 = 0;
/// GSI of the PIT's interrupt.
const PIT_GSI: u32 = 2;

// The legacy IRQ descriptors below carry a 16-bit mask of ISA IRQs.
const _: () = assert!(COM1_IRQ < 16 && I8042_IRQ < 16);

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The configuration asks for no vCPU at all.
    #[error("the ACPI tables need at least one vCPU")]
    NoCpus,
    /// A table would extend past the end of the ACPI region.
    #[error(
        "ACPI table {table} ({len} bytes at {addr:#x}) does not fit below {:#x}",
        ACPI_TABLES_END
    )]
    TablesTooLarge {
        /// Signature of the table that does not fit.
        table: &'static str,
        /// Where the table would have been written.
        addr: u64,
        /// Length of the table in bytes.
        len: usize,
    },
    /// Writing a table into guest memory failed.
    #[error("failed to write ACPI table {table} to guest memory at {addr:#x}")]
    GuestMemory {
        /// Signature of the table being written.
        table: &'static str,
        /// Guest physical address of the table.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// What the ACPI tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; vCPU `i` gets ACPI processor UID `i` and local APIC ID `i`.
    pub num_cpus: u8,
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into guest memory from
/// [`RSDP_START`]; returns the RSDP address.
///
/// The RSDP sits at [`RSDP_START`] (inside the BIOS area Linux scans, and
/// also what `boot_params.acpi_rsdp_addr` / PVH `rsdp_paddr` should carry);
/// the other tables follow it, and none extends past [`ACPI_TABLES_END`].
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    config: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    if config.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }

    let mut placer = TablePlacer::new(mem, RSDP_START.0 + Rsdp::len() as u64);
    let mut xsdt_entries: Vec<u64> = Vec::new();

    let dsdt = build_dsdt();
    let dsdt_addr = placer.place("DSDT", dsdt.as_slice())?;

    let fadt = build_fadt(dsdt_addr);
    xsdt_entries.push(placer.place("FACP", &fadt)?);

    let madt = build_madt(config.num_cpus);
    xsdt_entries.push(placer.place("APIC", madt.as_slice())?);

    // The ECAM window of PCI segment 0, bus 0.
    let mut mcfg = acpi_tables::mcfg::MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_MMCONFIG_START, 0, 0, 0);
    let mut mcfg_bytes = Vec::new();
    mcfg.to_aml_bytes(&mut mcfg_bytes);
    xsdt_entries.push(placer.place("MCFG", &mcfg_bytes)?);

    // Further tables go here: build them, `placer.place(..)` them and push
    // their address onto `xsdt_entries`.

    let xsdt = build_xsdt(&xsdt_entries);
    let xsdt_addr = placer.place("XSDT", xsdt.as_slice())?;

    let mut rsdp = Vec::with_capacity(Rsdp::len());
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, RSDP_START)
        .map_err(|source| AcpiError::GuestMemory {
            table: "RSDP",
            addr: RSDP_START.0,
            source,
        })?;

    Ok(RSDP_START)
}

/// Hands out aligned, bounds-checked addresses in the ACPI region and
/// writes tables there.
struct TablePlacer<'a, M: GuestMemory> {
    mem: &'a M,
    next: u64,
}

impl<'a, M: GuestMemory> TablePlacer<'a, M> {
    fn new(mem: &'a M, start: u64) -> Self {
        Self { mem, next: start }
    }

    /// Writes `bytes` at the next aligned address and returns that address.
    fn place(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = addr
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= ACPI_TABLES_END)
            .ok_or(AcpiError::TablesTooLarge {
                table,
                addr,
                len: bytes.len(),
            })?;
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::GuestMemory {
                table,
                addr,
                source,
            })?;
        self.next = end;
        Ok(addr)
    }
}

/// Starts a system description table with Nubo's OEM and creator IDs.
fn new_sdt(signature: [u8; 4], revision: u8) -> Sdt {
    let mut sdt = Sdt::new(
        signature,
        SDT_HEADER_LEN,
        revision,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_bytes(SDT_CREATOR_ID_OFFSET, &CREATOR_ID);
    sdt.write_u32(SDT_CREATOR_REVISION_OFFSET, CREATOR_REVISION);
    sdt
}

/// The XSDT, listing every table except the DSDT (which the FADT points to).
fn build_xsdt(entries: &[u64]) -> Sdt {
    let mut xsdt = new_sdt(*b"XSDT", XSDT_REVISION);
    for entry in entries {
        xsdt.append_slice(&entry.to_le_bytes());
    }
    xsdt
}

/// An 8-bit register at `port` in system I/O space.
fn io_port_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT of a hardware-reduced platform.
///
/// Linux powers off by writing `(SLP_TYP << 2) | SLP_EN (0x20)` to the sleep
/// control register, with `SLP_TYP` from `\_S5_`, and resets by writing
/// `RESET_VALUE` to `RESET_REG`.
fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        // X_DSDT only: ACPI says the 32-bit DSDT field must be 0 when X_DSDT is set.
        .dsdt_64(dsdt_addr)
        .flag(FadtFlags::HwReducedAcpi)
        .flag(FadtFlags::ResetRegSup);
    fadt.major_version = FADT_REVISION;
    fadt.fadt_minor_version = FADT_MINOR_REVISION;
    fadt.creator_id = CREATOR_ID;
    fadt.creator_revision = CREATOR_REVISION.to_le_bytes();
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = io_port_gas(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_port_gas(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_gas(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();

    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// The MADT: one local APIC per vCPU, the IOAPIC, the PC's IRQ0 -> GSI2
/// override and the LINT1 NMI wiring.
fn build_madt(num_cpus: u8) -> Sdt {
    let mut madt = new_sdt(*b"APIC", MADT_REVISION);
    // APIC_START is a 32-bit address by construction of the layout.
    madt.append_slice(&(APIC_START as u32).to_le_bytes());
    madt.append_slice(&MADT_PCAT_COMPAT.to_le_bytes());

    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        // Processor Local APIC: type, length, processor UID, APIC ID, flags.
        entries.extend_from_slice(&[MADT_TYPE_LOCAL_APIC, 8, cpu, cpu]);
        entries.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }

    // I/O APIC: type, length, ID, reserved, address, GSI base.
    entries.extend_from_slice(&[MADT_TYPE_IO_APIC, 12, IOAPIC_ID, 0]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entries.extend_from_slice(&0u32.to_le_bytes());

    // Interrupt Source Override: type, length, bus (ISA), source IRQ, GSI, flags.
    entries.extend_from_slice(&[MADT_TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, 0, PIT_ISA_IRQ]);
    entries.extend_from_slice(&PIT_GSI.to_le_bytes());
    entries.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());

    // Local APIC NMI: type, length, processor UID (all), flags, LINT#.
    entries.extend_from_slice(&[MADT_TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    entries.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    entries.push(NMI_LINT);

    madt.append_slice(&entries);
    madt
}

/// A legacy `IRQNoFlags` resource descriptor (edge, active high, exclusive),
/// what PC firmware uses for ISA devices.
struct IrqNoFlags {
    mask: u16,
}

impl IrqNoFlags {
    /// Descriptor for ISA IRQ `irq` (must be below 16).
    const fn new(irq: u32) -> Self {
        Self { mask: 1 << irq }
    }
}

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Small resource, type 4 (IRQ), length 2: just the IRQ mask.
        sink.byte(0x22);
        sink.word(self.mask);
    }
}

/// The first of the PCI configuration ports (0xCF8-0xCFF).
const PCI_CONFIG_PORT: u16 = 0xcf8;

/// The DSDT: the `\_S5_` soft-off package and the legacy ISA devices.
fn build_dsdt() -> Sdt {
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&ACPI_S5_SLP_TYP, &0u8, &0u8, &0u8]),
    );

    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = IrqNoFlags::new(COM1_IRQ);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_ddn = aml::Name::new("_DDN".into(), &"COM1");
    let com1_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
    );
    let com1 = aml::Device::new(
        "COM1".into(),
        vec![&com1_hid, &com1_uid, &com1_ddn, &com1_crs],
    );

    let kbd_data = aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let kbd_command = aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let kbd_irq = IrqNoFlags::new(I8042_IRQ);
    let ps2_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303"));
    let ps2_uid = aml::Name::new("_UID".into(), &0u8);
    let ps2_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&kbd_data, &kbd_command, &kbd_irq]),
    );
    let ps2 = aml::Device::new("PS2_".into(), vec![&ps2_hid, &ps2_uid, &ps2_crs]);

    // The power button, and the Generic Event Device whose interrupt tells
    // the guest it was pressed (hardware-reduced ACPI has no fixed button).
    let pwrb_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
    let pwrb_uid = aml::Name::new("_UID".into(), &0u8);
    let pwrb = aml::Device::new("PWRB".into(), vec![&pwrb_hid, &pwrb_uid]);
    let ged_hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let ged_uid = aml::Name::new("_UID".into(), &0u8);
    // Two interrupts: the power button's and PCI hot-plug's; Linux calls
    // _EVT with the number of the one that fired.
    let ged_irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let hotplug_irq = aml::Interrupt::new(true, true, false, false, HOTPLUG_IRQ);
    let ged_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&ged_irq, &hotplug_irq]),
    );
    let pwrb_path = aml::Path::new("\\_SB_.PWRB");
    let power_pressed = 0x80u8;
    let notify = aml::Notify::new(&pwrb_path, &power_pressed);
    let is_power = aml::Equal::new(&aml::Arg(0), &GED_IRQ);
    let if_power = aml::If::new(&is_power, vec![&notify]);
    let pcnt = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let is_hotplug = aml::Equal::new(&aml::Arg(0), &HOTPLUG_IRQ);
    let if_hotplug = aml::If::new(&is_hotplug, vec![&pcnt]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&if_power, &if_hotplug]);
    let ged = aml::Device::new("GED_".into(), vec![&ged_hid, &ged_uid, &ged_crs, &evt]);
    let phpr = RawAml(hotplug_controller());
    let slots = RawAml(hotplug_slots());

    // The PCI host bridge: bus 0, config ports 0xCF8-0xCFF, and the 32-bit
    // window where the VMM places BARs (Linux keeps BARs inside _CRS).
    let pci_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let pci_cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let pci_uid = aml::Name::new("_UID".into(), &0u8);
    let pci_seg = aml::Name::new("_SEG".into(), &0u8);
    let pci_bbn = aml::Name::new("_BBN".into(), &0u8);
    let bus_range = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, 8);
    let bar_window = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        MMIO_32BIT_START as u32,
        (PCI_MMCONFIG_START - 1) as u32,
        None,
    );
    let pci_crs = aml::Name::new(
        "_CRS".into(),
        &aml::ResourceTemplate::new(vec![&bus_range, &config_ports, &bar_window]),
    );
    let pci0 = aml::Device::new(
        "PCI0".into(),
        vec![
            &pci_hid, &pci_cid, &pci_uid, &pci_seg, &pci_bbn, &pci_crs, &slots,
        ],
    );

    let sb = aml::Scope::new(
        "\\_SB_".into(),
        vec![&com1, &ps2, &pwrb, &ged, &phpr, &pci0],
    );

    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    sb.to_aml_bytes(&mut body);

    let mut dsdt = new_sdt(*b"DSDT", DSDT_REVISION);
    dsdt.append_slice(&body);
    dsdt
}

/// AML already encoded, e.g. a list of objects built in a loop.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// The hot-pluggable PCI slots of bus 0 (slot 0 is the host bridge).
const HOTPLUG_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;

/// The ACPI name of slot `slot`'s device under `\_SB_.PCI0`.
fn slot_name(slot: u8) -> String {
    format!("S{slot:03}")
}

/// `\_SB_.PHPR`, the PCI hot-plug controller: its MMIO registers
/// (`devices::pci_hotplug`) as fields, and `PCEJ (slot)`, which `_EJ0`
/// calls to tell the VMM that the guest let go of a slot.
fn hotplug_controller() -> Vec<u8> {
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A06"));
    let uid = aml::Name::new("_UID".into(), &"PCI hot-plug controller");
    let mem = aml::Memory32Fixed::new(true, PCI_HOTPLUG_START as u32, PCI_HOTPLUG_SIZE as u32);
    let crs = aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&mem]));
    let region = aml::OpRegion::new(
        "PCST".into(),
        aml::OpRegionSpace::SystemMemory,
        &PCI_HOTPLUG_START,
        &PCI_HOTPLUG_SIZE,
    );
    let fields = aml::Field::new(
        "PCST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"PCIU", 32),
            aml::FieldEntry::Named(*b"PCID", 32),
            aml::FieldEntry::Named(*b"B0EJ", 32),
            aml::FieldEntry::Named(*b"PSEG", 32),
        ],
    );
    let mutex = aml::Mutex::new("BLCK".into(), 0);
    let acquire = aml::Acquire::new("BLCK".into(), 0xffff);
    let b0ej = aml::Path::new("B0EJ");
    let eject_bit = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(0));
    let release = aml::Release::new("BLCK".into());
    let pcej = aml::Method::new("PCEJ".into(), 1, true, vec![&acquire, &eject_bit, &release]);
    let device = aml::Device::new(
        "PHPR".into(),
        vec![&hid, &uid, &crs, &region, &fields, &mutex, &pcej],
    );
    let mut bytes = Vec::new();
    device.to_aml_bytes(&mut bytes);
    bytes
}

/// One device per hot-pluggable slot under `\_SB_.PCI0` (with `_ADR`,
/// `_SUN` and `_EJ0`, which is what makes Linux's acpiphp manage it), and
/// `PCNT`, which the GED's `_EVT` calls: it notifies "bus check" (1) for
/// every slot in `PCIU` and "eject request" (3) for every slot in `PCID`.
fn hotplug_slots() -> Vec<u8> {
    let mut bytes = Vec::new();
    for slot in HOTPLUG_SLOTS {
        let adr = aml::Name::new("_ADR".into(), &(u32::from(slot) << 16));
        let sun = aml::Name::new("_SUN".into(), &slot);
        let sun_path = aml::Path::new("_SUN");
        let pcej = aml::MethodCall::new("\\_SB_.PHPR.PCEJ".into(), vec![&sun_path]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&pcej]);
        aml::Device::new(slot_name(slot).as_str().into(), vec![&adr, &sun, &ej0])
            .to_aml_bytes(&mut bytes);
    }
    // DVNT (bitmap, event): Notify every slot whose bit is set.
    let mut dvnt_body = Vec::new();
    for slot in HOTPLUG_SLOTS {
        let bit = 1u32 << slot;
        let and = aml::And::new(&aml::ZERO, &aml::Arg(0), &bit);
        let path = aml::Path::new(&slot_name(slot));
        let notify = aml::Notify::new(&path, &aml::Arg(1));
        aml::If::new(&and, vec![&notify]).to_aml_bytes(&mut dvnt_body);
    }
    let dvnt_body = RawAml(dvnt_body);
    aml::Method::new("DVNT".into(), 2, true, vec![&dvnt_body]).to_aml_bytes(&mut bytes);
    let (pciu, pcid) = (
        aml::Path::new("\\_SB_.PHPR.PCIU"),
        aml::Path::new("\\_SB_.PHPR.PCID"),
    );
    let up = aml::MethodCall::new("DVNT".into(), vec![&pciu, &aml::ONE]);
    let down = aml::MethodCall::new("DVNT".into(), vec![&pcid, &3u8]);
    aml::Method::new("PCNT".into(), 0, true, vec![&up, &down]).to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: usize = 2 << 20;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Reads the whole table at `addr`, using the length in its header.
    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let header = read_bytes(mem, addr, 36);
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        assert!(len >= 36);
        assert!(addr + len as u64 <= ACPI_TABLES_END, "table past the end");
        read_bytes(mem, addr, len)
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    struct Tables {
        rsdp: Vec<u8>,
        xsdt: Vec<u8>,
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    /// Creates the tables and reads them back by following the pointers.
    fn tables(num_cpus: u8) -> Tables {
        let mem = guest_memory();
        let rsdp_addr = create_acpi_tables(&mem, &AcpiConfig { num_cpus }).unwrap();
        assert_eq!(rsdp_addr, RSDP_START);
        let rsdp = read_bytes(&mem, rsdp_addr.0, 36);
        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        assert_eq!(entries.len(), 3);
        let fadt = read_table(&mem, entries[0]);
        let madt = read_table(&mem, entries[1]);
        let mcfg = read_table(&mem, entries[2]);
        assert_eq!(&mcfg[..4], b"MCFG");
        assert_eq!(mcfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // The one allocation entry: ECAM base, segment 0, buses 0-0.
        assert_eq!(u64_at(&mcfg, 44), PCI_MMCONFIG_START);
        let dsdt = read_table(&mem, u64_at(&fadt, 140));
        Tables {
            rsdp,
            xsdt,
            fadt,
            madt,
            dsdt,
        }
    }

    /// Splits the MADT's interrupt controller structures into (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2 && off + len <= madt.len());
            entries.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, madt.len());
        entries
    }

    #[test]
    fn rsdp_is_valid() {
        let t = tables(1);
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(&t.rsdp[9..15], b"NUBO  ");
        assert_eq!(t.rsdp[15], 2, "revision");
        assert_eq!(sum(&t.rsdp[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(u32_at(&t.rsdp, 20), 36, "length");
        assert_eq!(sum(&t.rsdp), 0, "extended checksum");
    }

    #[test]
    fn tables_have_signatures_and_checksums() {
        let t = tables(2);
        for (table, signature) in [
            (&t.xsdt, b"XSDT"),
            (&t.fadt, b"FACP"),
            (&t.madt, b"APIC"),
            (&t.dsdt, b"DSDT"),
        ] {
            let name = String::from_utf8_lossy(signature);
            assert_eq!(&table[0..4], signature);
            assert_eq!(u32_at(table, 4) as usize, table.len(), "{name} length");
            assert_eq!(sum(table), 0, "{name} checksum");
            assert_eq!(&table[10..16], b"NUBO  ", "{name} OEM ID");
            assert_eq!(&table[16..24], b"NUBOVMM ", "{name} OEM table ID");
            assert_eq!(&table[28..32], b"NUBO", "{name} creator ID");
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let t = tables(1);
        let fadt = &t.fadt;
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "major revision");
        assert_eq!(fadt[131], 4, "minor revision");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16_at(fadt, 109);
        assert_ne!(boot_arch & (1 << 1), 0, "8042 present");
        // RESET_REG at 116: System I/O, 8 bits, byte access.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 120), u64::from(ACPI_RESET_PORT));
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(&fadt[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 248), 0x600);
        assert_eq!(&fadt[256..260], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 260), u64::from(ACPI_SLEEP_STATUS_PORT));
        assert_eq!(&fadt[268..276], b"NUBOVMM ");
        // 32-bit DSDT is 0 because X_DSDT is set.
        assert_eq!(u32_at(fadt, 40), 0);
        assert_ne!(u64_at(fadt, 140), 0);
    }

    #[test]
    fn madt_describes_cpus_and_ioapic() {
        for num_cpus in [1u8, 2, 16, 255] {
            let t = tables(num_cpus);
            assert_eq!(u32_at(&t.madt, 36) as u64, APIC_START);
            assert_eq!(u32_at(&t.madt, 40), MADT_PCAT_COMPAT);
            let entries = madt_entries(&t.madt);

            let lapics: Vec<_> = entries.iter().filter(|(ty, _)| *ty == 0).collect();
            assert_eq!(lapics.len(), num_cpus as usize);
            for (i, (_, e)) in lapics.iter().enumerate() {
                assert_eq!(e.len(), 8);
                assert_eq!(e[2] as usize, i, "processor UID");
                assert_eq!(e[3] as usize, i, "APIC ID");
                assert_eq!(u32_at(e, 4), 1, "enabled");
            }

            let ioapics: Vec<_> = entries.iter().filter(|(ty, _)| *ty == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let ioapic = &ioapics[0].1;
            assert_eq!(u32_at(ioapic, 4) as u64, IOAPIC_START);
            assert_eq!(u32_at(ioapic, 8), 0, "GSI base");

            let isos: Vec<_> = entries.iter().filter(|(ty, _)| *ty == 2).collect();
            assert_eq!(isos.len(), 1);
            assert_eq!(isos[0].1[3], 0, "source IRQ 0");
            assert_eq!(u32_at(&isos[0].1, 4), 2, "GSI 2");

            let nmis: Vec<_> = entries.iter().filter(|(ty, _)| *ty == 4).collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!(nmis[0].1[2], 0xff, "all processors");
            assert_eq!(nmis[0].1[5], 1, "LINT1");
        }
    }

    #[test]
    fn dsdt_has_s5_and_devices() {
        let t = tables(1);
        let contains = |needle: &[u8]| t.dsdt.windows(needle.len()).any(|w| w == needle);
        assert_eq!(t.dsdt[8], 2, "revision 2: 64-bit integers");
        // Name (_S5_, Package (4) { 5, 0, 0, 0 })
        assert!(contains(&[
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 5, 0, 0, 0
        ]));
        // EisaId ("PNP0501") and EisaId ("PNP0303") as DWord constants.
        assert!(contains(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(contains(&[0x0c, 0x41, 0xd0, 0x03, 0x03]));
        // IO (Decode16, 0x3F8, 0x3F8, 1, 8) and IRQNoFlags () {4}
        assert!(contains(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        assert!(contains(&[0x22, 0x10, 0x00]));
        // IRQNoFlags () {1}
        assert!(contains(&[0x22, 0x02, 0x00]));
        assert!(contains(b"_SB_"));
        // PCI hot-plug: the controller, its registers, a device per slot.
        for name in [
            &b"PHPR"[..],
            b"PCIU",
            b"PCID",
            b"B0EJ",
            b"PCEJ",
            b"PCNT",
            b"DVNT",
        ] {
            assert!(contains(name), "{}", String::from_utf8_lossy(name));
        }
        for slot in HOTPLUG_SLOTS {
            assert!(contains(slot_name(slot).as_bytes()), "slot {slot}");
        }
        assert!(!contains(b"S000"), "slot 0 is the host bridge");
    }

    #[test]
    fn zero_cpus_is_an_error() {
        let mem = guest_memory();
        let err = create_acpi_tables(&mem, &AcpiConfig { num_cpus: 0 }).unwrap_err();
        assert!(matches!(err, AcpiError::NoCpus));
    }

    #[test]
    fn tables_past_the_end_are_refused() {
        let mem = guest_memory();
        let mut placer = TablePlacer::new(&mem, ACPI_TABLES_END - 16);
        assert!(placer.place("TEST", &[0u8; 16]).is_ok());
        let err = placer.place("TEST", &[0u8; 1]).unwrap_err();
        assert!(matches!(err, AcpiError::TablesTooLarge { .. }));
    }

    #[test]
    fn too_little_guest_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let err = create_acpi_tables(&mem, &AcpiConfig { num_cpus: 1 }).unwrap_err();
        assert!(matches!(err, AcpiError::GuestMemory { .. }));
    }

    /// Disassembles every table with ACPICA's `iasl -d` and recompiles the
    /// result; needs `iasl` (Debian: `apt-get install acpica-tools`).
    #[test]
    #[ignore = "needs iasl from acpica-tools"]
    fn iasl_disassembles_tables() {
        use std::process::Command;

        let t = tables(4);
        let dir = std::env::temp_dir().join(format!("nubo-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        println!("writing tables to {}", dir.display());
        for (name, bytes) in [
            ("xsdt", &t.xsdt),
            ("facp", &t.fadt),
            ("apic", &t.madt),
            ("dsdt", &t.dsdt),
        ] {
            let dat = dir.join(format!("{name}.dat"));
            std::fs::write(&dat, bytes).unwrap();
            let out = Command::new("iasl").arg("-d").arg(&dat).output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("=== iasl -d {name}.dat\n{text}");
            assert!(out.status.success(), "iasl -d {name}.dat failed:\n{text}");
            let dsl = dir.join(format!("{name}.dsl"));
            println!("{}", std::fs::read_to_string(&dsl).unwrap());

            // Recompile: catches AML that disassembles but is not valid ASL.
            let out = Command::new("iasl")
                .arg("-p")
                .arg(dir.join(format!("{name}-recompiled")))
                .arg(&dsl)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("=== iasl {name}.dsl\n{text}");
            assert!(out.status.success(), "iasl {name}.dsl failed:\n{text}");
            assert!(text.contains(" 0 Errors"), "errors compiling {name}.dsl");
        }
        if std::env::var_os("NUBO_KEEP_ACPI").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
