//! Tests of the asynchronous data path: the device driven through its PCI
//! registers over a striped test disk, with the scripted engine choosing
//! when and in which order operations complete.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::engine::scripted::{Fault, Order, Script, ScriptedEngine};
use super::test_disk::ExtentDisk;
use super::*;
use crate::pci::msix::testing::Event;
use crate::virtio::test_driver::{Driver, SplitQueue, F_INDIRECT, F_NEXT, F_WRITE};
use crate::virtio::STATUS_DEVICE_NEEDS_RESET;

const DISK: u64 = 1 << 20;
const HDR: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const TABLE: u64 = 0x3_8000;
const RUNNING: u8 = 1 | 2 | 4 | 8;

fn pattern() -> Vec<u8> {
    (0..DISK as usize)
        .map(|i| (i / 512) as u8 ^ (i as u8))
        .collect()
}

struct ARig {
    d: Driver,
    qs: Vec<SplitQueue>,
    script: Script,
    view: ExtentDisk,
    counters: Arc<BlockCounters>,
}

/// A pattern-filled disk of 1 MiB over `files` memfds in `chunk`s.
fn disk(files: usize, chunk: u64) -> (ExtentDisk, ExtentDisk) {
    let mut disk = ExtentDisk::new(DISK, chunk, files).unwrap();
    disk.write_at(&pattern(), 0).unwrap();
    let view = disk.try_clone().unwrap();
    (disk, view)
}

/// Sets the device up like Linux's driver: every queue 256 entries, queue
/// `i` on MSI-X vector `i + 1`.
fn start(blk: Block, event_idx: bool) -> (Driver, Vec<SplitQueue>) {
    let nq = blk.queue_max_sizes().len();
    let d = Driver::new(Box::new(blk));
    d.enable_msix(nq as u16 + 1);
    let offered = d.device_features();
    let f = if event_idx {
        offered
    } else {
        offered & !(1 << VIRTIO_RING_F_EVENT_IDX)
    };
    assert_eq!(d.negotiate(f), 1 | 2 | 8);
    d.common_w(0x10, 2, 0);
    let mut qs = Vec::new();
    for i in 0..nq {
        let q = SplitQueue::new(&d.mem, 256, 0x1_0000 + 0x4000 * i as u64);
        d.setup_queue(i as u16, &q, i as u16 + 1);
        qs.push(q);
    }
    d.set_status(RUNNING);
    assert_eq!(d.status(), RUNNING);
    d.msi.take();
    (d, qs)
}

fn arig(opts: BlockOptions, files: usize, chunk: u64, event_idx: bool) -> ARig {
    let (disk, view) = disk(files, chunk);
    let (engine, script) = ScriptedEngine::new().unwrap();
    let blk = Block::with_engine(Box::new(disk), opts, Box::new(engine)).unwrap();
    let counters = blk.counters();
    let (d, qs) = start(blk, event_idx);
    ARig {
        d,
        qs,
        script,
        view,
        counters,
    }
}

impl ARig {
    fn hdr(&self, i: u64, t: u32, sector: u64) -> u64 {
        let at = HDR + i * 0x20;
        let m = &self.d.mem;
        m.write_obj(t, GuestAddress(at)).unwrap();
        m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
        at
    }
    fn status(&self, i: u64) -> u8 {
        self.d.mem.read_obj(GuestAddress(STATUS + i)).unwrap()
    }
    fn fill(&self, at: u64, len: usize, b: u8) {
        self.d
            .mem
            .write_slice(&vec![b; len], GuestAddress(at))
            .unwrap();
    }
    fn guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.d.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
    fn on_disk(&mut self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.view.read_at(&mut v, off).unwrap();
        v
    }
    /// Request `i`: header, data `(addr, len)` buffers, status byte.
    fn request(&mut self, q: usize, i: u64, t: u32, sector: u64, data: &[(u64, u32)]) -> u16 {
        let h = self.hdr(i, t, sector);
        let write = t == VIRTIO_BLK_T_IN;
        let mut bufs = vec![(h, 16, false)];
        bufs.extend(data.iter().map(|&(a, l)| (a, l, write)));
        bufs.push((STATUS + i, 1, true));
        self.qs[q].add_chain(&self.d.mem, &bufs)
    }
    /// The I/O thread serves the engine's completion descriptor.
    fn serve(&self) {
        self.d.dev.lock().unwrap().process_backend();
    }
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let m = &self.d.mem;
        (0..self.qs[q].used_idx(m))
            .map(|i| self.qs[q].used_elem(m, i))
            .collect()
    }
}

