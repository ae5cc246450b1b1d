//! What every virtio device does with its queues, whatever it does with the
//! buffers: take the ready queues at activation, check the driver's
//! available index, walk and return descriptor chains, and raise the queue's
//! interrupt when the driver asked for one. Devices only say what one chain
//! means ([`drain`]'s `handle`).

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::{ActivateError, GuestMemory, QueueError, VirtioInterrupt, VirtioInterruptType};

/// The first `N` queues the transport handed over, each of which the driver
/// must have enabled (queue `i` missing or not ready →
/// [`ActivateError::QueueNotEnabled`]`(i)`).
pub(crate) fn ready_queues<const N: usize>(
    queues: Vec<Queue>,
) -> Result<[Queue; N], ActivateError> {
    let mut given = queues.into_iter();
    let mut ready = Vec::with_capacity(N);
    for index in 0..N {
        let missing = ActivateError::QueueNotEnabled(u16::try_from(index).unwrap_or(u16::MAX));
        ready.push(given.next().filter(|q| q.ready()).ok_or(missing)?);
    }
    ready
        .try_into()
        .map_err(|_| ActivateError::QueueNotEnabled(0))
}

/// Checks that the driver did not move the available index by more than the
/// queue size (it would make the device walk entries it never published).
pub(crate) fn check_avail(queue: &Queue, mem: &GuestMemory) -> Result<(), QueueError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| QueueError::Ring(e.to_string()))?;
    let next = queue.next_avail();
    if avail.0.wrapping_sub(next) > queue.size() {
        return Err(QueueError::AvailIndex {
            next,
            avail: avail.0,
        });
    }
    Ok(())
}

/// Raises queue `index`'s interrupt if the driver wants one (a ring that
/// cannot be read counts as "wants one"); a failed interrupt is logged.
pub(crate) fn notify(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(VirtioInterruptType::Queue(index)) {
            tracing::warn!(queue = index, error = %e, "virtio interrupt failed");
        }
    }
}

/// Processes every available chain of queue `index`: `handle` returns how
/// many bytes it wrote into the chain, or why the chain is malformed; the
/// chain goes back to the used ring either way (length 0 when malformed).
/// Stops at the first malformed chain or ring error, which means the device
/// needs a reset. Raises the interrupt once if anything was used.
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    mut handle: impl FnMut(DescriptorChain<&GuestMemory>) -> Result<u32, &'static str>,
) -> Result<(), QueueError> {
    if !queue.ready() {
        return Ok(());
    }
    check_avail(queue, mem)?;
    let mut used = false;
    let mut result = Ok(());
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = handle(chain).unwrap_or_else(|reason| {
            result = Err(QueueError::MalformedChain { head, reason });
            0
        });
        match queue.add_used(mem, head, len) {
            Ok(()) => used = true,
            Err(e) => {
                if result.is_ok() {
                    result = Err(QueueError::Ring(e.to_string()));
                }
            }
        }
        if result.is_err() {
            break;
        }
    }
    if used {
        notify(queue, mem, interrupt, index);
    }
    result
}
