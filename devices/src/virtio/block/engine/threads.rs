//! [`IoEngine`] on a small pool of worker threads (preadv, pwritev,
//! fdatasync, fallocate), for hosts without io_uring.

use std::os::fd::RawFd;

use super::{Completion, EngineError, IoEngine, IoOp};

/// Worker threads per queue when none is asked for.
pub const DEFAULT_WORKERS: usize = 4;

/// Thread-pool engine (owned by one device queue).
pub struct ThreadPoolEngine {
    _todo: (),
}

impl ThreadPoolEngine {
    /// A pool of `workers` threads (at least one).
    pub fn new(workers: usize) -> Result<Self, EngineError> {
        let _ = workers;
        todo!("thread pool engine")
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
        let _ = (op, user_data, barrier);
        todo!()
    }
    fn kick(&mut self) -> Result<(), EngineError> {
        todo!()
    }
    fn completion_fd(&self) -> RawFd {
        todo!()
    }
    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        let _ = out;
        todo!()
    }
    fn in_flight(&self) -> usize {
        todo!()
    }
    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        let _ = out;
        todo!()
    }
}
