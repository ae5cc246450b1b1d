//! The asynchronous block I/O engine under virtio-blk: the device submits
//! reads, writes, syncs and fallocates on host file descriptors, straight
//! into and out of guest memory, keeps many in flight per queue, and reaps
//! their completions when [`IoEngine::completion_fd`] becomes readable.
//!
//! Two implementations behind one trait:
//! - [`uring::UringEngine`]: io_uring (the `io-uring` crate), one ring per
//!   device;
//! - [`threads::ThreadPoolEngine`]: a few worker threads doing
//!   `preadv`/`pwritev`/`fdatasync`/`fallocate`, for hosts where io_uring is
//!   missing or refused (an old kernel, `io_uring_disabled`, a seccomp
//!   policy).
//!
//! [`new_engine`] picks one. Completions may arrive in any order; a
//! *barrier* operation (a flush) starts only after every operation submitted
//! before it completed, and operations submitted after it start only after it
//! completed.

#[cfg(any(test, feature = "fuzzing"))]
pub mod scripted;
pub mod threads;
pub mod uring;

use std::io;
use std::os::fd::RawFd;

/// Which engine a disk uses (`--disk …,engine=`): the images crate's type,
/// shared with the VMM's disk configuration.
pub use images::IoEngineKind as EngineKind;

/// One operation on a host file descriptor.
///
/// The buffers are raw `iovec`s into guest memory (or a bounce buffer):
/// whoever submits the operation keeps that memory mapped and untouched by
/// the VMM until its completion was reaped (see [`IoEngine::submit`]).
#[derive(Debug)]
pub enum IoOp {
    /// `preadv(fd, iovecs, offset)`: fill the buffers from the file.
    Read {
        /// Host file.
        fd: RawFd,
        /// Byte offset in the file.
        offset: u64,
        /// Destination buffers, in order.
        iovecs: Vec<libc::iovec>,
    },
    /// `pwritev(fd, iovecs, offset)`: write the buffers to the file.
    Write {
        /// Host file.
        fd: RawFd,
        /// Byte offset in the file.
        offset: u64,
        /// Source buffers, in order.
        iovecs: Vec<libc::iovec>,
    },
    /// `fdatasync(fd)`.
    Sync {
        /// Host file.
        fd: RawFd,
    },
    /// `fallocate(fd, mode, offset, len)` (punch hole / zero range).
    Fallocate {
        /// Host file.
        fd: RawFd,
        /// `FALLOC_FL_*` flags.
        mode: i32,
        /// Byte offset in the file.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

// SAFETY: an `IoOp` only carries descriptors and addresses; the memory the
// iovecs point to is guest memory or a heap buffer that the submitter keeps
// alive until completion (the contract of `IoEngine::submit`), so moving the
// description to a worker thread is sound.
unsafe impl Send for IoOp {}

/// The result of one operation: the caller's tag and the bytes transferred
/// (reads and writes) or 0, or the OS error.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to [`IoEngine::submit`].
    pub user_data: u64,
    /// Bytes transferred, or the error. A short read or write is reported as
    /// its length; the caller decides whether it is an error.
    pub result: io::Result<usize>,
}

/// Why the engine itself failed (not one operation: those fail in their
/// [`Completion`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring could not be set up (missing, disabled or refused).
    #[error("io_uring is unavailable: {0}")]
    Unavailable(io::Error),
    /// The submission queue is full: reap completions first.
    #[error("the engine is full ({0} operations in flight)")]
    Full(usize),
    /// Submitting to or reaping from the kernel failed.
    #[error("block I/O engine: {0}")]
    Io(io::Error),
}

/// An asynchronous I/O engine for one device, shared by its queues (not
/// shared between threads: the device's I/O thread submits and reaps; the
/// tag says which queue and request a completion belongs to).
pub trait IoEngine: Send {
    /// The engine's name for logs and metrics (`"io_uring"`, `"threads"`).
    fn name(&self) -> &'static str;

    /// Queues `op` with tag `user_data`. A `barrier` operation starts only
    /// after every earlier operation completed, and later operations wait
    /// for it (a flush). Nothing may start before [`IoEngine::kick`].
    ///
    /// # Safety
    ///
    /// Every iovec of `op` must point to memory that stays valid (mapped,
    /// and not otherwise written while the kernel writes it) until this
    /// operation's completion is returned by [`IoEngine::reap`] or
    /// [`IoEngine::drain`], and `op`'s descriptor must stay open as long.
    unsafe fn submit(&mut self, op: IoOp, user_data: u64, barrier: bool)
        -> Result<(), EngineError>;

    /// Starts everything queued since the last kick (one system call for
    /// the batch with io_uring).
    fn kick(&mut self) -> Result<(), EngineError>;

    /// A descriptor that becomes readable (edge: once per batch of
    /// completions) when [`IoEngine::reap`] has something; the device's I/O
    /// thread watches it.
    fn completion_fd(&self) -> RawFd;

    /// Moves every finished operation's completion to `out`, without
    /// blocking, and clears [`IoEngine::completion_fd`]'s readiness.
    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError>;

    /// Operations submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// Waits until every operation completed and moves their completions
    /// to `out` (a device reset, hot-unplug or drop).
    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError>;
}

/// The most operations an engine keeps in flight (a device's queues never
/// hold more requests than descriptors: 4 queues of 256).
pub const ENGINE_DEPTH: u32 = 1024;

/// An engine of `kind` for one device. `Auto` tries io_uring and falls back to
/// the thread pool, logging why.
pub fn new_engine(kind: EngineKind) -> Result<Box<dyn IoEngine>, EngineError> {
    match kind {
        EngineKind::IoUring => Ok(Box::new(uring::UringEngine::new(ENGINE_DEPTH)?)),
        EngineKind::Threads => Ok(Box::new(threads::ThreadPoolEngine::new(
            threads::DEFAULT_WORKERS,
        )?)),
        EngineKind::Auto => match uring::UringEngine::new(ENGINE_DEPTH) {
            Ok(e) => Ok(Box::new(e)),
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable; virtio-blk uses the thread pool");
                Ok(Box::new(threads::ThreadPoolEngine::new(
                    threads::DEFAULT_WORKERS,
                )?))
            }
        },
    }
}
