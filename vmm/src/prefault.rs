//! Boot prefaulting: a background thread that populates, ahead of the
//! guest, the guest RAM a Linux boot writes first.
//!
//! Guest RAM is allocated lazily: the first guest write to each 2 MiB page
//! leaves the guest (a nested page fault) until the host has allocated and
//! zeroed the page. On a nested testbed (L1 under QEMU/TCG) one such fault
//! costs 10-25 ms, and a Linux boot takes ~30 of them on the boot vCPU's
//! critical path. Populating the same pages from another host thread once
//! the vCPUs run moves that work off the vCPU. (Started before the kernel
//! is loaded, the thread slowed loading and vCPU creation down more than
//! it saved: both wait on it for the process's memory map lock.) Only the
//! ranges Linux touches anyway during its boot are populated, so the
//! guest's resident memory after boot stays about the same.

use std::thread::JoinHandle;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::MEM_32BIT_GAP_START;

/// One populate call: a huge page, so the thread works in the order given.
const STEP: u64 = 2 << 20;

/// RAM just above the kernel's image that Linux's early allocations use.
pub const ABOVE_KERNEL: u64 = 24 << 20;

/// RAM at the top of low memory: memblock allocates top-down (page tables,
/// the memory map, per-CPU areas), and the initramfs is placed there.
pub const TOP_OF_LOW_RAM: u64 = 32 << 20;

/// `MADV_POPULATE_WRITE` (Linux 5.14): allocate the pages as a write
/// would, without changing their contents.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// A guest-physical range to populate, in the order its pages are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefaultRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Populate from the end down.
    pub downward: bool,
}

/// What to populate for a guest with `memory_bytes` of RAM whose kernel
/// occupies `kernel` (guest-physical start and end of its image, or of the
/// room a compressed kernel decompresses into), in the order a Linux boot
/// first writes it: the top [`TOP_OF_LOW_RAM`] of RAM below the 32-bit gap
/// (downward: memblock allocates top-down), then the kernel's range plus
/// [`ABOVE_KERNEL`] (upward; what the loader already wrote costs next to
/// nothing). Ranges are clipped to low RAM and do not overlap.
pub fn plan(memory_bytes: u64, kernel: Option<(u64, u64)>) -> Vec<PrefaultRange> {
    let low_end = memory_bytes.min(MEM_32BIT_GAP_START);
    let top_start = low_end.saturating_sub(TOP_OF_LOW_RAM);
    let mut ranges = Vec::new();
    if top_start < low_end {
        ranges.push(PrefaultRange {
            start: top_start,
            end: low_end,
            downward: true,
        });
    }
    if let Some((start, end)) = kernel {
        let end = end.saturating_add(ABOVE_KERNEL).min(top_start);
        if start < end {
            ranges.push(PrefaultRange {
                start,
                end,
                downward: false,
            });
        }
    }
    ranges
}

/// Starts a thread that populates `ranges` of `memory` in order; it ends
/// by itself. Returns `None` when the thread cannot be started (the guest
/// then simply faults its pages in itself).
pub fn spawn(memory: &GuestMemoryMmap, ranges: Vec<PrefaultRange>) -> Option<JoinHandle<()>> {
    if ranges.is_empty() {
        return None;
    }
    let memory = memory.clone();
    std::thread::Builder::new()
        .name("prefault".into())
        .spawn(move || {
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Prefault) {
                tracing::warn!(error = %e, "prefault thread: no seccomp filter; not prefaulting");
                return;
            }
            let started = std::time::Instant::now();
            let mut bytes = 0u64;
            for range in &ranges {
                match populate(&memory, range) {
                    Ok(n) => bytes += n,
                    Err(e) => {
                        tracing::debug!(error = %e, "prefault stopped (no MADV_POPULATE_WRITE?)");
                        return;
                    }
                }
            }
            tracing::debug!(
                mib = bytes >> 20,
                us = started.elapsed().as_micros() as u64,
                "boot prefault done"
            );
        })
        .map_err(|e| tracing::debug!(error = %e, "cannot start the prefault thread"))
        .ok()
}

