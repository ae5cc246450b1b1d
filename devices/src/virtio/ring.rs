//! What every virtio device does with its queues, whatever it does with the
//! buffers: take the ready queues at activation (with `VIRTIO_RING_F_EVENT_IDX`
//! when the driver accepted it), check the driver's available index, walk and
//! return descriptor chains with the driver's notifications suppressed while
//! the device is busy, and raise the queue's interrupt only when the driver
//! asked for one. Devices only say what one chain means ([`drain`]'s
//! `handle`).

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::{
    ActivateError, GuestMemory, QueueError, VirtioInterrupt, VirtioInterruptType,
    VIRTIO_RING_F_EVENT_IDX,
};

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want interrupts (only
/// meaningful without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The first `n` queues the transport handed over, each of which the driver
/// must have enabled (queue `i` missing or not ready →
/// [`ActivateError::QueueNotEnabled`]`(i)`), with EVENT_IDX switched on when
/// `acked_features` has it.
pub(crate) fn ready_queues_n(
    queues: Vec<Queue>,
    n: usize,
    acked_features: u64,
) -> Result<Vec<Queue>, ActivateError> {
    let event_idx = acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
    let mut given = queues.into_iter();
    let mut ready = Vec::with_capacity(n);
    for index in 0..n {
        let missing = ActivateError::QueueNotEnabled(u16::try_from(index).unwrap_or(u16::MAX));
        let mut queue = given.next().filter(|q| q.ready()).ok_or(missing)?;
        queue.set_event_idx(event_idx);
        ready.push(queue);
    }
    Ok(ready)
}

/// [`ready_queues_n`] for a fixed number of queues.
pub(crate) fn ready_queues<const N: usize>(
    queues: Vec<Queue>,
    acked_features: u64,
) -> Result<[Queue; N], ActivateError> {
    ready_queues_n(queues, N, acked_features)?
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

/// Reads a `u16` of the available ring at byte `offset` (flags at 0,
/// `used_event` after the ring).
fn avail_u16(queue: &Queue, mem: &GuestMemory, offset: u64) -> Option<u16> {
    let addr = GuestAddress(queue.avail_ring()).checked_add(offset)?;
    mem.read_obj::<u16>(addr).ok().map(u16::from_le)
}

/// Whether the driver wants an interrupt for the used entries from
/// `old_used` up to the queue's next used index: with EVENT_IDX, when they
/// pass its `used_event` (the Linux `vring_need_event` rule); without, unless
/// it set `VRING_AVAIL_F_NO_INTERRUPT`. A ring that cannot be read counts as
/// "wants one".
pub(crate) fn wants_interrupt(queue: &Queue, mem: &GuestMemory, old_used: u16) -> bool {
    let new_used = queue.next_used();
    if new_used == old_used {
        return false;
    }
    // The used entries must be visible before the driver's index is read.
    fence(Ordering::SeqCst);
    if queue.event_idx_enabled() {
        let used_event = 4 + 2 * u64::from(queue.size());
        match avail_u16(queue, mem, used_event) {
            Some(event) => {
                new_used.wrapping_sub(event).wrapping_sub(1) < new_used.wrapping_sub(old_used)
            }
            None => true,
        }
    } else {
        avail_u16(queue, mem, 0).is_none_or(|flags| flags & AVAIL_F_NO_INTERRUPT == 0)
    }
}

/// Raises queue `index`'s interrupt if the driver wants one for what was
/// used since `old_used` (see [`wants_interrupt`]); a failed interrupt is
/// logged.
pub(crate) fn notify(
    queue: &Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    old_used: u16,
) {
    if wants_interrupt(queue, mem, old_used) {
        if let Err(e) = interrupt.trigger(VirtioInterruptType::Queue(index)) {
            tracing::warn!(queue = index, error = %e, "virtio interrupt failed");
        }
    }
}

/// The interrupts a device owes its queues: for each queue with used
/// entries the driver has not heard of, the used index it last heard of.
/// Outside an I/O-thread pass they are raised as soon as they are owed;
/// during one ([`OwedInterrupts::hold`]) once per queue at its end.
#[derive(Debug, Default)]
pub(crate) struct OwedInterrupts {
    since: Vec<Option<u16>>,
    held: bool,
}

impl OwedInterrupts {
    /// Nothing owed to `queues` queues, not held.
    pub(crate) fn new(queues: usize) -> Self {
        Self {
            since: vec![None; queues],
            held: false,
        }
    }

    /// Queue `index` used entries from `old_used` on (nothing when its used
    /// index did not move).
    pub(crate) fn used_since(&mut self, queue: &Queue, index: u16, old_used: u16) {
        if queue.next_used() == old_used {
            return;
        }
        if let Some(s) = self.since.get_mut(usize::from(index)) {
            s.get_or_insert(old_used);
        }
    }

    /// Holds interrupts back (a pass starts) or stops holding them.
    pub(crate) fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Forgets what is owed and stops holding (reset).
    pub(crate) fn clear(&mut self) {
        self.since.iter_mut().for_each(|s| *s = None);
        self.held = false;
    }

    /// Raises each owed queue's interrupt once, if its driver wants it
    /// ([`notify`]); nothing while held. `queue` finds a queue by index.
    pub(crate) fn raise<'q>(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
        queue: impl Fn(u16) -> Option<&'q Queue>,
    ) {
        if self.held {
            return;
        }
        for (i, s) in self.since.iter_mut().enumerate() {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            if let (Some(old_used), Some(q)) = (s.take(), queue(index)) {
                notify(q, mem, interrupt, index, old_used);
            }
        }
    }
}

/// Asks the driver to notify again when it adds buffers (EVENT_IDX: sets
/// `avail_event` to the next entry; otherwise clears `VRING_USED_F_NO_NOTIFY`);
/// true when buffers arrived meanwhile (process them: no notify will come
/// for those).
pub(crate) fn rearm(queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueError> {
    queue
        .enable_notification(mem)
        .map_err(|e| QueueError::Ring(e.to_string()))
}

/// Like [`rearm`] for a device that stopped with buffers still available
/// that it cannot use yet (a NIC whose next frame needs more of them): the
/// driver is asked to notify on its *next* addition (`avail_event` is its
/// current index). True when it added some meanwhile.
pub(crate) fn rearm_for_more(queue: &mut Queue, mem: &GuestMemory) -> Result<bool, QueueError> {
    let ring_err = |e: &dyn std::fmt::Display| QueueError::Ring(e.to_string());
    let seen = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| ring_err(&e))?;
    queue.enable_notification(mem).map_err(|e| ring_err(&e))?;
    if queue.event_idx_enabled() {
        let avail_event = GuestAddress(queue.used_ring())
            .checked_add(4 + 8 * u64::from(queue.size()))
            .ok_or_else(|| QueueError::Ring("avail_event address overflows".into()))?;
        mem.write_obj(seen.0.to_le(), avail_event)
            .map_err(|e| ring_err(&e))?;
    }
    fence(Ordering::SeqCst);
    let now = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| ring_err(&e))?;
    Ok(now != seen)
}

