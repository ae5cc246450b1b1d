//! Test-only: a "guest driver" that reaches a [`VirtioPciDevice`] the way a
//! guest does (ECAM config cycles and MMIO on the BAR), and a split
//! virtqueue built by hand in guest memory.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::pci::VirtioPciDevice;
use super::{GuestMemory, VirtioDevice};
use crate::pci::configuration::COMMAND_MEMORY;
use crate::pci::msix::testing::Recorder;
use crate::pci::{PciBarWindow, PciBus, PciConfigMmio};
use crate::MmioBus;

pub const ECAM: u64 = 0xe000_0000;
pub const BAR: u64 = 0xc000_0000;
pub const MEM_SIZE: usize = 0x10_0000;
pub const SLOT: u8 = 1;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// The virtio capabilities the driver found: cfg_type -> BAR offset.
#[derive(Debug, Default, Clone, Copy)]
pub struct Caps {
    pub common: u64,
    pub notify: u64,
    pub notify_mult: u32,
    pub isr: u64,
    pub device: u64,
    pub pci_cfg: Option<u16>,
    pub msix: Option<u16>,
}

pub struct Driver {
    pub mmio: MmioBus,
    pub dev: Arc<Mutex<VirtioPciDevice>>,
    pub msi: Arc<Recorder>,
    pub mem: GuestMemory,
    pub caps: Caps,
}

