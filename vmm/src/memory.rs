//! Guest RAM: where it lies around the 32-bit device hole, how it is mapped,
//! and the e820 map that tells the guest.

use vm_memory::mmap::FromRangesError;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion,
};

use crate::layout::{
    EBDA_START, HIGH_RAM_START, MEM_32BIT_GAP_START, PCI_MMCONFIG_SIZE, PCI_MMCONFIG_START,
    RAM_64BIT_START,
};

/// Errors of setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused to map the guest's RAM.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        /// Requested size.
        size: u64,
        /// What mmap said.
        source: vm_memory::mmap::FromRangesError,
    },
    /// The guest would get more RAM than the host has.
    #[error("guest memory of {requested} MiB is more than this host's {host} MiB")]
    MoreThanHost {
        /// Requested MiB.
        requested: u64,
        /// Host's MiB.
        host: u64,
    },
}

/// The RAM ranges (start, length) of a guest with `size` bytes of RAM:
/// below the 32-bit hole, then from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MEM_32BIT_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(RAM_64BIT_START), size - low));
    }
    ranges
}

/// Kind of an e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: not for the OS.
    Reserved = 2,
}

/// One entry of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The e820 map of a guest with `size` bytes of RAM: low RAM up to the EBDA,
/// RAM from 1 MiB, RAM above 4 GiB, and the PCI ECAM window reserved.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(4);
    for (start, len) in ram_ranges(size) {
        let end = start.0 + len;
        if start.0 == 0 {
            map.push(E820Entry {
                addr: 0,
                size: EBDA_START.min(end),
                kind: E820Kind::Ram,
            });
            if end > HIGH_RAM_START.0 {
                map.push(E820Entry {
                    addr: HIGH_RAM_START.0,
                    size: end - HIGH_RAM_START.0,
                    kind: E820Kind::Ram,
                });
            }
        } else {
            map.push(E820Entry {
                addr: start.0,
                size: len,
                kind: E820Kind::Ram,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_MMCONFIG_START,
        size: PCI_MMCONFIG_SIZE,
        kind: E820Kind::Reserved,
    });
    map.sort_by_key(|e| e.addr);
    map
}

/// Total RAM of this host in bytes, from /proc/meminfo, read once: a jailed
/// VMM no longer sees /proc when it boots its guest again.
fn host_memory_bytes() -> Option<u64> {
    static HOST: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *HOST.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Fails when a guest of `size` bytes would get more RAM than the host has
/// (passes when the host's size cannot be read).
pub fn check_fits_host(size: u64) -> Result<(), MemoryError> {
    match host_memory_bytes() {
        Some(host) if size > host => Err(MemoryError::MoreThanHost {
            requested: size >> 20,
            host: host >> 20,
        }),
        _ => Ok(()),
    }
}

/// Maps `size` bytes of guest RAM (anonymous, private, not reserved: pages
/// are only allocated when the guest touches them).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_fits_host(size)?;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, l)| usize::try_from(l).map(|l| (a, l)))
        .collect::<Result<_, _>>()
        .map_err(|_| MemoryError::MoreThanHost {
            requested: size >> 20,
            host: 0,
        })?;
    let regions = ranges
        .iter()
        .map(|&(addr, len)| {
            let mapping = map_huge_aligned(len).map_err(|e| MemoryError::Map {
                size,
                source: FromRangesError::MmapRegion(e),
            })?;
            GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Map {
                size,
                source: FromRangesError::InvalidGuestRegion,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map {
        size,
        source: FromRangesError::Collection(e),
    })?;
    mark_mergeable(&memory);
    Ok(memory)
}

/// Huge page size on x86-64, the alignment guest RAM's host mapping gets.
const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` bytes of anonymous RAM (as vm-memory does: private,
/// read-write, not reserved) at a 2 MiB-aligned host address when it can,
/// and asks for transparent huge pages (`MADV_HUGEPAGE`).
///
/// KVM backs guest memory with 2 MiB pages in its nested page tables only
/// where the host address and the guest address agree modulo 2 MiB; guest
/// RAM starts at guest address 0, so an unaligned mapping (what a plain
/// mmap gives on kernels before 6.7) makes every 4 KiB page the guest
/// touches fault into the host separately. QEMU aligns its RAM the same way.
///
/// The aligned spot is found by reserving `len + 2 MiB` of address space,
/// opening an aligned hole of `len` in it and letting the region's own mmap
/// fall into it (the kernel fills the highest hole that fits); if something
/// else lands first, the mapping is unaligned but just as correct.
fn map_huge_aligned(len: usize) -> Result<MmapRegion, vm_memory::mmap::MmapRegionError> {
    let reserve_len = len.checked_add(HUGE_PAGE).filter(|_| len >= HUGE_PAGE);
    // SAFETY: a fresh PROT_NONE reservation at an address the kernel picks;
    // nothing in this process refers to it.
    let reserve = reserve_len.map(|rlen| unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            rlen,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    });
    let hole = match (reserve, reserve_len) {
        (Some(r), Some(rlen)) if r != libc::MAP_FAILED => {
            let base = r as usize;
            let start = base.next_multiple_of(HUGE_PAGE);
            // SAFETY: `start..start+len` lies inside our own reservation
            // (start - base < 2 MiB), which nothing else uses.
            unsafe { libc::munmap(start as *mut libc::c_void, len) };
            Some((base, rlen, start))
        }
        _ => None,
    };
    let region = MmapRegion::new(len);
    if let Some((base, rlen, start)) = hole {
        // SAFETY: the two pieces around the hole are what is left of our
        // PROT_NONE reservation; the region's mapping is not among them
        // (it lies in the hole or elsewhere), so only our guards go.
        unsafe {
            if start > base {
                libc::munmap(base as *mut libc::c_void, start - base);
            }
            let end = start + len;
            if base + rlen > end {
                libc::munmap(end as *mut libc::c_void, base + rlen - end);
            }
        }
    }
    let region = region?;
    let addr = region.as_ptr();
    if !(addr as usize).is_multiple_of(HUGE_PAGE) {
        tracing::debug!(
            len,
            "guest RAM is not 2 MiB-aligned on the host (no huge NPT pages)"
        );
    }
    // SAFETY: `addr..addr+len` is exactly the anonymous mapping `region`
    // owns; MADV_HUGEPAGE only sets a flag on it (no page is freed or
    // touched), so no reference into guest memory is invalidated.
    if unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "madvise(MADV_HUGEPAGE) on guest RAM failed (no THP?); going on"
        );
    }
    Ok(region)
}

/// Offers guest RAM to KSM (`MADV_MERGEABLE`), so identical pages of idle
/// guests can be shared when the host overcommits memory. Only the flag is
/// set: no page is touched or allocated. Without KSM in the host kernel
/// madvise fails; that is logged at debug level and ignored.
fn mark_mergeable(memory: &GuestMemoryMmap) {
    for region in memory.iter() {
        let Ok(addr) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: `addr..addr+len` is exactly one anonymous mapping owned by
        // `memory` (page-aligned start, its full length). MADV_MERGEABLE only
        // changes the mapping's flags; it neither frees nor touches pages, so
        // no Rust reference into guest memory is invalidated.
        let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_MERGEABLE) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                len,
                "madvise(MADV_MERGEABLE) on guest RAM failed (no KSM?); going on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let map = e820_map(512 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (512 << 20) - 0x10_0000,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: PCI_MMCONFIG_START,
                    size: PCI_MMCONFIG_SIZE,
                    kind: E820Kind::Reserved
                },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let size = 5u64 << 30;
        let r = ram_ranges(size);
        assert_eq!(r[0], (GuestAddress(0), MEM_32BIT_GAP_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), size - MEM_32BIT_GAP_START));
        let map = e820_map(size);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM but the EBDA-to-1MiB hole is usable.
        assert_eq!(ram, size - (HIGH_RAM_START.0 - EBDA_START));
        // No RAM entry reaches into the 32-bit hole.
        assert!(map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .all(|e| e.addr + e.size <= MEM_32BIT_GAP_START || e.addr >= RAM_64BIT_START));
        // Sorted and non-overlapping.
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
    }

    /// The VmFlags of the mapping that starts at `start`, from smaps.
    fn vm_flags(start: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_region = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, _)) = range.split_once('-') {
                    if let Ok(lo) = usize::from_str_radix(lo, 16) {
                        in_region = lo == start;
                        continue;
                    }
                }
            }
            if in_region {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    flags = Some(f.to_string());
                }
            }
        }
        flags.expect("the guest RAM mapping is in smaps")
    }

    #[test]
    fn guest_ram_is_huge_page_aligned_and_advised() {
        // Another test thread mapping memory at the same moment can take the
        // aligned hole (the mapping is then merely unaligned): one of three
        // tries must be aligned.
        let aligned = (0..3).any(|_| {
            let r = map_huge_aligned(64 << 20).unwrap();
            assert_eq!(r.size(), 64 << 20);
            (r.as_ptr() as usize).is_multiple_of(HUGE_PAGE)
        });
        assert!(aligned, "guest RAM never 2 MiB-aligned");
        let mem = create_guest_memory(64 << 20).unwrap();
        let start = first_host_address(&mem);
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            let flags = vm_flags(start);
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        }
        // A region smaller than a huge page is mapped plainly.
        assert_eq!(map_huge_aligned(4096).unwrap().size(), 4096);
    }

    /// Host address of the first guest RAM region.
    fn first_host_address(mem: &GuestMemoryMmap) -> usize {
        mem.iter()
            .next()
            .unwrap()
            .get_host_address(MemoryRegionAddress(0))
            .unwrap() as usize
    }

    #[test]
    fn guest_ram_is_offered_to_ksm() {
        if !std::path::Path::new("/sys/kernel/mm/ksm").exists() {
            eprintln!("skipped: this kernel has no KSM");
            return;
        }
        let mem = create_guest_memory(16 << 20).unwrap();
        let start = first_host_address(&mem);
        let flags = vm_flags(start);
        assert!(flags.split_whitespace().any(|f| f == "mg"), "{flags}");
    }

    #[test]
    fn maps_memory_lazily() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert!(create_guest_memory(!0xfff).is_err());
    }
}
