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
}