impl Driver {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let msi = Arc::new(Recorder::default());
        let dev = Arc::new(Mutex::new(
            VirtioPciDevice::new(device, mem.clone(), msi.clone(), BAR).unwrap(),
        ));
        let mut bus = PciBus::new();
        bus.add_device_at(SLOT, dev.clone()).unwrap();
        let bus = Arc::new(Mutex::new(bus));
        let mmio = MmioBus::new();
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
            ECAM,
            0x1000_0000,
        )
        .unwrap();
        mmio.insert(
            Arc::new(Mutex::new(PciBarWindow::new(bus))),
            BAR,
            0x2000_0000,
        )
        .unwrap();
        let mut d = Self {
            mmio,
            dev,
            msi,
            mem,
            caps: Caps::default(),
        };
        d.cfg_w16(4, COMMAND_MEMORY);
        d.caps = d.walk_caps();
        d
    }

    fn ecam(reg: u16) -> u64 {
        ECAM | u64::from(SLOT) << 15 | u64::from(reg)
    }

    pub fn cfg_r8(&self, reg: u16) -> u8 {
        let mut b = [0u8; 1];
        self.mmio.read(Self::ecam(reg), &mut b);
        b[0]
    }
    pub fn cfg_r16(&self, reg: u16) -> u16 {
        let mut b = [0u8; 2];
        self.mmio.read(Self::ecam(reg), &mut b);
        u16::from_le_bytes(b)
    }
    pub fn cfg_r32(&self, reg: u16) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(Self::ecam(reg), &mut b);
        u32::from_le_bytes(b)
    }
    pub fn cfg_w16(&self, reg: u16, v: u16) {
        self.mmio.write(Self::ecam(reg), &v.to_le_bytes());
    }
    pub fn cfg_w32(&self, reg: u16, v: u32) {
        self.mmio.write(Self::ecam(reg), &v.to_le_bytes());
    }
    pub fn cfg_w8(&self, reg: u16, v: u8) {
        self.mmio.write(Self::ecam(reg), &[v]);
    }

    /// Walks the capability list like a driver does.
    pub fn walk_caps(&self) -> Caps {
        let mut caps = Caps::default();
        assert_ne!(self.cfg_r16(6) & 0x10, 0, "capability list bit");
        let mut ptr = self.cfg_r8(0x34);
        let mut n = 0;
        while ptr != 0 {
            n += 1;
            assert!(n < 48, "capability loop");
            let p = u16::from(ptr);
            match self.cfg_r8(p) {
                0x09 => {
                    let cfg_type = self.cfg_r8(p + 3);
                    assert_eq!(self.cfg_r8(p + 4), 0, "all in BAR 0");
                    let off = u64::from(self.cfg_r32(p + 8));
                    match cfg_type {
                        1 => caps.common = off,
                        2 => {
                            caps.notify = off;
                            caps.notify_mult = self.cfg_r32(p + 16);
                        }
                        3 => caps.isr = off,
                        4 => caps.device = off,
                        5 => caps.pci_cfg = Some(p),
                        t => panic!("unexpected virtio cap type {t}"),
                    }
                }
                0x11 => caps.msix = Some(p),
                id => panic!("unexpected capability {id:#x}"),
            }
            ptr = self.cfg_r8(p + 1);
        }
        caps
    }

    pub fn bar_r(&self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        let buf = &mut b[..len];
        self.mmio.read(BAR + off, buf);
        u64::from_le_bytes(b)
    }
    pub fn bar_w(&self, off: u64, len: usize, v: u64) {
        self.mmio.write(BAR + off, &v.to_le_bytes()[..len]);
    }

    pub fn common_r(&self, off: u64, len: usize) -> u64 {
        self.bar_r(self.caps.common + off, len)
    }
    pub fn common_w(&self, off: u64, len: usize, v: u64) {
        self.bar_w(self.caps.common + off, len, v)
    }
    pub fn status(&self) -> u8 {
        self.common_r(0x14, 1) as u8
    }
    pub fn set_status(&self, s: u8) {
        self.common_w(0x14, 1, u64::from(s));
    }
    pub fn device_features(&self) -> u64 {
        self.common_w(0, 4, 0);
        let lo = self.common_r(4, 4);
        self.common_w(0, 4, 1);
        lo | self.common_r(4, 4) << 32
    }
    pub fn set_driver_features(&self, f: u64) {
        self.common_w(8, 4, 0);
        self.common_w(0xc, 4, f & 0xffff_ffff);
        self.common_w(8, 4, 1);
        self.common_w(0xc, 4, f >> 32);
    }

    /// reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns the status.
    pub fn negotiate(&self, features: u64) -> u8 {
        self.set_status(0);
        self.set_status(1);
        self.set_status(1 | 2);
        self.set_driver_features(features);
        self.set_status(1 | 2 | 8);
        self.status()
    }

    /// Programs MSI-X vector `v` and enables MSI-X.
    pub fn enable_msix(&self, vectors: u16) {
        let table = u64::from(self.cfg_r32(self.caps.msix.unwrap() + 4) & !7);
        for v in 0..u64::from(vectors) {
            self.bar_w(table + v * 16, 8, 0xfee0_0000);
            self.bar_w(table + v * 16 + 8, 4, 0x30 + v);
            self.bar_w(table + v * 16 + 12, 4, 0);
        }
        self.cfg_w16(self.caps.msix.unwrap() + 2, 0x8000);
    }

    pub fn setup_queue(&self, idx: u16, q: &SplitQueue, vector: u16) {
        self.common_w(0x16, 2, u64::from(idx));
        self.common_w(0x18, 2, u64::from(q.size));
        self.common_w(0x1a, 2, u64::from(vector));
        for (off, v) in [(0x20, q.desc), (0x28, q.avail), (0x30, q.used)] {
            self.common_w(off, 4, v & 0xffff_ffff);
            self.common_w(off + 4, 4, v >> 32);
        }
        self.common_w(0x1c, 2, 1);
    }

    /// Writes the queue's notify register through MMIO (as a guest without
    /// ioeventfd would), then lets the "event loop" process the queue.
    pub fn kick(&self, idx: u16) {
        self.common_w(0x16, 2, u64::from(idx));
        let off = self.common_r(0x1e, 2);
        self.bar_w(
            self.caps.notify + off * u64::from(self.caps.notify_mult),
            2,
            u64::from(idx),
        );
        let mut dev = self.dev.lock().unwrap();
        assert_eq!(dev.queue_event(idx).unwrap().read().unwrap(), 1);
        dev.queue_event(idx).unwrap().write(1).unwrap();
        dev.process_queue(idx);
    }
}

/// A split virtqueue laid out by the test in guest memory.
pub struct SplitQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl SplitQueue {
    pub fn new(mem: &GuestMemory, size: u16, base: u64) -> Self {
        let q = Self {
            size,
            desc: base,
            avail: base + 16 * u64::from(size),
            used: (base + 16 * u64::from(size) + 6 + 2 * u64::from(size) + 3) & !3,
            next_desc: 0,
            avail_idx: 0,
        };
        mem.write_obj(0u32, GuestAddress(q.avail)).unwrap();
        mem.write_obj(0u32, GuestAddress(q.used)).unwrap();
        q
    }

    /// Writes raw descriptor `i`.
    pub fn set_desc(&self, mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        mem.write_obj(
            Descriptor::new(addr, len, flags, next),
            GuestAddress(self.desc + 16 * u64::from(i)),
        )
        .unwrap();
    }

    /// Publishes `head` in the available ring.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Sets the available index directly (for broken-driver tests).
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Adds a chain of `(addr, len, device-writable)` buffers; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.set_desc(mem, idx, addr, len, flags, (idx + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (descriptor head, length).
    pub fn used_elem(&self, mem: &GuestMemory, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
