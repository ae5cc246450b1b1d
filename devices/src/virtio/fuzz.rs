//! Fuzzing harnesses of the virtio devices: guest memory, rings and
//! descriptors built from arbitrary bytes, then the device's queue
//! processing. Used by the robustness tests and by a fuzzer (feature
//! `fuzzing`); never built into the VMM.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::block::engine::scripted::{Fault, Order, ScriptedEngine};
use super::block::test_disk::ExtentDisk;
use super::block::{self, Block, BlockCounters, BlockOptions};
use super::net::{
    self, Net, NetCounters, MAX_FRAME, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};
use super::testing::{MemBackend, NoInterrupt};
use super::{GuestMemory, VirtioDevice};
use images::BlockBackend;

/// Entries of every fuzzed queue.
const QSIZE: u16 = 16;

/// Lays out one split queue from the input: [`QSIZE`] descriptors at
/// `desc_table` (addresses mostly into `data`, sometimes any 64-bit value;
/// lengths, flags and `next` links as they come) and the available ring at
/// `avail` (its index and entries, some out of range on purpose).
fn write_queue(
    mem: &GuestMemory,
    byte: &mut impl FnMut() -> u8,
    desc_table: u64,
    avail: u64,
    data: u64,
) {
    for i in 0..u64::from(QSIZE) {
        let sel = byte();
        let addr = if sel == 0xff {
            u64::from_le_bytes(std::array::from_fn(|_| byte()))
        } else {
            data + u64::from(u16::from_le_bytes([byte(), byte()])) * 2
        };
        let len = if sel & 0x80 != 0 {
            u32::from_le_bytes([byte(), byte(), byte(), byte()])
        } else {
            u32::from(u16::from_le_bytes([byte(), byte()]) & 0x3fff)
        };
        let flags = u16::from(byte() & 0x7);
        let next = u16::from(byte() % 20);
        let d = Descriptor::new(addr, len, flags, next);
        let _ = mem.write_obj(d, GuestAddress(desc_table + i * 16));
    }
    let idx = u16::from(byte() % 20);
    let _ = mem.write_obj(0u16, GuestAddress(avail));
    let _ = mem.write_obj(idx, GuestAddress(avail + 2));
    for i in 0..u64::from(QSIZE) {
        let _ = mem.write_obj(u16::from(byte() % 20), GuestAddress(avail + 4 + 2 * i));
    }
}

/// Fuzzing harness (for `devices/fuzz` and the stable robustness test):
/// builds a 16-entry split queue in 192 KiB of guest memory from `data`
/// (descriptor addresses, lengths, flags and `next` links, the available
/// ring, and the bytes that headers, data and indirect tables are read
/// from), activates a virtio-blk device over a 64 KiB disk striped over one
/// or two host files (its host extents on, so requests go to the
/// asynchronous engine, or off) with the scripted engine, and processes the
/// queue while the engine completes operations in an order, with failures
/// and short transfers, the input chooses. With the long-chain bit, one
/// indirect table of up to 2048 descriptors is generated from a few bytes
/// (past the 1024-descriptor limit). Errors are fine; panics and hangs are
/// bugs. Layout: mode byte (bit 0 read-only, 1 `cache=none`, 2 no host
/// extents, 3 two files, 4 EVENT_IDX, 5 served as one I/O-thread pass, 7 long
/// chain), the queue, 15 control bytes (order, fail mask, short op, chunk,
/// steps, long chain), then guest data.
#[doc(hidden)]
pub fn fuzz_blk_request(data: &[u8]) {
    let _ = blk_counters(data);
}

