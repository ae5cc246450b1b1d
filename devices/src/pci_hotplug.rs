//! The PCI hot-plug registers: a small MMIO block that the guest's ACPI
//! code (the DSDT's `\_SB_.PHPR` device, see `vmm/src/acpi.rs`) reads when
//! the hot-plug interrupt fires, and writes when it has let go of a device.
//!
//! | offset | name | access | meaning |
//! |---|---|---|---|
//! | 0x0 | `PCIU` | read, clears on read | slots with a device just added (bit n = slot n) |
//! | 0x4 | `PCID` | read, clears on read | slots whose device the VMM wants removed |
//! | 0x8 | `B0EJ` | write | slots the guest ejected (`_EJ0`), as a bitmap |
//! | 0xc | `PSEG` | read/write | the PCI segment (always 0; kept for the AML) |
//!
//! Every register is 32 bits wide; other sizes and offsets read as zero and
//! writes to them are ignored. An eject is recorded in a bitmap the VMM takes
//! with [`PciHotplug::take_ejected`], and announced on the eject event.

use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::MmioDevice;

/// Size of the register block in bytes.
pub const PCI_HOTPLUG_SIZE: u64 = 0x10;
/// Offset of `PCIU`, the slots-up bitmap.
pub const PCIU_OFFSET: u64 = 0x0;
/// Offset of `PCID`, the slots-down bitmap.
pub const PCID_OFFSET: u64 = 0x4;
/// Offset of `B0EJ`, the eject register.
pub const B0EJ_OFFSET: u64 = 0x8;
/// Offset of `PSEG`, the segment selector.
pub const PSEG_OFFSET: u64 = 0xc;

/// Slot 0 is the host bridge: never hot-plugged.
const SLOT_MASK: u32 = !1;

#[derive(Default)]
struct Bitmaps {
    up: u32,
    down: u32,
    ejected: u32,
    segment: u32,
}

/// The hot-plug registers, shared between the MMIO bus (vCPUs) and the VMM.
#[derive(Clone)]
pub struct PciHotplug {
    state: Arc<Mutex<Bitmaps>>,
    eject: Arc<EventFd>,
}

impl std::fmt::Debug for PciHotplug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("PciHotplug")
            .field("up", &format_args!("{:#x}", s.up))
            .field("down", &format_args!("{:#x}", s.down))
            .field("ejected", &format_args!("{:#x}", s.ejected))
            .finish()
    }
}

impl PciHotplug {
    /// A register block that writes `eject` whenever the guest ejects a slot.
    pub fn new(eject: EventFd) -> Self {
        Self {
            state: Arc::new(Mutex::new(Bitmaps::default())),
            eject: Arc::new(eject),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Bitmaps> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `slot` (1..=31) as just added; the guest sees it in `PCIU`.
    pub fn slot_up(&self, slot: u8) {
        if let Some(bit) = slot_bit(slot) {
            let mut s = self.lock();
            s.up |= bit;
            s.down &= !bit;
        }
    }

    /// Asks the guest to release `slot` (1..=31); it sees it in `PCID`.
    pub fn slot_down(&self, slot: u8) {
        if let Some(bit) = slot_bit(slot) {
            let mut s = self.lock();
            s.down |= bit;
            s.up &= !bit;
        }
    }

    /// The slots the guest ejected since the last call (bit n = slot n).
    pub fn take_ejected(&self) -> u32 {
        std::mem::take(&mut self.lock().ejected)
    }

    /// The event written on every eject (to watch it in an event loop).
    pub fn eject_event(&self) -> &EventFd {
        &self.eject
    }

    /// Forgets everything (a new boot of the guest).
    pub fn reset(&self) {
        *self.lock() = Bitmaps::default();
    }
}

/// The bitmap bit of a hot-pluggable slot.
fn slot_bit(slot: u8) -> Option<u32> {
    1u32.checked_shl(u32::from(slot))
        .filter(|bit| bit & SLOT_MASK != 0)
}

impl MmioDevice for PciHotplug {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = if data.len() == 4 {
            let mut s = self.lock();
            match offset {
                PCIU_OFFSET => std::mem::take(&mut s.up),
                PCID_OFFSET => std::mem::take(&mut s.down),
                PSEG_OFFSET => s.segment,
                _ => 0,
            }
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (d, b) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *b;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            B0EJ_OFFSET => {
                let slots = value & SLOT_MASK;
                if slots == 0 {
                    return;
                }
                self.lock().ejected |= slots;
                tracing::debug!(slots = format_args!("{slots:#x}"), "the guest ejected");
                if let Err(e) = self.eject.write(1) {
                    tracing::warn!(error = %e, "cannot signal an eject");
                }
            }
            PSEG_OFFSET => self.lock().segment = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn regs() -> PciHotplug {
        PciHotplug::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    fn read(dev: &mut PciHotplug, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        dev.read(0, offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn up_and_down_clear_on_read() {
        let mut dev = regs();
        dev.slot_up(3);
        dev.slot_up(5);
        dev.slot_down(7);
        assert_eq!(read(&mut dev, PCIU_OFFSET), 1 << 3 | 1 << 5);
        assert_eq!(read(&mut dev, PCIU_OFFSET), 0, "cleared by the read");
        assert_eq!(read(&mut dev, PCID_OFFSET), 1 << 7);
        assert_eq!(read(&mut dev, PCID_OFFSET), 0);
    }

    #[test]
    fn down_cancels_a_pending_up() {
        let mut dev = regs();
        dev.slot_up(4);
        dev.slot_down(4);
        assert_eq!(read(&mut dev, PCIU_OFFSET), 0);
        assert_eq!(read(&mut dev, PCID_OFFSET), 1 << 4);
    }

    #[test]
    fn eject_is_recorded_and_signalled() {
        let mut dev = regs();
        dev.write(0, B0EJ_OFFSET, &(1u32 << 6).to_le_bytes());
        assert_eq!(dev.eject_event().read().unwrap(), 1);
        assert_eq!(dev.take_ejected(), 1 << 6);
        assert_eq!(dev.take_ejected(), 0, "taken once");
    }

    #[test]
    fn slot_zero_and_odd_accesses_are_ignored() {
        let mut dev = regs();
        dev.slot_up(0);
        dev.slot_up(32);
        dev.slot_up(255);
        assert_eq!(read(&mut dev, PCIU_OFFSET), 0);
        dev.write(0, B0EJ_OFFSET, &1u32.to_le_bytes());
        dev.write(0, B0EJ_OFFSET, &[0xff, 0xff]);
        dev.write(0, 0x40, &[0xff; 4]);
        assert_eq!(dev.take_ejected(), 0);
        assert!(dev.eject_event().read().is_err(), "no eject signalled");
        dev.slot_up(2);
        let mut short = [0xaau8; 2];
        dev.read(0, PCIU_OFFSET, &mut short);
        assert_eq!(short, [0, 0], "a 16-bit read is not a register read");
        let mut past = [0xaau8; 4];
        dev.read(0, 0x100, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(read(&mut dev, PCIU_OFFSET), 1 << 2, "still pending");
    }

    #[test]
    fn segment_is_read_write() {
        let mut dev = regs();
        dev.write(0, PSEG_OFFSET, &0u32.to_le_bytes());
        assert_eq!(read(&mut dev, PSEG_OFFSET), 0);
        dev.reset();
        assert_eq!(read(&mut dev, PSEG_OFFSET), 0);
    }
}
