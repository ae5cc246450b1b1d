//! [`IoEngine`] on io_uring: one submission/completion ring per device, an
//! eventfd registered for completions, `IOSQE_IO_DRAIN` for barriers.
//!
//! Every operation gets a *slot* (its index is the SQE's `user_data`); the
//! slot keeps the caller's tag and the iovec array alive until the CQE is
//! reaped. `IOSQE_IO_DRAIN` only makes a barrier wait for the operations
//! before it; to keep later operations from starting before the barrier
//! finished, they are held back in `held` while a barrier is in flight and
//! pushed to the ring when its completion is reaped.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, EngineError, IoEngine, IoOp};

/// What a slot remembers about an operation the kernel may still be using.
struct Slot {
    /// The caller's tag.
    user_data: u64,
    /// The iovec array the SQE points to (kept alive until completion).
    _iovecs: Vec<libc::iovec>,
    /// Whether this operation is a barrier.
    barrier: bool,
}

/// io_uring engine (owned by one device).
pub struct UringEngine {
    /// The ring (dropped only after every operation completed, see `Drop`).
    ring: ManuallyDrop<IoUring>,
    /// Registered with the ring: written by the kernel on completions.
    eventfd: EventFd,
    /// Operations the kernel may use, by slot index.
    slots: Vec<Option<Slot>>,
    /// Free slot indexes.
    free: Vec<u32>,
    /// Entries held back behind the barrier in flight, in submission order,
    /// each with whether it is a barrier.
    held: VecDeque<(squeue::Entry, bool)>,
    /// A barrier was pushed to the ring and has not completed yet.
    barrier_in_flight: bool,
    /// Completions made without the kernel (invalid operations).
    synthetic: Vec<Completion>,
    /// Operations submitted and not reaped (slots in use).
    in_flight: usize,
    /// Scratch space for reaping (kept to avoid an allocation per reap).
    cqes: Vec<(u64, i32)>,
}

// SAFETY: the only non-`Send` parts are the iovec arrays in the slots:
// addresses of guest memory (or bounce buffers) that the submitter keeps
// valid until completion wherever the engine runs (see `IoOp`'s `Send`);
// the engine is used by one thread at a time (`&mut self`).
unsafe impl Send for UringEngine {}

/// The opcodes the engine needs from the kernel.
const NEEDED_OPS: [u8; 4] = [
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
    opcode::Fallocate::CODE,
];

