//! One PCI function's configuration space: the type-0 header, memory BARs with
//! the sizing protocol, and a capability list.
//!
//! The space is 4 KiB (what ECAM exposes); everything past the 256-byte
//! standard space reads as zero, so a guest walking extended capabilities
//! finds none. Every byte has a write mask: guest writes only change the bits
//! the mask allows, which is all the BAR sizing protocol needs (writing all
//! ones to a BAR leaves `!(size - 1)` plus the read-only type bits).

use super::PciError;

/// Size of the configuration space of one function as seen through ECAM.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional (type-1 port I/O reachable) configuration space.
pub const STANDARD_CONFIG_SIZE: usize = 256;
/// Number of BAR registers of a type-0 header.
pub const NUM_BARS: usize = 6;

/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Command register bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register bit: the function may master the bus (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register bit: legacy INTx is disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const COMMAND_IO: u16 = 1 << 0;
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 1 << 4;
const BAR0: usize = 0x10;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
/// First byte available to capabilities.
const FIRST_CAPABILITY: usize = 0x40;
/// Bound on a capability walk: 192 bytes of capability space / 4-byte minimum.
const MAX_CAPABILITIES: usize = 48;

const BAR_MEM_64: u32 = 0b10 << 1;
const BAR_PREFETCHABLE: u32 = 1 << 3;
const BAR_MEM_FLAGS_MASK: u32 = 0xf;

/// Identity of a function, written into the read-only part of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Base class code (e.g. 0x06 bridge, 0x01 mass storage).
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// The kind of a memory BAR. (Nubo devices have no I/O-space BARs.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR (one register).
    Mem32,
    /// A 64-bit memory BAR (two registers: the low one at `index`, the high
    /// one at `index + 1`).
    Mem64,
}

/// A memory BAR and the address currently programmed into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// BAR register index, 0..=5 (the low register of a 64-bit BAR).
    pub index: u8,
    /// Guest-physical address currently in the register(s).
    pub addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Whether the BAR is marked prefetchable.
    pub prefetchable: bool,
}

#[derive(Debug, Clone, Copy)]
enum BarSlot {
    Empty,
    Bar {
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    },
    /// The high half of the 64-bit BAR in the previous slot.
    Upper,
}

/// The configuration space of one PCI function.
#[derive(Clone)]
pub struct PciConfiguration {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [BarSlot; NUM_BARS],
    last_capability: Option<usize>,
    next_capability: usize,
}

impl std::fmt::Debug for PciConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfiguration")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(0)))
            .field("device", &format_args!("{:#06x}", self.read_u16(2)))
            .field("bars", &self.bars())
            .finish()
    }
}