/// What a device did with one chain.
pub(crate) enum Handled {
    /// Done: return it to the used ring with this many bytes written.
    Used(u32),
    /// Submitted: the device adds it to the used ring itself later
    /// ([`add_used_all`]).
    InFlight,
}

/// Processes every available chain of the queue: `handle` says what
/// became of each ([`Handled`]), or why it is malformed (then it goes back
/// with length 0). Driver notifications are suppressed while chains are
/// being taken and re-armed before returning. Stops at the first malformed
/// chain or ring error, which means the device needs a reset. Raises no
/// interrupt: the caller owes one for the used entries
/// ([`OwedInterrupts::used_since`] with `queue.next_used()` from before).
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemory,
    handle: impl FnMut(DescriptorChain<&GuestMemory>) -> Result<Handled, &'static str>,
) -> Result<(), QueueError> {
    drain_or_stay_quiet(queue, mem, handle, || false).map(|_| ())
}

/// [`drain`], except that when `busy()` says so after the last chain the
/// driver is not asked to notify again: the device promises to come back
/// to the queue by itself (when an operation in flight completes), which
/// saves the driver's notifications (exits) while it is busy anyway. True
/// when the queue was left quiet that way.
pub(crate) fn drain_or_stay_quiet(
    queue: &mut Queue,
    mem: &GuestMemory,
    mut handle: impl FnMut(DescriptorChain<&GuestMemory>) -> Result<Handled, &'static str>,
    busy: impl Fn() -> bool,
) -> Result<bool, QueueError> {
    if !queue.ready() {
        return Ok(false);
    }
    let mut result = Ok(false);
    'outer: loop {
        check_avail(queue, mem)?;
        if let Err(e) = queue.disable_notification(mem) {
            result = Err(QueueError::Ring(e.to_string()));
            break;
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match handle(chain) {
                Ok(Handled::InFlight) => continue,
                Ok(Handled::Used(len)) => len,
                Err(reason) => {
                    result = Err(QueueError::MalformedChain { head, reason });
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                if result.is_ok() {
                    result = Err(QueueError::Ring(e.to_string()));
                }
            }
            if result.is_err() {
                break 'outer;
            }
        }
        if busy() {
            result = Ok(true);
            break;
        }
        match rearm(queue, mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    result
}

/// Returns chains that finished later (`(head, bytes written)`, in any
/// order) to the queue's used ring, without an interrupt (see [`notify`]).
pub(crate) fn add_used_all(
    queue: &mut Queue,
    mem: &GuestMemory,
    done: &[(u16, u32)],
) -> Result<(), QueueError> {
    for &(head, len) in done {
        queue
            .add_used(mem, head, len)
            .map_err(|e| QueueError::Ring(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn queue(event_idx: bool) -> (Queue, GuestMemory) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        q.set_event_idx(event_idx);
        (q, mem)
    }

    fn set_used_event(mem: &GuestMemory, v: u16) {
        mem.write_obj(v, GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE)))
            .unwrap();
    }

    /// With EVENT_IDX the driver is interrupted only when the used index
    /// passes its `used_event`; a batch that crosses it counts once.
    #[test]
    fn event_idx_interrupts_only_past_used_event() {
        let (mut q, mem) = queue(true);
        set_used_event(&mem, 2);
        let mut old = q.next_used();
        let mut fired = Vec::new();
        for head in 0..5u16 {
            q.add_used(&mem, head, 0).unwrap();
            fired.push(wants_interrupt(&q, &mem, old));
            old = q.next_used();
        }
        // Entries 0,1,2 → used idx 1,2,3: only the step to 3 passes event 2.
        assert_eq!(fired, [false, false, true, false, false]);
        // A batch of two that jumps over the event counts.
        set_used_event(&mem, 5);
        let old = q.next_used();
        q.add_used(&mem, 5, 0).unwrap();
        q.add_used(&mem, 6, 0).unwrap();
        assert!(wants_interrupt(&q, &mem, old));
        assert!(!wants_interrupt(&q, &mem, q.next_used()), "nothing new");
    }

    /// Without EVENT_IDX the driver's NO_INTERRUPT flag is honoured.
    #[test]
    fn no_interrupt_flag_without_event_idx() {
        let (mut q, mem) = queue(false);
        let old = q.next_used();
        q.add_used(&mem, 0, 0).unwrap();
        assert!(wants_interrupt(&q, &mem, old));
        mem.write_obj(AVAIL_F_NO_INTERRUPT, GuestAddress(AVAIL))
            .unwrap();
        assert!(!wants_interrupt(&q, &mem, old));
    }

    /// A NIC out of buffers re-arms at the driver's current avail index, so
    /// the next buffer the driver adds makes it notify.
    #[test]
    fn rearm_for_more_sets_avail_event_to_the_avail_index() {
        let (mut q, mem) = queue(true);
        mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
        assert!(!rearm_for_more(&mut q, &mem).unwrap());
        let avail_event: u16 = mem
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        assert_eq!(avail_event, 3);
    }
}