impl UringEngine {
    /// A ring with room for `depth` operations; [`EngineError::Unavailable`]
    /// when the kernel refuses io_uring or lacks an operation the engine needs.
    pub fn new(depth: u32) -> Result<Self, EngineError> {
        let depth = depth.max(1);
        // The completion queue holds twice the slots: it can never overflow.
        let ring = IoUring::builder()
            .setup_cqsize(depth.saturating_mul(2))
            .build(depth)
            .map_err(EngineError::Unavailable)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(EngineError::Unavailable)?;
        if let Some(op) = NEEDED_OPS.iter().find(|op| !probe.is_supported(**op)) {
            return Err(EngineError::Unavailable(io::Error::other(format!(
                "io_uring opcode {op} is not supported by this kernel"
            ))));
        }
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(EngineError::Io)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(EngineError::Unavailable)?;
        let slots_len = usize::try_from(depth).map_err(|_| {
            EngineError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "depth too large",
            ))
        })?;
        tracing::debug!(depth, "io_uring block engine ready");
        Ok(Self {
            ring: ManuallyDrop::new(ring),
            eventfd,
            slots: (0..slots_len).map(|_| None).collect(),
            free: (0..depth).rev().collect(),
            held: VecDeque::new(),
            barrier_in_flight: false,
            synthetic: Vec::new(),
            in_flight: 0,
            cqes: Vec::new(),
        })
    }

    /// Reads the completion eventfd, if it is set.
    fn clear_eventfd(&self) -> Result<(), EngineError> {
        match self.eventfd.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(EngineError::Io(e)),
        }
    }

    /// Pushes `entry` to the submission queue, submitting what is there
    /// first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> Result<(), EngineError> {
        loop {
            // SAFETY: the entry's iovec array lives in its slot and the
            // buffers are kept valid by the caller of `submit` until the
            // completion is reaped (the `IoEngine::submit` contract).
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    /// Pushes the held-back entries up to and including the next barrier.
    fn release_held(&mut self) -> Result<(), EngineError> {
        while !self.barrier_in_flight {
            let Some((entry, barrier)) = self.held.pop_front() else {
                break;
            };
            if let Err(e) = self.push(&entry) {
                // Keep it for the next reap: a lost entry would hang drain.
                self.held.push_front((entry, barrier));
                return Err(e);
            }
            self.barrier_in_flight = barrier;
        }
        Ok(())
    }

    /// `io_uring_enter`: submits the queued entries and waits for `want`
    /// completions; retries on EINTR.
    fn enter(&self, want: usize) -> Result<(), EngineError> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EngineError::Io(e)),
            }
        }
    }

    /// Moves the completion queue's entries to `out`, releasing slots and
    /// the operations held behind a completed barrier.
    fn collect(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        self.in_flight = self.in_flight.saturating_sub(self.synthetic.len());
        out.append(&mut self.synthetic);
        loop {
            // Copied out first: the queue borrows the ring.
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if cqes.is_empty() {
                self.cqes = cqes;
                break;
            }
            for &(index, res) in &cqes {
                let slot = usize::try_from(index)
                    .ok()
                    .and_then(|i| self.slots.get_mut(i))
                    .and_then(Option::take);
                let Some(slot) = slot else {
                    tracing::warn!(index, "io_uring completion for an unknown slot");
                    continue;
                };
                if let Ok(i) = u32::try_from(index) {
                    self.free.push(i);
                }
                self.in_flight = self.in_flight.saturating_sub(1);
                if slot.barrier {
                    self.barrier_in_flight = false;
                }
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    // A non-negative i32 always fits in usize here.
                    Ok(usize::try_from(res).unwrap_or(0))
                };
                out.push(Completion {
                    user_data: slot.user_data,
                    result,
                });
            }
            self.cqes = cqes;
            if !self.barrier_in_flight && !self.held.is_empty() {
                // Later operations were kicked long ago: start them now.
                self.release_held()?;
                self.enter(0)?;
            }
        }
        Ok(())
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    unsafe fn submit(
        &mut self,
        op: IoOp,
        user_data: u64,
        barrier: bool,
    ) -> Result<(), EngineError> {
        if let Some(err) = super::invalid_op(&op) {
            self.synthetic.push(Completion {
                user_data,
                result: Err(err),
            });
            self.in_flight += 1;
            return self.eventfd.write(1).map_err(EngineError::Io);
        }
        let Some(index) = self.free.pop() else {
            return Err(EngineError::Full(self.in_flight));
        };
        let mut iovecs = Vec::new();
        let entry = match op {
            IoOp::Read {
                fd,
                offset,
                iovecs: v,
            } => {
                iovecs = v;
                opcode::Readv::new(types::Fd(fd), iovecs.as_ptr(), iov_count(&iovecs))
                    .offset(offset)
                    .build()
            }
            IoOp::Write {
                fd,
                offset,
                iovecs: v,
            } => {
                iovecs = v;
                opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), iov_count(&iovecs))
                    .offset(offset)
                    .build()
            }
            IoOp::Sync { fd } => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Fallocate {
                fd,
                mode,
                offset,
                len,
            } => opcode::Fallocate::new(types::Fd(fd), len)
                .offset(offset)
                .mode(mode)
                .build(),
        };
        // The Vec's heap buffer does not move when the Vec moves into the
        // slot, so the pointer in the entry stays valid.
        let mut entry = entry.user_data(u64::from(index));
        if barrier {
            entry = entry.flags(squeue::Flags::IO_DRAIN);
        }
        let slot = Slot {
            user_data,
            _iovecs: iovecs,
            barrier,
        };
        if let Some(s) = usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            *s = Some(slot);
        }
        self.in_flight += 1;
        if self.barrier_in_flight || !self.held.is_empty() {
            self.held.push_back((entry, barrier));
            return Ok(());
        }
        if let Err(e) = self.push(&entry) {
            // Never pushed: forget it (a slot in use forever would hang drain).
            if let Some(s) = usize::try_from(index)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
            {
                *s = None;
            }
            self.free.push(index);
            self.in_flight -= 1;
            return Err(e);
        }
        self.barrier_in_flight = barrier;
        Ok(())
    }

    fn kick(&mut self) -> Result<(), EngineError> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enter(0)
    }

    fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        // Clear the readiness first: a completion after this sets it again.
        self.clear_eventfd()?;
        self.collect(out)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        self.kick()?;
        loop {
            self.reap(out)?;
            if self.in_flight == 0 {
                // The last completions' signals may have come after the
                // read in `reap`: clear them (nothing is left to signal).
                return self.clear_eventfd();
            }
            self.enter(1)?;
        }
    }
}