/// Completions in reverse and shuffled orders still give every chain its
/// own status and data, over requests split across two files.
#[test]
fn out_of_order_completions() {
    for order in [Order::Reverse, Order::Shuffle(7), Order::Shuffle(99)] {
        let mut r = arig(BlockOptions::default(), 2, 4096, false);
        r.script.set_order(order);
        let mut heads = Vec::new();
        for i in 0..12u64 {
            let at = 0x4_0000 + i * 0x2000;
            r.fill(at, 4608, i as u8 + 1);
            heads.push(r.request(0, i, VIRTIO_BLK_T_OUT, i * 9, &[(at, 4608)]));
        }
        r.d.kick(0);
        assert_eq!(r.qs[0].used_idx(&r.d.mem), 0, "nothing done yet");
        assert_eq!(r.counters.in_flight.load(Ordering::Relaxed), 12);
        assert!(r.script.pending() >= 12);
        r.script.run_all();
        r.serve();
        let mut used = r.used(0);
        assert_eq!(used.len(), 12);
        used.sort_unstable();
        let mut want: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 1)).collect();
        want.sort_unstable();
        assert_eq!(used, want);
        for i in 0..12u64 {
            assert_eq!(r.status(i), VIRTIO_BLK_S_OK);
            assert_eq!(r.on_disk(i * 9 * 512, 4608), vec![i as u8 + 1; 4608]);
        }
        // Read them back into two buffers each.
        for i in 0..12u64 {
            let at = 0x8_0000 + i * 0x3000;
            r.request(
                0,
                20 + i,
                VIRTIO_BLK_T_IN,
                i * 9,
                &[(at, 1024), (at + 0x1000, 3584)],
            );
        }
        r.d.kick(0);
        r.script.run_all();
        r.serve();
        assert_eq!(r.qs[0].used_idx(&r.d.mem), 24);
        assert!(r.used(0)[12..].iter().all(|u| u.1 == 4609));
        for i in 0..12u64 {
            let at = 0x8_0000 + i * 0x3000;
            assert_eq!(r.status(20 + i), VIRTIO_BLK_S_OK);
            assert_eq!(r.guest(at, 1024), vec![i as u8 + 1; 1024]);
            assert_eq!(r.guest(at + 0x1000, 3584), vec![i as u8 + 1; 3584]);
        }
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(c(&r.counters.write_ops), 12);
        assert_eq!(c(&r.counters.read_bytes), 12 * 4608);
        assert_eq!(c(&r.counters.in_flight), 0);
        assert_eq!(r.d.status(), RUNNING);
    }
}