/// The 2 MiB steps of `range`, in the order they are populated.
fn steps(range: &PrefaultRange) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let next = (at / STEP + 1).saturating_mul(STEP).min(range.end);
        out.push((at, next - at));
        at = next;
    }
    if range.downward {
        out.reverse();
    }
    out
}

/// Populates one range; returns the bytes it covered. Addresses outside
/// guest RAM are skipped.
fn populate(memory: &GuestMemoryMmap, range: &PrefaultRange) -> std::io::Result<u64> {
    let mut bytes = 0;
    for (addr, len) in steps(range) {
        let Ok(host) = memory.get_host_address(GuestAddress(addr)) else {
            continue;
        };
        let Ok(ulen) = usize::try_from(len) else {
            continue;
        };
        // The whole step must lie in one region (steps never cross a 2 MiB
        // boundary, and regions start and end on one).
        if memory
            .get_host_address(GuestAddress(addr + len - 1))
            .is_err()
        {
            continue;
        }
        // madvise wants a page-aligned start: round down within the step.
        let page = host as usize & !0xfff;
        let ulen = ulen + (host as usize - page);
        // SAFETY: `page..page+ulen` lies inside one mapping of guest RAM
        // that `memory` (cloned into this thread) keeps mapped.
        // MADV_POPULATE_WRITE allocates missing pages as a write fault
        // would but writes nothing, so the guest's data is untouched.
        let rc = unsafe { libc::madvise(page as *mut libc::c_void, ulen, MADV_POPULATE_WRITE) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        bytes += len;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn plan_covers_top_of_low_ram_then_kernel() {
        let p = plan(512 * MIB, Some((16 * MIB, 62 * MIB)));
        assert_eq!(
            p,
            vec![
                PrefaultRange {
                    start: 512 * MIB - TOP_OF_LOW_RAM,
                    end: 512 * MIB,
                    downward: true
                },
                PrefaultRange {
                    start: 16 * MIB,
                    end: 62 * MIB + ABOVE_KERNEL,
                    downward: false
                },
            ]
        );
    }

    #[test]
    fn plan_clips_to_low_ram_and_never_overlaps() {
        // A small guest: the kernel's range runs into the top range.
        let p = plan(96 * MIB, Some((16 * MIB, 62 * MIB)));
        assert_eq!(p[0].start, 96 * MIB - TOP_OF_LOW_RAM);
        assert_eq!(p[0].end, 96 * MIB);
        assert_eq!(p[1].end, p[0].start);
        // Above 3 GiB only the RAM below the gap counts.
        let p = plan(8 << 30, None);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].end, MEM_32BIT_GAP_START);
        // A guest smaller than the top range.
        let p = plan(16 * MIB, Some((16 * MIB, 40 * MIB)));
        assert_eq!(
            p,
            vec![PrefaultRange {
                start: 0,
                end: 16 * MIB,
                downward: true
            }]
        );
    }

    #[test]
    fn steps_are_huge_pages_in_order() {
        let r = PrefaultRange {
            start: 3 * MIB,
            end: 8 * MIB,
            downward: false,
        };
        assert_eq!(
            steps(&r),
            vec![(3 * MIB, MIB), (4 * MIB, 2 * MIB), (6 * MIB, 2 * MIB)]
        );
        let down = PrefaultRange {
            downward: true,
            ..r
        };
        assert_eq!(steps(&down)[0], (6 * MIB, 2 * MIB));
    }

    #[test]
    fn populate_keeps_contents() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = crate::memory::create_guest_memory(8 * MIB).unwrap();
        mem.write_obj(0xabu8, GuestAddress(5 * MIB)).unwrap();
        let n = populate(
            &mem,
            &PrefaultRange {
                start: 0,
                end: 8 * MIB,
                downward: true,
            },
        );
        // Kernels before 5.14 refuse MADV_POPULATE_WRITE; nothing to check then.
        if let Ok(n) = n {
            assert_eq!(n, 8 * MIB);
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(5 * MIB)).unwrap(), 0xab);
    }
}