/// The iovec count for an SQE; more than `u32::MAX` becomes `u32::MAX`,
/// which the kernel refuses (EINVAL) before reading the array.
fn iov_count(iovecs: &[libc::iovec]) -> u32 {
    u32::try_from(iovecs.len()).unwrap_or(u32::MAX)
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        let mut out = Vec::new();
        match self.drain(&mut out) {
            Ok(()) => {
                // SAFETY: nothing is in flight any more, so the kernel no
                // longer uses the rings or any buffer; the ring is dropped
                // once, here, and never used after.
                unsafe { ManuallyDrop::drop(&mut self.ring) }
            }
            Err(e) => {
                // The kernel may still write into memory: never unmap the
                // ring or free the iovec arrays; leak them instead.
                tracing::error!(error = %e, in_flight = self.in_flight,
                    "io_uring engine could not drain; leaking the ring");
                std::mem::forget(std::mem::take(&mut self.slots));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{wait_for, TempFile};
    use super::*;

    /// The engine, or `None` (with a note) where the kernel refuses io_uring.
    fn engine(depth: u32) -> Option<UringEngine> {
        match UringEngine::new(depth) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("NOTE: io_uring test skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn full_beyond_depth() {
        let Some(mut e) = engine(4) else { return };
        let f = TempFile::new(0);
        for i in 0..4 {
            // SAFETY: no buffers.
            unsafe { e.submit(IoOp::Sync { fd: f.fd() }, i, false).unwrap() };
        }
        // SAFETY: as above.
        let err = unsafe { e.submit(IoOp::Sync { fd: f.fd() }, 4, false) };
        assert!(matches!(err, Err(EngineError::Full(4))), "{err:?}");
        e.kick().unwrap();
        assert_eq!(wait_for(&mut e, 4).len(), 4);
        // Slots are reused once reaped.
        for round in 0..10 {
            for i in 0..4 {
                // SAFETY: no buffers.
                unsafe {
                    e.submit(IoOp::Sync { fd: f.fd() }, round * 10 + i, i == 2)
                        .unwrap()
                };
            }
            e.kick().unwrap();
            assert_eq!(wait_for(&mut e, 4).len(), 4);
        }
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn tiny_ring_reuses_its_slots() {
        // Two slots for twenty operations, drained whenever both are used.
        let Some(mut e) = engine(2) else { return };
        let f = TempFile::new(0);
        let mut out = Vec::new();
        for i in 0..20 {
            // SAFETY: no buffers.
            unsafe { e.submit(IoOp::Sync { fd: f.fd() }, i, false).unwrap() };
            if e.in_flight() == 2 {
                e.drain(&mut out).unwrap();
            }
        }
        e.drain(&mut out).unwrap();
        assert_eq!(out.len(), 20);
        assert!(out.iter().all(|c| c.result.is_ok()));
    }
}
