//! [`IoEngine`] on io_uring: one submission/completion ring per queue, an
//! eventfd registered for completions, `IOSQE_IO_DRAIN` for barriers.

use std::os::fd::RawFd;

use super::{Completion, EngineError, IoEngine, IoOp};

/// io_uring engine (owned by one device queue).
pub struct UringEngine {
    _todo: (),
}

impl UringEngine {
    /// A ring with room for `depth` operations; [`EngineError::Unavailable`]
    /// when the kernel refuses io_uring.
    pub fn new(depth: u32) -> Result<Self, EngineError> {
        let _ = depth;
        todo!("io_uring engine")
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
