//! One I/O thread per virtio device: it waits on the device's queue
//! notifications (KVM ioeventfds) and its host-side descriptor (a TAP with
//! frames, a block engine with completions) and serves them, so a busy or
//! slow device never delays the control loop, the API or another device.
//!
//! The thread shares the device with the vCPUs (register accesses) through
//! the device's mutex; it holds it only while serving one wake-up.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::virtio::pci::VirtioPciDevice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::VmError;

/// What a watched descriptor means to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The guest notified queue `n` (its ioeventfd fired).
    Queue(u16),
    /// The host side is ready (`VirtioDevice::backend_ready`).
    Backend,
}

/// One descriptor the I/O thread watches.
pub struct Source {
    /// The descriptor (a queue's notification event, or the device's backend).
    pub fd: RawFd,
    /// What it means.
    pub ready: Ready,
    /// A queue's notification event the thread keeps open (a duplicate of
    /// the ioeventfd); a backend descriptor is owned by the device instead.
    pub owned: Option<EventFd>,
}

/// Epoll data of the stop event (sources are numbered from 0).
const STOP: u64 = u64::MAX;

/// A running I/O thread; dropping it stops and joins the thread.
pub struct IoThread {
    stop: EventFd,
    join: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts a thread named `nubo-io-NAME` serving `device` for `sources`.
    /// Queue events are level-triggered; the backend is edge-triggered (the
    /// device serves everything that is there each time).
    pub fn spawn(
        name: &str,
        device: Arc<Mutex<VirtioPciDevice>>,
        sources: Vec<Source>,
    ) -> Result<Self, VmError> {
        let epoll = Epoll::new().map_err(VmError::Event)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(VmError::Event)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP),
            )
            .map_err(VmError::Event)?;
        for (index, source) in sources.iter().enumerate() {
            let events = match source.ready {
                Ready::Queue(_) => EventSet::IN,
                Ready::Backend => EventSet::IN | EventSet::EDGE_TRIGGERED,
            };
            epoll
                .ctl(
                    ControlOperation::Add,
                    source.fd,
                    EpollEvent::new(events, index as u64),
                )
                .map_err(VmError::Event)?;
        }
        let thread_stop = stop.try_clone().map_err(VmError::Event)?;
        let label = name.to_string();
        let join = std::thread::Builder::new()
            .name(format!("nubo-io-{name}"))
            .spawn(move || {
                let span = tracing::info_span!("io", device = %label);
                let _enter = span.enter();
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Io) {
                    tracing::error!(error = %e, "cannot sandbox the I/O thread; it does not run");
                    return;
                }
                serve(&epoll, &thread_stop, &device, &sources);
            })
            .map_err(|e| VmError::Devices(format!("cannot start an I/O thread: {e}")))?;
        Ok(Self {
            stop,
            join: Some(join),
        })
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            tracing::warn!(error = %e, "cannot stop an I/O thread");
            return;
        }
        if let Some(join) = self.join.take() {
            if join.join().is_err() {
                tracing::error!("an I/O thread panicked");
            }
        }
    }
}

/// The thread's loop: until `stop` fires, serve each ready source.
fn serve(epoll: &Epoll, stop: &EventFd, device: &Mutex<VirtioPciDevice>, sources: &[Source]) {
    let mut events = vec![EpollEvent::default(); sources.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "I/O thread epoll failed; the device stops");
                return;
            }
        };
        if events[..n].iter().any(|ev| ev.data() == STOP) {
            let _ = stop.read();
            return;
        }
        // One pass over everything that is ready, with one interrupt per
        // queue at its end (each interrupt is a guest exit).
        let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
        dev.begin_batch();
        for ev in &events[..n] {
            let Some(source) = usize::try_from(ev.data()).ok().and_then(|i| sources.get(i)) else {
                continue;
            };
            match source.ready {
                Ready::Queue(queue) => dev.process_queue(queue),
                Ready::Backend => dev.process_backend(),
            }
        }
        dev.end_batch();
    }
}
