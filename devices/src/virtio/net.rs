//! virtio-net (device type 1) over a [`netstack::NetBackend`], normally a
//! [`netstack::Tap`] with a 12-byte virtio-net header.
//!
//! Two queues: [`RX_QUEUE`] (0, host → guest) and [`TX_QUEUE`] (1, guest →
//! host). The virtio-net header (`struct virtio_net_hdr_v1`) travels
//! unchanged between the guest and the TAP, so the kernel does checksum and
//! segmentation offloads; the device only fills in `num_buffers` (and clears
//! `flags` when the guest did not accept `GUEST_CSUM`).
//!
//! There are no threads. The VMM's event loop calls
//! [`VirtioPciDevice::process_queue`](super::pci::VirtioPciDevice::process_queue)
//! with [`TX_QUEUE`] when the TX queue is notified, and with [`RX_QUEUE`]
//! both when the RX queue is notified (the guest added receive buffers) and
//! when the backend descriptor ([`Net::backend_fd`]) becomes readable. The
//! backend descriptor must be watched **edge-triggered** (`EPOLLIN |
//! EPOLLET`): RX processing reads frames until the backend is empty or the
//! guest runs out of buffers; in the latter case one frame stays pending in
//! the device and the rest stay queued in the backend until the guest adds
//! buffers, so a level-triggered watch would spin.
//!
//! Every descriptor chain is validated: TX chains must be device-readable
//! only, RX chains device-writable only and at least a header long, every
//! buffer inside guest memory, at most 1024 descriptors, no loops. A chain
//! breaking these rules is *malformed*: the device returns it (length 0) and
//! needs a reset. Frames that are merely too large or too small are dropped
//! and counted. With `VIRTIO_NET_F_MRG_RXBUF`, a frame spans as many RX
//! chains as it needs and the used ring index is published once for all of
//! them.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use netstack::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend as _};

use super::{
    ring, ActivateError, GuestMemory, QueueError, VirtioDevice, VirtioInterrupt,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Virtio device type of a network device.
pub const TYPE_NET: u32 = 1;

/// Feature: the device handles frames with partial checksums (host side).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature: the driver handles frames with partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature: the config space holds a MAC address.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature: the driver accepts TCPv4 segmentation offload frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature: the driver accepts TCPv6 segmentation offload frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature: the device accepts TCPv4 segmentation offload frames.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature: the device accepts TCPv6 segmentation offload frames.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Feature: received frames may span several RX buffers (`num_buffers`).
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature: the config space holds a link status.
pub const VIRTIO_NET_F_STATUS: u32 = 16;

/// Link status bit of the config `status` field: link up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame, virtio-net header included (a 64 KiB GSO frame, as
/// Linux's `virtio_net` and Firecracker size it).
pub const MAX_FRAME: usize = 65562;
/// Size of the config space structure (`mac` and `status`).
pub const CONFIG_SIZE: usize = 8;

/// Bound on the descriptors of one chain (indirect tables can hold 65535).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// Offset of `num_buffers` in the 12-byte header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Counters of a network device, readable at any time (e.g. for metrics).
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the guest (frames without the virtio-net header).
    pub rx_bytes: AtomicU64,
    /// Frames from the backend dropped: larger than the guest's buffers or
    /// [`MAX_FRAME`], or shorter than the header.
    pub rx_dropped: AtomicU64,
    /// Backend read failures (other than "nothing to read").
    pub rx_errors: AtomicU64,
    /// Frames the guest sent and the backend took.
    pub tx_packets: AtomicU64,
    /// Bytes the guest sent (frames without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped: shorter than the header, longer than
    /// [`MAX_FRAME`], or the backend was full.
    pub tx_dropped: AtomicU64,
    /// Backend write failures.
    pub tx_errors: AtomicU64,
    /// Malformed chains (the device then needs a reset).
    pub malformed: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Guest buffers of one chain, in order, all inside guest memory.
struct Segs {
    segs: Vec<(GuestAddress, u32)>,
    total: u64,
}

impl Segs {
    /// Collects the descriptors of `chain`, which must all be device-writable
    /// (RX) or all device-readable (TX).
    fn collect(
        mem: &GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
        writable: bool,
    ) -> Result<Self, &'static str> {
        let mut segs = Vec::new();
        let mut total = 0u64;
        let mut count = 0usize;
        let mut last_has_next = false;
        for d in chain {
            count += 1;
            if count > MAX_CHAIN_DESCRIPTORS {
                return Err("chain too long");
            }
            if d.is_write_only() != writable {
                return Err(if writable {
                    "device-readable descriptor in an RX chain"
                } else {
                    "device-writable descriptor in a TX chain"
                });
            }
            let len = d.len();
            if len > 0 {
                let ok = usize::try_from(len).is_ok_and(|l| mem.check_range(d.addr(), l));
                if !ok {
                    return Err("buffer outside guest memory");
                }
                segs.push((d.addr(), len));
            }
            total += u64::from(len);
            last_has_next = d.has_next();
        }
        if count == 0 {
            return Err("empty chain or head outside the table");
        }
        if last_has_next {
            // virtio-queue stops at a loop (TTL), at a `next` outside the
            // table and at an unreadable descriptor.
            return Err("chain loops or leaves the descriptor table");
        }
        Ok(Self { segs, total })
    }

    /// Reads the first `buf.len()` bytes of the chain.
    fn read(&self, mem: &GuestMemory, buf: &mut [u8]) -> Result<(), &'static str> {
        let mut pos = 0usize;
        for &(addr, len) in &self.segs {
            let n = (len as usize).min(buf.len() - pos);
            let dst = buf.get_mut(pos..pos + n).ok_or("bad segment")?;
            mem.read_slice(dst, addr)
                .map_err(|_| "buffer outside guest memory")?;
            pos += n;
            if pos == buf.len() {
                break;
            }
        }
        Ok(())
    }

    /// Writes as much of `data` as fits; returns the bytes written.
    fn write(&self, mem: &GuestMemory, data: &[u8]) -> Result<usize, &'static str> {
        let mut pos = 0usize;
        for &(addr, len) in &self.segs {
            if pos == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - pos);
            let src = data.get(pos..pos + n).ok_or("bad segment")?;
            mem.write_slice(src, addr)
                .map_err(|_| "buffer outside guest memory")?;
            pos += n;
        }
        Ok(pos)
    }
}