/// A FLUSH completes after every earlier write and before a later one,
/// whatever order the engine picks inside each stretch.
#[test]
fn flush_is_a_barrier() {
    let mut r = arig(BlockOptions::default(), 2, 4096, false);
    r.script.set_order(Order::Reverse);
    let mut writes = Vec::new();
    for i in 0..8u64 {
        r.fill(0x4_0000 + i * 0x1000, 512, 0x40 + i as u8);
        writes.push(r.request(
            0,
            i,
            VIRTIO_BLK_T_OUT,
            i * 8,
            &[(0x4_0000 + i * 0x1000, 512)],
        ));
    }
    let flush = r.request(0, 8, VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.fill(0x5_0000, 512, 0x77);
    let after = r.request(0, 9, VIRTIO_BLK_T_OUT, 100, &[(0x5_0000, 512)]);
    r.d.kick(0);
    let log = r.script.log();
    let kinds: Vec<(bool, &str)> = log.iter().map(|&(_, b, k)| (b, k)).collect();
    let mut want = vec![(false, "write"); 8];
    want.extend([(true, "sync"), (true, "sync"), (false, "write")]);
    assert_eq!(
        kinds, want,
        "one barrier sync per file, then the later write"
    );
    assert_eq!(r.script.run(8), 8);
    r.serve();
    let used = r.used(0);
    assert_eq!(used.len(), 8);
    let mut heads: Vec<u32> = used.iter().map(|u| u.0).collect();
    heads.sort_unstable();
    assert_eq!(
        heads,
        writes.iter().map(|&h| u32::from(h)).collect::<Vec<_>>()
    );
    r.script.run(1);
    r.serve();
    assert_eq!(r.used(0).len(), 8, "the flush waits for its second file");
    r.script.run(1);
    r.serve();
    assert_eq!(r.used(0)[8], (u32::from(flush), 1));
    assert_eq!(
        r.status(9),
        VIRTIO_BLK_S_IOERR,
        "the later write is not done"
    );
    r.script.run_all();
    r.serve();
    assert_eq!(r.used(0)[9], (u32::from(after), 1));
    assert_eq!(r.status(8), VIRTIO_BLK_S_OK);
    assert_eq!(r.status(9), VIRTIO_BLK_S_OK);
    assert_eq!(r.counters.flushes.load(Ordering::Relaxed), 1);
    // A flush with a write still in flight waits for it too, and one with
    // nothing written since completes at once.
    r.request(0, 10, VIRTIO_BLK_T_OUT, 200, &[(0x5_0000, 512)]);
    r.request(0, 11, VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.d.kick(0);
    assert_eq!(r.used(0).len(), 10);
    r.script.run_all();
    r.serve();
    assert_eq!(r.used(0).len(), 12);
    let n = r.script.log().len();
    r.request(0, 12, VIRTIO_BLK_T_FLUSH, 0, &[]);
    r.d.kick(0);
    assert_eq!(r.used(0).len(), 13);
    assert_eq!(r.script.log().len(), n, "no sync needed");
}

/// One part of a three-part write failing with EIO, or a short read, fail
/// only their requests; the device keeps running.
#[test]
fn eio_mid_request() {
    let mut r = arig(BlockOptions::default(), 2, 4096, false);
    r.script.fault(1, Fault::Eio);
    r.script.fault(5, Fault::Short);
    r.script.set_order(Order::Shuffle(3));
    r.fill(0x4_0000, 12288, 0x55);
    r.request(0, 0, VIRTIO_BLK_T_OUT, 0, &[(0x4_0000, 12288)]);
    r.request(0, 1, VIRTIO_BLK_T_OUT, 64, &[(0x4_0000, 512)]);
    r.request(0, 2, VIRTIO_BLK_T_IN, 128, &[(0x8_0000, 8192)]);
    r.d.kick(0);
    assert_eq!(r.script.log().len(), 6);
    r.script.run_all();
    r.serve();
    assert_eq!(r.used(0).len(), 3);
    assert_eq!(
        (r.status(0), r.status(1), r.status(2)),
        (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR)
    );
    assert!(
        r.used(0).iter().all(|u| u.1 == 1),
        "failed reads return no data"
    );
    assert_eq!(r.d.status(), RUNNING, "no DEVICE_NEEDS_RESET");
    assert_eq!(r.counters.errors.load(Ordering::Relaxed), 2);
    r.request(0, 3, VIRTIO_BLK_T_IN, 64, &[(0x8_0000, 512)]);
    r.d.kick(0);
    r.script.run_all();
    r.serve();
    assert_eq!(r.status(3), VIRTIO_BLK_S_OK);
    assert_eq!(r.guest(0x8_0000, 512), vec![0x55; 512]);
}

/// 254 data descriptors in the ring, 1000 through an indirect table; 1025
/// descriptors are a malformed chain.
#[test]
fn long_chains() {
    let mut r = arig(BlockOptions::default(), 1, DISK, false);
    let data: Vec<(u64, u32)> = (0..254u64)
        .map(|i| (0x4_0000 + (253 - i) * 0x400, 512))
        .collect();
    for (i, &(a, _)) in data.iter().enumerate() {
        r.fill(a, 512, i as u8);
    }
    r.request(0, 0, VIRTIO_BLK_T_OUT, 0, &data);
    r.d.kick(0);
    r.script.run_all();
    r.serve();
    assert_eq!(r.status(0), VIRTIO_BLK_S_OK);
    for i in 0..254u64 {
        assert_eq!(r.on_disk(i * 512, 512), vec![i as u8; 512], "sector {i}");
    }
    // 1000 data descriptors through an indirect table.
    let m = r.d.mem.clone();
    let put = |i: u64, d: Descriptor| m.write_obj(d, GuestAddress(TABLE + 16 * i)).unwrap();
    let h = r.hdr(1, VIRTIO_BLK_T_IN, 0);
    put(0, Descriptor::new(h, 16, F_NEXT, 1));
    for i in 1..=1000u64 {
        let at = 0x8_0000 + (i - 1) * 512;
        put(
            i,
            Descriptor::new(at, 512, F_WRITE | F_NEXT, (i + 1) as u16),
        );
    }
    put(1001, Descriptor::new(STATUS + 1, 1, F_WRITE, 0));
    r.qs[0].set_desc(&m, 0, TABLE, 1002 * 16, F_INDIRECT, 0);
    r.qs[0].publish(&m, 0);
    r.d.kick(0);
    r.script.run_all();
    r.serve();
    assert_eq!(r.status(1), VIRTIO_BLK_S_OK);
    assert_eq!(r.used(0)[1].1, 1000 * 512 + 1);
    let want = r.on_disk(0, 1000 * 512);
    assert_eq!(r.guest(0x8_0000, 1000 * 512), want);
    assert_eq!(want[300 * 512..301 * 512], pattern()[300 * 512..301 * 512]);
    // 1025 descriptors.
    for i in 1..=1023u64 {
        put(
            i,
            Descriptor::new(0x8_0000, 512, F_WRITE | F_NEXT, (i + 1) as u16),
        );
    }
    put(1024, Descriptor::new(STATUS + 2, 1, F_WRITE, 0));
    r.hdr(2, VIRTIO_BLK_T_IN, 0);
    put(0, Descriptor::new(HDR + 0x40, 16, F_NEXT, 1));
    r.qs[0].set_desc(&m, 1, TABLE, 1025 * 16, F_INDIRECT, 0);
    r.qs[0].publish(&m, 1);
    r.d.kick(0);
    assert_eq!(r.d.status(), RUNNING | STATUS_DEVICE_NEEDS_RESET);
    assert_eq!(r.counters.malformed.load(Ordering::Relaxed), 1);
}

/// Two queues used at once: each request completes on its own queue and
/// raises its own MSI-X vector.
#[test]
fn two_queues() {
    let opts = BlockOptions {
        queues: 2,
        ..BlockOptions::default()
    };
    let mut r = arig(opts, 2, 4096, false);
    assert_ne!(r.d.device_features() & 1 << VIRTIO_BLK_F_MQ, 0);
    assert_eq!(r.d.bar_r(r.d.caps.device + 34, 2), 2, "num_queues");
    r.fill(0x4_0000, 4096, 0x11);
    r.fill(0x5_0000, 4096, 0x22);
    r.request(0, 0, VIRTIO_BLK_T_OUT, 0, &[(0x4_0000, 4096)]);
    r.request(1, 1, VIRTIO_BLK_T_OUT, 8, &[(0x5_0000, 4096)]);
    r.d.kick(0);
    r.d.kick(1);
    assert!(r.d.msi.take().is_empty());
    r.script.set_order(Order::Reverse);
    r.script.run_all();
    r.serve();
    let mut ev = r.d.msi.take();
    ev.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(ev, vec![Event::Trigger(1), Event::Trigger(2)]);
    assert_eq!((r.used(0).len(), r.used(1).len()), (1, 1));
    assert_eq!((r.status(0), r.status(1)), (0, 0));
    assert_eq!(r.on_disk(4096, 4096), vec![0x22; 4096]);
    r.request(1, 2, VIRTIO_BLK_T_IN, 0, &[(0x6_0000, 4096)]);
    r.d.kick(1);
    r.script.run_all();
    r.serve();
    assert_eq!(r.d.msi.take(), vec![Event::Trigger(2)]);
    assert_eq!(r.guest(0x6_0000, 4096), vec![0x11; 4096]);
    assert!(matches!(
        Block::new(
            Box::new(crate::virtio::testing::MemDisk(vec![0; 4096])),
            BlockOptions {
                queues: 5,
                ..BlockOptions::default()
            }
        ),
        Err(BlockError::Queues(5))
    ));
}

/// One pass of the I/O thread (kicks of both queues and several batches of
/// completions) raises nothing until it ends, then one interrupt per queue;
/// what finished meanwhile, not yet served, goes out with it. Outside a pass
/// each serve raises at once.
#[test]
fn a_pass_raises_one_interrupt_per_queue() {
    let opts = BlockOptions {
        queues: 2,
        ..BlockOptions::default()
    };
    let mut r = arig(opts, 2, 4096, false);
    for i in 0..6u64 {
        let q = (i % 2) as usize;
        r.request(
            q,
            i,
            VIRTIO_BLK_T_IN,
            i * 8,
            &[(0x4_0000 + i * 0x1000, 4096)],
        );
    }
    {
        let mut dev = r.d.dev.lock().unwrap();
        dev.begin_batch();
        dev.process_queue(0);
        dev.process_queue(1);
        r.script.run(2);
        dev.process_backend();
        r.script.run(2);
        dev.process_backend();
        r.script.run_all();
        assert!(r.d.msi.take().is_empty(), "held until the pass ends");
        assert_eq!(r.used(0).len() + r.used(1).len(), 4);
        dev.end_batch();
    }
    let mut ev = r.d.msi.take();
    ev.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(ev, vec![Event::Trigger(1), Event::Trigger(2)]);
    assert_eq!((r.used(0).len(), r.used(1).len()), (3, 3));
    let want = pattern();
    for i in 0..6u64 {
        assert_eq!(r.status(i), VIRTIO_BLK_S_OK);
        let off = (i * 4096) as usize;
        assert_eq!(r.guest(0x4_0000 + i * 0x1000, 4096), want[off..off + 4096]);
    }
    r.request(0, 6, VIRTIO_BLK_T_IN, 0, &[(0x4_0000, 512)]);
    r.d.kick(0);
    r.script.run_all();
    r.serve();
    assert_eq!(r.d.msi.take(), vec![Event::Trigger(1)]);
}

/// With `QUIET_IN_FLIGHT` requests on the engine the queue stays quiet
/// (`VRING_USED_F_NO_NOTIFY` left set): chains the driver adds meanwhile,
/// without notifying, are taken when a completion arrives, and once nothing
/// is in flight the driver is asked to notify again. A lone request (QD1)
/// re-arms at once.
#[test]
fn a_busy_queue_stays_quiet_until_idle() {
    let mut r = arig(BlockOptions::default(), 1, DISK, false);
    let no_notify = |r: &ARig| r.d.mem.read_obj::<u16>(GuestAddress(r.qs[0].used)).unwrap() & 1;
    let read = |r: &mut ARig, i: u64| {
        r.request(0, i, VIRTIO_BLK_T_IN, i, &[(0x4_0000 + i * 0x1000, 512)]);
    };
    read(&mut r, 0);
    r.d.kick(0);
    assert_eq!(no_notify(&r), 0, "one request in flight: notify again");
    r.script.run_all();
    r.serve();
    for i in 1..5 {
        read(&mut r, i);
    }
    r.d.kick(0);
    assert_eq!(r.script.pending(), 4);
    assert_eq!(no_notify(&r), 1, "busy: quiet");
    // The driver adds two more and, seeing NO_NOTIFY, does not notify.
    read(&mut r, 5);
    read(&mut r, 6);
    r.script.run(1);
    r.serve();
    assert_eq!(r.script.pending(), 5, "taken on the completion");
    assert_eq!(no_notify(&r), 1);
    r.script.run_all();
    r.serve();
    assert_eq!(r.used(0).len(), 7);
    assert_eq!(no_notify(&r), 0, "idle: notify again");
    assert!((0..7).all(|i| r.status(i) == VIRTIO_BLK_S_OK));
}

/// With EVENT_IDX the device interrupts only when the used index passes
/// the driver's `used_event`.
#[test]
fn event_idx_interrupts() {
    let mut r = arig(BlockOptions::default(), 1, DISK, true);
    let used_event = r.qs[0].avail + 4 + 2 * 256;
    r.d.mem.write_obj(2u16, GuestAddress(used_event)).unwrap();
    for i in 0..5u64 {
        r.request(0, i, VIRTIO_BLK_T_IN, i, &[(0x4_0000 + i * 0x1000, 512)]);
    }
    r.d.kick(0);
    let mut fired = Vec::new();
    for _ in 0..5 {
        r.script.run(1);
        r.serve();
        fired.push(r.d.msi.take().len());
    }
    // Used index 1, 2, 3, 4, 5: only the step to 3 passes used_event 2.
    assert_eq!(fired, [0, 0, 1, 0, 0]);
}

/// A reset with requests in flight waits for them and returns nothing to
/// the (forgotten) rings afterwards.
#[test]
fn reset_waits_for_in_flight() {
    let mut r = arig(BlockOptions::default(), 2, 4096, false);
    for i in 0..4u64 {
        r.request(
            0,
            i,
            VIRTIO_BLK_T_IN,
            i * 8,
            &[(0x4_0000 + i * 0x1000, 4096)],
        );
    }
    r.d.kick(0);
    assert_eq!(r.script.pending(), 4);
    assert_eq!(r.counters.in_flight.load(Ordering::Relaxed), 4);
    r.d.set_status(0);
    assert_eq!(r.script.pending(), 0, "drained");
    assert_eq!(r.counters.in_flight.load(Ordering::Relaxed), 0);
    r.serve();
    assert_eq!(r.qs[0].used_idx(&r.d.mem), 0);
    assert!(r.d.msi.take().is_empty());
    assert!((0..4).all(|i| r.status(i) == VIRTIO_BLK_S_IOERR));
}

/// Dropping a device (hot-unplug) with requests in flight waits for them.
#[test]
fn drop_waits_for_in_flight() {
    let (disk, _view) = disk(1, DISK);
    let (engine, script) = ScriptedEngine::new().unwrap();
    let blk =
        Block::with_engine(Box::new(disk), BlockOptions::default(), Box::new(engine)).unwrap();
    let (d, mut qs) = start(blk, false);
    let h = HDR;
    d.mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(h)).unwrap();
    qs[0].add_chain(
        &d.mem,
        &[(h, 16, false), (0x4_0000, 512, true), (STATUS, 1, true)],
    );
    d.kick(0);
    assert_eq!(script.pending(), 1);
    drop(d);
    assert_eq!(script.pending(), 0);
}

/// DISCARD and WRITE_ZEROES go to the engine as fallocates on the extents.
#[test]
fn discard_and_write_zeroes_on_the_engine() {
    let mut r = arig(BlockOptions::default(), 2, 4096, false);
    let seg = |r: &ARig, at: u64, sector: u64, num: u32, flags: u32| {
        r.d.mem.write_obj(sector, GuestAddress(at)).unwrap();
        r.d.mem.write_obj(num, GuestAddress(at + 8)).unwrap();
        r.d.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    };
    seg(&r, 0x2_8000, 4, 16, WRITE_ZEROES_FLAG_UNMAP);
    r.request(0, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(0x2_8000, 16)]);
    seg(&r, 0x2_8010, 40, 8, 0);
    r.request(0, 1, VIRTIO_BLK_T_DISCARD, 0, &[(0x2_8010, 16)]);
    r.d.kick(0);
    assert!(r.script.log().iter().all(|l| l.2 == "fallocate"));
    assert_eq!(r.script.log().len(), 3 + 1);
    r.script.run_all();
    r.serve();
    assert_eq!((r.status(0), r.status(1)), (0, 0));
    assert_eq!(r.on_disk(4 * 512, 16 * 512), vec![0; 16 * 512]);
    assert_eq!(r.on_disk(3 * 512, 512), pattern()[3 * 512..4 * 512]);
    assert_eq!(r.on_disk(40 * 512, 8 * 512), vec![0; 8 * 512]);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        (c(&r.counters.write_zeroes), c(&r.counters.discards)),
        (1, 1)
    );
    // Zeroes that must stay allocated go through the backend.
    let n = r.script.log().len();
    seg(&r, 0x2_8020, 60, 2, 0);
    r.request(0, 2, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(0x2_8020, 16)]);
    r.d.kick(0);
    assert_eq!(r.script.log().len(), n);
    assert_eq!(r.status(2), VIRTIO_BLK_S_OK);
    assert_eq!(r.on_disk(60 * 512, 1024), vec![0; 1024]);
}

