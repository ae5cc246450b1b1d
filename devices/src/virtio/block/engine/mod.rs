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

/// Why `op` cannot be handed to the kernel as it is (both engines refuse
/// the same operations, with the error the system call would give): an
/// offset or length beyond `i64::MAX` (io_uring would read an offset of -1
/// as "the file position"), or more buffers than `IOV_MAX`.
fn invalid_op(op: &IoOp) -> Option<io::Error> {
    let too_big = |v: u64| i64::try_from(v).is_err();
    let bad = match op {
        IoOp::Read { offset, iovecs, .. } | IoOp::Write { offset, iovecs, .. } => {
            too_big(*offset) || iovecs.len() > MAX_IOVECS
        }
        IoOp::Sync { .. } => false,
        IoOp::Fallocate { offset, len, .. } => too_big(*offset) || too_big(*len),
    };
    bad.then(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Linux's `UIO_MAXIOV`: the most buffers one `preadv`/`pwritev` takes.
const MAX_IOVECS: usize = 1024;

/// Cases every engine must pass, run against both (io_uring skipped with a
/// note where the kernel refuses it); engine-specific tests live in each
/// engine's module.
#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashMap;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// A temporary file removed on drop.
    pub(crate) struct TempFile {
        pub(crate) path: PathBuf,
        pub(crate) file: File,
    }

    impl TempFile {
        pub(crate) fn new(len: u64) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "nubo-engine-{}-{}.raw",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            file.set_len(len).unwrap();
            Self { path, file }
        }

        pub(crate) fn fd(&self) -> RawFd {
            self.file.as_raw_fd()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Both engines (io_uring only where the kernel has it).
    pub(crate) fn engines() -> Vec<Box<dyn IoEngine>> {
        let mut v: Vec<Box<dyn IoEngine>> =
            vec![Box::new(threads::ThreadPoolEngine::new(4).unwrap())];
        match uring::UringEngine::new(ENGINE_DEPTH) {
            Ok(e) => v.push(Box::new(e)),
            Err(e) => eprintln!("NOTE: io_uring engine skipped: {e}"),
        }
        v
    }

    /// Whether `fd` is readable within `timeout_ms`.
    pub(crate) fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    /// Waits on the completion fd and reaps until `n` completions came (in
    /// completion order).
    pub(crate) fn wait_for(engine: &mut dyn IoEngine, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < n {
            assert!(Instant::now() < deadline, "timed out: {} of {n}", out.len());
            if readable(engine.completion_fd(), 1000) {
                engine.reap(&mut out).unwrap();
            }
        }
        assert_eq!(out.len(), n);
        out
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    /// Three iovecs (512 + 1024 + 2560 bytes) over one 4 KiB buffer.
    fn split(buf: &mut [u8]) -> Vec<libc::iovec> {
        let (a, rest) = buf.split_at_mut(512);
        let (b, c) = rest.split_at_mut(1024);
        vec![iov(a), iov(b), iov(c)]
    }

    fn by_tag(done: Vec<Completion>) -> HashMap<u64, io::Result<usize>> {
        let n = done.len();
        let map: HashMap<_, _> = done.into_iter().map(|c| (c.user_data, c.result)).collect();
        assert_eq!(map.len(), n, "a tag completed twice");
        map
    }

    #[test]
    fn write_then_read_back_many_in_flight() {
        const N: usize = 200;
        for mut e in engines() {
            let f = TempFile::new(0);
            let mut bufs: Vec<Vec<u8>> = (0..N).map(|i| vec![(i % 251) as u8 + 1; 4096]).collect();
            for (i, b) in bufs.iter_mut().enumerate() {
                let op = IoOp::Write {
                    fd: f.fd(),
                    offset: i as u64 * 4096,
                    iovecs: split(b),
                };
                // SAFETY: the buffers outlive the completions (waited below).
                unsafe { e.submit(op, i as u64, false).unwrap() };
            }
            assert_eq!(e.in_flight(), N);
            e.kick().unwrap();
            let done = by_tag(wait_for(e.as_mut(), N));
            for i in 0..N as u64 {
                assert_eq!(done[&i].as_ref().unwrap(), &4096, "{}", e.name());
            }
            assert_eq!(e.in_flight(), 0);

            let mut back: Vec<Vec<u8>> = (0..N).map(|_| vec![0u8; 4096]).collect();
            for (i, b) in back.iter_mut().enumerate() {
                let op = IoOp::Read {
                    fd: f.fd(),
                    offset: i as u64 * 4096,
                    iovecs: split(b),
                };
                // SAFETY: as above.
                unsafe { e.submit(op, 1000 + i as u64, false).unwrap() };
            }
            e.kick().unwrap();
            let done = by_tag(wait_for(e.as_mut(), N));
            for i in 0..N {
                assert_eq!(done[&(1000 + i as u64)].as_ref().unwrap(), &4096);
                assert_eq!(back[i], bufs[i], "{}: block {i}", e.name());
            }
        }
    }

    #[test]
    fn barrier_orders_earlier_and_later_writes() {
        const N: u64 = 64;
        for mut e in engines() {
            for round in 0..3u8 {
                let f = TempFile::new(N * 4096);
                let mut first: Vec<Vec<u8>> = (0..N).map(|_| vec![0xa0 + round; 4096]).collect();
                let mut later: Vec<Vec<u8>> = (0..N).map(|_| vec![0x50 + round; 4096]).collect();
                for (i, b) in first.iter_mut().enumerate() {
                    let op = IoOp::Write {
                        fd: f.fd(),
                        offset: i as u64 * 4096,
                        iovecs: split(b),
                    };
                    // SAFETY: the buffers outlive the completions.
                    unsafe { e.submit(op, i as u64, false).unwrap() };
                    if round == 1 {
                        e.kick().unwrap(); // Round 1 kicks every operation alone.
                    }
                }
                // SAFETY: no buffers.
                unsafe { e.submit(IoOp::Sync { fd: f.fd() }, 999, true).unwrap() };
                if round == 1 {
                    e.kick().unwrap(); // Round 1 kicks every operation alone.
                }
                for (i, b) in later.iter_mut().enumerate() {
                    let op = IoOp::Write {
                        fd: f.fd(),
                        offset: i as u64 * 4096,
                        iovecs: split(b),
                    };
                    // SAFETY: as above.
                    unsafe { e.submit(op, 1000 + i as u64, false).unwrap() };
                    if round == 1 {
                        e.kick().unwrap(); // Round 1 kicks every operation alone.
                    }
                }
                e.kick().unwrap();
                let done = wait_for(e.as_mut(), 2 * N as usize + 1);
                let pos = done.iter().position(|c| c.user_data == 999).unwrap();
                assert!(done[pos].result.is_ok());
                for (k, c) in done.iter().enumerate() {
                    assert!(c.result.is_ok(), "{}: {:?}", e.name(), c.result);
                    if c.user_data < N {
                        assert!(
                            k < pos,
                            "{}: write {} after the sync",
                            e.name(),
                            c.user_data
                        );
                    } else if c.user_data >= 1000 {
                        assert!(
                            k > pos,
                            "{}: later write {} before the sync",
                            e.name(),
                            c.user_data
                        );
                    }
                }
                let data = std::fs::read(&f.path).unwrap();
                assert!(data.iter().all(|b| *b == 0x50 + round), "{}", e.name());
            }
        }
    }

    #[test]
    fn bad_fd_fails_and_engine_keeps_working() {
        for mut e in engines() {
            let f = TempFile::new(4096);
            let ro = File::open(&f.path).unwrap();
            let mut buf = vec![7u8; 4096];
            let ops = [
                IoOp::Write {
                    fd: ro.as_raw_fd(),
                    offset: 0,
                    iovecs: vec![iov(&mut buf)],
                },
                IoOp::Sync { fd: 1_000_000 },
            ];
            for (i, op) in ops.into_iter().enumerate() {
                // SAFETY: `buf` outlives the completion.
                unsafe { e.submit(op, i as u64, false).unwrap() };
            }
            e.kick().unwrap();
            let done = by_tag(wait_for(e.as_mut(), 2));
            for i in 0..2 {
                let err = done[&i].as_ref().unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{}: {err}", e.name());
            }
            let op = IoOp::Write {
                fd: f.fd(),
                offset: 0,
                iovecs: vec![iov(&mut buf)],
            };
            // SAFETY: as above.
            unsafe { e.submit(op, 5, false).unwrap() };
            e.kick().unwrap();
            let done = wait_for(e.as_mut(), 1);
            assert_eq!(done[0].result.as_ref().unwrap(), &4096);
            assert_eq!(std::fs::read(&f.path).unwrap(), buf);
        }
    }

    #[test]
    fn enospc_mid_stream_then_usable() {
        for mut e in engines() {
            let f = TempFile::new(0);
            let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
            let mut bufs: Vec<Vec<u8>> = (0..9).map(|i| vec![i as u8; 4096]).collect();
            for (i, b) in bufs.iter_mut().enumerate() {
                // Every third write goes to /dev/full.
                let fd = if i % 3 == 1 { full.as_raw_fd() } else { f.fd() };
                let op = IoOp::Write {
                    fd,
                    offset: i as u64 * 4096,
                    iovecs: vec![iov(b)],
                };
                // SAFETY: the buffers outlive the completions.
                unsafe { e.submit(op, i as u64, false).unwrap() };
            }
            e.kick().unwrap();
            let done = by_tag(wait_for(e.as_mut(), 9));
            for i in 0..9u64 {
                if i % 3 == 1 {
                    let err = done[&i].as_ref().unwrap_err();
                    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{}", e.name());
                } else {
                    assert_eq!(done[&i].as_ref().unwrap(), &4096);
                }
            }
            assert_eq!(e.in_flight(), 0);
        }
    }

    #[test]
    fn drain_returns_everything() {
        for mut e in engines() {
            let f = TempFile::new(0);
            let mut bufs: Vec<Vec<u8>> = (0..100).map(|_| vec![3u8; 4096]).collect();
            for (i, b) in bufs.iter_mut().enumerate() {
                let op = IoOp::Write {
                    fd: f.fd(),
                    offset: i as u64 * 4096,
                    iovecs: vec![iov(b)],
                };
                // SAFETY: the buffers outlive the drain.
                unsafe { e.submit(op, i as u64, i == 50).unwrap() };
                if i == 30 {
                    e.kick().unwrap();
                }
            }
            // The last ones are not kicked: drain starts them.
            let mut out = Vec::new();
            e.drain(&mut out).unwrap();
            assert_eq!(by_tag(std::mem::take(&mut out)).len(), 100, "{}", e.name());
            assert_eq!(e.in_flight(), 0);
            // Readiness may be spurious (io_uring can signal a completion
            // just after it was reaped), never backed by a completion.
            if readable(e.completion_fd(), 0) {
                eprintln!("{}: spurious readiness after drain", e.name());
                e.reap(&mut out).unwrap();
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn completion_fd_readiness_and_kick() {
        for mut e in engines() {
            let f = TempFile::new(0);
            assert!(!readable(e.completion_fd(), 0));
            let mut buf = vec![1u8; 4096];
            let op = IoOp::Write {
                fd: f.fd(),
                offset: 0,
                iovecs: vec![iov(&mut buf)],
            };
            // SAFETY: `buf` outlives the completion.
            unsafe { e.submit(op, 1, false).unwrap() };
            // Nothing starts before the kick.
            std::thread::sleep(Duration::from_millis(50));
            assert!(!readable(e.completion_fd(), 0), "{}", e.name());
            assert_eq!(std::fs::metadata(&f.path).unwrap().len(), 0);
            e.kick().unwrap();
            assert!(readable(e.completion_fd(), 5000), "{}", e.name());
            let mut out = Vec::new();
            e.reap(&mut out).unwrap();
            assert_eq!(out.len(), 1);
            assert!(!readable(e.completion_fd(), 0), "{}", e.name());
            e.reap(&mut out).unwrap();
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn short_read_at_eof_and_invalid_ops() {
        for mut e in engines() {
            let f = TempFile::new(4096);
            let mut buf = vec![9u8; 8192];
            let ops = [
                IoOp::Read {
                    fd: f.fd(),
                    offset: 0,
                    // 8 KiB asked of a 4 KiB file: a short read.
                    iovecs: vec![iov(&mut buf[..4096]), iov(&mut buf[4096..])],
                },
                IoOp::Fallocate {
                    fd: f.fd(),
                    mode: 0,
                    offset: u64::MAX,
                    len: 1,
                },
                IoOp::Read {
                    fd: f.fd(),
                    offset: u64::MAX,
                    iovecs: vec![],
                },
                IoOp::Fallocate {
                    fd: f.fd(),
                    mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset: 0,
                    len: 4096,
                },
            ];
            for (i, op) in ops.into_iter().enumerate() {
                // SAFETY: `buf` outlives the completions.
                unsafe { e.submit(op, i as u64, false).unwrap() };
            }
            e.kick().unwrap();
            let done = by_tag(wait_for(e.as_mut(), 4));
            assert_eq!(done[&0].as_ref().unwrap(), &4096, "{}", e.name());
            for i in [1, 2] {
                let err = done[&i].as_ref().unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{}", e.name());
            }
            assert_eq!(done[&3].as_ref().unwrap(), &0, "{}", e.name());
        }
    }

    #[test]
    fn barriers_in_a_row_keep_phases_apart() {
        const N: u64 = 16;
        for mut e in engines() {
            let f = TempFile::new(N * 4096);
            let mut bufs: Vec<Vec<u8>> =
                (0..3 * N).map(|i| vec![(i / N) as u8 + 1; 4096]).collect();
            // Phase p's writes are tagged p*100 + i; barriers 1000 + p.
            for (k, b) in bufs.iter_mut().enumerate() {
                let (p, i) = (k as u64 / N, k as u64 % N);
                let op = IoOp::Write {
                    fd: f.fd(),
                    offset: i * 4096,
                    iovecs: vec![iov(b)],
                };
                // SAFETY: the buffers outlive the completions.
                unsafe { e.submit(op, p * 100 + i, false).unwrap() };
                if i == N - 1 && p < 2 {
                    // SAFETY: no buffers.
                    unsafe { e.submit(IoOp::Sync { fd: f.fd() }, 1000 + p, true).unwrap() };
                }
            }
            e.kick().unwrap();
            let done = wait_for(e.as_mut(), 3 * N as usize + 2);
            // The phase of each completion, in completion order, never goes down.
            let phases: Vec<u64> = done
                .iter()
                .map(|c| match c.user_data {
                    t if t >= 1000 => 2 * (t - 1000) + 1,
                    t => 2 * (t / 100),
                })
                .collect();
            assert!(
                phases.windows(2).all(|w| w[0] <= w[1]),
                "{}: {phases:?}",
                e.name()
            );
            assert!(std::fs::read(&f.path).unwrap().iter().all(|b| *b == 3));
        }
    }

    #[test]
    fn drop_waits_for_in_flight_writes() {
        for mut e in engines() {
            let f = TempFile::new(0);
            let mut bufs: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
            for (i, b) in bufs.iter_mut().enumerate() {
                let op = IoOp::Write {
                    fd: f.fd(),
                    offset: i as u64 * 4096,
                    iovecs: vec![iov(b)],
                };
                // SAFETY: the buffers outlive the engine (dropped below).
                unsafe { e.submit(op, i as u64, i == 32).unwrap() };
            }
            e.kick().unwrap();
            drop(e);
            let data = std::fs::read(&f.path).unwrap();
            assert_eq!(data, bufs.concat());
        }
    }
}