/// Adds `elems` (head, length) to the used ring and publishes the used index
/// once, so the driver never sees part of a merged frame.
fn add_used_batch(
    queue: &mut Queue,
    mem: &GuestMemory,
    elems: &[(u16, u32)],
) -> Result<(), QueueError> {
    let ring_err = |what: &str| QueueError::Ring(format!("used ring: {what}"));
    let size = queue.size();
    if size == 0 {
        return Err(ring_err("queue size 0"));
    }
    let base = GuestAddress(queue.used_ring());
    let mut next = queue.next_used();
    for &(head, len) in elems {
        if head >= size {
            return Err(ring_err("descriptor index outside the table"));
        }
        let at = base
            .checked_add(4 + 8 * u64::from(next % size))
            .ok_or_else(|| ring_err("address overflow"))?;
        let at_len = at
            .checked_add(4)
            .ok_or_else(|| ring_err("address overflow"))?;
        mem.write_obj(u32::from(head).to_le(), at)
            .and_then(|()| mem.write_obj(len.to_le(), at_len))
            .map_err(|e| ring_err(&e.to_string()))?;
        next = next.wrapping_add(1);
    }
    let idx_addr = base
        .checked_add(2)
        .ok_or_else(|| ring_err("address overflow"))?;
    mem.store(next.to_le(), idx_addr, Ordering::Release)
        .map_err(|e| ring_err(&e.to_string()))?;
    queue.set_next_used(next);
    Ok(())
}

/// Outcome of trying to place one frame into the RX queue.
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    /// Written and used.
    Delivered,
    /// Not enough buffers yet; the queue position is unchanged.
    NoBuffers,
    /// Can never fit (larger than one chain without MRG_RXBUF, or than the
    /// whole queue); the queue position is unchanged.
    TooBig,
}

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
    mrg_rxbuf: bool,
    guest_csum: bool,
}

impl Active {
    /// Raises the queues' owed interrupts (unless a pass holds them).
    fn raise(&self, owed: &mut ring::OwedInterrupts) {
        owed.raise(&self.mem, self.interrupt.as_ref(), |i| match i {
            RX_QUEUE => Some(&self.rx),
            TX_QUEUE => Some(&self.tx),
            _ => None,
        });
    }

    /// Places `frame` (header included, at least [`VNET_HDR_LEN`] bytes)
    /// into the RX queue, filling in `num_buffers` in its header.
    fn deliver(&mut self, frame: &mut [u8]) -> Result<Rx, QueueError> {
        let mem = &self.mem;
        let q = &mut self.rx;
        let saved = q.next_avail();
        let need = frame.len() as u64;
        let mut chains: Vec<(u16, Segs)> = Vec::new();
        let mut cap = 0u64;
        while cap < need {
            if (!self.mrg_rxbuf && !chains.is_empty()) || chains.len() >= usize::from(q.size()) {
                q.set_next_avail(saved);
                return Ok(Rx::TooBig);
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                q.set_next_avail(saved);
                return Ok(Rx::NoBuffers);
            };
            let head = chain.head_index();
            let segs = match Segs::collect(mem, chain, true) {
                Ok(s) if s.total >= VNET_HDR_LEN as u64 => s,
                Ok(_) => {
                    return Err(malformed_rx(
                        q,
                        mem,
                        head,
                        &chains,
                        "RX buffer shorter than the virtio-net header",
                    ))
                }
                Err(reason) => return Err(malformed_rx(q, mem, head, &chains, reason)),
            };
            cap += segs.total;
            chains.push((head, segs));
        }
        // <= queue size (256), so it fits.
        let n = u16::try_from(chains.len()).unwrap_or(u16::MAX);
        if let Some(nb) = frame.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
            nb.copy_from_slice(&n.to_le_bytes());
        }
        if !self.guest_csum {
            // The driver did not accept checksum offload: flags must be 0.
            if let Some(flags) = frame.first_mut() {
                *flags = 0;
            }
        }
        let mut used = Vec::with_capacity(chains.len());
        let mut pos = 0usize;
        for (head, segs) in &chains {
            let rest = frame.get(pos..).unwrap_or_default();
            match segs.write(mem, rest) {
                Ok(w) => {
                    pos += w;
                    used.push((*head, u32::try_from(w).unwrap_or(u32::MAX)));
                }
                Err(reason) => {
                    return Err(malformed_rx(q, mem, *head, &chains, reason));
                }
            }
        }
        add_used_batch(q, mem, &used)?;
        Ok(Rx::Delivered)
    }
}

/// Returns the chains popped for a frame (and the malformed one) with
/// length 0 and builds the error.
fn malformed_rx(
    q: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    popped: &[(u16, Segs)],
    reason: &'static str,
) -> QueueError {
    let mut elems: Vec<(u16, u32)> = popped.iter().map(|(h, _)| (*h, 0)).collect();
    if !elems.iter().any(|(h, _)| *h == head) {
        elems.push((head, 0));
    }
    let _ = add_used_batch(q, mem, &elems);
    QueueError::MalformedChain { head, reason }
}