/// Without host extents the device goes the synchronous way, and waits for
/// every operation in flight before changing the image.
#[test]
fn synchronous_path_waits_for_the_engine() {
    let (mut disk, view) = disk(1, DISK);
    disk.sync_above = DISK / 2;
    let (engine, script) = ScriptedEngine::new().unwrap();
    let blk =
        Block::with_engine(Box::new(disk), BlockOptions::default(), Box::new(engine)).unwrap();
    let counters = blk.counters();
    let (d, qs) = start(blk, false);
    let mut r = ARig {
        d,
        qs,
        script,
        view,
        counters,
    };
    let high = DISK / 512 - 8;
    r.fill(0x4_0000, 512, 0x99);
    r.request(0, 0, VIRTIO_BLK_T_OUT, 3, &[(0x4_0000, 512)]);
    r.request(0, 1, VIRTIO_BLK_T_IN, high, &[(0x5_0000, 512)]);
    r.d.kick(0);
    assert_eq!(
        r.script.pending(),
        1,
        "the async write waits; the read is done"
    );
    assert_eq!(r.used(0).len(), 1);
    r.fill(0x4_1000, 512, 0x98);
    r.request(0, 2, VIRTIO_BLK_T_OUT, high, &[(0x4_1000, 512)]);
    r.d.kick(0);
    assert_eq!(
        r.script.pending(),
        0,
        "drained before the synchronous write"
    );
    assert_eq!(r.used(0).len(), 3);
    assert!((0..3).all(|i| r.status(i) == VIRTIO_BLK_S_OK));
    assert_eq!(r.on_disk(3 * 512, 512), vec![0x99; 512]);
    assert_eq!(r.on_disk(high * 512, 512), vec![0x98; 512]);
    assert_eq!(r.counters.in_flight.load(Ordering::Relaxed), 0);
}

