//! [`IoEngine`] on a small pool of worker threads (preadv, pwritev,
//! fdatasync, fallocate), for hosts without io_uring.
//!
//! Submitted jobs are staged on the engine until [`IoEngine::kick`] moves
//! them to a shared FIFO queue. A worker takes the queue's front job when
//! no barrier is running and, if that job is a barrier, when nothing else
//! is running either; so a barrier starts after every earlier job finished
//! and later jobs wait behind it. A finished job's completion goes to the
//! done list and the completion eventfd is written (both under the lock, so
//! the eventfd is readable exactly when the done list is not empty).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, EngineError, IoEngine, IoOp};

/// Worker threads per device when none is asked for.
pub const DEFAULT_WORKERS: usize = 4;

/// One queued operation.
struct Job {
    op: IoOp,
    user_data: u64,
    barrier: bool,
}

/// What the engine and its workers share, under [`Shared::state`].
#[derive(Default)]
struct State {
    /// Kicked jobs not yet started, in submission order.
    queue: VecDeque<Job>,
    /// Jobs a worker is doing now.
    running: usize,
    /// A barrier job is running.
    barrier_running: bool,
    /// Finished jobs' completions, not yet reaped.
    done: Vec<Completion>,
    /// The workers should exit (set on drop, after a drain).
    shutdown: bool,
}

impl State {
    /// Whether a worker may start the front job now.
    fn can_start(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(_) if self.barrier_running => false,
            Some(job) => !job.barrier || self.running == 0,
        }
    }
}

/// The engine's and the workers' common part.
struct Shared {
    state: Mutex<State>,
    /// Workers wait here for a startable job.
    work: Condvar,
    /// `drain` waits here for completions.
    done: Condvar,
    /// Readable when `State::done` is not empty.
    eventfd: EventFd,
}

impl Shared {
    /// The state, even if a thread panicked while holding it (the state
    /// stays consistent: every update is a few plain assignments).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Thread-pool engine (owned by one device).
pub struct ThreadPoolEngine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Submitted since the last kick.
    staged: Vec<Job>,
    /// Submitted and not reaped.
    in_flight: usize,
}

impl ThreadPoolEngine {
    /// A pool of `workers` threads (at least one).
    pub fn new(workers: usize) -> Result<Self, EngineError> {
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(EngineError::Io)?;
        let mut engine = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                done: Condvar::new(),
                eventfd,
            }),
            workers: Vec::new(),
            staged: Vec::new(),
            in_flight: 0,
        };
        for i in 0..workers.max(1) {
            let shared = Arc::clone(&engine.shared);
            // On failure, dropping `engine` stops the workers already started.
            let handle = std::thread::Builder::new()
                .name(format!("nubo-blk-w{i}"))
                .spawn(move || worker(&shared))
                .map_err(EngineError::Io)?;
            engine.workers.push(handle);
        }
        Ok(engine)
    }

    /// Moves the completions in the done list to `out`, clearing the
    /// eventfd's readiness.
    fn take_done(&mut self, state: &mut State, out: &mut Vec<Completion>) -> io::Result<()> {
        match self.shared.eventfd.read() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        self.in_flight = self.in_flight.saturating_sub(state.done.len());
        out.append(&mut state.done);
        Ok(())
    }
}

