//! The root PCI bus, its host bridge, and the config-space and BAR access
//! paths the VMM puts on its port I/O and MMIO buses.

use std::sync::{Arc, Mutex, MutexGuard};

use super::configuration::NUM_BARS;
use super::{PciBar, PciConfiguration, PciDevice, PciError, PciHeader};
use crate::bus::{MmioDevice, PioDevice};

/// First port of the type-1 configuration mechanism (address register).
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
/// Number of ports of the type-1 mechanism (0xCF8-0xCFF).
pub const PCI_CONFIG_IO_SIZE: u16 = 8;
/// Number of device slots on the bus.
const NUM_SLOTS: usize = 32;
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;

/// A shared handle to a PCI function on the bus.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The guest moved a BAR to a new address while memory decoding is on; the
/// VMM should move anything it registered at the old address (ioeventfds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    /// Slot (device number) on bus 0.
    pub slot: u8,
    /// BAR index.
    pub bar: u8,
    /// Previous guest-physical address of the BAR.
    pub old: u64,
    /// New guest-physical address of the BAR.
    pub new: u64,
    /// Size of the BAR.
    pub len: u64,
}

/// Called (without the bus lock held, on the vCPU thread that did the config
/// write) for every [`BarReprogram`].
pub type BarReprogramHandler = Arc<dyn Fn(&BarReprogram) + Send + Sync>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host bridge at 00:00.0: an Intel-like host bridge (class 0x06/0x00)
/// with no BARs.
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// Vendor id of the host bridge (Intel).
    pub const VENDOR_ID: u16 = 0x8086;
    /// Device id of the host bridge.
    pub const DEVICE_ID: u16 = 0x0d57;

    /// Creates the host bridge.
    pub fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: Self::VENDOR_ID,
                device_id: Self::DEVICE_ID,
                revision: 0,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

struct Slot {
    device: SharedPciDevice,
    /// The address of each BAR as the VMM last knew it.
    known: [Option<u64>; NUM_BARS],
    /// The BARs the device decodes now.
    mapped: Vec<PciBar>,
}