/// [`fuzz_blk_request`], returning the device's counters when it ran.
pub(crate) fn blk_counters(data: &[u8]) -> Option<Arc<BlockCounters>> {
    const MEM: u64 = 0x3_0000;
    const DATA: u64 = 0x1000;
    const TABLE: u64 = 0x2_0000;
    let mut input = data.iter().copied();
    let mut byte = move || input.next().unwrap_or(0);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).ok()?;
    let mode = byte();
    let desc_table = 0u64;
    let avail = 0x200u64;
    let used = 0x400u64;
    write_queue(&mem, &mut byte, desc_table, avail, DATA);
    let order = match byte() {
        0 => Order::Fifo,
        1 => Order::Reverse,
        s => Order::Shuffle(u64::from(s).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    };
    let fail_mask = u64::from_le_bytes(std::array::from_fn(|_| byte()));
    let short = byte();
    let chunk = 512u64 << (byte() % 6);
    let steps = usize::from(byte() % 8);
    let long = u16::from_le_bytes([byte(), byte()]) % 2048 + 1;
    let long_kind = byte();
    let rest: Vec<u8> = std::iter::from_fn(|| Some(byte())).take(0x4000).collect();
    let _ = mem.write_slice(&rest, GuestAddress(DATA));
    // Make the rest of the input appear at a few more places.
    let _ = mem.write_slice(&rest, GuestAddress(DATA + 0x8000));
    if mode & 0x80 != 0 {
        // One long indirect chain: header, `long - 2` data descriptors, status.
        let data_len = if long_kind & 1 != 0 { 512 } else { 16 };
        let data_flags = if long_kind & 2 != 0 { 2 } else { 0 };
        let n = u64::from(long);
        for i in 0..n {
            let (addr, len, flags) = if i == 0 {
                (DATA, 16, 1)
            } else if i + 1 == n {
                (DATA + 0x7fff, 1, 2)
            } else {
                let addr = DATA + 0x8000 + (i * data_len) % 0x8000;
                (addr, data_len as u32, 1 | data_flags)
            };
            let d = Descriptor::new(addr, len, flags, (i + 1) as u16);
            let _ = mem.write_obj(d, GuestAddress(TABLE + i * 16));
        }
        let d = Descriptor::new(TABLE, (n * 16) as u32, 4, 0);
        let _ = mem.write_obj(d, GuestAddress(desc_table));
        let _ = mem.write_obj(1u16, GuestAddress(avail + 2));
        let _ = mem.write_obj(0u16, GuestAddress(avail + 4));
    }

    let mut disk = ExtentDisk::new(0x1_0000, chunk, if mode & 8 != 0 { 2 } else { 1 }).ok()?;
    let pattern: Vec<u8> = (0..0x1_0000u32).map(|i| i as u8).collect();
    disk.write_at(&pattern, 0).ok()?;
    disk.extents = mode & 4 == 0;
    let (engine, script) = ScriptedEngine::new().ok()?;
    script.set_order(order);
    script.set_fail_mask(fail_mask);
    if short & 0x80 != 0 {
        script.fault(u64::from(short & 0x7f), Fault::Short);
    }
    let mut dev = Block::with_engine(
        Box::new(disk),
        BlockOptions {
            read_only: mode & 1 != 0,
            id: Some("fuzz-disk".into()),
            cache: if mode & 2 != 0 {
                images::CacheMode::None
            } else {
                images::CacheMode::Writeback
            },
            ..BlockOptions::default()
        },
        Box::new(engine),
    )
    .ok()?;
    let mut q = Queue::new(block::QUEUE_SIZE).ok()?;
    q.try_set_size(QSIZE).ok()?;
    q.try_set_desc_table_address(GuestAddress(desc_table))
        .ok()?;
    q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(used)).ok()?;
    q.set_ready(true);
    let acked = if mode & 0x10 != 0 {
        1u64 << super::VIRTIO_RING_F_EVENT_IDX
    } else {
        0
    };
    dev.activate(mem, acked, vec![q], Arc::new(NoInterrupt))
        .ok()?;
    // Mode bit 0x20: served as one pass of the I/O thread (interrupts held
    // back until its end).
    let pass = mode & 0x20 != 0;
    if pass {
        dev.begin_batch();
    }
    let _ = dev.process_queue(0);
    script.run(steps);
    let _ = dev.backend_ready();
    let _ = dev.process_queue(0);
    script.run_all();
    if pass {
        let _ = dev.end_batch();
    }
    let _ = dev.backend_ready();
    let counters = dev.counters();
    // Dropping the device waits for anything still in flight.
    drop(dev);
    Some(counters)
}

/// Where [`write_long_chain`] puts its indirect table in the net harness's
/// guest memory: past the two copies of the input (`DATA..DATA + 0x4000`
/// and `DATA + 0x8000..DATA + 0xc000`), room for 2047 descriptors.
const LONG_TABLE: u64 = 0xe000;

/// Builds a chain of up to 2047 descriptors from seven input bytes (more
/// than any chain limit, which libFuzzer could not reach with its default
/// 4 KiB inputs otherwise): an indirect table at `table` of `count` copies
/// of one descriptor (address into `data`, length, device-writable or
/// not), linked in order, hung off descriptor 0 of the queue at
/// `desc_table`, which becomes the first available entry.
fn write_long_chain(
    mem: &GuestMemory,
    byte: &mut impl FnMut() -> u8,
    desc_table: u64,
    avail: u64,
    data: u64,
    table: u64,
) {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let count = u16::from(byte()) * 8 + u16::from(byte() % 8);
    let addr = data + u64::from(u16::from_le_bytes([byte(), byte()]) & 0x3fff);
    let len = u32::from(u16::from_le_bytes([byte(), byte()]) & 0x1fff);
    let write = if byte() & 1 != 0 { WRITE } else { 0 };
    for i in 0..count {
        let (flags, next) = if i + 1 < count {
            (write | NEXT, i + 1)
        } else {
            (write, 0)
        };
        let d = Descriptor::new(addr, len, flags, next);
        let _ = mem.write_obj(d, GuestAddress(table + u64::from(i) * 16));
    }
    let head = Descriptor::new(table, u32::from(count) * 16, INDIRECT, 0);
    let _ = mem.write_obj(head, GuestAddress(desc_table));
    let _ = mem.write_obj(0u16, GuestAddress(avail + 4));
    let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
    let _ = mem.write_obj(idx.max(1), GuestAddress(avail + 2));
}