/// cache=none: unaligned guest buffers go through an aligned bounce
/// buffer, copied out to the guest only when the read completes.
#[test]
fn cache_none_bounces_unaligned_buffers() {
    let opts = BlockOptions {
        cache: CacheMode::None,
        ..BlockOptions::default()
    };
    let mut r = arig(opts, 2, 4096, false);
    r.fill(0x4_0100, 1024, 0xab);
    r.request(0, 0, VIRTIO_BLK_T_OUT, 7, &[(0x4_0100, 1024)]);
    r.d.kick(0);
    r.script.run_all();
    r.serve();
    assert_eq!(r.status(0), VIRTIO_BLK_S_OK);
    assert_eq!(r.on_disk(7 * 512, 1024), vec![0xab; 1024]);
    r.request(
        0,
        1,
        VIRTIO_BLK_T_IN,
        7,
        &[(0x5_0300, 512), (0x5_1000, 512)],
    );
    r.request(0, 2, VIRTIO_BLK_T_IN, 7, &[(0x6_0000, 1024)]);
    r.d.kick(0);
    assert_eq!(
        r.guest(0x5_0300, 512),
        vec![0; 512],
        "not before completion"
    );
    r.script.run_all();
    r.serve();
    assert_eq!((r.status(1), r.status(2)), (0, 0));
    assert_eq!(r.guest(0x5_0300, 512), vec![0xab; 512]);
    assert_eq!(r.guest(0x5_1000, 512), vec![0xab; 512]);
    assert_eq!(r.guest(0x6_0000, 1024), vec![0xab; 1024]);
}