/// PCI bus 0: a host bridge in slot 0 and up to 31 devices (function 0
/// only). It also routes accesses to the BARs its devices decode.
pub struct PciBus {
    slots: Vec<Option<Slot>>,
    handler: Option<BarReprogramHandler>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// Creates bus 0 with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut bus = Self {
            slots: (0..NUM_SLOTS).map(|_| None).collect(),
            handler: None,
        };
        let bridge: SharedPciDevice = Arc::new(Mutex::new(PciHostBridge::new()));
        bus.place(0, bridge);
        bus
    }

    fn place(&mut self, slot: u8, device: SharedPciDevice) {
        let (known, mapped) = {
            let d = lock(&device);
            let mut known = [None; NUM_BARS];
            for b in d.config().bars() {
                if let Some(k) = known.get_mut(usize::from(b.index)) {
                    *k = Some(b.addr);
                }
            }
            (known, d.config().mapped_bars())
        };
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            *s = Some(Slot {
                device,
                known,
                mapped,
            });
        }
    }

    /// Puts `device` in the lowest free slot; returns the slot number (the
    /// device is then at 00:slot.0). Its BAR addresses as configured now are
    /// the ones the VMM is assumed to know.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8, PciError> {
        let slot = (1..NUM_SLOTS)
            .find(|&s| self.slots.get(s).is_some_and(|x| x.is_none()))
            .ok_or(PciError::BusFull)? as u8;
        self.place(slot, device);
        Ok(slot)
    }

    /// Puts `device` in slot `slot` (1..=31), which must be free.
    pub fn add_device_at(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciError> {
        match self.slots.get(usize::from(slot)) {
            Some(None) if slot != 0 => {
                self.place(slot, device);
                Ok(())
            }
            _ => Err(PciError::SlotUnavailable(slot)),
        }
    }

    /// Takes the device out of `slot` (1..=31), freeing the slot; the host
    /// bridge in slot 0 stays. Its BARs stop decoding at once.
    pub fn remove_device(&mut self, slot: u8) -> Option<SharedPciDevice> {
        if slot == 0 {
            return None;
        }
        Some(self.slots.get_mut(usize::from(slot))?.take()?.device)
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        Some(self.slot(slot)?.device.clone())
    }

    /// Sets the function called for every BAR move made through
    /// [`PciConfigIo`] or [`PciConfigMmio`].
    pub fn set_bar_reprogram_handler(&mut self, handler: BarReprogramHandler) {
        self.handler = Some(handler);
    }

    fn slot(&self, slot: u8) -> Option<&Slot> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// Guest read of configuration space of `bus:device.function` at `offset`
    /// (0..4096). Absent functions read as all ones.
    pub fn read_config(&self, bus: u8, device: u8, function: u8, offset: u16, data: &mut [u8]) {
        match self.slot(device).filter(|_| bus == 0 && function == 0) {
            Some(s) => lock(&s.device).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Guest write of configuration space; returns the BARs this moved.
    pub fn write_config(
        &mut self,
        bus: u8,
        device: u8,
        function: u8,
        offset: u16,
        data: &[u8],
    ) -> Vec<BarReprogram> {
        let mut events = Vec::new();
        if bus != 0 || function != 0 {
            return events;
        }
        let Some(Some(s)) = self.slots.get_mut(usize::from(device)) else {
            return events;
        };
        let mapped = {
            let mut d = lock(&s.device);
            d.write_config(offset, data);
            d.config().mapped_bars()
        };
        for b in &mapped {
            let Some(known) = s.known.get_mut(usize::from(b.index)) else {
                continue;
            };
            if let Some(old) = *known {
                if old != b.addr {
                    tracing::debug!(slot = device, bar = b.index, old, new = b.addr, "BAR moved");
                    events.push(BarReprogram {
                        slot: device,
                        bar: b.index,
                        old,
                        new: b.addr,
                        len: b.size,
                    });
                }
            }
            *known = Some(b.addr);
        }
        s.mapped = mapped;
        events
    }

    /// Finds the BAR decoding `[addr, addr + len)`: the device, BAR index and
    /// offset in the BAR. (If the guest made BARs overlap, the lowest slot
    /// wins.)
    pub fn route(&self, addr: u64, len: usize) -> Option<(SharedPciDevice, u8, u64)> {
        let len = u64::try_from(len).ok()?;
        self.slots.iter().flatten().find_map(|s| {
            s.mapped.iter().find_map(|b| {
                let off = addr.checked_sub(b.addr)?;
                (off.checked_add(len)? <= b.size).then(|| (s.device.clone(), b.index, off))
            })
        })
    }

    fn handler(&self) -> Option<BarReprogramHandler> {
        self.handler.clone()
    }
}

/// Runs a config write on the bus and the reprogram handler after the bus
/// lock is released.
fn config_write(bus: &Mutex<PciBus>, dev: u8, func: u8, busno: u8, offset: u16, data: &[u8]) {
    let (events, handler) = {
        let mut b = lock(bus);
        let events = b.write_config(busno, dev, func, offset, data);
        (events, b.handler())
    };
    if let Some(h) = handler {
        for e in &events {
            h(e);
        }
    }
}

/// The type-1 configuration mechanism: ports 0xCF8 (address) and
/// 0xCFC-0xCFF (data), a [`PioDevice`] of length 8.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

impl PciConfigIo {
    /// Creates the port I/O access path to `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus, address: 0 }
    }

    /// Decodes the address register: (bus, device, function, dword register
    /// offset), or None when the enable bit is clear.
    fn target(&self) -> Option<(u8, u8, u8, u16)> {
        if self.address & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as u16,
        ))
    }

    /// The register offset for a data-port access at port offset `offset`
    /// (4..8) of `len` bytes, if it stays inside the dword.
    fn data_target(&self, offset: u16, len: usize) -> Option<(u8, u8, u8, u16)> {
        let within = offset.checked_sub(4)?;
        if len == 0 || usize::from(within) + len > 4 {
            return None;
        }
        let (b, d, f, reg) = self.target()?;
        Some((b, d, f, reg + within))
    }
}