/// Fuzzing harness (for `devices/fuzz` and the stable robustness test):
/// builds a 16-entry TX queue and a 16-entry RX queue in 128 KiB of guest
/// memory from `data` (descriptor addresses, lengths, flags and `next`
/// links, available rings, negotiated features, frames waiting in the
/// backend — up to four, the fourth one byte larger than [`MAX_FRAME`] —
/// and the bytes frames and indirect tables are read from; with mode bit 2
/// a chain of up to 2047 descriptors from seven more bytes, see
/// [`write_long_chain`]), activates a virtio-net device over an in-memory backend and processes
/// both queues. Errors are fine; panics and hangs are bugs.
#[doc(hidden)]
pub fn fuzz_net_tx(data: &[u8]) {
    let _ = net_counters(data);
}

/// [`fuzz_net_tx`], returning the device's counters when it ran.
pub(crate) fn net_counters(data: &[u8]) -> Option<Arc<NetCounters>> {
    const MEM: u64 = 0x2_0000;
    const DATA: u64 = 0x2000;
    let mut input = data.iter().copied();
    let mut byte = move || input.next().unwrap_or(0);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).ok()?;
    // (descriptor table, available ring, used ring) of TX and RX.
    let layout = [(0u64, 0x200u64, 0x400u64), (0x800, 0xa00, 0xc00)];
    for &(desc_table, avail, _) in &layout {
        write_queue(&mem, &mut byte, desc_table, avail, DATA);
    }
    let mode = byte();
    let mut acked = 1u64 << super::VIRTIO_F_VERSION_1;
    if mode & 1 != 0 {
        acked |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    if mode & 2 != 0 {
        acked |= 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    }
    if mode & 4 != 0 {
        // A long chain from a few bytes, on TX or (mode bit 3) RX.
        let (desc_table, avail, _) = layout[usize::from(mode & 8 != 0)];
        write_long_chain(&mem, &mut byte, desc_table, avail, DATA, LONG_TABLE);
    }
    let mut rx = std::collections::VecDeque::new();
    // Up to four frames; the fourth is one byte too large.
    for i in 0..(byte() % 5) {
        let len = if i == 3 {
            MAX_FRAME + 1
        } else {
            usize::from(u16::from_le_bytes([byte(), byte()]) % 0x2000)
        };
        rx.push_back((0..len).map(|j| j as u8).collect());
    }
    let rest: Vec<u8> = std::iter::from_fn(|| Some(byte())).take(0x4000).collect();
    let _ = mem.write_slice(&rest, GuestAddress(DATA));
    let _ = mem.write_slice(&rest, GuestAddress(DATA + 0x8000));

    let mut dev = Net::new(Box::new(MemBackend { rx, sent: 0 }), [2, 0, 0, 0, 0, 1]);
    let mut queues = Vec::new();
    for &(desc_table, avail, used) in &[layout[1], layout[0]] {
        let mut q = Queue::new(net::QUEUE_SIZE).ok()?;
        q.try_set_size(QSIZE).ok()?;
        q.try_set_desc_table_address(GuestAddress(desc_table))
            .ok()?;
        q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
        q.try_set_used_ring_address(GuestAddress(used)).ok()?;
        q.set_ready(true);
        queues.push(q);
    }
    dev.activate(mem, acked, queues, Arc::new(NoInterrupt))
        .ok()?;
    let _ = dev.process_queue(TX_QUEUE);
    let _ = dev.process_queue(RX_QUEUE);
    let _ = dev.process_queue(TX_QUEUE);
    let _ = dev.process_queue(RX_QUEUE);
    Some(dev.counters())
}

#[cfg(test)]
mod net_harness_tests {
    use std::sync::atomic::Ordering;

    use super::net_counters;

    /// Bytes of one queue in the harness's layout: 16 descriptors of 7
    /// bytes, the available index, 16 available entries.
    const QUEUE_BYTES: usize = 16 * 7 + 1 + 16;

    #[test]
    fn long_chains_reach_the_chain_limit_on_tx_and_rx() {
        for mode in [4u8, 4 | 8] {
            let mut input = vec![0u8; 2 * QUEUE_BYTES];
            input.push(mode);
            // 200 * 8 + 3 = 1603 descriptors of 16 bytes at DATA + 0x10.
            let write = u8::from(mode & 8 != 0);
            input.extend_from_slice(&[200, 3, 0x10, 0, 16, 0, write]);
            // One frame waiting, so that RX takes a chain.
            input.extend_from_slice(&[1, 100, 0]);
            let c = net_counters(&input).expect("harness ran");
            assert!(
                c.malformed.load(Ordering::Relaxed) >= 1,
                "mode {mode}: chain limit not hit"
            );
        }
    }

    #[test]
    fn the_fourth_backend_frame_is_oversized() {
        let mut input = vec![0u8; 2 * QUEUE_BYTES];
        input.push(0);
        // Four frames: three shorter than the header, then MAX_FRAME + 1.
        input.extend_from_slice(&[4, 5, 0, 5, 0, 5, 0]);
        let c = net_counters(&input).expect("harness ran");
        assert_eq!(c.rx_dropped.load(Ordering::Relaxed), 4);
    }
}