/// A backend that refuses cache=none makes `Block::new` fail clearly; so
/// does a raw image on a file system without O_DIRECT (skipped where
/// /dev/shm supports it).
#[test]
fn cache_none_refused() {
    let (mut d, _view) = disk(1, DISK);
    d.refuse_direct = true;
    let (engine, _script) = ScriptedEngine::new().unwrap();
    let opts = BlockOptions {
        cache: CacheMode::None,
        ..BlockOptions::default()
    };
    let err = Block::with_engine(Box::new(d), opts.clone(), Box::new(engine)).unwrap_err();
    assert!(matches!(err, BlockError::Cache(_)));
    assert!(err.to_string().contains("cache mode"), "{err}");

    let path = std::path::PathBuf::from(format!("/dev/shm/nubo-blk-direct-{}", std::process::id()));
    if std::fs::write(&path, vec![0u8; 4096]).is_err() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .is_ok();
    if direct {
        let _ = std::fs::remove_file(&path);
        eprintln!("skipped: /dev/shm supports O_DIRECT");
        return;
    }
    let image = images::RawImage::open(&path, false).unwrap();
    let (engine, _script) = ScriptedEngine::new().unwrap();
    let res = Block::with_engine(Box::new(image), opts, Box::new(engine));
    let _ = std::fs::remove_file(&path);
    assert!(matches!(res, Err(BlockError::Cache(_))));
}