impl PioDevice for PciConfigIo {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if offset < 4 {
            let bytes = self.address.to_le_bytes();
            for (i, d) in data.iter_mut().enumerate() {
                *d = bytes.get(usize::from(offset) + i).copied().unwrap_or(0xff);
            }
            return;
        }
        match self.data_target(offset, data.len()) {
            Some((b, d, f, reg)) => lock(&self.bus).read_config(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset < 4 {
            // Only whole-register writes change the address (a byte write to
            // 0xCFB is an old chipset probe; ignore it).
            if let (0, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
                self.address = u32::from_le_bytes(v);
            }
            return;
        }
        if let Some((b, d, f, reg)) = self.data_target(offset, data.len()) {
            config_write(&self.bus, d, f, b, reg, data);
        }
    }
}

/// ECAM (PCI Express enhanced configuration access): offset
/// `bus << 20 | device << 15 | function << 12 | register` in the window. An
/// [`MmioDevice`] to insert at the ECAM base (only bus 0 answers).
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    /// Creates the ECAM access path to `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }

    fn decode(offset: u64, len: usize) -> Option<(u8, u8, u8, u16)> {
        let reg = (offset & 0xfff) as u16;
        // Accesses must stay inside one dword (1, 2 or 4 bytes).
        if len == 0 || usize::from(reg & 3) + len > 4 || offset >> 28 != 0 {
            return None;
        }
        Some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            reg,
        ))
    }
}

impl MmioDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match Self::decode(offset, data.len()) {
            Some((b, d, f, reg)) => lock(&self.bus).read_config(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = Self::decode(offset, data.len()) {
            config_write(&self.bus, d, f, b, reg, data);
        }
    }
}

/// Routes accesses in a window of guest-physical addresses to the BARs
/// decoding them. Insert one on the MMIO bus over each BAR window; accesses
/// that hit no BAR read all ones.
pub struct PciBarWindow {
    bus: Arc<Mutex<PciBus>>,
}

impl PciBarWindow {
    /// Creates a window onto `bus`'s BARs.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }
}