impl PciConfiguration {
    /// Creates a type-0 header for `header` with no BARs and no capabilities.
    /// The command register starts at zero (memory decoding off), as after reset.
    pub fn new(header: &PciHeader) -> Self {
        let mut c = Self {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [BarSlot::Empty; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.set_u16(0x00, header.vendor_id);
        c.set_u16(0x02, header.device_id);
        c.set_u8(0x08, header.revision);
        c.set_u8(0x09, header.prog_if);
        c.set_u8(0x0a, header.subclass);
        c.set_u8(0x0b, header.class);
        c.set_u16(0x2c, header.subsystem_vendor_id);
        c.set_u16(0x2e, header.subsystem_id);
        let cmd_mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.set_wmask(COMMAND, &cmd_mask.to_le_bytes());
        c.set_wmask(INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Declares memory BAR `index` of `size` bytes, initially at `addr`.
    ///
    /// `size` must be a power of two of at least 16 bytes and `addr` aligned
    /// to it; a 32-bit BAR must lie below 4 GiB; a 64-bit BAR also takes
    /// register `index + 1`.
    pub fn add_bar(
        &mut self,
        index: u8,
        addr: u64,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let i = usize::from(index);
        let slots = match kind {
            BarKind::Mem32 => 1,
            BarKind::Mem64 => 2,
        };
        let bad = PciError::InvalidBar { index, addr, size };
        if i + slots > NUM_BARS
            || !size.is_power_of_two()
            || size < 16
            || addr & (size - 1) != 0
            || (kind == BarKind::Mem32 && addr.checked_add(size).is_none_or(|e| e > 1 << 32))
        {
            return Err(bad);
        }
        if self.bars[i..i + slots]
            .iter()
            .any(|s| !matches!(s, BarSlot::Empty))
        {
            return Err(bad);
        }
        let mut flags = if prefetchable { BAR_PREFETCHABLE } else { 0 };
        if kind == BarKind::Mem64 {
            flags |= BAR_MEM_64;
        }
        let size_mask = !(size - 1);
        let reg = BAR0 + 4 * i;
        self.set_u32(reg, (addr as u32 & !BAR_MEM_FLAGS_MASK) | flags);
        self.set_wmask(
            reg,
            &((size_mask as u32) & !BAR_MEM_FLAGS_MASK).to_le_bytes(),
        );
        self.bars[i] = BarSlot::Bar {
            size,
            kind,
            prefetchable,
        };
        if kind == BarKind::Mem64 {
            self.set_u32(reg + 4, (addr >> 32) as u32);
            self.set_wmask(reg + 4, &((size_mask >> 32) as u32).to_le_bytes());
            self.bars[i + 1] = BarSlot::Upper;
        }
        Ok(())
    }

    /// Appends a capability with id `cap_id` whose bytes after the id and
    /// next-pointer are `body`, and links it into the list. Returns its offset.
    /// The capability is read-only; use [`PciConfiguration::set_wmask`] for
    /// guest-writable fields.
    pub fn add_capability(&mut self, cap_id: u8, body: &[u8]) -> Result<u8, PciError> {
        let offset = self.next_capability;
        let len = body.len() + 2;
        let end = offset + len;
        if end > STANDARD_CONFIG_SIZE {
            return Err(PciError::CapabilitySpaceFull);
        }
        self.set_u8(offset, cap_id);
        self.set_u8(offset + 1, 0);
        self.regs[offset + 2..end].copy_from_slice(body);
        let offset_u8 = offset as u8; // < 256, checked above
        match self.last_capability {
            Some(prev) => self.set_u8(prev + 1, offset_u8),
            None => {
                self.set_u8(CAPABILITIES_POINTER, offset_u8);
                let status = self.read_u16(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = (end + 3) & !3;
        Ok(offset_u8)
    }

    /// Walks the capability list: `(id, offset)` of each capability, bounded
    /// so that a looping list (which a guest cannot create, but still) ends.
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut ptr = self.read_u8(CAPABILITIES_POINTER) & !3;
        while ptr != 0 && out.len() < MAX_CAPABILITIES {
            let off = usize::from(ptr);
            out.push((self.read_u8(off), ptr));
            ptr = self.read_u8(off + 1) & !3;
        }
        out
    }

    /// Makes the bits set in `mask` at `offset..` guest-writable (device side;
    /// out-of-range parts are ignored).
    pub fn set_wmask(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(b) = self.wmask.get_mut(offset + i) {
                *b = *m;
            }
        }
    }

    /// Guest read of `data.len()` bytes at `offset`. Bytes past the 4 KiB
    /// space read as 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Guest write of `data` at `offset`: only bits of the write mask change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else {
                return;
            };
            if let (Some(m), Some(r)) = (self.wmask.get(o).copied(), self.regs.get_mut(o)) {
                *r = (*r & !m) | (v & m);
            }
        }
    }

    /// Reads a byte (0xff past the end).
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// Reads a little-endian 16-bit register.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian 32-bit register.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Device-side write of a byte, ignoring the write mask.
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Device-side write of a 16-bit register, ignoring the write mask.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Device-side write of a 32-bit register, ignoring the write mask.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_bytes(&mut self, offset: usize, v: &[u8]) {
        for (i, b) in v.iter().enumerate() {
            if let Some(r) = self.regs.get_mut(offset + i) {
                *r = *b;
            }
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Whether the guest enabled memory decoding (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Every declared BAR with the address currently programmed in it.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..NUM_BARS).filter_map(|i| self.bar(i as u8)).collect()
    }

    /// BAR `index` with its current address, if one is declared there.
    pub fn bar(&self, index: u8) -> Option<PciBar> {
        let i = usize::from(index);
        let BarSlot::Bar {
            size,
            kind,
            prefetchable,
        } = *self.bars.get(i)?
        else {
            return None;
        };
        let reg = BAR0 + 4 * i;
        let mut addr = u64::from(self.read_u32(reg) & !BAR_MEM_FLAGS_MASK);
        if kind == BarKind::Mem64 {
            addr |= u64::from(self.read_u32(reg + 4)) << 32;
        }
        Some(PciBar {
            index,
            addr,
            size,
            kind,
            prefetchable,
        })
    }

    /// Whether BAR `bar`'s registers hold the all-ones pattern of a sizing
    /// probe rather than an address.
    fn bar_is_sizing(&self, bar: &PciBar) -> bool {
        let reg = BAR0 + 4 * usize::from(bar.index);
        let size_mask = !(bar.size - 1);
        let low_mask = (size_mask as u32) & !BAR_MEM_FLAGS_MASK;
        let low_probe = self.read_u32(reg) & !BAR_MEM_FLAGS_MASK == low_mask;
        let high_probe = bar.kind == BarKind::Mem64
            && (size_mask >> 32) as u32 != 0
            && self.read_u32(reg + 4) == (size_mask >> 32) as u32;
        low_probe || high_probe
    }

    /// The BARs the function currently decodes: none while memory decoding is
    /// off, and not a BAR that holds a sizing probe (all ones).
    pub fn mapped_bars(&self) -> Vec<PciBar> {
        if !self.memory_enabled() {
            return Vec::new();
        }
        self.bars()
            .into_iter()
            .filter(|b| !self.bar_is_sizing(b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class: 0x01,
            subclass: 0x80,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        }
    }

    #[test]
    fn header_fields_are_read_only() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        c.write(0, &[0xff; 4]);
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0180_0001);
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), 0x0407);
        c.write(INTERRUPT_LINE, &[5]);
        assert_eq!(c.read_u8(INTERRUPT_LINE), 5);
        // Extended space reads zero; past the end reads ones; writes are dropped.
        assert_eq!(c.read_u32(0x100), 0);
        c.write(0xffe, &[1, 2, 3, 4]);
        let mut b = [0u8; 4];
        c.read(0xffe, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        c.write(usize::MAX, &[1, 2]);
        c.read(usize::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, 0xc000_0000, 0x1_0000, BarKind::Mem32, false)
            .unwrap();
        c.add_bar(2, 0x1_2000_0000, 0x10_0000, BarKind::Mem64, true)
            .unwrap();
        // BAR0: all ones -> size mask, type bits kept.
        c.write(0x10, &[0xff; 4]);
        assert_eq!(c.read_u32(0x10), 0xffff_0000);
        c.write(0x10, &0xc001_0000u32.to_le_bytes());
        assert_eq!(c.bar(0).unwrap().addr, 0xc001_0000);
        // Low bits below the size are not writable.
        c.write(0x10, &0xc001_1234u32.to_le_bytes());
        assert_eq!(c.read_u32(0x10), 0xc001_0000);
        // BAR2/3: 64-bit prefetchable.
        assert_eq!(c.read_u32(0x18), 0x2000_0000 | 0b1100);
        assert_eq!(c.read_u32(0x1c), 1);
        c.write(0x18, &[0xff; 4]);
        c.write(0x1c, &[0xff; 4]);
        assert_eq!(c.read_u32(0x18), 0xfff0_000c);
        assert_eq!(c.read_u32(0x1c), 0xffff_ffff);
        // Byte-wise writes work too.
        for (i, b) in 0x2000_0000u32.to_le_bytes().iter().enumerate() {
            c.write(0x18 + i, &[*b]);
        }
        c.write(0x1c, &2u32.to_le_bytes());
        let bar = c.bar(2).unwrap();
        assert_eq!(
            (bar.addr, bar.size, bar.kind),
            (0x2_2000_0000, 0x10_0000, BarKind::Mem64)
        );
        assert!(c.bar(3).is_none(), "upper half is not a BAR of its own");
        // Unused BAR and ROM BAR read zero after sizing: not implemented.
        c.write(0x14, &[0xff; 4]);
        c.write(0x30, &[0xff; 4]);
        assert_eq!((c.read_u32(0x14), c.read_u32(0x30)), (0, 0));
        assert_eq!(c.bars().len(), 2);
    }

    #[test]
    fn mapped_bars_follow_command_and_skip_probes() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, 0xc000_0000, 0x1000, BarKind::Mem64, false)
            .unwrap();
        assert!(c.mapped_bars().is_empty(), "decoding off after reset");
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.mapped_bars().len(), 1);
        c.write(0x10, &[0xff; 4]);
        assert!(c.mapped_bars().is_empty());
        c.write(0x10, &0xc000_0000u32.to_le_bytes());
        c.write(0x14, &[0xff; 4]);
        assert!(c.mapped_bars().is_empty());
        c.write(0x14, &[0; 4]);
        assert_eq!(c.mapped_bars()[0].addr, 0xc000_0000);
    }

    #[test]
    fn rejects_bad_bars() {
        let mut c = PciConfiguration::new(&header());
        assert!(c.add_bar(5, 0, 0x1000, BarKind::Mem64, false).is_err());
        assert!(c.add_bar(6, 0, 0x1000, BarKind::Mem32, false).is_err());
        assert!(c.add_bar(0, 0x800, 0x1000, BarKind::Mem32, false).is_err());
        assert!(c.add_bar(0, 0, 0x1800, BarKind::Mem32, false).is_err());
        assert!(c.add_bar(0, 0, 8, BarKind::Mem32, false).is_err());
        assert!(c
            .add_bar(0, 0x1_0000_0000, 0x1000, BarKind::Mem32, false)
            .is_err());
        c.add_bar(0, 0, 0x1000, BarKind::Mem64, false).unwrap();
        assert!(c.add_bar(1, 0, 0x1000, BarKind::Mem32, false).is_err());
    }

    #[test]
    fn capability_chain() {
        let mut c = PciConfiguration::new(&header());
        assert!(c.capabilities().is_empty());
        let a = c
            .add_capability(0x09, &[14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        let b = c.add_capability(0x11, &[0; 10]).unwrap();
        assert_eq!((a, b), (0x40, 0x50));
        assert_eq!(c.read_u16(STATUS) & STATUS_CAP_LIST, STATUS_CAP_LIST);
        assert_eq!(c.capabilities(), vec![(0x09, 0x40), (0x11, 0x50)]);
        // Read-only: the guest cannot relink the list.
        c.write(0x41, &[0x40]);
        assert_eq!(c.capabilities().len(), 2);
        let mut n = 0;
        while c.add_capability(0x09, &[0; 18]).is_ok() {
            n += 1;
        }
        assert!(n > 0 && c.capabilities().len() == 2 + n);
    }
}