/// A virtio-net device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    features: u64,
    config: [u8; CONFIG_SIZE],
    queue_sizes: [u16; 2],
    counters: Arc<NetCounters>,
    tx_buf: Vec<u8>,
    /// One byte more than [`MAX_FRAME`] to detect truncated reads.
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` waiting for guest buffers (0: none).
    rx_pending: usize,
    /// Interrupts owed to RX and TX (held during an I/O-thread pass).
    owed: ring::OwedInterrupts,
    active: Option<Active>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac())
            .field("backend_fd", &self.backend.as_raw_fd())
            .field("rx_pending", &self.rx_pending)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Net {
    /// Creates a device sending and receiving through `backend` (a
    /// non-blocking [`netstack::Tap`] in production) with MAC address `mac`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6]) -> Self {
        let features = 1u64 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Self {
            backend,
            features,
            config,
            queue_sizes: [QUEUE_SIZE; 2],
            counters: Arc::new(NetCounters::default()),
            tx_buf: vec![0; MAX_FRAME],
            rx_buf: vec![0; MAX_FRAME + 1],
            rx_pending: 0,
            owed: ring::OwedInterrupts::new(2),
            active: None,
        }
    }

    /// The device's counters (shared; keep the `Arc` for metrics).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// The MAC address in the config space.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The backend's descriptor. The VMM watches it edge-triggered
    /// (`EPOLLIN | EPOLLET`) and calls `process_queue(RX_QUEUE)` on the
    /// transport when it fires. Take it before boxing the device.
    pub fn backend_fd(&self) -> RawFd {
        self.backend.as_raw_fd()
    }

    /// Whether a received frame waits for the guest to add RX buffers.
    pub fn rx_pending(&self) -> bool {
        self.rx_pending != 0
    }

    /// `TUN_F_*` offloads matching the driver's features: what the guest
    /// accepts is what the TAP may hand us. TSO needs checksum offload.
    pub fn offload_flags(acked_features: u64) -> u32 {
        let has = |bit: u32| acked_features & (1u64 << bit) != 0;
        if !has(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        let mut flags = TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
        flags
    }

    /// Receive path: delivers the pending frame, then frames read from the
    /// backend, until the backend is empty or the guest is out of RX
    /// buffers (one frame then stays pending). Called for RX queue notifies
    /// and when the backend is readable. An error means the device needs a
    /// reset.
    pub fn process_rx(&mut self) -> Result<(), QueueError> {
        let Net {
            backend,
            counters,
            rx_buf,
            rx_pending,
            owed,
            active,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        if !a.rx.ready() {
            return Ok(());
        }
        ring::check_avail(&a.rx, &a.mem)?;
        let old_used = a.rx.next_used();
        let result = loop {
            if *rx_pending == 0 {
                match backend.read(rx_buf) {
                    // A backend at EOF (closed socket): nothing more to read.
                    Ok(0) => break Ok(()),
                    Ok(n) if !(VNET_HDR_LEN..=MAX_FRAME).contains(&n) => {
                        tracing::debug!(
                            len = n,
                            "virtio-net: dropping a bad-sized frame from the backend"
                        );
                        bump(&counters.rx_dropped, 1);
                        continue;
                    }
                    Ok(n) => *rx_pending = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Not retried here: the next event tries again.
                        tracing::warn!(error = %e, "virtio-net backend read failed");
                        bump(&counters.rx_errors, 1);
                        break Ok(());
                    }
                }
            }
            let len = *rx_pending;
            let Some(frame) = rx_buf.get_mut(..len) else {
                *rx_pending = 0;
                continue;
            };
            match a.deliver(frame) {
                Ok(Rx::Delivered) => {
                    *rx_pending = 0;
                    bump(&counters.rx_packets, 1);
                    bump(&counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
                }
                // Out of buffers: ask the driver to say when it adds some
                // (with EVENT_IDX it only notifies past `avail_event`); if
                // some arrived meanwhile, go on.
                Ok(Rx::NoBuffers) => match ring::rearm_for_more(&mut a.rx, &a.mem) {
                    Ok(true) => continue,
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                },
                Ok(Rx::TooBig) => {
                    *rx_pending = 0;
                    tracing::debug!(
                        len,
                        "virtio-net: frame larger than the guest's RX buffers dropped"
                    );
                    bump(&counters.rx_dropped, 1);
                }
                Err(e) => {
                    *rx_pending = 0;
                    bump(&counters.malformed, 1);
                    break Err(e);
                }
            }
        };
        owed.used_since(&a.rx, RX_QUEUE, old_used);
        a.raise(owed);
        result
    }

    /// Transmit path: sends every available TX chain to the backend and
    /// returns it (length 0). An error means the device needs a reset.
    pub fn process_tx(&mut self) -> Result<(), QueueError> {
        let Net {
            backend,
            counters,
            tx_buf,
            owed,
            active,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return Ok(());
        };
        let old_used = a.tx.next_used();
        let result = ring::drain(&mut a.tx, &a.mem, |chain| {
            send_chain(&a.mem, chain, backend.as_mut(), tx_buf, counters)
                .map(|()| ring::Handled::Used(0))
                .inspect_err(|_| bump(&counters.malformed, 1))
        });
        owed.used_since(&a.tx, TX_QUEUE, old_used);
        a.raise(owed);
        result
    }
}

/// Sends one TX chain; `Err` means it is malformed. Frames that are too
/// short or too long, and backend failures, are counted and dropped.
fn send_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    backend: &mut dyn NetBackend,
    buf: &mut [u8],
    counters: &NetCounters,
) -> Result<(), &'static str> {
    let segs = Segs::collect(mem, chain, false)?;
    let len = match usize::try_from(segs.total) {
        Ok(l) if (VNET_HDR_LEN..=MAX_FRAME).contains(&l) => l,
        _ => {
            tracing::debug!(len = segs.total, "virtio-net: bad-sized TX frame dropped");
            bump(&counters.tx_dropped, 1);
            return Ok(());
        }
    };
    let frame = buf.get_mut(..len).ok_or("frame larger than the buffer")?;
    segs.read(mem, frame)?;
    loop {
        match backend.write(frame) {
            Ok(_) => {
                bump(&counters.tx_packets, 1);
                bump(&counters.tx_bytes, (len - VNET_HDR_LEN) as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => bump(&counters.tx_dropped, 1),
            Err(e) => {
                tracing::debug!(error = %e, "virtio-net backend write failed");
                bump(&counters.tx_errors, 1);
            }
        }
        return Ok(());
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.backend.as_raw_fd())
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is only writable in legacy virtio; status is read-only.
        tracing::debug!(offset, len = data.len(), "virtio-net config write ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let [rx, tx] = ring::ready_queues(queues, acked_features)?;
        let offloads = Self::offload_flags(acked_features);
        if let Err(e) = self.backend.set_offload(offloads) {
            // Without offloads the frames are complete; still correct.
            tracing::warn!(error = %e, offloads, "virtio-net: cannot set backend offloads; using none");
            if let Err(e) = self.backend.set_offload(0) {
                tracing::warn!(error = %e, "virtio-net: cannot clear backend offloads");
            }
        }
        let has = |bit: u32| acked_features & (1u64 << bit) != 0;
        self.rx_pending = 0;
        self.owed.clear();
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
        });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => Ok(()),
        }
    }

    fn begin_batch(&mut self) {
        self.owed.hold(true);
    }

    fn end_batch(&mut self) -> Result<(), QueueError> {
        self.owed.hold(false);
        if let Some(a) = &self.active {
            a.raise(&mut self.owed);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = 0;
        self.owed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_driver::{Driver, SplitQueue, F_NEXT};
    use super::super::{STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1};
    use super::*;
    use crate::pci::msix::testing::Event;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Mutex;

    /// A socketpair end standing in for the TAP (datagrams keep frame
    /// boundaries); offload calls are recorded.
    struct SockBackend {
        sock: UnixDatagram,
        offloads: Arc<Mutex<Vec<u32>>>,
    }

    impl AsRawFd for SockBackend {
        fn as_raw_fd(&self) -> RawFd {
            self.sock.as_raw_fd()
        }
    }

    impl NetBackend for SockBackend {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.sock.recv(buf)
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sock.send(buf)
        }
        fn set_offload(&mut self, flags: u32) -> io::Result<()> {
            self.offloads.lock().unwrap().push(flags);
            Ok(())
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const OK: u8 = 1 | 2 | 4 | 8;
    const BROKEN: u8 = OK | STATUS_DEVICE_NEEDS_RESET;
    const RXBUF: u64 = 0x4_0000;
    const TXBUF: u64 = 0x2_0000;

    struct Rig {
        d: Driver,
        rx: SplitQueue,
        tx: SplitQueue,
        peer: UnixDatagram,
        offloads: Arc<Mutex<Vec<u32>>>,
        counters: Arc<NetCounters>,
    }

    fn rig(features: u64) -> Rig {
        let (dev_sock, peer) = UnixDatagram::pair().unwrap();
        dev_sock.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let offloads = Arc::new(Mutex::new(Vec::new()));
        let net = Net::new(
            Box::new(SockBackend {
                sock: dev_sock,
                offloads: offloads.clone(),
            }),
            MAC,
        );
        assert!(net.backend_fd() >= 0);
        let counters = net.counters();
        let d = Driver::new(Box::new(net));
        d.enable_msix(3);
        let (rx, tx) = start(&d, features);
        Rig {
            d,
            rx,
            tx,
            peer,
            offloads,
            counters,
        }
    }

    /// Negotiates `features` (plus VERSION_1), sets up both queues (64
    /// entries; vectors 1 and 2, config vector 0) and DRIVER_OK.
    fn start(d: &Driver, features: u64) -> (SplitQueue, SplitQueue) {
        assert_eq!(d.negotiate(features | 1 << VIRTIO_F_VERSION_1), 1 | 2 | 8);
        d.common_w(0x10, 2, 0);
        let rx = SplitQueue::new(&d.mem, 64, 0x1_0000);
        let tx = SplitQueue::new(&d.mem, 64, 0x1_2000);
        d.setup_queue(RX_QUEUE, &rx, 1);
        d.setup_queue(TX_QUEUE, &tx, 2);
        d.set_status(OK);
        assert_eq!(d.status(), OK);
        d.msi.take();
        (rx, tx)
    }

    fn f(bits: &[u32]) -> u64 {
        bits.iter().fold(0, |a, b| a | 1 << b)
    }

    /// A frame with vnet header `hdr_flags` and `len` bytes of payload.
    fn frame(hdr_flags: u8, len: usize, seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; VNET_HDR_LEN];
        v[0] = hdr_flags;
        v.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
        v
    }

    fn read_guest(d: &Driver, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        d.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// The backend became readable (what the VMM does on the TAP's event).
    fn backend_readable(d: &Driver) {
        d.dev.lock().unwrap().process_queue(RX_QUEUE);
    }

    fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn features_and_config() {
        let r = rig(0);
        let offered = r.d.device_features();
        let want = f(&[
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_F_VERSION_1,
        ]);
        assert_eq!(offered, want);
        // PCI device id 0x1041, class network.
        assert_eq!(r.d.cfg_r16(2), 0x1041);
        assert_eq!(r.d.cfg_r8(0xb), 0x02);
        let cfg = r.d.caps.device;
        let mac: Vec<u8> = (0..6).map(|i| r.d.bar_r(cfg + i, 1) as u8).collect();
        assert_eq!(mac, MAC);
        assert_eq!(r.d.bar_r(cfg + 6, 2), u64::from(VIRTIO_NET_S_LINK_UP));
        assert_eq!(r.d.bar_r(cfg + 8, 4), 0, "past the end reads 0");
        assert_eq!(r.d.common_r(0x12, 2), 2, "num_queues");
    }

    #[test]
    fn tx_frames_reach_the_backend() {
        let mut r = rig(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4]));
        let m = &r.d.mem;
        let a = frame(1, 60, 1);
        let b = frame(0, 1500, 2);
        m.write_slice(&a, GuestAddress(TXBUF)).unwrap();
        m.write_slice(&b, GuestAddress(TXBUF + 0x1000)).unwrap();
        // Header and frame in separate descriptors, and all in one.
        r.tx.add_chain(m, &[(TXBUF, 12, false), (TXBUF + 12, 60, false)]);
        r.tx.add_chain(m, &[(TXBUF + 0x1000, b.len() as u32, false)]);
        r.d.kick(TX_QUEUE);
        let mut buf = vec![0u8; 4096];
        let n = r.peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &a[..], "header passed through as-is");
        let n = r.peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &b[..]);
        assert_eq!(
            r.peer.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(r.tx.used_idx(m), 2);
        assert_eq!(r.tx.used_elem(m, 0), (0, 0));
        assert_eq!(r.tx.used_elem(m, 1), (2, 0));
        assert_eq!(r.d.msi.take(), vec![Event::Trigger(2)]);
        assert_eq!(load(&r.counters.tx_packets), 2);
        assert_eq!(load(&r.counters.tx_bytes), 1560);
    }

    /// One pass of the I/O thread: frames both ways in two rounds each
    /// raise nothing until the pass ends, then one interrupt per queue.
    #[test]
    fn a_pass_raises_one_interrupt_per_queue() {
        let mut r = rig(0);
        let m = &r.d.mem;
        let out = frame(0, 60, 5);
        m.write_slice(&out, GuestAddress(TXBUF)).unwrap();
        for i in 0..4 {
            r.rx.add_chain(m, &[(RXBUF + i * 0x1000, 2048, true)]);
        }
        {
            let mut dev = r.d.dev.lock().unwrap();
            dev.begin_batch();
            for _ in 0..2 {
                r.peer.send(&frame(0, 100, 6)).unwrap();
                dev.process_backend();
                r.tx.add_chain(m, &[(TXBUF, out.len() as u32, false)]);
                dev.process_queue(TX_QUEUE);
            }
            assert!(r.d.msi.take().is_empty(), "held until the pass ends");
            dev.end_batch();
        }
        assert_eq!((r.rx.used_idx(m), r.tx.used_idx(m)), (2, 2));
        let mut ev = r.d.msi.take();
        ev.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(ev, vec![Event::Trigger(1), Event::Trigger(2)]);
        let mut buf = vec![0u8; 4096];
        assert_eq!(r.peer.recv(&mut buf).unwrap(), out.len());
        assert_eq!(r.peer.recv(&mut buf).unwrap(), out.len());
    }

    #[test]
    fn bad_sized_tx_frames_are_dropped() {
        let mut r = rig(0);
        let m = &r.d.mem;
        // Shorter than the header, empty, and larger than MAX_FRAME.
        r.tx.add_chain(m, &[(TXBUF, 11, false)]);
        r.tx.add_chain(m, &[(TXBUF, 0, false)]);
        r.tx.add_chain(
            m,
            &[
                (TXBUF, 0x8000, false),
                (TXBUF + 0x8000, 0x8000, false),
                (TXBUF, 27, false),
            ],
        );
        // A good one after them still goes out.
        m.write_slice(&frame(0, 60, 3), GuestAddress(TXBUF))
            .unwrap();
        r.tx.add_chain(m, &[(TXBUF, 72, false)]);
        r.d.kick(TX_QUEUE);
        assert_eq!(r.d.status(), OK);
        assert_eq!(r.tx.used_idx(m), 4);
        assert_eq!(load(&r.counters.tx_dropped), 3);
        assert_eq!(load(&r.counters.tx_packets), 1);
        let mut buf = vec![0u8; 4096];
        assert_eq!(r.peer.recv(&mut buf).unwrap(), 72);
        // Exactly MAX_FRAME is fine.
        r.tx.add_chain(
            m,
            &[
                (TXBUF, 0x8000, false),
                (TXBUF + 0x8000, 0x8000, false),
                (TXBUF, 26, false),
            ],
        );
        r.d.kick(TX_QUEUE);
        assert_eq!(load(&r.counters.tx_packets), 2);
    }

    #[test]
    fn backend_write_failures_are_counted() {
        let mut r = rig(0);
        drop(std::mem::replace(
            &mut r.peer,
            UnixDatagram::unbound().unwrap(),
        ));
        let m = &r.d.mem;
        r.tx.add_chain(m, &[(TXBUF, 72, false)]);
        r.d.kick(TX_QUEUE);
        assert_eq!(r.d.status(), OK);
        assert_eq!(r.tx.used_idx(m), 1);
        assert_eq!(load(&r.counters.tx_errors), 1);
        // A closed backend reads as "nothing to receive", without spinning.
        r.rx.add_chain(m, &[(RXBUF, 2048, true)]);
        r.d.kick(RX_QUEUE);
        assert_eq!(r.rx.used_idx(m), 0);
    }

    #[test]
    fn rx_frames_reach_the_guest() {
        let mut r = rig(f(&[VIRTIO_NET_F_GUEST_CSUM]));
        let m = &r.d.mem;
        // 1 = NEEDS_CSUM, kept since the guest accepted GUEST_CSUM.
        let a = frame(1, 100, 4);
        r.peer.send(&a).unwrap();
        r.rx.add_chain(m, &[(RXBUF, 12, true), (RXBUF + 0x100, 2036, true)]);
        r.rx.add_chain(m, &[(RXBUF + 0x1000, 2048, true)]);
        backend_readable(&r.d);
        assert_eq!(r.rx.used_idx(m), 1);
        assert_eq!(r.rx.used_elem(m, 0), (0, 112));
        let mut want_hdr = a[..12].to_vec();
        want_hdr[10] = 1; // num_buffers
        assert_eq!(read_guest(&r.d, RXBUF, 12), want_hdr);
        assert_eq!(read_guest(&r.d, RXBUF + 0x100, 100), a[12..].to_vec());
        assert_eq!(r.d.msi.take(), vec![Event::Trigger(1)]);
        assert_eq!(load(&r.counters.rx_packets), 1);
        assert_eq!(load(&r.counters.rx_bytes), 100);
        // Nothing more queued: another event is a no-op.
        backend_readable(&r.d);
        assert_eq!(r.rx.used_idx(m), 1);
        assert!(r.d.msi.take().is_empty());
    }

    #[test]
    fn rx_flags_cleared_without_guest_csum() {
        let mut r = rig(0);
        let m = &r.d.mem;
        let mut a = frame(2, 50, 5); // DATA_VALID
        a[1] = 0;
        r.peer.send(&a).unwrap();
        r.rx.add_chain(m, &[(RXBUF, 2048, true)]);
        backend_readable(&r.d);
        assert_eq!(r.rx.used_elem(m, 0), (0, 62));
        assert_eq!(read_guest(&r.d, RXBUF, 12), {
            let mut h = vec![0u8; 12];
            h[10] = 1;
            h
        });
    }

    #[test]
    fn rx_frames_wait_for_buffers() {
        let mut r = rig(0);
        let m = &r.d.mem;
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(0, 200 + i, i as u8)).collect();
        for fr in &frames {
            r.peer.send(fr).unwrap();
        }
        backend_readable(&r.d);
        assert_eq!(r.rx.used_idx(m), 0);
        assert!(r.d.msi.take().is_empty());
        // One buffer: the first frame (kept in the device) goes in.
        r.rx.add_chain(m, &[(RXBUF, 1024, true)]);
        r.d.kick(RX_QUEUE);
        assert_eq!(r.rx.used_idx(m), 1);
        assert_eq!(r.rx.used_elem(m, 0).1, 212);
        assert_eq!(read_guest(&r.d, RXBUF + 12, 200), frames[0][12..].to_vec());
        // Two more: the rest, in order.
        r.rx.add_chain(m, &[(RXBUF + 0x1000, 1024, true)]);
        r.rx.add_chain(m, &[(RXBUF + 0x2000, 1024, true)]);
        r.d.kick(RX_QUEUE);
        assert_eq!(r.rx.used_idx(m), 3);
        assert_eq!(r.rx.used_elem(m, 1).1, 213);
        assert_eq!(r.rx.used_elem(m, 2).1, 214);
        assert_eq!(
            read_guest(&r.d, RXBUF + 0x2000 + 12, 202),
            frames[2][12..].to_vec()
        );
        assert_eq!(load(&r.counters.rx_packets), 3);

        // A pending frame is forgotten by a reset; the device comes back.
        r.peer.send(&frames[0]).unwrap();
        backend_readable(&r.d);
        assert!(r.d.dev.lock().unwrap().is_activated());
        r.d.set_status(0);
        let (mut rx, _tx) = start(&r.d, 0);
        rx.add_chain(m, &[(RXBUF, 1024, true)]);
        r.peer.send(&frames[1]).unwrap();
        r.d.kick(RX_QUEUE);
        assert_eq!(rx.used_idx(m), 1);
        assert_eq!(rx.used_elem(m, 0).1, 213);
    }

    #[test]
    fn rx_oversize_frames_are_dropped_without_mrg() {
        let mut r = rig(0);
        let m = &r.d.mem;
        r.peer.send(&frame(0, 2000, 6)).unwrap();
        r.peer.send(&frame(0, 100, 7)).unwrap();
        // Too short to hold a header at all is not sent by the "TAP".
        r.peer.send(&[0u8; 5]).unwrap();
        r.peer.send(&frame(0, 1488, 8)).unwrap();
        r.rx.add_chain(m, &[(RXBUF, 1500, true)]);
        r.rx.add_chain(m, &[(RXBUF + 0x1000, 1500, true)]);
        backend_readable(&r.d);
        assert_eq!(r.rx.used_idx(m), 2);
        assert_eq!(r.rx.used_elem(m, 0), (0, 112), "the chain was reused");
        assert_eq!(r.rx.used_elem(m, 1), (1, 1500), "exactly full");
        assert_eq!(load(&r.counters.rx_dropped), 2);
        assert_eq!(r.d.status(), OK);
    }

    #[test]
    fn rx_merges_buffers_with_mrg_rxbuf() {
        let mut r = rig(f(&[VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_GUEST_CSUM]));
        let m = &r.d.mem;
        let big = frame(1, 3000, 9);
        r.peer.send(&big).unwrap();
        // Two 1024-byte buffers are not enough: nothing is used yet.
        r.rx.add_chain(m, &[(RXBUF, 1024, true)]);
        r.rx.add_chain(
            m,
            &[(RXBUF + 0x1000, 512, true), (RXBUF + 0x1800, 512, true)],
        );
        backend_readable(&r.d);
        assert_eq!(r.rx.used_idx(m), 0);
        assert!(r.d.dev.lock().unwrap().status() == OK);
        // A third one completes it: three used entries, num_buffers = 3.
        r.rx.add_chain(m, &[(RXBUF + 0x2000, 1024, true)]);
        r.d.kick(RX_QUEUE);
        assert_eq!(r.rx.used_idx(m), 3);
        assert_eq!(r.rx.used_elem(m, 0), (0, 1024));
        assert_eq!(r.rx.used_elem(m, 1), (1, 1024));
        assert_eq!(r.rx.used_elem(m, 2), (3, 964));
        let mut got = read_guest(&r.d, RXBUF, 1024);
        got.extend(read_guest(&r.d, RXBUF + 0x1000, 512));
        got.extend(read_guest(&r.d, RXBUF + 0x1800, 512));
        got.extend(read_guest(&r.d, RXBUF + 0x2000, 964));
        let mut want = big.clone();
        want[10] = 3;
        assert_eq!(got, want);
        assert_eq!(r.d.msi.take(), vec![Event::Trigger(1)]);
        // A small frame takes one buffer, num_buffers = 1.
        r.peer.send(&frame(0, 40, 10)).unwrap();
        r.rx.add_chain(m, &[(RXBUF + 0x3000, 1024, true)]);
        backend_readable(&r.d);
        assert_eq!(r.rx.used_idx(m), 4);
        assert_eq!(r.rx.used_elem(m, 3), (4, 52));
        assert_eq!(read_guest(&r.d, RXBUF + 0x3000 + 10, 2), vec![1, 0]);
    }

    #[test]
    fn malformed_rx_chains_need_reset() {
        type Chain = &'static [(u64, u32, bool)];
        let cases: [Chain; 3] = [
            &[(RXBUF, 12, false), (RXBUF + 12, 2000, true)],
            &[(RXBUF, 11, true)],
            &[(0xf_ff00, 2048, true)],
        ];
        for chain in cases {
            let mut r = rig(0);
            r.peer.send(&frame(0, 60, 1)).unwrap();
            r.rx.add_chain(&r.d.mem, chain);
            backend_readable(&r.d);
            assert_eq!(r.d.status(), BROKEN, "{chain:x?}");
            assert_eq!(r.rx.used_elem(&r.d.mem, 0), (0, 0));
            assert_eq!(r.d.msi.take(), vec![Event::Trigger(1), Event::Trigger(0)]);
            assert_eq!(load(&r.counters.malformed), 1);
        }
    }

    #[test]
    fn malformed_tx_chains_need_reset() {
        let mut r = rig(0);
        r.tx.add_chain(&r.d.mem, &[(TXBUF, 12, false), (TXBUF + 12, 60, true)]);
        r.d.kick(TX_QUEUE);
        assert_eq!(r.d.status(), BROKEN);
        let mut buf = [0u8; 128];
        assert!(r.peer.recv(&mut buf).is_err(), "nothing sent");
        // A loop.
        let mut r = rig(0);
        r.tx.set_desc(&r.d.mem, 0, TXBUF, 12, F_NEXT, 1);
        r.tx.set_desc(&r.d.mem, 1, TXBUF, 60, F_NEXT, 0);
        r.tx.publish(&r.d.mem, 0);
        r.d.kick(TX_QUEUE);
        assert_eq!(r.d.status(), BROKEN);
        // Outside guest memory.
        let mut r = rig(0);
        r.tx.add_chain(&r.d.mem, &[(u64::MAX - 10, 72, false)]);
        r.d.kick(TX_QUEUE);
        assert_eq!(r.d.status(), BROKEN);
        // Available index jump.
        let r = rig(0);
        r.rx.set_avail_idx(&r.d.mem, 100);
        backend_readable(&r.d);
        assert_eq!(r.d.status(), BROKEN);
    }

    #[test]
    fn offloads_follow_the_negotiated_features() {
        let cases = [
            (0, 0),
            (f(&[VIRTIO_NET_F_GUEST_CSUM]), TUN_F_CSUM),
            (
                f(&[
                    VIRTIO_NET_F_GUEST_CSUM,
                    VIRTIO_NET_F_GUEST_TSO4,
                    VIRTIO_NET_F_GUEST_TSO6,
                ]),
                TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
            ),
            (
                f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6]),
                TUN_F_CSUM | TUN_F_TSO6,
            ),
            // TSO without checksum offload is not valid for a TAP.
            (f(&[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4]), 0),
        ];
        for (features, want) in cases {
            let r = rig(features);
            assert_eq!(*r.offloads.lock().unwrap(), vec![want], "{features:#x}");
            // Each activation sets them again.
            r.d.set_status(0);
            start(&r.d, features);
            assert_eq!(*r.offloads.lock().unwrap(), vec![want, want]);
        }
    }

    #[test]
    fn activation_needs_both_queues() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let net = Net::new(
            Box::new(SockBackend {
                sock: a,
                offloads: Arc::default(),
            }),
            MAC,
        );
        let d = Driver::new(Box::new(net));
        assert_eq!(d.negotiate(1 << VIRTIO_F_VERSION_1), 1 | 2 | 8);
        let rx = SplitQueue::new(&d.mem, 64, 0x1_0000);
        d.setup_queue(RX_QUEUE, &rx, 0);
        d.set_status(OK);
        assert_eq!(d.status(), BROKEN);
        assert!(!d.dev.lock().unwrap().is_activated());
    }

    /// The device over a real TAP, inside a private network namespace: a
    /// frame the guest sends arrives at the host side of the TAP, and a
    /// frame the host sends into the TAP lands in the guest's RX buffer.
    #[test]
    fn real_tap_round_trip() {
        netstack::tap::in_private_netns(|| {
            let tap = netstack::Tap::open("nubotest%d").unwrap();
            let name = tap.name().to_string();
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
            tap.set_up(true).unwrap();
            let net = Net::new(Box::new(tap), MAC);
            let d = Driver::new(Box::new(net));
            d.enable_msix(3);
            let features = f(&[
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_MRG_RXBUF,
            ]);
            let (mut rx, mut tx) = start(&d, features);

            // Guest -> host: a broadcast frame of ethertype 0x88b5.
            let mut eth = vec![0xff; 6];
            eth.extend_from_slice(&MAC);
            eth.extend_from_slice(&[0x88, 0xb5]);
            eth.extend_from_slice(&[0x5a; 46]);
            let mut out = vec![0u8; VNET_HDR_LEN];
            out.extend_from_slice(&eth);
            d.mem.write_slice(&out, GuestAddress(TXBUF)).unwrap();
            let (rx0, tx0) = netstack::tap::thread_netns_packets(&name).unwrap();
            tx.add_chain(&d.mem, &[(TXBUF, out.len() as u32, false)]);
            d.kick(TX_QUEUE);
            assert_eq!(d.status(), OK);
            let (rx1, _) = netstack::tap::thread_netns_packets(&name).unwrap();
            assert_eq!(rx1, rx0 + 1, "the host received the guest's frame");

            // Host -> guest through an AF_PACKET socket on the TAP.
            let mut back = vec![0xff; 6];
            back.extend_from_slice(&[0x02, 0, 0, 0, 0, 9]);
            back.extend_from_slice(&[0x88, 0xb6]);
            back.extend_from_slice(&[0xa5; 80]);
            packet_send(&name, &back);
            for i in 0..8 {
                rx.add_chain(&d.mem, &[(RXBUF + i * 0x1000, 2048, true)]);
            }
            backend_readable(&d);
            let used = rx.used_idx(&d.mem);
            let found = (0..used).any(|i| {
                let (head, len) = rx.used_elem(&d.mem, i);
                let at = RXBUF + u64::from(head) * 0x1000;
                len as usize == VNET_HDR_LEN + back.len()
                    && read_guest(&d, at + 12, back.len()) == back
                    && read_guest(&d, at + 10, 2) == vec![1, 0]
            });
            assert!(found, "the host's frame reached the guest ({used} used)");
            // The TAP counts a frame as transmitted once the device read it.
            let (_, tx1) = netstack::tap::thread_netns_packets(&name).unwrap();
            assert!(tx1 > tx0);
        });
    }

    /// Sends `frame` (a whole Ethernet frame) out of interface `name`.
    fn packet_send(name: &str, frame: &[u8]) {
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: `cname` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0);
        // SAFETY: plain socket(2); checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: `fd` was just opened and is owned here only.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `sll` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// A harness input with one valid TX chain (12-byte header + 60-byte
    /// frame), one 2048-byte RX chain and one 100-byte frame in the backend.
    fn seed() -> Vec<u8> {
        let mut v = Vec::new();
        // Per queue: 16 x (sel, addr(u16, *2 + 0x2000), len(u16), flags, next).
        let tx: [(u16, u16, u8, u8); 2] = [(0, 12, 1, 1), (0x100, 60, 0, 0)];
        let rx: [(u16, u16, u8, u8); 1] = [(0x800, 2048, 2, 0)];
        for descs in [&tx[..], &rx[..]] {
            for i in 0..16 {
                let (a, l, fl, n) = descs.get(i).copied().unwrap_or((0, 0, 0, 0));
                v.push(0);
                v.extend_from_slice(&a.to_le_bytes());
                v.extend_from_slice(&l.to_le_bytes());
                v.push(fl);
                v.push(n);
            }
            v.push(1); // avail idx
            v.extend_from_slice(&[0; 16]); // ring: head 0
        }
        v.push(0); // mode: no MRG_RXBUF, no GUEST_CSUM
        v.push(1); // one frame waiting
        v.extend_from_slice(&100u16.to_le_bytes());
        v.extend_from_slice(&[0u8; 0x600]);
        v
    }

    #[test]
    fn fuzz_harness_survives_random_inputs() {
        let started = std::time::Instant::now();
        let base = seed();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..3000 {
            let input: Vec<u8> = if i % 3 == 0 {
                let len = (xorshift(&mut s) % 700) as usize;
                (0..len).map(|_| xorshift(&mut s) as u8).collect()
            } else {
                let mut v = base.clone();
                for _ in 0..=(xorshift(&mut s) % 8) {
                    let at = (xorshift(&mut s) % 300) as usize;
                    if let Some(b) = v.get_mut(at) {
                        *b = xorshift(&mut s) as u8;
                    }
                }
                v
            };
            super::super::fuzz::fuzz_net_tx(&input);
        }
        // A hang guard, not a benchmark: 3000 debug-build runs take ~8 s on an idle
        // 2-core machine and more while other test binaries and builds share it.
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    #[test]
    fn seed_is_valid_traffic() {
        // The seed itself sends and receives one frame (guards the layout).
        let c = super::super::fuzz::net_counters(&seed()).unwrap();
        assert_eq!(load(&c.tx_packets), 1);
        assert_eq!(load(&c.tx_bytes), 60);
        assert_eq!(load(&c.rx_packets), 1);
        assert_eq!(load(&c.rx_bytes), 88);
        assert_eq!(load(&c.malformed), 0);
    }
}
