//! The port I/O bus: routes guest `in`/`out` accesses to the device that owns
//! the port range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers port I/O accesses inside the range it was inserted at.
pub trait PioDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the device's range.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the device's range.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Errors of building the port I/O bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a device already on the bus.
    #[error("port range {base:#x}+{len} overlaps a device already on the bus")]
    Overlap {
        /// First port of the rejected range.
        base: u16,
        /// Length of the rejected range.
        len: u16,
    },
    /// The range is empty or runs past port 0xffff.
    #[error("port range {base:#x}+{len} is empty or past the end of the port space")]
    BadRange {
        /// First port of the rejected range.
        base: u16,
        /// Length of the rejected range.
        len: u16,
    },
}

/// A shared handle to a device on the bus (vCPU threads access it concurrently).
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

/// Maps port ranges to devices. Accesses to ports no device owns read as all
/// ones and writes are dropped, as on real hardware.
#[derive(Default, Clone)]
pub struct PioBus {
    ranges: BTreeMap<u16, (u16, SharedPioDevice)>,
}

impl PioBus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `base..base + len`.
    pub fn insert(&mut self, device: SharedPioDevice, base: u16, len: u16) -> Result<(), BusError> {
        let end = base
            .checked_add(len.saturating_sub(1))
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let overlaps = self
            .ranges
            .range(..=end)
            .next_back()
            .is_some_and(|(&b, &(l, _))| u32::from(b) + u32::from(l) > u32::from(base));
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, port: u16, size: usize) -> Option<(u16, &SharedPioDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=port).next_back()?;
        let offset = port - base;
        (usize::from(offset) + size <= usize::from(*len)).then_some((offset, dev))
    }

    /// Handles a guest read of `data.len()` bytes at `port`; returns whether a
    /// device owned the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Handles a guest write of `data` at `port`; returns whether a device
    /// owned the port.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device whose previous
