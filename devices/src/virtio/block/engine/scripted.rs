//! A deterministic [`IoEngine`] for tests and the fuzzing harness: it runs
//! operations with plain `preadv`/`pwritev`/`fdatasync`/`fallocate` on the
//! caller's thread, but only when the test says so, in an order the test
//! chooses (submission order, reverse, or shuffled by a seed — always
//! respecting barriers), and can make chosen operations fail with `EIO` or
//! come back short. Completions are announced on an `EventFd` like the real
//! engines.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, EngineError, IoEngine, IoOp};

/// In which order the operations of one barrier-free stretch complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Submission order.
    #[default]
    Fifo,
    /// Last submitted first.
    Reverse,
    /// A permutation drawn from this seed.
    Shuffle(u64),
}

/// What happens to a chosen operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It fails with `EIO` (nothing is done).
    Eio,
    /// It reports one byte less than asked (a read or write), after doing it.
    Short,
}

/// The test's controls (shared between the engine and its [`Script`]).
#[derive(Debug, Default)]
struct Control {
    /// Run operations as soon as they are kicked.
    auto: bool,
    order: Order,
    /// Faults by operation number (0 = first submitted).
    faults: std::collections::BTreeMap<u64, Fault>,
    /// Operations whose number modulo 64 has its bit set fail with `EIO`.
    fail_mask: u64,
    /// Do no I/O: reads and writes report their full length.
    dry: bool,
    /// Log of (operation number, barrier, kind) as submitted.
    log: Vec<(u64, bool, &'static str)>,
    /// Operations started but not done, in submission order.
    started: Vec<Pending>,
    /// Finished, not reaped.
    done: Vec<Completion>,
    /// Kicks so far.
    kicks: u64,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    op: IoOp,
    user_data: u64,
    barrier: bool,
}

/// The test's handle on a [`ScriptedEngine`] (clone it freely).
#[derive(Debug, Clone)]
pub struct Script(Arc<Mutex<Control>>, Arc<EventFd>);

fn lock(m: &Mutex<Control>) -> MutexGuard<'_, Control> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Script {
    /// Runs operations as soon as they are kicked (true) or holds them until
    /// [`Script::run`] (false, the default).
    pub fn set_auto(&self, auto: bool) {
        lock(&self.0).auto = auto;
    }
    /// Completion order of later runs.
    pub fn set_order(&self, order: Order) {
        lock(&self.0).order = order;
    }
    /// Operation number `seq` (0 = the first submitted) gets `fault`.
    pub fn fault(&self, seq: u64, fault: Fault) {
        lock(&self.0).faults.insert(seq, fault);
    }
    /// Operations whose number modulo 64 is a set bit of `mask` fail (EIO).
    pub fn set_fail_mask(&self, mask: u64) {
        lock(&self.0).fail_mask = mask;
    }
    /// No real I/O: reads and writes report success at full length.
    pub fn set_dry(&self, dry: bool) {
        lock(&self.0).dry = dry;
    }
    /// Operations started and not yet run.
    pub fn pending(&self) -> usize {
        lock(&self.0).started.len()
    }
    /// Kicks so far.
    pub fn kicks(&self) -> u64 {
        lock(&self.0).kicks
    }
    /// Every operation submitted so far: (number, barrier, kind).
    pub fn log(&self) -> Vec<(u64, bool, &'static str)> {
        lock(&self.0).log.clone()
    }
    /// Runs up to `n` started operations (in the chosen order, barriers
    /// respected) and signals the completion descriptor; returns how many ran.
    pub fn run(&self, n: usize) -> usize {
        let ran = run_ops(&mut lock(&self.0), n);
        if ran > 0 {
            let _ = self.1.write(1);
        }
        ran
    }
    /// Runs everything started.
    pub fn run_all(&self) -> usize {
        self.run(usize::MAX)
    }
}

/// Picks the next operation to run: the first stretch of non-barrier
/// operations is permuted by the order; a barrier runs only first in line.
fn next_index(c: &mut Control) -> Option<usize> {
    let first = c.started.first()?;
    if first.barrier {
        return Some(0);
    }
    let stretch = c
        .started
        .iter()
        .position(|p| p.barrier)
        .unwrap_or(c.started.len());
    Some(match c.order {
        Order::Fifo => 0,
        Order::Reverse => stretch - 1,
        Order::Shuffle(ref mut s) => {
            *s ^= *s << 13;
            *s ^= *s >> 7;
            *s ^= *s << 17;
            usize::try_from(*s % stretch as u64).unwrap_or(0)
        }
    })
}

