//! Requests in flight on the asynchronous engine: the slab that holds them
//! by slot, the tags that name their operations, aligned bounce buffers,
//! and the splitting of a request's buffers over host extents.

use std::alloc::Layout;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use images::HostExtent;
use vm_memory::GuestAddress;

/// Most iovecs in one `preadv`/`pwritev` (Linux's `IOV_MAX`).
pub(super) const IOV_MAX: usize = 1024;

/// Alignment of bounce buffers (a page: enough for any `O_DIRECT` device).
pub(super) const BOUNCE_ALIGN: usize = 4096;

/// Names one operation of one request: queue (8 bits), request slot (24
/// bits), part (32 bits).
pub(super) fn tag(queue: u16, slot: usize, part: usize) -> u64 {
    (u64::from(queue) & 0xff) << 56 | (slot as u64 & 0xff_ffff) << 32 | (part as u64 & 0xffff_ffff)
}

/// The (queue, slot, part) of a tag.
pub(super) fn untag(t: u64) -> (u16, usize, usize) {
    (
        (t >> 56) as u16,
        ((t >> 32) & 0xff_ffff) as usize,
        (t & 0xffff_ffff) as usize,
    )
}

/// A zeroed heap buffer aligned to [`BOUNCE_ALIGN`].
pub(super) struct Bounce {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory; nothing else aliases it
// except operations of the engine, which the owner waits for before dropping.
unsafe impl Send for Bounce {}

impl Bounce {
    /// A buffer of `len` bytes (rounded up to 512 for its allocation), or
    /// None when the allocation fails.
    pub(super) fn new(len: usize) -> Option<Self> {
        let size = len.max(1).checked_next_multiple_of(512)?;
        let layout = Layout::from_size_align(size, BOUNCE_ALIGN).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Self { ptr, layout, len })
    }

    /// The buffer.
    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size() >= len` initialised
        // (zeroed) bytes owned by `self`, borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// One iovec over the whole buffer.
    pub(super) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.as_ptr().cast(),
            iov_len: self.len,
        }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// What a request in flight does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// IN.
    Read,
    /// OUT.
    Write,
    /// FLUSH.
    Flush,
    /// DISCARD.
    Discard,
    /// WRITE_ZEROES.
    WriteZeroes,
}

/// One operation of a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Part {
    /// The result that means success (bytes for reads and writes, else 0).
    pub expect: usize,
    /// The file this operation changes (writes, syncs, fallocates).
    pub mutates: Option<RawFd>,
    /// The operation is a discard's fallocate (unsupported counts as done).
    pub lenient: bool,
}

/// A request whose operations are in flight.
pub(super) struct Request {
    /// Its queue.
    pub queue: u16,
    /// Head descriptor of its chain.
    pub head: u16,
    /// Where its status byte goes.
    pub status: GuestAddress,
    /// What it does.
    pub kind: Kind,
    /// Data bytes it moves.
    pub bytes: u64,
    /// Its operations, by part number.
    pub parts: Vec<Part>,
    /// Parts not completed yet.
    pub outstanding: usize,
    /// A part failed or came back short.
    pub failed: bool,
    /// Aligned buffer the operations use instead of guest memory.
    pub bounce: Option<Bounce>,
    /// Guest buffers a read's bounce buffer is copied into at completion.
    pub copy_out: Vec<(GuestAddress, u64)>,
}

/// Requests in flight by slot.
#[derive(Default)]
pub(super) struct Slab {
    slots: Vec<Option<Request>>,
    free: Vec<usize>,
}

impl Slab {
    /// Stores `r`; returns its slot.
    pub(super) fn insert(&mut self, r: Request) -> usize {
        if let Some(i) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(i) {
                *s = Some(r);
                return i;
            }
        }
        self.slots.push(Some(r));
        self.slots.len() - 1
    }

    /// The request in `slot`.
    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Request> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Takes the request out of `slot`.
    pub(super) fn remove(&mut self, slot: usize) -> Option<Request> {
        let r = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(r)
    }

    /// Forgets every request (their operations must be finished).
    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
    }
}

/// One operation's share of a request: file, file offset, buffers.
pub(super) type Piece = (RawFd, u64, Vec<libc::iovec>);

/// Splits the byte stream `iovecs` over `extents` (in order, same total),
/// at most [`IOV_MAX`] iovecs per piece. None when the totals differ.
pub(super) fn split(iovecs: &[libc::iovec], extents: &[HostExtent]) -> Option<Vec<Piece>> {
    let mut out = Vec::new();
    let mut it = iovecs.iter().copied().filter(|v| v.iov_len > 0);
    let mut cur: Option<libc::iovec> = None;
    for ext in extents.iter().filter(|e| e.len > 0) {
        let mut need = ext.len;
        let mut off = ext.offset;
        let mut v: Vec<libc::iovec> = Vec::new();
        let mut v_bytes = 0u64;
        while need > 0 {
            let iov = match cur.take() {
                Some(i) => i,
                None => it.next()?,
            };
            let take = usize::try_from(need).unwrap_or(usize::MAX).min(iov.iov_len);
            v.push(libc::iovec {
                iov_base: iov.iov_base,
                iov_len: take,
            });
            if take < iov.iov_len {
                cur = Some(libc::iovec {
                    iov_base: iov.iov_base.cast::<u8>().wrapping_add(take).cast(),
                    iov_len: iov.iov_len - take,
                });
            }
            need -= take as u64;
            v_bytes += take as u64;
            if v.len() == IOV_MAX && need > 0 {
                out.push((ext.fd, off, std::mem::take(&mut v)));
                off += v_bytes;
                v_bytes = 0;
            }
        }
        out.push((ext.fd, off, v));
    }
    if cur.is_some() || it.next().is_some() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: usize, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(
            untag(tag(3, 0xab_cdef, 0x1234_5678)),
            (3, 0xab_cdef, 0x1234_5678)
        );
    }

    #[test]
    fn split_over_extents_and_iov_max() {
        let ext = |fd, offset, len| HostExtent { fd, offset, len };
        let v = [iov(0x1000, 1024), iov(0x8000, 512)];
        let p = split(&v, &[ext(3, 0, 512), ext(4, 4096, 1024)]).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].0, p[0].1, p[0].2.len()), (3, 0, 1));
        assert_eq!((p[1].0, p[1].1, p[1].2.len()), (4, 4096, 2));
        assert_eq!(p[1].2[0].iov_base as usize, 0x1200);
        assert!(split(&v, &[ext(3, 0, 512)]).is_none(), "totals differ");
        let many: Vec<_> = (0..1500).map(|i| iov(0x1000 * i + 0x1000, 512)).collect();
        let p = split(&many, &[ext(3, 0, 1500 * 512)]).unwrap();
        assert_eq!(p.iter().map(|x| x.2.len()).collect::<Vec<_>>(), [1024, 476]);
        assert_eq!(p[1].1, 1024 * 512);
    }
}
