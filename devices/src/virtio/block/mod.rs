//! virtio-blk over an [`images::BlockBackend`] (raw or qcow2).
//!
//! Up to [`MAX_QUEUES`] request queues (`VIRTIO_BLK_F_MQ`) served by one
//! asynchronous I/O engine ([`engine::IoEngine`]): reads and writes go
//! straight between guest memory and the host files the backend names
//! ([`images::BlockBackend::host_extents`]), many in flight at once, and
//! complete in [`VirtioDevice::backend_ready`] when the engine's completion
//! descriptor fires. Ranges the backend cannot name (a qcow2 cluster to
//! allocate, compressed data) go through `read_at`/`write_at` synchronously,
//! after every operation in flight finished (metadata updates stay ordered
//! and crash-consistent). A FLUSH is a barrier: the format's metadata is
//! written, then an `fdatasync` per file touched goes to the engine after
//! every earlier operation and before every later one. Supported requests:
//! IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES; anything else is
//! answered `VIRTIO_BLK_S_UNSUPP`.
//!
//! Every descriptor chain is validated: it must end in a device-writable
//! status byte (otherwise the chain is *malformed*: the device stops and sets
//! `DEVICE_NEEDS_RESET`, since it cannot even report the error); the 16-byte
//! header must be readable; data descriptors must go in the direction the
//! request type needs; sector ranges are checked against the capacity with
//! overflow checks; data lengths are bounded by the chain (at most 4 GiB, as
//! `virtio-queue` enforces) and at most 1024 descriptors. Problems with a
//! chain that has a usable status byte are answered `VIRTIO_BLK_S_IOERR`.
//!
//! With `cache=none` guest buffers that are not 512-byte aligned go through
//! an aligned bounce buffer held by the request until it completes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use images::{BlockBackend, CacheMode, HostExtent};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

pub mod engine;
mod inflight;
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_disk;
#[cfg(test)]
mod tests_async;

use engine::{Completion, IoEngine, IoOp};
use inflight::{Bounce, Kind, Part, Request, Slab};

