//! An interrupt line or event that a device raises by writing an `EventFd`
//! (registered with KVM as an irqfd, or watched by the VMM's event loop).

use vmm_sys_util::eventfd::EventFd;

/// Wraps an `EventFd` so that vm-superio devices can raise it.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The wrapped event, e.g. to register it with KVM.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