fn run_ops(c: &mut Control, n: usize) -> usize {
    let mut ran = 0;
    while ran < n {
        let Some(i) = next_index(c) else { break };
        let p = c.started.remove(i);
        let fault = c
            .faults
            .get(&p.seq)
            .copied()
            .or_else(|| (c.fail_mask & (1u64 << (p.seq % 64)) != 0).then_some(Fault::Eio));
        let result = execute(&p.op, fault, c.dry);
        c.done.push(Completion {
            user_data: p.user_data,
            result,
        });
        ran += 1;
    }
    ran
}

fn total(iovecs: &[libc::iovec]) -> usize {
    iovecs.iter().map(|v| v.iov_len).sum()
}

fn cvt(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

fn execute(op: &IoOp, fault: Option<Fault>, dry: bool) -> io::Result<usize> {
    if fault == Some(Fault::Eio) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let off =
        |o: u64| libc::off_t::try_from(o).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let iov_count = |v: &[libc::iovec]| {
        i32::try_from(v.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let n = match op {
        IoOp::Read { fd, offset, iovecs } if !dry => {
            // SAFETY: the submitter guarantees the iovecs point to writable
            // memory that stays valid until the completion is reaped.
            cvt(unsafe { libc::preadv(*fd, iovecs.as_ptr(), iov_count(iovecs)?, off(*offset)?) })?
        }
        IoOp::Write { fd, offset, iovecs } if !dry => {
            // SAFETY: as above, for readable memory.
            cvt(unsafe { libc::pwritev(*fd, iovecs.as_ptr(), iov_count(iovecs)?, off(*offset)?) })?
        }
        IoOp::Read { iovecs, .. } | IoOp::Write { iovecs, .. } => total(iovecs),
        IoOp::Sync { fd } => {
            if !dry {
                // SAFETY: a plain system call on a descriptor.
                if unsafe { libc::fdatasync(*fd) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            0
        }
        IoOp::Fallocate {
            fd,
            mode,
            offset,
            len,
        } => {
            if !dry {
                // SAFETY: a plain system call on a descriptor.
                if unsafe { libc::fallocate(*fd, *mode, off(*offset)?, off(*len)?) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            0
        }
    };
    Ok(match (fault, op) {
        (Some(Fault::Short), IoOp::Read { .. } | IoOp::Write { .. }) => n.saturating_sub(1),
        _ => n,
    })
}

/// The deterministic engine (see the module documentation).
#[derive(Debug)]
pub struct ScriptedEngine {
    control: Arc<Mutex<Control>>,
    event: Arc<EventFd>,
    queued: Vec<Pending>,
    next_seq: u64,
}

impl ScriptedEngine {
    /// A new engine (holding operations until told) and its handle.
    pub fn new() -> Result<(Self, Script), EngineError> {
        let event = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(EngineError::Io)?);
        let control = Arc::new(Mutex::new(Control::default()));
        Ok((
            Self {
                control: control.clone(),
                event: event.clone(),
                queued: Vec::new(),
                next_seq: 0,
            },
            Script(control, event),
        ))
    }
}

impl IoEngine for ScriptedEngine {
    fn name(&self) -> &'static str {
        "scripted"
    }

    unsafe fn submit(
        &mut self,
        op: IoOp,
        user_data: u64,
        barrier: bool,
    ) -> Result<(), EngineError> {
        if self.in_flight() >= super::ENGINE_DEPTH as usize {
            return Err(EngineError::Full(self.in_flight()));
        }
        let kind = match op {
            IoOp::Read { .. } => "read",
            IoOp::Write { .. } => "write",
            IoOp::Sync { .. } => "sync",
            IoOp::Fallocate { .. } => "fallocate",
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        lock(&self.control).log.push((seq, barrier, kind));
        self.queued.push(Pending {
            seq,
            op,
            user_data,
            barrier,
        });
        Ok(())
    }

    fn kick(&mut self) -> Result<(), EngineError> {
        let mut c = lock(&self.control);
        c.kicks += 1;
        c.started.append(&mut self.queued);
        if c.auto && run_ops(&mut c, usize::MAX) > 0 {
            self.event.write(1).map_err(EngineError::Io)?;
        }
        Ok(())
    }

    fn completion_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        // EAGAIN: nothing was signalled since the last reap.
        let _ = self.event.read();
        out.append(&mut lock(&self.control).done);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        let c = lock(&self.control);
        self.queued.len() + c.started.len() + c.done.len()
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        let mut c = lock(&self.control);
        c.started.append(&mut self.queued);
        run_ops(&mut c, usize::MAX);
        let _ = self.event.read();
        out.append(&mut c.done);
        Ok(())
    }
}