/// user panicked is still the best state we have.
fn lock(dev: &SharedPioDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device that answers memory-mapped I/O accesses inside the range it was
/// inserted at.
pub trait MmioDevice: Send {
    /// Reads `data.len()` bytes at `offset` from `base`, the start of the
    /// device's range on the bus.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from `base`, the start of the device's range.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A shared handle to a device on the MMIO bus.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// Errors of changing the MMIO bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioBusError {
    /// The new range overlaps a device already on the bus.
    #[error("MMIO range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or runs past the end of the 64-bit address space.
    #[error("MMIO range {base:#x}+{len:#x} is empty or past the end of the address space")]
    BadRange {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device starts at this address.
    #[error("no device on the MMIO bus starts at {0:#x}")]
    NotFound(u64),
}

/// Maps guest-physical address ranges to devices. Reads of addresses no
/// device owns return all ones and writes are dropped.
///
/// Unlike [`PioBus`], the map sits behind a lock so that ranges can be
/// inserted, removed and moved (`update`) through a shared reference while
/// vCPU threads use the bus. A device is called without that lock held, so a
/// device may itself change the bus (for example when the guest moves a BAR).
///
/// Nubo's PCI layer does not need this for BARs: it routes BAR accesses
/// itself (see `pci::PciBarWindow`), and only the ECAM window and the BAR
/// windows are put on this bus, once.
#[derive(Default)]
pub struct MmioBus {
    ranges: std::sync::RwLock<BTreeMap<u64, (u64, SharedMmioDevice)>>,
}

impl MmioBus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, (u64, SharedMmioDevice)>> {
        self.ranges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, (u64, SharedMmioDevice)>> {
        self.ranges.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check_free(
        map: &BTreeMap<u64, (u64, SharedMmioDevice)>,
        base: u64,
        len: u64,
        ignore: Option<u64>,
    ) -> Result<(), MmioBusError> {
        let last = base
            .checked_add(len.saturating_sub(1))
            .filter(|_| len > 0)
            .ok_or(MmioBusError::BadRange { base, len })?;
        let overlaps = map
            .range(..=last)
            .rev()
            .filter(|(b, _)| Some(**b) != ignore)
            .take(1)
            .any(|(&b, &(l, _))| u128::from(b) + u128::from(l) > u128::from(base));
        if overlaps {
            return Err(MmioBusError::Overlap { base, len });
        }
        Ok(())
    }

    /// Puts `device` at addresses `base..base + len`.
    pub fn insert(
        &self,
        device: SharedMmioDevice,
        base: u64,
        len: u64,
    ) -> Result<(), MmioBusError> {
        let mut map = self.map_mut();
        Self::check_free(&map, base, len, None)?;
        map.insert(base, (len, device));
        Ok(())
    }

    /// Removes the device whose range starts at `base`; returns it and the
    /// length of its range.
    pub fn remove(&self, base: u64) -> Result<(SharedMmioDevice, u64), MmioBusError> {
        self.map_mut()
            .remove(&base)
            .map(|(len, dev)| (dev, len))
            .ok_or(MmioBusError::NotFound(base))
    }

    /// Moves the device whose range starts at `old_base` to `new_base`,
    /// keeping its length. On error the bus is unchanged.
    pub fn update(&self, old_base: u64, new_base: u64) -> Result<(), MmioBusError> {
        let mut map = self.map_mut();
        let len = map
            .get(&old_base)
            .map(|(len, _)| *len)
            .ok_or(MmioBusError::NotFound(old_base))?;
        Self::check_free(&map, new_base, len, Some(old_base))?;
        if let Some(entry) = map.remove(&old_base) {
            map.insert(new_base, entry);
        }
        Ok(())
    }

    /// Finds the device owning `[addr, addr + size)` entirely; returns its
    /// base, the offset of `addr` in it and a handle (the map lock is released
    /// before the device is called).
    fn find(&self, addr: u64, size: usize) -> Option<(u64, u64, SharedMmioDevice)> {
        let map = self.map();
        let (&base, (len, dev)) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        (end <= *len).then(|| (base, offset, dev.clone()))
    }

    /// Handles a guest read of `data.len()` bytes at `addr`; returns whether a
    /// device owned the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(base, offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Handles a guest write of `data` at `addr`; returns whether a device
    /// owned the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(base, offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, Vec<u8>)>);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = PioBus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x3ff, 1),
            Err(BusError::Overlap {
                base: 0x3ff,
                len: 1
            })
        );
        bus.insert(dev.clone(), 0x400, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![7])]);
        // An access that straddles the end of a range is not the device's.
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert_eq!(w, [0xff, 0xff]);
        assert!(!bus.write(0x500, &[1]));
    }

    #[test]
    fn rejects_bad_ranges() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = PioBus::new();
        assert!(bus.insert(dev.clone(), 0x10, 0).is_err());
        assert!(bus.insert(dev.clone(), 0xffff, 2).is_err());
        bus.insert(dev, 0xffff, 1).unwrap();
    }

    struct MEcho(Vec<(u64, u64, Vec<u8>)>);
    impl MmioDevice for MEcho {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.0.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn mmio_routes_and_moves() {
        let dev = Arc::new(Mutex::new(MEcho(vec![])));
        let bus = MmioBus::new();
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10ff, 1),
            Err(MmioBusError::Overlap {
                base: 0x10ff,
                len: 1
            })
        );
        assert!(bus.insert(dev.clone(), 0x0f00, 0x101).is_err());
        assert!(bus.insert(dev.clone(), 0, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());
        bus.insert(dev.clone(), u64::MAX, 1).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0x1004, &mut b));
        assert_eq!(b, [4; 4]);
        assert!(!bus.read(0x10fe, &mut b), "straddles the end");
        assert_eq!(b, [0xff; 4]);
        assert!(bus.write(0x1008, &[1, 2]));
        // Move onto itself (overlapping the old range) is fine.
        bus.update(0x1000, 0x1080).unwrap();
        assert!(!bus.write(0x1000, &[1]));
        assert!(bus.write(0x1080, &[3]));
        assert_eq!(
            bus.update(0x1000, 0x2000),
            Err(MmioBusError::NotFound(0x1000))
        );
        assert!(bus.update(0x1080, u64::MAX - 0x10).is_err());
        let (_, len) = bus.remove(0x1080).unwrap();
        assert_eq!(len, 0x100);
        assert!(!bus.write(0x1080, &[3]));
        assert_eq!(
            dev.lock().unwrap().0,
            vec![(0x1000, 8, vec![1, 2]), (0x1080, 0, vec![3])]
        );
    }
}