impl MmioDevice for PciBarWindow {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let route = base
            .checked_add(offset)
            .and_then(|a| lock(&self.bus).route(a, data.len()));
        match route {
            Some((dev, bar, off)) => lock(&dev).read_bar(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let route = base
            .checked_add(offset)
            .and_then(|a| lock(&self.bus).route(a, data.len()));
        if let Some((dev, bar, off)) = route {
            lock(&dev).write_bar(bar, off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::COMMAND_MEMORY;
    use crate::pci::BarKind;
    use crate::{MmioBus, PioBus};

    /// A device with one 64-bit BAR that remembers BAR writes and reads back
    /// the offset.
    struct Dummy {
        config: PciConfiguration,
        writes: Vec<(u8, u64, Vec<u8>)>,
    }

    impl Dummy {
        fn new(bar_addr: u64) -> Self {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1af4,
                device_id: 0x1042,
                revision: 1,
                class: 1,
                subclass: 0,
                prog_if: 0,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 2,
            });
            config
                .add_bar(0, bar_addr, 0x1000, BarKind::Mem64, false)
                .unwrap();
            Self {
                config,
                writes: vec![],
            }
        }
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 ^ bar);
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
    }

    fn cf8(pio: &PioBus, bus: u8, dev: u8, func: u8, reg: u8) {
        let a = 0x8000_0000u32
            | u32::from(bus) << 16
            | u32::from(dev) << 11
            | u32::from(func) << 8
            | u32::from(reg & 0xfc);
        assert!(pio.write(0xcf8, &a.to_le_bytes()));
    }

    fn ecam(dev: u8, reg: u16) -> u64 {
        0xe000_0000 | u64::from(dev) << 15 | u64::from(reg)
    }

    struct Rig {
        pci: Arc<Mutex<PciBus>>,
        pio: PioBus,
        mmio: MmioBus,
        dummy: Arc<Mutex<Dummy>>,
        moves: Arc<Mutex<Vec<BarReprogram>>>,
    }

    fn rig() -> Rig {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let dummy = Arc::new(Mutex::new(Dummy::new(0xc000_0000)));
        assert_eq!(pci.lock().unwrap().add_device(dummy.clone()), Ok(1));
        let moves = Arc::new(Mutex::new(Vec::new()));
        let m = moves.clone();
        pci.lock()
            .unwrap()
            .set_bar_reprogram_handler(Arc::new(move |e| m.lock().unwrap().push(*e)));
        let mut pio = PioBus::new();
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            PCI_CONFIG_IO_PORT,
            PCI_CONFIG_IO_SIZE,
        )
        .unwrap();
        let mmio = MmioBus::new();
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
            0xe000_0000,
            0x1000_0000,
        )
        .unwrap();
        mmio.insert(
            Arc::new(Mutex::new(PciBarWindow::new(pci.clone()))),
            0xc000_0000,
            0x2000_0000,
        )
        .unwrap();
        Rig {
            pci,
            pio,
            mmio,
            dummy,
            moves,
        }
    }

    #[test]
    fn a_removed_device_frees_its_slot_and_stops_decoding() {
        let r = rig();
        let mut pci = r.pci.lock().unwrap();
        pci.write_config(0, 1, 0, 4, &COMMAND_MEMORY.to_le_bytes());
        assert!(pci.route(0xc000_0000, 4).is_some());
        assert!(pci.remove_device(0).is_none(), "the host bridge stays");
        assert!(pci.remove_device(1).is_some());
        assert!(pci.device(1).is_none());
        assert!(pci.route(0xc000_0000, 4).is_none());
        assert!(pci.remove_device(1).is_none());
        assert_eq!(
            pci.add_device(r.dummy.clone()),
            Ok(1),
            "slot 1 is free again"
        );
    }

    #[test]
    fn host_bridge_and_empty_slots() {
        let r = rig();
        let mut d = [0u8; 4];
        cf8(&r.pio, 0, 0, 0, 0);
        r.pio.read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        cf8(&r.pio, 0, 0, 0, 8);
        r.pio.read(0xcfc, &mut d);
        assert_eq!(d[3], 0x06);
        // Empty slot, other function, other bus: all ones.
        for (bus, dev, func) in [(0, 2, 0), (0, 1, 1), (1, 1, 0)] {
            cf8(&r.pio, bus, dev, func, 0);
            r.pio.read(0xcfc, &mut d);
            assert_eq!(d, [0xff; 4]);
        }
        // The address register reads back; the enable bit off means no access.
        let mut a = [0u8; 4];
        r.pio.read(0xcf8, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8001_0800);
        r.pio.write(0xcf8, &0u32.to_le_bytes());
        r.pio.read(0xcfc, &mut d);
        assert_eq!(d, [0xff; 4]);
        // A byte write to 0xCFB does not disturb the address.
        r.pio.write(0xcfb, &[1]);
        r.pio.read(0xcf8, &mut a);
        assert_eq!(a, [0; 4]);
    }

    #[test]
    fn cf8_and_ecam_reach_the_same_device() {
        let r = rig();
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        cf8(&r.pio, 0, 1, 0, 0);
        r.pio.read(0xcfc, &mut a);
        assert!(r.mmio.read(ecam(1, 0), &mut b));
        assert_eq!(a, b);
        assert_eq!(u32::from_le_bytes(a), 0x1042_1af4);
        // Byte and word accesses at each data port.
        let mut w = [0u8; 2];
        r.pio.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1042);
        let mut one = [0u8; 1];
        r.pio.read(0xcfd, &mut one);
        assert_eq!(one[0], 0x1a);
        // Crossing the dword end is refused.
        r.pio.read(0xcfe, &mut a);
        assert_eq!(a, [0xff; 4]);
        assert!(r.mmio.read(ecam(1, 2), &mut a));
        assert_eq!(a, [0xff; 4]);
        // Interrupt line written via CFC, read via ECAM.
        cf8(&r.pio, 0, 1, 0, 0x3c);
        r.pio.write(0xcfc, &[9]);
        r.mmio.read(ecam(1, 0x3c), &mut one);
        assert_eq!(one[0], 9);
        // Extended config space is reachable through ECAM only.
        r.mmio.read(ecam(1, 0x100), &mut a);
        assert_eq!(a, [0; 4]);
        // Other ECAM buses are empty.
        r.mmio.read(0xe000_0000 | 1 << 20 | 1 << 15, &mut a);
        assert_eq!(a, [0xff; 4]);
    }

    #[test]
    fn bar_routing_follows_decode_and_moves() {
        let r = rig();
        let mut d = [0u8; 4];
        // Memory decoding off: the BAR is not routed.
        assert!(r.mmio.read(0xc000_0010, &mut d), "window owns it");
        assert_eq!(d, [0xff; 4]);
        // Enable decoding via ECAM.
        r.mmio.write(ecam(1, 4), &COMMAND_MEMORY.to_le_bytes());
        r.mmio.read(0xc000_0010, &mut d);
        assert_eq!(d, [0x10; 4]);
        r.mmio.write(0xc000_0ffc, &[1, 2, 3, 4]);
        // An access straddling the BAR end is not routed.
        r.mmio.write(0xc000_0ffe, &[1, 2, 3, 4]);
        assert_eq!(
            r.dummy.lock().unwrap().writes,
            vec![(0, 0xffc, vec![1, 2, 3, 4])]
        );
        assert!(r.moves.lock().unwrap().is_empty());
        // Linux-style sizing with decode on: probe values do not count as moves.
        cf8(&r.pio, 0, 1, 0, 0x10);
        r.pio.write(0xcfc, &[0xff; 4]);
        r.pio.read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_f004);
        r.pio.write(0xcfc, &0xc000_0000u32.to_le_bytes());
        assert!(r.moves.lock().unwrap().is_empty());
        // A real move: reported once, and routing follows.
        r.pio.write(0xcfc, &0xc010_0000u32.to_le_bytes());
        assert_eq!(
            *r.moves.lock().unwrap(),
            vec![BarReprogram {
                slot: 1,
                bar: 0,
                old: 0xc000_0000,
                new: 0xc010_0000,
                len: 0x1000
            }]
        );
        r.mmio.read(0xc000_0010, &mut d);
        assert_eq!(d, [0xff; 4]);
        r.mmio.read(0xc010_0020, &mut d);
        assert_eq!(d, [0x20; 4]);
        // Moving with decode off, then enabling: one event at enable time.
        r.mmio.write(ecam(1, 4), &[0, 0]);
        r.mmio.write(ecam(1, 0x10), &0xc020_0000u32.to_le_bytes());
        assert_eq!(r.moves.lock().unwrap().len(), 1);
        let ev = r
            .pci
            .lock()
            .unwrap()
            .write_config(0, 1, 0, 4, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].old, ev[0].new), (0xc010_0000, 0xc020_0000));
    }

    #[test]
    fn slots() {
        let mut bus = PciBus::new();
        assert_eq!(
            bus.add_device_at(0, Arc::new(Mutex::new(Dummy::new(0)))),
            Err(PciError::SlotUnavailable(0))
        );
        bus.add_device_at(1, Arc::new(Mutex::new(Dummy::new(0))))
            .unwrap();
        assert!(bus
            .add_device_at(1, Arc::new(Mutex::new(Dummy::new(0))))
            .is_err());
        assert!(bus
            .add_device_at(32, Arc::new(Mutex::new(Dummy::new(0))))
            .is_err());
        for s in 2..32 {
            assert_eq!(bus.add_device(Arc::new(Mutex::new(Dummy::new(0)))), Ok(s));
        }
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(Dummy::new(0)))),
            Err(PciError::BusFull)
        );
        assert!(bus.device(31).is_some() && bus.device(0).is_some());
    }
}