use super::{
    ring, ActivateError, GuestMemory, QueueError, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Feature: `seg_max` in the config is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` in the config is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: FLUSH requests are supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature: DISCARD requests are supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature: WRITE_ZEROES requests are supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: zero ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O or request error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID string.
pub const ID_BYTES: usize = 20;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// With at least this many requests on the engine a queue is left quiet
/// after it is drained (the driver need not notify): the device looks at
/// it again when one of them completes. Below it (QD1) the driver notifies
/// as usual, so a lone slow request never delays the next one.
const QUIET_IN_FLIGHT: u64 = 4;
/// Largest DISCARD / WRITE_ZEROES segment, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments of one DISCARD / WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Size of the config space structure (`struct virtio_blk_config`).
pub const CONFIG_SIZE: usize = 60;

const HEADER_SIZE: u64 = 16;
const DISCARD_SEGMENT_SIZE: u64 = 16;
const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Bound on the descriptors of one chain (indirect tables can hold 65535).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;
const BOUNCE_SIZE: usize = 128 * 1024;

/// Feature: more than one request queue (`num_queues` in the config).
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// Most request queues of one device.
pub const MAX_QUEUES: u16 = 4;
/// Most engine operations one request is split into (more: synchronous).
const MAX_PARTS: usize = 256;
/// Largest `cache=none` bounce buffer of one request (more: synchronous).
const MAX_REQUEST_BOUNCE: u64 = 4 << 20;
/// Alignment `O_DIRECT` needs of buffers, lengths and offsets.
const DIRECT_ALIGN: u64 = 512;

/// Options of a virtio-blk device.
#[derive(Debug, Clone, Default)]
pub struct BlockOptions {
    /// Refuse writes (and advertise `VIRTIO_BLK_F_RO`). Open the backend
    /// read-only too.
    pub read_only: bool,
    /// Serial returned by GET_ID (truncated to 20 bytes), from `--disk id=`.
    pub id: Option<String>,
    /// Request queues (`VIRTIO_BLK_F_MQ` when more than one); 0 counts as 1,
    /// at most [`MAX_QUEUES`].
    pub queues: u16,
    /// Page-cache mode of the data I/O.
    pub cache: images::CacheMode,
    /// Which asynchronous engine serves the requests.
    pub engine: engine::EngineKind,
}

/// Why a virtio-blk device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The I/O engine could not be started.
    #[error("virtio-blk I/O engine: {0}")]
    Engine(#[from] engine::EngineError),
    /// The image refused the cache mode.
    #[error("virtio-blk cache mode: {0}")]
    Cache(#[from] images::ImageError),
    /// More request queues than [`MAX_QUEUES`] were asked for.
    #[error("virtio-blk: {0} queues asked for, at most {MAX_QUEUES}")]
    Queues(u16),
}

/// Counters of a block device, readable at any time (e.g. for metrics).
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Completed IN requests.
    pub read_ops: AtomicU64,
    /// Bytes read by IN requests.
    pub read_bytes: AtomicU64,
    /// Completed OUT requests.
    pub write_ops: AtomicU64,
    /// Bytes written by OUT requests.
    pub write_bytes: AtomicU64,
    /// Completed FLUSH requests.
    pub flushes: AtomicU64,
    /// Completed DISCARD requests.
    pub discards: AtomicU64,
    /// Completed WRITE_ZEROES requests.
    pub write_zeroes: AtomicU64,
    /// Requests answered `VIRTIO_BLK_S_IOERR`.
    pub errors: AtomicU64,
    /// Requests answered `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: AtomicU64,
    /// Malformed chains (the device then needs a reset).
    pub malformed: AtomicU64,
    /// Requests on the asynchronous engine right now (a gauge).
    pub in_flight: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A list of guest memory segments, read or written as one byte stream.
struct Segments(Vec<(GuestAddress, u64)>);

impl Segments {
    fn total(&self) -> u64 {
        self.0.iter().map(|(_, l)| *l).sum()
    }

    /// Calls `f(guest address, position in the range, length)` for each
    /// piece of the stream range `[skip, skip + n)`.
    fn pieces(
        &self,
        mut skip: u64,
        n: u64,
        mut f: impl FnMut(GuestAddress, u64, u64) -> Result<(), ()>,
    ) -> Result<(), ()> {
        let mut done = 0u64;
        for &(addr, len) in &self.0 {
            if done == n {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let take = (len - skip).min(n - done);
            let a = addr.checked_add(skip).ok_or(())?;
            f(a, done, take)?;
            done += take;
            skip = 0;
        }
        if done == n {
            Ok(())
        } else {
            Err(())
        }
    }

    /// The segments of the stream range `[skip, skip + n)`.
    fn range(&self, skip: u64, n: u64) -> Result<Vec<(GuestAddress, u64)>, ()> {
        let mut v = Vec::new();
        self.pieces(skip, n, |a, _, len| {
            v.push((a, len));
            Ok(())
        })?;
        Ok(v)
    }

    fn read(&self, mem: &GuestMemory, skip: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.pieces(skip, buf.len() as u64, |a, pos, len| {
            let (pos, len) = (to_usize(pos)?, to_usize(len)?);
            let dst = buf.get_mut(pos..pos + len).ok_or(())?;
            mem.read_slice(dst, a).map_err(|_| ())
        })
    }

    fn write(&self, mem: &GuestMemory, skip: u64, buf: &[u8]) -> Result<(), ()> {
        self.pieces(skip, buf.len() as u64, |a, pos, len| {
            let (pos, len) = (to_usize(pos)?, to_usize(len)?);
            let src = buf.get(pos..pos + len).ok_or(())?;
            mem.write_slice(src, a).map_err(|_| ())
        })
    }
}

fn to_usize(v: u64) -> Result<usize, ()> {
    usize::try_from(v).map_err(|_| ())
}

/// Host iovecs over guest segments (split where a segment crosses memory
/// regions); None when a byte is outside guest memory.
fn guest_iovecs(mem: &GuestMemory, segs: &[(GuestAddress, u64)]) -> Option<Vec<libc::iovec>> {
    let mut v = Vec::with_capacity(segs.len());
    for &(addr, len) in segs {
        for slice in mem.get_slices(addr, usize::try_from(len).ok()?) {
            let slice = slice.ok()?;
            v.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Some(v)
}

/// A request failed with this status (IOERR or UNSUPP).
struct Fail(u8);

fn ioerr<T>(_: T) -> Fail {
    Fail(VIRTIO_BLK_S_IOERR)
}

/// What became of a request with a good status byte.
enum Outcome {
    /// Done: this many data bytes were written to the guest.
    Now(u64),
    /// On the engine; it completes later.
    Submitted,
}

/// The chain's place, for requests that go to the engine.
#[derive(Clone, Copy)]
struct Origin {
    queue: u16,
    head: u16,
    status: GuestAddress,
}

/// The disk side of the device: backend, engine, requests in flight,
/// limits, counters.
struct Disk {
    backend: Box<dyn BlockBackend>,
    engine: Box<dyn IoEngine>,
    read_only: bool,
    cache: CacheMode,
    id: [u8; ID_BYTES],
    capacity: u64,
    counters: Arc<BlockCounters>,
    /// Buffer of the synchronous path (aligned for `cache=none`).
    bounce: Bounce,
    /// Requests in flight.
    slab: Slab,
    /// Files written through the engine since the last flush.
    dirty: BTreeSet<RawFd>,
    /// Operations in flight that change a file, per file.
    mutating: BTreeMap<RawFd, usize>,
    /// Finished requests to return, per queue: (head, used length).
    done: Vec<Vec<(u16, u32)>>,
    /// Interrupts owed to the queues (held during an I/O-thread pass).
    owed: ring::OwedInterrupts,
    /// Per queue: left quiet with requests in flight (see
    /// [`QUIET_IN_FLIGHT`]); look at it again on completions.
    quiet: Vec<bool>,
    /// Buffer of reaped completions.
    reaped: Vec<Completion>,
}

impl Disk {
    /// Byte offset of `sector` if `[sector * 512, + len)` is on the disk.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Fail> {
        let off = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(Fail(VIRTIO_BLK_S_IOERR))?;
        match off.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(off),
            _ => Err(Fail(VIRTIO_BLK_S_IOERR)),
        }
    }

    /// Processes one chain of queue `queue`; returns what became of it, or
    /// why the chain is malformed.
    fn handle_chain(
        &mut self,
        mem: &GuestMemory,
        queue: u16,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<ring::Handled, &'static str> {
        let head = chain.head_index();
        let mut descs: Vec<Descriptor> = Vec::new();
        for d in chain {
            if descs.len() >= MAX_CHAIN_DESCRIPTORS {
                return Err("chain too long");
            }
            descs.push(d);
        }
        let last = descs
            .last()
            .ok_or("empty chain or head outside the table")?;
        if last.has_next() {
            // virtio-queue stops at a loop (TTL), at a `next` outside the
            // table and at an unreadable descriptor.
            return Err("chain loops or leaves the descriptor table");
        }
        if !last.is_write_only() || last.len() == 0 {
            return Err("no writable status byte at the end of the chain");
        }
        let status_addr = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .ok_or("status address overflows")?;
        // Make sure the status can be reported before doing any I/O.
        mem.write_obj(VIRTIO_BLK_S_IOERR, status_addr)
            .map_err(|_| "status byte outside guest memory")?;
        let origin = Origin {
            queue,
            head,
            status: status_addr,
        };
        let (status, written) = match self.execute(mem, &descs, origin) {
            Ok(Outcome::Submitted) => return Ok(ring::Handled::InFlight),
            Ok(Outcome::Now(written)) => (VIRTIO_BLK_S_OK, written),
            Err(Fail(s)) => {
                if s == VIRTIO_BLK_S_UNSUPP {
                    bump(&self.counters.unsupported, 1);
                } else {
                    bump(&self.counters.errors, 1);
                }
                (s, 0)
            }
        };
        mem.write_obj(status, status_addr)
            .map_err(|_| "status byte outside guest memory")?;
        // Data bytes written plus the status byte; fits: chains are < 4 GiB.
        Ok(ring::Handled::Used(
            u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX),
        ))
    }

    /// Runs the request of a chain whose status byte is known good.
    fn execute(
        &mut self,
        mem: &GuestMemory,
        descs: &[Descriptor],
        origin: Origin,
    ) -> Result<Outcome, Fail> {
        let first_writable = descs
            .iter()
            .position(|d| d.is_write_only())
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(first_writable);
        if writable.iter().any(|d| !d.is_write_only()) {
            return Err(Fail(VIRTIO_BLK_S_IOERR));
        }
        let r = Segments(
            readable
                .iter()
                .map(|d| (d.addr(), u64::from(d.len())))
                .collect(),
        );
        let n_w = writable.len();
        let w = Segments(
            writable
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let len = u64::from(d.len());
                    (d.addr(), if i + 1 == n_w { len - 1 } else { len })
                })
                .collect(),
        );
        let mut hdr = [0u8; HEADER_SIZE as usize];
        r.read(mem, 0, &mut hdr).map_err(ioerr)?;
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
        let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let r_data = r.total() - HEADER_SIZE;
        let w_data = w.total();
        match req_type {
            VIRTIO_BLK_T_IN => {
                if r_data != 0 || w_data & (SECTOR_SIZE - 1) != 0 {
                    return Err(Fail(VIRTIO_BLK_S_IOERR));
                }
                let off = self.range(sector, w_data)?;
                let segs = w.range(0, w_data).map_err(ioerr)?;
                if self.submit_rw(mem, Kind::Read, &segs, off, w_data, origin)? {
                    return Ok(Outcome::Submitted);
                }
                self.read(mem, &w, off, w_data)?;
                bump(&self.counters.read_ops, 1);
                bump(&self.counters.read_bytes, w_data);
                Ok(Outcome::Now(w_data))
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only || w_data != 0 || r_data & (SECTOR_SIZE - 1) != 0 {
                    return Err(Fail(VIRTIO_BLK_S_IOERR));
                }
                let off = self.range(sector, r_data)?;
                let segs = r.range(HEADER_SIZE, r_data).map_err(ioerr)?;
                if self.submit_rw(mem, Kind::Write, &segs, off, r_data, origin)? {
                    return Ok(Outcome::Submitted);
                }
                self.wait_idle(mem);
                self.write(mem, &r, off, r_data)?;
                bump(&self.counters.write_ops, 1);
                bump(&self.counters.write_bytes, r_data);
                Ok(Outcome::Now(0))
            }
            VIRTIO_BLK_T_FLUSH => {
                if r_data != 0 || w_data != 0 {
                    return Err(Fail(VIRTIO_BLK_S_IOERR));
                }
                self.flush(mem, origin)
            }
            VIRTIO_BLK_T_GET_ID => {
                if r_data != 0 || w_data == 0 {
                    return Err(Fail(VIRTIO_BLK_S_IOERR));
                }
                let n = usize::try_from(w_data).unwrap_or(ID_BYTES).min(ID_BYTES);
                let id = self.id.get(..n).ok_or(Fail(VIRTIO_BLK_S_IOERR))?;
                w.write(mem, 0, id).map_err(ioerr)?;
                Ok(Outcome::Now(n as u64))
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let zeroes = req_type == VIRTIO_BLK_T_WRITE_ZEROES;
                if self.read_only
                    || w_data != 0
                    || r_data == 0
                    || r_data & (DISCARD_SEGMENT_SIZE - 1) != 0
                    || r_data / DISCARD_SEGMENT_SIZE > u64::from(MAX_DISCARD_SEG)
                {
                    return Err(Fail(VIRTIO_BLK_S_IOERR));
                }
                // Validate every segment before touching the disk.
                let mut segs = Vec::new();
                for i in 0..r_data / DISCARD_SEGMENT_SIZE {
                    let mut s = [0u8; DISCARD_SEGMENT_SIZE as usize];
                    r.read(mem, HEADER_SIZE + i * DISCARD_SEGMENT_SIZE, &mut s)
                        .map_err(ioerr)?;
                    let [a0, a1, a2, a3, a4, a5, a6, a7, n0, n1, n2, n3, f0, f1, f2, f3] = s;
                    let start = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
                    let num = u32::from_le_bytes([n0, n1, n2, n3]);
                    let flags = u32::from_le_bytes([f0, f1, f2, f3]);
                    let allowed = if zeroes { WRITE_ZEROES_FLAG_UNMAP } else { 0 };
                    if flags & !allowed != 0 {
                        return Err(Fail(VIRTIO_BLK_S_UNSUPP));
                    }
                    if num > MAX_DISCARD_SECTORS {
                        return Err(Fail(VIRTIO_BLK_S_IOERR));
                    }
                    let len = u64::from(num) * SECTOR_SIZE;
                    segs.push((self.range(start, len)?, len, flags));
                }
                if self.submit_fallocate(mem, zeroes, &segs, origin)? {
                    return Ok(Outcome::Submitted);
                }
                self.wait_idle(mem);
                for (off, len, _) in segs {
                    let res = if zeroes {
                        self.backend.write_zeroes(off, len)
                    } else {
                        self.backend.discard(off, len)
                    };
                    res.map_err(|e| {
                        tracing::warn!(error = %e, zeroes, "virtio-blk discard/write-zeroes failed");
                        Fail(VIRTIO_BLK_S_IOERR)
                    })?;
                }
                bump(
                    if zeroes {
                        &self.counters.write_zeroes
                    } else {
                        &self.counters.discards
                    },
                    1,
                );
                Ok(Outcome::Now(0))
            }
            _ => Err(Fail(VIRTIO_BLK_S_UNSUPP)),
        }
    }

    /// The host extents of `len` bytes at `off`, when the image names them
    /// for the whole range (`None`: the request takes the synchronous path).
    fn covering_extents(
        &mut self,
        off: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<images::HostExtent>>, Fail> {
        let extents = self
            .backend
            .host_extents(off, len, write)
            .map_err(|e| self.io_warn("host extents", &e))?;
        Ok(extents.filter(|x| x.iter().map(|e| e.len).sum::<u64>() == len))
    }

    /// Tries to put an IN or OUT on the engine: true when submitted, false
    /// when it must go the synchronous way (no host extents, too many
    /// pieces, a bounce buffer too big).
    fn submit_rw(
        &mut self,
        mem: &GuestMemory,
        kind: Kind,
        segs: &[(GuestAddress, u64)],
        off: u64,
        len: u64,
        origin: Origin,
    ) -> Result<bool, Fail> {
        if len == 0 {
            return Ok(false);
        }
        let write = kind == Kind::Write;
        let Some(extents) = self.covering_extents(off, len, write)? else {
            return Ok(false);
        };
        let mut iovecs = guest_iovecs(mem, segs).ok_or(Fail(VIRTIO_BLK_S_IOERR))?;
        let unaligned = |v: &libc::iovec| {
            (v.iov_base as usize as u64 | v.iov_len as u64) & (DIRECT_ALIGN - 1) != 0
        };
        let mut bounce = None;
        let mut copy_out = Vec::new();
        if self.cache == CacheMode::None && iovecs.iter().any(unaligned) {
            if len > MAX_REQUEST_BOUNCE {
                return Ok(false);
            }
            let n = usize::try_from(len).map_err(ioerr)?;
            let mut b = Bounce::new(n).ok_or(Fail(VIRTIO_BLK_S_IOERR))?;
            if write {
                Segments(segs.to_vec())
                    .read(mem, 0, b.as_mut_slice())
                    .map_err(ioerr)?;
            } else {
                copy_out = segs.to_vec();
            }
            iovecs = vec![b.iovec()];
            bounce = Some(b);
        }
        let Some(pieces) = inflight::split(&iovecs, &extents) else {
            return Ok(false);
        };
        if pieces.len() > MAX_PARTS {
            return Ok(false);
        }
        let ops = pieces
            .into_iter()
            .map(|(fd, offset, iovecs)| {
                let expect = iovecs.iter().map(|v| v.iov_len).sum();
                let part = Part {
                    expect,
                    mutates: write.then_some(fd),
                    lenient: false,
                };
                let op = if write {
                    IoOp::Write { fd, offset, iovecs }
                } else {
                    IoOp::Read { fd, offset, iovecs }
                };
                (op, part, false)
            })
            .collect();
        self.submit_request(mem, origin, kind, len, ops, bounce, copy_out)
    }

    /// Tries to put a DISCARD or an unmapping WRITE_ZEROES on the engine
    /// (`fallocate(PUNCH_HOLE | KEEP_SIZE)` on the host extents; a discard
    /// the file system cannot punch counts as done): true when submitted.
    fn submit_fallocate(
        &mut self,
        mem: &GuestMemory,
        zeroes: bool,
        segs: &[(u64, u64, u32)],
        origin: Origin,
    ) -> Result<bool, Fail> {
        let mut ops = Vec::new();
        for &(off, len, flags) in segs {
            if len == 0 {
                continue;
            }
            let Some(extents) = self.covering_extents(off, len, true)? else {
                return Ok(false);
            };
            // Zeroes that must stay allocated go the synchronous way: the
            // backend knows how to zero where FALLOC_FL_ZERO_RANGE is missing
            // (tmpfs). Everything else is a hole punched in the file.
            if zeroes && flags & WRITE_ZEROES_FLAG_UNMAP == 0 {
                return Ok(false);
            }
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            for HostExtent { fd, offset, len } in extents {
                let op = IoOp::Fallocate {
                    fd,
                    mode,
                    offset,
                    len,
                };
                let part = Part {
                    expect: 0,
                    mutates: Some(fd),
                    lenient: !zeroes,
                };
                ops.push((op, part, false));
            }
        }
        if ops.is_empty() || ops.len() > MAX_PARTS {
            return Ok(false);
        }
        let kind = if zeroes {
            Kind::WriteZeroes
        } else {
            Kind::Discard
        };
        self.submit_request(mem, origin, kind, 0, ops, None, Vec::new())
    }

    /// FLUSH: the format's metadata first, then a barrier `fdatasync` of
    /// every file written through the engine since the last flush or still
    /// being changed, so it completes after every earlier write and before
    /// any later one starts.
    fn flush(&mut self, mem: &GuestMemory, origin: Origin) -> Result<Outcome, Fail> {
        self.backend
            .flush()
            .map_err(|e| self.io_warn("flush", &e))?;
        let fds: BTreeSet<RawFd> = self
            .dirty
            .iter()
            .copied()
            .chain(self.mutating.keys().copied())
            .collect();
        if fds.is_empty() {
            bump(&self.counters.flushes, 1);
            return Ok(Outcome::Now(0));
        }
        let ops = fds
            .iter()
            .map(|&fd| {
                let part = Part {
                    expect: 0,
                    mutates: Some(fd),
                    lenient: false,
                };
                (IoOp::Sync { fd }, part, true)
            })
            .collect();
        let dirty = std::mem::take(&mut self.dirty);
        match self.submit_request(mem, origin, Kind::Flush, 0, ops, None, Vec::new()) {
            Ok(_) => Ok(Outcome::Submitted),
            Err(f) => {
                self.dirty = dirty;
                Err(f)
            }
        }
    }

    /// Submits the operations of one request (tags: queue, slot, part).
    #[allow(clippy::too_many_arguments)]
    fn submit_request(
        &mut self,
        mem: &GuestMemory,
        origin: Origin,
        kind: Kind,
        bytes: u64,
        ops: Vec<(IoOp, Part, bool)>,
        bounce: Option<Bounce>,
        copy_out: Vec<(GuestAddress, u64)>,
    ) -> Result<bool, Fail> {
        let n = ops.len();
        if self.engine.in_flight() + n > engine::ENGINE_DEPTH as usize {
            self.wait_idle(mem);
        }
        let slot = self.slab.insert(Request {
            queue: origin.queue,
            head: origin.head,
            status: origin.status,
            kind,
            bytes,
            parts: ops.iter().map(|o| o.1).collect(),
            outstanding: 0,
            failed: false,
            bounce,
            copy_out,
        });
        let mut submitted = 0;
        for (i, (op, part, barrier)) in ops.into_iter().enumerate() {
            let changes = matches!(op, IoOp::Write { .. } | IoOp::Fallocate { .. });
            // SAFETY: the iovecs point into guest memory, which the active
            // state keeps mapped and `reset`/drop wait for every operation
            // before letting go of, or into this request's bounce buffer,
            // which stays in the slab until the last part completed; the
            // descriptors belong to the backend, which outlives the engine's
            // operations for the same reason.
            let res = unsafe {
                self.engine
                    .submit(op, inflight::tag(origin.queue, slot, i), barrier)
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "virtio-blk: submitting to the I/O engine failed");
                break;
            }
            submitted += 1;
            if let Some(fd) = part.mutates {
                *self.mutating.entry(fd).or_default() += 1;
                if changes {
                    self.dirty.insert(fd);
                }
            }
        }
        if submitted == 0 {
            self.slab.remove(slot);
            return Err(Fail(VIRTIO_BLK_S_IOERR));
        }
        if let Some(r) = self.slab.get_mut(slot) {
            r.outstanding = submitted;
            r.failed = submitted < n;
        }
        bump(&self.counters.in_flight, 1);
        Ok(true)
    }

    /// Waits for every operation in flight and finishes their requests (a
    /// synchronous change of the image comes next, or the engine is full).
    fn wait_idle(&mut self, mem: &GuestMemory) {
        if self.engine.in_flight() == 0 {
            return;
        }
        if let Err(e) = self.engine.kick() {
            tracing::warn!(error = %e, "virtio-blk: kicking the I/O engine failed");
        }
        let mut out = std::mem::take(&mut self.reaped);
        if let Err(e) = self.engine.drain(&mut out) {
            tracing::error!(error = %e, "virtio-blk: waiting for the I/O engine failed");
        }
        for c in out.drain(..) {
            self.finish(mem, c);
        }
        self.reaped = out;
    }

    /// Reaps what the engine finished and finishes those requests.
    fn reap(&mut self, mem: &GuestMemory) -> Result<(), engine::EngineError> {
        let mut out = std::mem::take(&mut self.reaped);
        let res = self.engine.reap(&mut out);
        for c in out.drain(..) {
            self.finish(mem, c);
        }
        self.reaped = out;
        res
    }

    /// Logs an I/O error (the first few, then at powers of two) and turns
    /// it into an IOERR.
    fn io_warn(&self, what: &str, e: &dyn std::fmt::Display) -> Fail {
        let n = self.counters.errors.load(Ordering::Relaxed);
        if n < 8 || n.is_power_of_two() {
            tracing::warn!(error = %e, errors_so_far = n, "virtio-blk {what} failed");
        }
        Fail(VIRTIO_BLK_S_IOERR)
    }

    /// One operation finished: when it was its request's last, write the
    /// status and queue the chain for its used ring.
    fn finish(&mut self, mem: &GuestMemory, c: Completion) {
        let (_, slot, part) = inflight::untag(c.user_data);
        let Some(req) = self.slab.get_mut(slot) else {
            tracing::warn!(tag = c.user_data, "virtio-blk: completion of no request");
            return;
        };
        let Some(p) = req.parts.get(part).copied() else {
            tracing::warn!(tag = c.user_data, "virtio-blk: completion of no operation");
            return;
        };
        if let Some(fd) = p.mutates {
            if let Some(n) = self.mutating.get_mut(&fd) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.mutating.remove(&fd);
                }
            }
        }
        let error = match c.result {
            Ok(n) if n == p.expect => None,
            Ok(n) => Some(format!("short transfer: {n} of {} bytes", p.expect)),
            Err(e) if p.lenient && e.raw_os_error() == Some(libc::EOPNOTSUPP) => None,
            Err(e) => Some(e.to_string()),
        };
        req.outstanding = req.outstanding.saturating_sub(1);
        if error.is_some() {
            req.failed = true;
        }
        let last = req.outstanding == 0;
        if let Some(e) = error {
            let _ = self.io_warn("I/O", &e);
        }
        if !last {
            return;
        }
        let Some(mut req) = self.slab.remove(slot) else {
            return;
        };
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !req.failed && req.kind == Kind::Read {
            if let Some(b) = req.bounce.as_mut() {
                let segs = Segments(std::mem::take(&mut req.copy_out));
                if segs.write(mem, 0, b.as_mut_slice()).is_err() {
                    req.failed = true;
                }
            }
        }
        let c = &self.counters;
        let (status, written) = if req.failed {
            bump(&c.errors, 1);
            (VIRTIO_BLK_S_IOERR, 0)
        } else {
            match req.kind {
                Kind::Read => {
                    bump(&c.read_ops, 1);
                    bump(&c.read_bytes, req.bytes);
                }
                Kind::Write => {
                    bump(&c.write_ops, 1);
                    bump(&c.write_bytes, req.bytes);
                }
                Kind::Flush => bump(&c.flushes, 1),
                Kind::Discard => bump(&c.discards, 1),
                Kind::WriteZeroes => bump(&c.write_zeroes, 1),
            }
            let written = if req.kind == Kind::Read { req.bytes } else { 0 };
            (VIRTIO_BLK_S_OK, written)
        };
        if mem.write_obj(status, req.status).is_err() {
            tracing::warn!("virtio-blk: status byte no longer in guest memory");
        }
        let len = u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX);
        if let Some(d) = self.done.get_mut(usize::from(req.queue)) {
            d.push((req.head, len));
        }
    }

    /// Returns the finished chains to their used rings (their interrupts
    /// are owed: see [`Disk::notify`]).
    fn complete_done(&mut self, queues: &mut [Queue], mem: &GuestMemory) -> Result<(), QueueError> {
        let mut result = Ok(());
        for (i, (done, queue)) in self.done.iter_mut().zip(queues.iter_mut()).enumerate() {
            if done.is_empty() {
                continue;
            }
            let old_used = queue.next_used();
            let r = ring::add_used_all(queue, mem, done);
            done.clear();
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            self.owed.used_since(queue, index, old_used);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Takes queue `index`'s available chains (what goes to the engine is
    /// submitted, with one kick for all) and returns what finished
    /// meanwhile; their interrupts are owed. The queue is left quiet while
    /// [`QUIET_IN_FLIGHT`] requests are in flight.
    fn take_chains(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemory,
        index: u16,
    ) -> Result<(), QueueError> {
        let Some(queue) = queues.get_mut(usize::from(index)) else {
            return Ok(());
        };
        let counters = Arc::clone(&self.counters);
        let old_used = queue.next_used();
        let drained = ring::drain_or_stay_quiet(
            queue,
            mem,
            |chain| {
                self.handle_chain(mem, index, chain)
                    .inspect_err(|_| bump(&counters.malformed, 1))
            },
            || counters.in_flight.load(Ordering::Relaxed) >= QUIET_IN_FLIGHT,
        );
        self.owed.used_since(queue, index, old_used);
        let drained = drained.map(|quiet| {
            if let Some(q) = self.quiet.get_mut(usize::from(index)) {
                *q = quiet;
            }
        });
        // One kick for everything this call submitted.
        let kicked = self.engine.kick().map_err(engine_failed);
        // Requests finished while waiting for the engine (before a
        // synchronous write) go back now.
        let completed = self.complete_done(queues, mem);
        drained.and(kicked).and(completed)
    }

    /// Raises each queue's owed interrupt once, if the driver wants it
    /// (held back during an I/O-thread pass).
    fn notify(&mut self, queues: &[Queue], mem: &GuestMemory, interrupt: &dyn VirtioInterrupt) {
        self.owed
            .raise(mem, interrupt, |i| queues.get(usize::from(i)));
    }

    /// Waits for every operation in flight and forgets their requests
    /// without telling the driver (reset, hot-unplug, drop): afterwards
    /// nothing writes into guest memory for this device.
    fn abandon(&mut self) {
        if self.engine.in_flight() > 0 {
            if let Err(e) = self.engine.kick() {
                tracing::warn!(error = %e, "virtio-blk: kicking the I/O engine failed");
            }
            let mut out = Vec::new();
            if let Err(e) = self.engine.drain(&mut out) {
                // Operations may still be running: keep their buffers.
                tracing::error!(error = %e, "virtio-blk: draining the I/O engine failed");
                std::mem::forget(std::mem::take(&mut self.slab));
            }
        }
        self.slab.clear();
        self.mutating.clear();
        self.counters.in_flight.store(0, Ordering::Relaxed);
        for d in &mut self.done {
            d.clear();
        }
        self.owed.clear();
        self.quiet.iter_mut().for_each(|q| *q = false);
    }

    /// Disk `[off, off + len)` into the guest segments `w`.
    fn read(&mut self, mem: &GuestMemory, w: &Segments, off: u64, len: u64) -> Result<(), Fail> {
        let mut pos = 0u64;
        while pos < len {
            let n = usize::try_from(len - pos)
                .unwrap_or(BOUNCE_SIZE)
                .min(BOUNCE_SIZE);
            let res = match self.bounce.as_mut_slice().get_mut(..n) {
                Some(buf) => self.backend.read_at(buf, off + pos),
                None => return Err(Fail(VIRTIO_BLK_S_IOERR)),
            };
            res.map_err(|e| self.io_warn("read", &e))?;
            let buf = self
                .bounce
                .as_mut_slice()
                .get(..n)
                .ok_or(Fail(VIRTIO_BLK_S_IOERR))?;
            w.write(mem, pos, buf).map_err(ioerr)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Guest segments `r` (after the header) to disk `[off, off + len)`.
    fn write(&mut self, mem: &GuestMemory, r: &Segments, off: u64, len: u64) -> Result<(), Fail> {
        let mut pos = 0u64;
        while pos < len {
            let n = usize::try_from(len - pos)
                .unwrap_or(BOUNCE_SIZE)
                .min(BOUNCE_SIZE);
            let buf = self
                .bounce
                .as_mut_slice()
                .get_mut(..n)
                .ok_or(Fail(VIRTIO_BLK_S_IOERR))?;
            r.read(mem, HEADER_SIZE + pos, buf).map_err(ioerr)?;
            let res = match self.bounce.as_mut_slice().get(..n) {
                Some(buf) => self.backend.write_at(buf, off + pos),
                None => return Err(Fail(VIRTIO_BLK_S_IOERR)),
            };
            res.map_err(|e| self.io_warn("write", &e))?;
            pos += n as u64;
        }
        Ok(())
    }
}

struct Active {
    /// Kept for the lifetime of the activation: in-flight I/O points into it.
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    features: u64,
    config: [u8; CONFIG_SIZE],
    queue_sizes: Vec<u16>,
    active: Option<Active>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.disk.capacity)
            .field("read_only", &self.disk.read_only)
            .field("queues", &self.queue_sizes.len())
            .field("engine", &self.disk.engine.name())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    /// Creates a device over `backend` with the engine `options.engine`
    /// names. The capacity is the backend size rounded down to whole
    /// sectors. Fails when the queue count, the cache mode or the I/O engine
    /// cannot be had.
    pub fn new(backend: Box<dyn BlockBackend>, options: BlockOptions) -> Result<Self, BlockError> {
        if options.queues > MAX_QUEUES {
            return Err(BlockError::Queues(options.queues));
        }
        let engine = engine::new_engine(options.engine)?;
        Self::with_engine(backend, options, engine)
    }

    /// [`Block::new`] with a given engine (`options.engine` is ignored).
    pub fn with_engine(
        mut backend: Box<dyn BlockBackend>,
        options: BlockOptions,
        engine: Box<dyn IoEngine>,
    ) -> Result<Self, BlockError> {
        if options.queues > MAX_QUEUES {
            return Err(BlockError::Queues(options.queues));
        }
        backend.set_cache_mode(options.cache)?;
        let queues = options.queues.max(1);
        let sectors = backend.size() / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        if let Some(s) = &options.id {
            for (d, b) in id.iter_mut().zip(s.bytes()) {
                *d = b;
            }
        }
        let mut features = 1u64 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if options.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        if queues > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        let mut config = [0u8; CONFIG_SIZE];
        let mut put = |off: usize, v: &[u8]| {
            if let Some(d) = config.get_mut(off..off + v.len()) {
                d.copy_from_slice(v);
            }
        };
        put(0, &sectors.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(34, &queues.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEG.to_le_bytes());
        let bounce = inflight::Bounce::new(BOUNCE_SIZE).ok_or_else(|| {
            BlockError::Engine(engine::EngineError::Io(std::io::Error::from(
                std::io::ErrorKind::OutOfMemory,
            )))
        })?;
        Ok(Self {
            disk: Disk {
                backend,
                engine,
                read_only: options.read_only,
                cache: options.cache,
                id,
                capacity: sectors * SECTOR_SIZE,
                counters: Arc::new(BlockCounters::default()),
                bounce,
                slab: Slab::default(),
                dirty: BTreeSet::new(),
                mutating: BTreeMap::new(),
                done: Vec::new(),
                owed: ring::OwedInterrupts::default(),
                quiet: Vec::new(),
                reaped: Vec::new(),
            },
            features,
            config,
            queue_sizes: vec![QUEUE_SIZE; usize::from(queues)],
            active: None,
        })
    }

    /// The device's counters (shared; keep the `Arc` for metrics).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.disk.counters.clone()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity / SECTOR_SIZE
    }

    /// The I/O engine's name (`"io_uring"`, `"threads"`), for logs and metrics.
    pub fn engine_name(&self) -> &'static str {
        self.disk.engine.name()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.disk.abandon();
    }
}

fn engine_failed(e: engine::EngineError) -> QueueError {
    QueueError::Ring(format!("block I/O engine: {e}"))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // `writeback` is only writable with VIRTIO_BLK_F_CONFIG_WCE, not offered.
        tracing::debug!(offset, len = data.len(), "virtio-blk config write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let queues = ring::ready_queues_n(queues, self.queue_sizes.len(), acked_features)?;
        self.disk.done = vec![Vec::new(); queues.len()];
        self.disk.owed = ring::OwedInterrupts::new(queues.len());
        self.disk.quiet = vec![false; queues.len()];
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        let Some(Active {
            mem,
            queues,
            interrupt,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let taken = self.disk.take_chains(queues, mem, index);
        self.disk.notify(queues, mem, interrupt.as_ref());
        taken
    }

    fn reset(&mut self) {
        // The kernel must never write into guest memory for a reset device.
        self.disk.abandon();
        self.active = None;
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.disk.engine.completion_fd())
    }

    fn backend_ready(&mut self) -> Result<(), QueueError> {
        let Some(Active {
            mem,
            queues,
            interrupt,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let disk = &mut self.disk;
        let reaped = disk.reap(mem).map_err(engine_failed);
        let mut result = reaped.and(disk.complete_done(queues, mem));
        // Queues left quiet while requests were in flight: their driver
        // did not notify for what it added since.
        for index in 0..disk.quiet.len() {
            if result.is_ok() && disk.quiet.get(index) == Some(&true) {
                let index = u16::try_from(index).unwrap_or(u16::MAX);
                result = disk.take_chains(queues, mem, index);
            }
        }
        disk.notify(queues, mem, interrupt.as_ref());
        result
    }

    fn begin_batch(&mut self) {
        self.disk.owed.hold(true);
    }

    fn end_batch(&mut self) -> Result<(), QueueError> {
        self.disk.owed.hold(false);
        // What finished while this pass ran goes out with it. Also the
        // reason this reaps even with nothing in flight: a synchronous
        // request on one queue waits for every operation (`wait_idle`), so
        // another queue can be left quiet with nothing in flight any more;
        // `backend_ready` re-arms it here.
        self.backend_ready()
    }

    fn update_config(&mut self) -> bool {
        let sectors = self.disk.backend.size() / SECTOR_SIZE;
        let capacity = sectors * SECTOR_SIZE;
        if capacity == self.disk.capacity {
            return false;
        }
        self.disk.capacity = capacity;
        self.config[..8].copy_from_slice(&sectors.to_le_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_driver::{Driver, SplitQueue, F_INDIRECT, F_NEXT, F_WRITE};
    use super::super::{STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1};
    use super::engine::scripted::ScriptedEngine;
    use super::*;
    use crate::pci::msix::testing::Event;
    use std::path::PathBuf;

    const DISK: usize = 1 << 20;
    const HDR: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    struct TempFile(PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A scripted engine that runs operations as soon as they are kicked.
    fn auto_engine() -> Box<dyn IoEngine> {
        let (e, script) = ScriptedEngine::new().unwrap();
        script.set_auto(true);
        Box::new(e)
    }

    /// The driver notifies queue `idx`; then the I/O thread serves the
    /// engine's completions.
    fn kick(d: &Driver, idx: u16) {
        d.kick(idx);
        d.dev.lock().unwrap().process_backend();
    }

    fn pattern() -> Vec<u8> {
        (0..DISK).map(|i| (i / 512) as u8 ^ (i as u8)).collect()
    }

    struct Rig {
        d: Driver,
        q: SplitQueue,
        file: TempFile,
        counters: Arc<BlockCounters>,
    }

    fn rig(read_only: bool) -> Rig {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "nubo-virtio-blk-{}-{}.raw",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, pattern()).unwrap();
        let file = TempFile(path);
        let backend = images::RawImage::open(&file.0, read_only).unwrap();
        let blk = Block::with_engine(
            Box::new(backend),
            BlockOptions {
                read_only,
                id: Some("nubo-disk-0123456789-truncated".into()),
                ..BlockOptions::default()
            },
            auto_engine(),
        )
        .unwrap();
        let counters = blk.counters();
        let d = Driver::new(Box::new(blk));
        d.enable_msix(2);
        let q = start(&d);
        Rig {
            d,
            q,
            file,
            counters,
        }
    }

    /// Negotiates everything offered, sets up queue 0 (64 entries) and
    /// DRIVER_OK, like Linux's virtio_blk probe.
    fn start(d: &Driver) -> SplitQueue {
        let offered = d.device_features();
        assert_ne!(offered & 1 << VIRTIO_F_VERSION_1, 0);
        assert_ne!(offered & 1 << VIRTIO_RING_F_EVENT_IDX, 0);
        // Interrupts after every request: the tests do not keep used_event.
        assert_eq!(
            d.negotiate(offered & !(1 << VIRTIO_RING_F_EVENT_IDX)),
            1 | 2 | 8
        );
        d.common_w(0x10, 2, 0);
        d.common_w(0x16, 2, 0);
        assert_eq!(d.common_r(0x18, 2), u64::from(QUEUE_SIZE));
        let q = SplitQueue::new(&d.mem, 64, 0x1_0000);
        d.setup_queue(0, &q, 1);
        d.set_status(1 | 2 | 8 | 4);
        assert_eq!(d.status(), 1 | 2 | 8 | 4);
        d.msi.take();
        q
    }

    fn header(d: &Driver, i: u64, t: u32, sector: u64) -> u64 {
        let at = HDR + i * 0x100;
        d.mem.write_obj(t, GuestAddress(at)).unwrap();
        d.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        d.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        at
    }

    fn status(d: &Driver, i: u64) -> u8 {
        d.mem.read_obj(GuestAddress(STATUS + i)).unwrap()
    }

    fn segment(d: &Driver, at: u64, sector: u64, num: u32, flags: u32) {
        d.mem.write_obj(sector, GuestAddress(at)).unwrap();
        d.mem.write_obj(num, GuestAddress(at + 8)).unwrap();
        d.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    }

    fn read_guest(d: &Driver, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        d.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// A backend shared with the test, as the VMM shares its images.
    struct Shared(Arc<std::sync::Mutex<images::RawImage>>);

    impl BlockBackend for Shared {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().size()
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), images::ImageError> {
            self.0.lock().unwrap().read_at(buf, offset)
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), images::ImageError> {
            self.0.lock().unwrap().write_at(buf, offset)
        }
        fn flush(&mut self) -> Result<(), images::ImageError> {
            self.0.lock().unwrap().flush()
        }
        fn discard(&mut self, offset: u64, len: u64) -> Result<(), images::ImageError> {
            self.0.lock().unwrap().discard(offset, len)
        }
        fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), images::ImageError> {
            self.0.lock().unwrap().write_zeroes(offset, len)
        }
        fn resize(&mut self, new_size: u64) -> Result<(), images::ImageError> {
            self.0.lock().unwrap().resize(new_size)
        }
    }

    /// A disk that grew: the capacity register follows, config_generation
    /// moves and the config vector fires; nothing when the size is the same.
    #[test]
    fn a_grown_disk_raises_a_config_change() {
        let file = TempFile(
            std::env::temp_dir().join(format!("nubo-virtio-blk-grow-{}.raw", std::process::id())),
        );
        std::fs::write(&file.0, vec![0u8; DISK]).unwrap();
        let image = Arc::new(std::sync::Mutex::new(
            images::RawImage::open(&file.0, false).unwrap(),
        ));
        let blk = Block::with_engine(
            Box::new(Shared(image.clone())),
            BlockOptions::default(),
            auto_engine(),
        )
        .unwrap();
        let d = Driver::new(Box::new(blk));
        d.enable_msix(2);
        let _q = start(&d);
        let dev_cfg = d.caps.device;
        assert_eq!(d.bar_r(dev_cfg, 8), (DISK / 512) as u64);
        let generation = d.common_r(0x15, 1);
        assert!(!d.dev.lock().unwrap().config_changed(), "nothing changed");
        assert!(d.msi.take().is_empty());

        image.lock().unwrap().resize(4 * DISK as u64).unwrap();
        assert!(d.dev.lock().unwrap().config_changed());
        assert_eq!(d.bar_r(dev_cfg, 8), (4 * DISK / 512) as u64, "new capacity");
        assert_ne!(d.common_r(0x15, 1), generation, "config_generation moved");
        assert_eq!(d.msi.take(), vec![Event::Trigger(0)], "the config vector");
        assert!(!d.dev.lock().unwrap().config_changed(), "once");
    }

    #[test]
    fn end_to_end_through_pci_registers() {
        let Rig {
            d,
            mut q,
            file,
            counters,
        } = rig(false);
        let dev_cfg = d.caps.device;
        assert_eq!(d.bar_r(dev_cfg, 8), (DISK / 512) as u64, "capacity");
        assert_eq!(d.bar_r(dev_cfg + 12, 4), u64::from(SEG_MAX));
        assert_eq!(d.bar_r(dev_cfg + 20, 4), 512, "blk_size");
        assert_eq!(d.bar_r(dev_cfg + 36, 4), u64::from(MAX_DISCARD_SECTORS));
        let m = &d.mem;
        m.write_slice(&[0x11; 512], GuestAddress(0x4_0000)).unwrap();
        m.write_slice(&[0x22; 512], GuestAddress(0x4_1000)).unwrap();
        let h = header(&d, 0, VIRTIO_BLK_T_OUT, 4);
        q.add_chain(
            m,
            &[
                (h, 16, false),
                (0x4_0000, 512, false),
                (0x4_1000, 512, false),
                (STATUS, 1, true),
            ],
        );
        let h = header(&d, 1, VIRTIO_BLK_T_IN, 4);
        q.add_chain(
            m,
            &[
                (h, 16, false),
                (0x5_0000, 1024, true),
                (STATUS + 1, 1, true),
            ],
        );
        let h = header(&d, 2, VIRTIO_BLK_T_IN, 0);
        // Data and status in one descriptor: the status is its last byte.
        q.add_chain(m, &[(h, 16, false), (0x5_2000, 513, true)]);
        let h = header(&d, 3, VIRTIO_BLK_T_GET_ID, 0);
        q.add_chain(
            m,
            &[(h, 16, false), (0x5_3000, 20, true), (STATUS + 3, 1, true)],
        );
        let h = header(&d, 4, VIRTIO_BLK_T_FLUSH, 0);
        q.add_chain(m, &[(h, 16, false), (STATUS + 4, 1, true)]);
        let h = header(&d, 5, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        segment(&d, 0x2_1000, 8, 2, WRITE_ZEROES_FLAG_UNMAP);
        q.add_chain(
            m,
            &[(h, 16, false), (0x2_1000, 16, false), (STATUS + 5, 1, true)],
        );
        let h = header(&d, 6, VIRTIO_BLK_T_DISCARD, 0);
        segment(&d, 0x2_1010, 12, 1, 0);
        q.add_chain(
            m,
            &[(h, 16, false), (0x2_1010, 16, false), (STATUS + 6, 1, true)],
        );
        let h = header(&d, 7, 99, 0);
        q.add_chain(m, &[(h, 16, false), (STATUS + 7, 1, true)]);
        let last = (DISK / 512 - 1) as u64;
        let h = header(&d, 8, VIRTIO_BLK_T_IN, last);
        q.add_chain(
            m,
            &[
                (h, 16, false),
                (0x5_4000, 1024, true),
                (STATUS + 8, 1, true),
            ],
        );
        let h = header(&d, 9, VIRTIO_BLK_T_OUT, u64::MAX / 256);
        q.add_chain(
            m,
            &[
                (h, 16, false),
                (0x4_0000, 512, false),
                (STATUS + 9, 1, true),
            ],
        );

        kick(&d, 0);

        assert_eq!(q.used_idx(m), 10);
        // Asynchronous requests may come back after the immediate ones.
        let mut used: Vec<(u32, u32)> = (0..10).map(|i| q.used_elem(m, i)).collect();
        used.sort_unstable();
        let heads: Vec<u32> = used.iter().map(|u| u.0).collect();
        assert_eq!(heads, vec![0, 4, 7, 9, 12, 14, 17, 20, 22, 25]);
        let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
        assert_eq!(lens, vec![1, 1025, 513, 21, 1, 1, 1, 1, 1, 1]);
        let st: Vec<u8> = [0, 1, 3, 4, 5, 6, 7, 8, 9]
            .iter()
            .map(|&i| status(&d, i))
            .collect();
        assert_eq!(st, vec![0, 0, 0, 0, 0, 0, 2, 1, 1]);
        assert_eq!(read_guest(&d, 0x5_2000 + 512, 1), vec![VIRTIO_BLK_S_OK]);
        let mut want = vec![0x11; 512];
        want.extend_from_slice(&[0x22; 512]);
        assert_eq!(read_guest(&d, 0x5_0000, 1024), want);
        assert_eq!(read_guest(&d, 0x5_2000, 512), pattern()[..512].to_vec());
        assert_eq!(
            read_guest(&d, 0x5_3000, 20),
            b"nubo-disk-0123456789".to_vec()
        );
        // One interrupt for the immediate ones, one for the engine's batch.
        let events = d.msi.take();
        assert!(
            (1..=2).contains(&events.len()) && events.iter().all(|e| *e == Event::Trigger(1)),
            "{events:?}"
        );

        let on_disk = std::fs::read(&file.0).unwrap();
        assert_eq!(&on_disk[4 * 512..6 * 512], &want[..]);
        assert!(on_disk[8 * 512..10 * 512].iter().all(|&b| b == 0));
        assert_eq!(&on_disk[..4 * 512], &pattern()[..4 * 512]);
        assert_eq!(&on_disk[13 * 512..], &pattern()[13 * 512..]);

        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((c(&counters.read_ops), c(&counters.read_bytes)), (2, 1536));
        assert_eq!(
            (c(&counters.write_ops), c(&counters.write_bytes)),
            (1, 1024)
        );
        assert_eq!(
            (
                c(&counters.flushes),
                c(&counters.write_zeroes),
                c(&counters.discards)
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (
                c(&counters.errors),
                c(&counters.unsupported),
                c(&counters.malformed)
            ),
            (2, 1, 0)
        );

        // The VMM's ioeventfd path: the same EventFd, signalled by "KVM".
        let h = header(&d, 10, VIRTIO_BLK_T_IN, 1);
        q.add_chain(
            m,
            &[
                (h, 16, false),
                (0x5_5000, 512, true),
                (STATUS + 10, 1, true),
            ],
        );
        let mut dev = d.dev.lock().unwrap();
        let notify = dev.notify_addresses();
        assert_eq!(
            notify[0].addr,
            super::super::test_driver::BAR + d.caps.notify
        );
        dev.queue_event(0).unwrap().write(1).unwrap();
        dev.process_queue(0);
        dev.process_backend();
        drop(dev);
        assert_eq!(q.used_idx(m), 11);
        assert_eq!(status(&d, 10), 0);
        assert_eq!(read_guest(&d, 0x5_5000, 512), pattern()[512..1024].to_vec());
    }

    #[test]
    fn read_only_disk() {
        let Rig { d, mut q, file, .. } = rig(true);
        let f = d.device_features();
        assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(f & 1 << VIRTIO_BLK_F_DISCARD, 0);
        let m = &d.mem;
        let h = header(&d, 0, VIRTIO_BLK_T_OUT, 0);
        q.add_chain(
            m,
            &[(h, 16, false), (0x4_0000, 512, false), (STATUS, 1, true)],
        );
        let h = header(&d, 1, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        segment(&d, 0x2_1000, 0, 1, 0);
        q.add_chain(
            m,
            &[(h, 16, false), (0x2_1000, 16, false), (STATUS + 1, 1, true)],
        );
        let h = header(&d, 2, VIRTIO_BLK_T_DISCARD, 0);
        q.add_chain(
            m,
            &[(h, 16, false), (0x2_1000, 16, false), (STATUS + 2, 1, true)],
        );
        let h = header(&d, 3, VIRTIO_BLK_T_FLUSH, 0);
        q.add_chain(m, &[(h, 16, false), (STATUS + 3, 1, true)]);
        let h = header(&d, 4, VIRTIO_BLK_T_IN, 0);
        q.add_chain(
            m,
            &[(h, 16, false), (0x5_0000, 512, true), (STATUS + 4, 1, true)],
        );
        kick(&d, 0);
        let st: Vec<u8> = (0..5).map(|i| status(&d, i)).collect();
        assert_eq!(st, vec![1, 1, 1, 0, 0]);
        assert_eq!(std::fs::read(&file.0).unwrap(), pattern());
    }

    /// Runs one chain written as raw descriptors (index, addr, len, flags,
    /// next) with head 0; returns the device status afterwards.
    fn raw(r: &mut Rig, descs: &[(u16, u64, u32, u16, u16)]) -> u8 {
        for &(i, addr, len, flags, next) in descs {
            r.q.set_desc(&r.d.mem, i, addr, len, flags, next);
        }
        r.q.publish(&r.d.mem, 0);
        kick(&r.d, 0);
        r.d.status()
    }

    const OK: u8 = 1 | 2 | 4 | 8;
    const BROKEN: u8 = OK | STATUS_DEVICE_NEEDS_RESET;

    fn assert_ioerr(descs: &[(u16, u64, u32, u16, u16)], t: u32, sector: u64, want: u8) {
        let mut r = rig(false);
        header(&r.d, 0, t, sector);
        assert_eq!(raw(&mut r, descs), OK);
        assert_eq!(status(&r.d, 0), want, "{descs:x?}");
        assert_eq!(r.q.used_idx(&r.d.mem), 1);
    }

    #[test]
    fn bad_requests_get_an_error_status() {
        let (n, w) = (F_NEXT, F_WRITE);
        let s = (1, STATUS, 1, w, 0);
        // Header too short.
        assert_ioerr(&[(0, HDR, 8, n, 1), s], VIRTIO_BLK_T_IN, 0, 1);
        // Header split over two descriptors is fine (no framing assumptions).
        assert_ioerr(
            &[(0, HDR, 8, n, 2), (2, HDR + 8, 8, n, 1), s],
            VIRTIO_BLK_T_FLUSH,
            0,
            0,
        );
        // Sector out of range, and sector * 512 overflowing.
        let data = (2, 0x4_0000, 512, w | n, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), data, s], VIRTIO_BLK_T_IN, 2048, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), data, s], VIRTIO_BLK_T_IN, 2047, 0);
        assert_ioerr(&[(0, HDR, 16, n, 2), data, s], VIRTIO_BLK_T_IN, 1 << 56, 1);
        // Data descriptor outside guest memory.
        let outside = (2, 0xf_ff00, 512, w | n, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), outside, s], VIRTIO_BLK_T_IN, 0, 1);
        let outside = (2, u64::MAX - 100, 512, n, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), outside, s], VIRTIO_BLK_T_OUT, 0, 1);
        // Wrong direction for the type.
        let rd = (2, 0x4_0000, 512, n, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), rd, s], VIRTIO_BLK_T_IN, 0, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), data, s], VIRTIO_BLK_T_OUT, 0, 1);
        // Readable after writable.
        assert_ioerr(
            &[
                (0, HDR, 16, n, 2),
                (2, 0x4_0000, 512, w | n, 3),
                (3, 0x4_1000, 512, n, 1),
                s,
            ],
            VIRTIO_BLK_T_IN,
            0,
            1,
        );
        // Not a whole number of sectors.
        let odd = (2, 0x4_0000, 500, w | n, 1);
        assert_ioerr(&[(0, HDR, 16, n, 2), odd, s], VIRTIO_BLK_T_IN, 0, 1);
        // GET_ID without a buffer.
        assert_ioerr(&[(0, HDR, 16, n, 1), s], VIRTIO_BLK_T_GET_ID, 0, 1);
    }

    #[test]
    fn bad_discard_segments() {
        let (n, w) = (F_NEXT, F_WRITE);
        let s = (1, STATUS, 1, w, 0);
        let mut r = rig(false);
        let seg = 0x2_1000;
        /// (sector, sectors, flags) of one segment.
        type Seg = (u64, u32, u32);
        let cases: [(u32, &[Seg], u8); 5] = [
            (VIRTIO_BLK_T_DISCARD, &[(0, 1, WRITE_ZEROES_FLAG_UNMAP)], 2),
            (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)], 2),
            (VIRTIO_BLK_T_DISCARD, &[(2047, 2, 0)], 1),
            (VIRTIO_BLK_T_DISCARD, &[(0, MAX_DISCARD_SECTORS + 1, 0)], 1),
            (VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0), (u64::MAX, 1, 0)], 1),
        ];
        for (i, (t, segs, want)) in cases.iter().enumerate() {
            header(&r.d, 0, *t, 0);
            for (j, &(sector, num, flags)) in segs.iter().enumerate() {
                segment(&r.d, seg + 16 * j as u64, sector, num, flags);
            }
            let len = 16 * segs.len() as u32;
            assert_eq!(
                raw(&mut r, &[(0, HDR, 16, n, 2), (2, seg, len, n, 1), s]),
                OK
            );
            assert_eq!(status(&r.d, 0), *want, "case {i}");
        }
        // Too many segments, and a partial one.
        header(&r.d, 0, VIRTIO_BLK_T_DISCARD, 0);
        let many = 16 * (MAX_DISCARD_SEG + 1);
        assert_eq!(
            raw(&mut r, &[(0, HDR, 16, n, 2), (2, seg, many, n, 1), s]),
            OK
        );
        assert_eq!(status(&r.d, 0), 1);
        assert_eq!(raw(&mut r, &[(0, HDR, 16, n, 2), (2, seg, 8, n, 1), s]), OK);
        assert_eq!(status(&r.d, 0), 1);
        // The failed WRITE_ZEROES did not zero its valid first segment.
        assert_eq!(std::fs::read(&r.file.0).unwrap(), pattern());
    }

    fn assert_broken(descs: &[(u16, u64, u32, u16, u16)]) {
        let mut r = rig(false);
        header(&r.d, 0, VIRTIO_BLK_T_IN, 0);
        assert_eq!(raw(&mut r, descs), BROKEN, "{descs:x?}");
        // The chain is returned (length 0) and the config interrupt follows.
        assert_eq!(r.d.msi.take(), vec![Event::Trigger(1), Event::Trigger(0)]);
        assert_eq!(r.counters.malformed.load(Ordering::Relaxed), 1);
        // Nothing more is processed until reset.
        let h = header(&r.d, 1, VIRTIO_BLK_T_FLUSH, 0);
        r.q.set_desc(&r.d.mem, 10, h, 16, F_NEXT, 11);
        r.q.set_desc(&r.d.mem, 11, STATUS + 1, 1, F_WRITE, 0);
        r.q.publish(&r.d.mem, 10);
        let used = r.q.used_idx(&r.d.mem);
        kick(&r.d, 0);
        assert_eq!(r.q.used_idx(&r.d.mem), used);
        // A reset and a fresh setup bring the device back.
        r.d.set_status(0);
        let mut q = start(&r.d);
        let h = header(&r.d, 2, VIRTIO_BLK_T_GET_ID, 0);
        q.add_chain(
            &r.d.mem,
            &[(h, 16, false), (0x5_3000, 20, true), (STATUS + 2, 1, true)],
        );
        kick(&r.d, 0);
        assert_eq!(q.used_idx(&r.d.mem), 1);
        assert_eq!(status(&r.d, 2), 0);
    }

    #[test]
    fn malformed_chains_need_reset() {
        let (n, w) = (F_NEXT, F_WRITE);
        // Status descriptor read-only.
        assert_broken(&[(0, HDR, 16, n, 1), (1, STATUS, 1, 0, 0)]);
        // Zero-length status descriptor.
        assert_broken(&[(0, HDR, 16, n, 1), (1, STATUS, 0, w, 0)]);
        // Status byte outside guest memory.
        assert_broken(&[(0, HDR, 16, n, 1), (1, 0x10_0000, 1, w, 0)]);
        // A loop.
        assert_broken(&[(0, HDR, 16, n, 1), (1, STATUS, 1, w | n, 0)]);
        // `next` outside the descriptor table.
        assert_broken(&[(0, HDR, 16, n, 1), (1, STATUS, 1, w | n, 200)]);
        // Indirect table outside memory.
        assert_broken(&[(0, 0xf_fff0, 64, F_INDIRECT, 0)]);
    }

    #[test]
    fn indirect_chains() {
        // A valid indirect chain reads data.
        let mut r = rig(false);
        let table = 0x6_0000;
        let h = header(&r.d, 0, VIRTIO_BLK_T_IN, 2);
        let put = |r: &Rig, i: u64, d: Descriptor| {
            r.d.mem.write_obj(d, GuestAddress(table + 16 * i)).unwrap();
        };
        put(&r, 0, Descriptor::new(h, 16, F_NEXT, 1));
        put(&r, 1, Descriptor::new(0x5_0000, 512, F_WRITE | F_NEXT, 2));
        put(&r, 2, Descriptor::new(STATUS, 1, F_WRITE, 0));
        assert_eq!(raw(&mut r, &[(0, table, 48, F_INDIRECT, 0)]), OK);
        assert_eq!(status(&r.d, 0), 0);
        assert_eq!(
            read_guest(&r.d, 0x5_0000, 512),
            pattern()[1024..1536].to_vec()
        );
        // An indirect descriptor inside the indirect table.
        put(&r, 0, Descriptor::new(0x6_1000, 16, F_INDIRECT, 0));
        assert_eq!(raw(&mut r, &[(0, table, 48, F_INDIRECT, 0)]), BROKEN);
        // A loop inside the indirect table.
        let mut r = rig(false);
        put(&r, 0, Descriptor::new(h, 16, F_NEXT, 1));
        put(&r, 1, Descriptor::new(STATUS, 1, F_WRITE | F_NEXT, 0));
        assert_eq!(raw(&mut r, &[(0, table, 32, F_INDIRECT, 0)]), BROKEN);
        // A table length that is not a multiple of 16.
        let mut r = rig(false);
        put(&r, 0, Descriptor::new(h, 16, F_NEXT, 1));
        assert_eq!(raw(&mut r, &[(0, table, 40, F_INDIRECT, 0)]), BROKEN);
    }

    #[test]
    fn ring_protocol_errors_need_reset() {
        // The available index jumps past the queue size.
        let r = rig(false);
        r.q.set_avail_idx(&r.d.mem, 100);
        kick(&r.d, 0);
        assert_eq!(r.d.status(), BROKEN);
        // A head index outside the descriptor table.
        let mut r = rig(false);
        r.q.publish(&r.d.mem, 0);
        let slot = r.q.avail + 4;
        r.d.mem.write_obj(100u16, GuestAddress(slot)).unwrap();
        kick(&r.d, 0);
        assert_eq!(r.d.status(), BROKEN);
    }

    #[test]
    fn activation_needs_queue_zero() {
        let blk = Block::with_engine(
            Box::new(super::super::testing::MemDisk(vec![0; 4096])),
            BlockOptions::default(),
            auto_engine(),
        )
        .unwrap();
        let d = Driver::new(Box::new(blk));
        assert_eq!(d.negotiate(d.device_features()), 1 | 2 | 8);
        d.set_status(1 | 2 | 8 | 4);
        assert_eq!(d.status(), BROKEN);
        assert!(!d.dev.lock().unwrap().is_activated());
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// A harness input holding one valid IN request (header, 512-byte data,
    /// status) that mutations start from.
    fn seed() -> Vec<u8> {
        let mut v = vec![0u8];
        // sel, addr(u16, *2 + 0x1000), len(u16), flags, next
        let descs: [(u16, u16, u8, u8); 3] = [(0, 16, 1, 1), (0x100, 512, 3, 2), (0x200, 1, 2, 0)];
        for i in 0..16 {
            let (a, l, f, n) = descs.get(i).copied().unwrap_or((0, 0, 0, 0));
            v.push(0);
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&l.to_le_bytes());
            v.push(f);
            v.push(n);
        }
        v.push(1); // avail idx
        v.extend_from_slice(&[0; 16]); // ring
        v.extend_from_slice(&[0; 15]); // engine and long-chain controls
        let mut data = vec![0u8; 0x600];
        data[8] = 3; // IN, sector 3
        v.extend_from_slice(&data);
        v
    }

    #[test]
    fn fuzz_harness_survives_random_inputs() {
        let started = std::time::Instant::now();
        let base = seed();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..3000 {
            let input: Vec<u8> = if i % 3 == 0 {
                let len = (xorshift(&mut s) % 700) as usize;
                (0..len).map(|_| xorshift(&mut s) as u8).collect()
            } else {
                let mut v = base.clone();
                for _ in 0..=(xorshift(&mut s) % 8) {
                    let at = (xorshift(&mut s) % 160) as usize;
                    if let Some(b) = v.get_mut(at) {
                        *b = xorshift(&mut s) as u8;
                    }
                }
                v
            };
            super::super::fuzz::fuzz_blk_request(&input);
        }
        // A hang guard, not a benchmark: 3000 debug-build runs take ~8 s on an idle
        // 2-core machine and more while other test binaries and builds share it.
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn seed_is_a_valid_request() {
        // The seed itself completes (guards the harness layout).
        let c = super::super::fuzz::blk_counters(&seed()).unwrap();
        assert_eq!(c.read_ops.load(Ordering::Relaxed), 1);
        assert_eq!(c.read_bytes.load(Ordering::Relaxed), 512);
    }
}