/// The real engine (io_uring or the thread pool): writes, a flush and
/// reads complete through the completion descriptor.
#[test]
fn real_engine_end_to_end() {
    for kind in [engine::EngineKind::Auto, engine::EngineKind::Threads] {
        let (disk, mut view) = disk(2, 4096);
        let opts = BlockOptions {
            engine: kind,
            queues: 2,
            ..BlockOptions::default()
        };
        let blk = Block::new(Box::new(disk), opts).unwrap();
        let counters = blk.counters();
        let (d, qs) = start(blk, false);
        let fd = d.dev.lock().unwrap().backend_fd().unwrap();
        // Not used: the real engine runs by itself.
        let script = ScriptedEngine::new().unwrap().1;
        let mut r = ARig {
            d,
            qs,
            script,
            view: view.try_clone().unwrap(),
            counters,
        };
        let wait = |r: &ARig, q: usize, n: usize| {
            let start = std::time::Instant::now();
            while r.used(q).len() < n {
                assert!(start.elapsed() < std::time::Duration::from_secs(10));
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 100) };
                r.serve();
            }
        };
        for i in 0..16u64 {
            r.fill(0x4_0000 + i * 0x2000, 4608, i as u8 + 1);
            r.request(
                (i % 2) as usize,
                i,
                VIRTIO_BLK_T_OUT,
                i * 9,
                &[(0x4_0000 + i * 0x2000, 4608)],
            );
        }
        r.request(0, 16, VIRTIO_BLK_T_FLUSH, 0, &[]);
        r.d.kick(0);
        r.d.kick(1);
        wait(&r, 0, 9);
        wait(&r, 1, 8);
        assert!((0..17).all(|i| r.status(i) == VIRTIO_BLK_S_OK));
        for i in 0..16u64 {
            let mut v = vec![0; 4608];
            view.read_at(&mut v, i * 9 * 512).unwrap();
            assert_eq!(v, vec![i as u8 + 1; 4608]);
        }
        r.request(1, 20, VIRTIO_BLK_T_IN, 9, &[(0x8_0000, 4608)]);
        r.d.kick(1);
        wait(&r, 1, 9);
        assert_eq!(r.guest(0x8_0000, 4608), vec![2; 4608]);
        assert_eq!(r.counters.in_flight.load(Ordering::Relaxed), 0);
    }
}