/// A worker's loop: take a startable job, do it, report it.
fn worker(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.can_start() {
            let Some(job) = state.queue.pop_front() else {
                continue;
            };
            state.running += 1;
            state.barrier_running = job.barrier;
            drop(state);
            let result = run(&job.op);
            state = shared.lock();
            state.running -= 1;
            if job.barrier {
                state.barrier_running = false;
            }
            state.done.push(Completion {
                user_data: job.user_data,
                result,
            });
            if let Err(e) = shared.eventfd.write(1) {
                tracing::error!(error = %e, "block engine: cannot signal a completion");
            }
            shared.done.notify_all();
            // A barrier may now start, or the jobs behind one.
            if state.running == 0 || job.barrier {
                shared.work.notify_all();
            }
        } else if state.shutdown && state.queue.is_empty() {
            return;
        } else {
            state = shared
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Does one operation with blocking system calls.
fn run(op: &IoOp) -> io::Result<usize> {
    if let Some(err) = super::invalid_op(op) {
        return Err(err);
    }
    match op {
        IoOp::Read { fd, offset, iovecs } => transfer(*fd, *offset, iovecs, false),
        IoOp::Write { fd, offset, iovecs } => transfer(*fd, *offset, iovecs, true),
        IoOp::Sync { fd } => retry(|| {
            // SAFETY: fdatasync only takes a descriptor number.
            i64::from(unsafe { libc::fdatasync(*fd) })
        })
        .map(|_| 0),
        IoOp::Fallocate {
            fd,
            mode,
            offset,
            len,
        } => {
            let offset = to_off(*offset)?;
            let len = to_off(*len)?;
            retry(|| {
                // SAFETY: fallocate only takes numbers.
                i64::from(unsafe { libc::fallocate(*fd, *mode, offset, len) })
            })
            .map(|_| 0)
        }
    }
}

/// `preadv`/`pwritev` until every buffer is done or the file ends (a read
/// of 0 bytes); returns the bytes done.
fn transfer(fd: RawFd, offset: u64, iovecs: &[libc::iovec], write: bool) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = iovecs.iter().filter(|v| v.iov_len > 0).copied().collect();
    let mut start = 0;
    let mut done = 0usize;
    while start < iov.len() {
        let rest = &iov[start..];
        let count = libc::c_int::try_from(rest.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let off = to_off(offset.saturating_add(done as u64))?;
        let n = retry(|| {
            if write {
                // SAFETY: the iovecs point to memory the submitter keeps
                // valid until completion (the `IoEngine::submit` contract).
                unsafe { libc::pwritev(fd, rest.as_ptr(), count, off) as i64 }
            } else {
                // SAFETY: as above; the kernel writes only into those buffers.
                unsafe { libc::preadv(fd, rest.as_ptr(), count, off) as i64 }
            }
        })?;
        if n == 0 {
            break;
        }
        done += n;
        // Skip the buffers done and trim the one partly done.
        let mut left = n;
        while left > 0 && start < iov.len() {
            let v = &mut iov[start];
            if left >= v.iov_len {
                left -= v.iov_len;
                start += 1;
            } else {
                // SAFETY: `left < iov_len`, so the pointer stays inside the buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                v.iov_len -= left;
                left = 0;
            }
        }
    }
    Ok(done)
}

/// A file offset or length as `off_t`, or EINVAL.
fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Calls `f` until it does not fail with EINTR; a negative return is the
/// error in `errno`.
fn retry(mut f: impl FnMut() -> i64) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return usize::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl IoEngine for ThreadPoolEngine {
    fn name(&self) -> &'static str {
        "threads"
    }

    unsafe fn submit(
        &mut self,
        op: IoOp,
        user_data: u64,
        barrier: bool,
    ) -> Result<(), EngineError> {
        let depth = usize::try_from(super::ENGINE_DEPTH).unwrap_or(usize::MAX);
        if self.in_flight >= depth {
            return Err(EngineError::Full(self.in_flight));
        }
        self.staged.push(Job {
            op,
            user_data,
            barrier,
        });
        self.in_flight += 1;
        Ok(())
    }

    fn kick(&mut self) -> Result<(), EngineError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        state.queue.extend(self.staged.drain(..));
        drop(state);
        self.shared.work.notify_all();
        Ok(())
    }

    fn completion_fd(&self) -> RawFd {
        self.shared.eventfd.as_raw_fd()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        self.take_done(&mut state, out).map_err(EngineError::Io)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        self.kick()?;
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        loop {
            self.take_done(&mut state, out).map_err(EngineError::Io)?;
            if self.in_flight == 0 {
                return Ok(());
            }
            state = shared
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for ThreadPoolEngine {
    fn drop(&mut self) {
        let mut out = Vec::new();
        if let Err(e) = self.drain(&mut out) {
            tracing::error!(error = %e, "block engine: drain on drop failed");
        }
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!("block engine: a worker thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{readable, TempFile};
    use super::*;

    #[test]
    fn workers_are_named() {
        let _e = ThreadPoolEngine::new(2).unwrap();
        // A thread names itself once running: give it a moment.
        let mut names = Vec::new();
        for _ in 0..200 {
            names = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .collect::<Vec<String>>();
            if names.iter().any(|n| n.trim() == "nubo-blk-w1") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(names.iter().any(|n| n.trim() == "nubo-blk-w1"), "{names:?}");
    }

    #[test]
    fn full_at_engine_depth() {
        let mut e = ThreadPoolEngine::new(1).unwrap();
        let f = TempFile::new(0);
        let depth = super::super::ENGINE_DEPTH as u64;
        for i in 0..depth {
            // SAFETY: no buffers.
            unsafe {
                e.submit(
                    IoOp::Fallocate {
                        fd: f.fd(),
                        mode: 0,
                        offset: 0,
                        len: 512,
                    },
                    i,
                    false,
                )
                .unwrap()
            };
        }
        // SAFETY: as above.
        let err = unsafe { e.submit(IoOp::Sync { fd: f.fd() }, depth, false) };
        assert!(matches!(err, Err(EngineError::Full(_))), "{err:?}");
        let mut out = Vec::new();
        e.drain(&mut out).unwrap();
        assert_eq!(out.len() as u64, depth);
        assert!(!readable(e.completion_fd(), 0));
    }

    #[test]
    fn transfer_reads_across_buffers_until_eof() {
        let f = TempFile::new(0);
        std::fs::write(
            &f.path,
            (0..=255u8).cycle().take(10_000).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut a = vec![0u8; 3];
        let mut b = vec![0u8; 0];
        let mut c = vec![0u8; 20_000];
        let iov = |v: &mut Vec<u8>| libc::iovec {
            iov_base: v.as_mut_ptr().cast(),
            iov_len: v.len(),
        };
        let iovecs = vec![iov(&mut a), iov(&mut b), iov(&mut c)];
        assert_eq!(transfer(f.fd(), 5, &iovecs, false).unwrap(), 9_995);
        assert_eq!(a, [5, 6, 7]);
        assert_eq!(c[0], 8);
        assert_eq!(c[9_991], ((9_999) % 256) as u8);
    }
}
