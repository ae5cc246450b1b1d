//! A first-fit allocator of aligned address ranges, for placing BARs in the
//! 32-bit MMIO hole or in a 64-bit window above RAM.
//!
//! (The rust-vmm `vm-allocator` crate has an equivalent; this is small enough
//! that one fewer dependency wins.)

use std::collections::BTreeMap;

/// Errors of the address allocator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// The window is empty or its end is before its start.
    #[error("invalid allocator window [{start:#x}, {end:#x})")]
    InvalidWindow {
        /// Start of the window.
        start: u64,
        /// End (exclusive) of the window.
        end: u64,
    },
    /// Size zero, or an alignment that is not a power of two.
    #[error("invalid allocation request: size {size:#x}, alignment {align:#x}")]
    InvalidRequest {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// No free range of that size and alignment is left.
    #[error("no free {size:#x}-byte range aligned to {align:#x} is left")]
    Exhausted {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// The range overlaps an allocated one or leaves the window.
    #[error("range {addr:#x}+{size:#x} is not free")]
    NotFree {
        /// Start of the rejected range.
        addr: u64,
        /// Size of the rejected range.
        size: u64,
    },
    /// No allocation starts at this address.
    #[error("nothing is allocated at {0:#x}")]
    NotAllocated(u64),
}

/// Hands out aligned, non-overlapping ranges of `[start, end)`.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    start: u64,
    end: u64,
    /// Allocated ranges: start -> size.
    used: BTreeMap<u64, u64>,
}

impl AddressAllocator {
    /// Creates an allocator for the window `[start, end)`.
    pub fn new(start: u64, end: u64) -> Result<Self, AllocError> {
        if end <= start {
            return Err(AllocError::InvalidWindow { start, end });
        }
        Ok(Self {
            start,
            end,
            used: BTreeMap::new(),
        })
    }

    /// Allocates `size` bytes aligned to `align` (a power of two), lowest
    /// address first.
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        if size == 0 || !align.is_power_of_two() {
            return Err(AllocError::InvalidRequest { size, align });
        }
        let mut candidate = align_up(self.start, align);
        for (&base, &len) in &self.used {
            let Some(c) = candidate else { break };
            match c.checked_add(size) {
                Some(e) if e <= base => break,
                _ => {
                    candidate = base
                        .checked_add(len)
                        .and_then(|n| align_up(n.max(c), align))
                }
            }
        }
        match candidate {
            Some(c) if c.checked_add(size).is_some_and(|e| e <= self.end) => {
                self.used.insert(c, size);
                Ok(c)
            }
            _ => Err(AllocError::Exhausted { size, align }),
        }
    }

    /// Reserves the exact range `addr..addr + size` (e.g. a BAR placed by
    /// hand).
    pub fn reserve(&mut self, addr: u64, size: u64) -> Result<(), AllocError> {
        let not_free = AllocError::NotFree { addr, size };
        let end = addr
            .checked_add(size)
            .filter(|&e| size > 0 && addr >= self.start && e <= self.end)
            .ok_or(AllocError::NotFree { addr, size })?;
        let overlaps = self
            .used
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &l)| u128::from(b) + u128::from(l) > u128::from(addr));
        if overlaps {
            return Err(not_free);
        }
        self.used.insert(addr, size);
        Ok(())
    }

    /// Frees the allocation starting at `addr`; returns its size.
    pub fn free(&mut self, addr: u64) -> Result<u64, AllocError> {
        self.used
            .remove(&addr)
            .ok_or(AllocError::NotAllocated(addr))
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_first_fit() {
        let mut a = AddressAllocator::new(0xc000_0000, 0xe000_0000).unwrap();
        assert_eq!(a.allocate(0x1000, 0x1000), Ok(0xc000_0000));
        assert_eq!(a.allocate(0x1_0000, 0x1_0000), Ok(0xc001_0000));
        // Fills the hole before the 64 KiB one.
        assert_eq!(a.allocate(0x1000, 0x1000), Ok(0xc000_1000));
        assert_eq!(a.free(0xc000_0000), Ok(0x1000));
        assert_eq!(a.allocate(0x800, 0x800), Ok(0xc000_0000));
        assert_eq!(
            a.allocate(0x2000_0000, 0x1000),
            Err(AllocError::Exhausted {
                size: 0x2000_0000,
                align: 0x1000
            })
        );
        assert_eq!(a.free(0x1234), Err(AllocError::NotAllocated(0x1234)));
    }

    #[test]
    fn exact_fit_at_window_end_and_bad_requests() {
        let mut a = AddressAllocator::new(0x1000, 0x3000).unwrap();
        assert_eq!(a.allocate(0x2000, 0x1000), Ok(0x1000));
        assert!(a.allocate(1, 1).is_err());
        assert!(a.allocate(0, 1).is_err());
        assert!(a.allocate(1, 3).is_err());
        assert!(AddressAllocator::new(5, 5).is_err());
        let mut top = AddressAllocator::new(u64::MAX - 0xfff, u64::MAX).unwrap();
        assert!(
            top.allocate(0x1000, 0x1000).is_err(),
            "would need end > u64::MAX"
        );
        assert_eq!(top.allocate(0x10, 0x10), Ok(u64::MAX - 0xfff));
        assert!(top.allocate(0x10, 1 << 63).is_err());
    }

    #[test]
    fn reserve_then_allocate_around() {
        let mut a = AddressAllocator::new(0, 0x10_000).unwrap();
        a.reserve(0x1000, 0x1000).unwrap();
        assert!(a.reserve(0x1800, 0x1000).is_err());
        assert!(a.reserve(0x0800, 0x1000).is_err());
        assert!(a.reserve(0xf000, 0x2000).is_err());
        assert!(a.reserve(0x3000, 0).is_err());
        assert_eq!(a.allocate(0x1000, 0x1000), Ok(0));
        assert_eq!(a.allocate(0x1000, 0x1000), Ok(0x2000));
    }
}