/// The fuzz harness builds long indirect chains from a few bytes: 320
/// data descriptors read fine, 1500 are a malformed chain.
#[test]
fn fuzz_harness_long_chains() {
    let input = |n: u16, kind: u8| {
        let mut v = vec![0x80u8];
        v.extend(std::iter::repeat_n(0u8, 16 * 7 + 1 + 16));
        // order, fail mask, short, chunk, steps
        v.extend([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3]);
        v.extend((n - 1).to_le_bytes());
        v.push(kind);
        v
    };
    let c = crate::virtio::fuzz::blk_counters(&input(322, 2)).unwrap();
    assert_eq!(c.read_ops.load(Ordering::Relaxed), 1);
    assert_eq!(c.read_bytes.load(Ordering::Relaxed), 320 * 16);
    let c = crate::virtio::fuzz::blk_counters(&input(1500, 2)).unwrap();
    assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
    // Failures chosen by the input fail the request, not the harness.
    let mut failing = input(322, 2);
    failing[131] = 0xff;
    let c = crate::virtio::fuzz::blk_counters(&failing).unwrap();
    assert_eq!(c.errors.load(Ordering::Relaxed), 1);
}

/// The fuzzing corpus' seeds are valid requests of the current layout.
#[test]
fn fuzz_corpus_seeds_complete() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/blk_request");
    let run = |name: &str| {
        let input = std::fs::read(dir.join(name)).unwrap();
        let c = crate::virtio::fuzz::blk_counters(&input).unwrap();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&c.read_ops),
            g(&c.write_ops),
            g(&c.errors),
            g(&c.malformed),
        )
    };
    for name in ["seed-in", "seed-indirect", "seed-long-chain"] {
        assert_eq!(run(name), (1, 0, 0, 0), "{name}");
    }
    assert_eq!(run("seed-out"), (0, 1, 0, 0));
    // Its one write comes back short.
    assert_eq!(run("seed-out-shuffled-short"), (0, 0, 1, 0));
}
