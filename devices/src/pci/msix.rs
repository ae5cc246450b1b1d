//! MSI-X: the vector table and pending-bit array (PBA) a device exposes in a
//! BAR, and the capability that enables and masks them.
//!
//! Delivery goes through [`MsiInterrupts`], which the VMM implements (one
//! GSI and irqfd per vector, routes set with `KVM_SET_GSI_ROUTING`). A vector
//! is *deliverable* when MSI-X is enabled, the function is not masked and the
//! entry's mask bit is clear; the VMM is told the route of every vector
//! whenever its deliverability or message changes (`Some(message)` when it
//! becomes or stays deliverable with a new message, `None` when it stops
//! being deliverable). Triggering a vector that is masked sets its pending bit
//! instead; the interrupt is sent when the vector is unmasked.

use std::io;
use std::sync::Arc;

/// PCI capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Size of one MSI-X table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Largest number of vectors a function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message control bit: MSI-X enabled.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control bit: all vectors of the function masked.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_VECTOR_CONTROL_MASKED: u32 = 1;

/// An MSI message: the guest writes `data` to `address` to raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (bits 63:0).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// How a device raises its MSI-X vectors; implemented by the VMM.
///
/// Vectors are the device's own (0..table size). Both methods are called from
/// whichever thread touches the device (vCPU threads for table and
/// capability writes, the VMM's event loop for queue completions).
pub trait MsiInterrupts: Send + Sync {
    /// The guest changed what `vector` delivers: `Some(message)` to route it,
    /// `None` when it is no longer deliverable (masked or MSI-X disabled).
    fn update_route(&self, vector: u16, msg: Option<MsiMessage>);
    /// Sends `vector` (only called while it is routed).
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & ENTRY_VECTOR_CONTROL_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn dword(&self, i: u64) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.control,
        }
    }

    fn dword_mut(&mut self, i: u64) -> &mut u32 {
        match i {
            0 => &mut self.addr_lo,
            1 => &mut self.addr_hi,
            2 => &mut self.data,
            _ => &mut self.control,
        }
    }
}

/// Body of an MSI-X capability (the bytes after id and next pointer), for
/// [`super::PciConfiguration::add_capability`]: `vectors` entries, table at
/// `table_offset` of BAR `table_bar`, PBA at `pba_offset` of BAR `pba_bar`.
/// Offsets must be 8-byte aligned. Message control (byte 0-1 of the body)
/// has guest-writable bits [`MSIX_CONTROL_ENABLE`] and
/// [`MSIX_CONTROL_FUNCTION_MASK`].
pub fn msix_capability_body(
    vectors: u16,
    table_bar: u8,
    table_offset: u32,
    pba_bar: u8,
    pba_offset: u32,
) -> [u8; 10] {
    let mut b = [0u8; 10];
    let control = vectors.clamp(1, MSIX_MAX_VECTORS) - 1;
    b[0..2].copy_from_slice(&control.to_le_bytes());
    b[2..6].copy_from_slice(&((table_offset & !7) | u32::from(table_bar & 7)).to_le_bytes());
    b[6..10].copy_from_slice(&((pba_offset & !7) | u32::from(pba_bar & 7)).to_le_bytes());
    b
}

/// The MSI-X state of one function.
pub struct MsixConfig {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// What the VMM was last told about each vector.
    routed: Vec<Option<MsiMessage>>,
    interrupts: Arc<dyn MsiInterrupts>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl MsixConfig {
    /// Creates the state for `vectors` vectors (clamped to 1..=2048), all
    /// masked, MSI-X disabled (as after reset).
    pub fn new(vectors: u16, interrupts: Arc<dyn MsiInterrupts>) -> Self {
        let n = usize::from(vectors.clamp(1, MSIX_MAX_VECTORS));
        Self {
            entries: vec![
                Entry {
                    control: ENTRY_VECTOR_CONTROL_MASKED,
                    ..Entry::default()
                };
                n
            ],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            routed: vec![None; n],
            interrupts,
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16 // <= 2048
    }

    /// Size in bytes of the table in its BAR.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Size in bytes of the PBA in its BAR.
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Whether MSI-X is enabled in the capability.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `vector` is pending (masked when it was triggered).
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: usize, on: bool) {
        if let Some(w) = self.pending.get_mut(vector / 64) {
            if on {
                *w |= 1 << (vector % 64);
            } else {
                *w &= !(1 << (vector % 64));
            }
        }
    }

    fn deliverable(&self, vector: usize) -> bool {
        self.enabled
            && !self.function_masked
            && self.entries.get(vector).is_some_and(|e| !e.masked())
    }

    /// Tells the VMM about route changes of `vector` and sends it if it was
    /// pending and is now deliverable.
    fn refresh(&mut self, vector: usize) {
        let Some(entry) = self.entries.get(vector).copied() else {
            return;
        };
        let want = self.deliverable(vector).then(|| entry.message());
        let Some(routed) = self.routed.get_mut(vector) else {
            return;
        };
        if *routed != want {
            *routed = want;
            self.interrupts.update_route(vector as u16, want);
        }
        if want.is_some() && self.is_pending(vector as u16) {
            self.set_pending(vector, false);
            self.send(vector as u16);
        }
    }

    fn refresh_all(&mut self) {
        for v in 0..self.entries.len() {
            self.refresh(v);
        }
    }

    fn send(&self, vector: u16) {
        if let Err(e) = self.interrupts.trigger(vector) {
            tracing::warn!(vector, error = %e, "MSI-X delivery failed");
        }
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & MSIX_CONTROL_ENABLE != 0;
        let masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        if (enabled, masked) != (self.enabled, self.function_masked) {
            tracing::debug!(enabled, masked, "MSI-X control");
            self.enabled = enabled;
            self.function_masked = masked;
            self.refresh_all();
        }
    }

    /// Raises `vector`: sends it if deliverable, marks it pending if masked,
    /// drops it (with a debug log) if MSI-X is disabled or out of range.
    pub fn trigger(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() || !self.enabled {
            tracing::debug!(vector, enabled = self.enabled, "MSI-X vector dropped");
            return;
        }
        if self.deliverable(v) {
            self.send(vector);
        } else {
            self.set_pending(v, true);
        }
    }

    /// Guest read of the table at `offset` (any size; bytes outside the
    /// table read as zero).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let e = self
                        .entries
                        .get(usize::try_from(o / MSIX_TABLE_ENTRY_SIZE).ok()?)?;
                    let dw = e.dword((o % MSIX_TABLE_ENTRY_SIZE) / 4);
                    dw.to_le_bytes().get((o % 4) as usize).copied()
                })
                .unwrap_or(0);
        }
    }

    /// Guest write to the table at `offset` (any size; 4- and 8-byte writes
    /// are what drivers use).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched: Option<(usize, usize)> = None;
        for (i, b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            let Ok(idx) = usize::try_from(o / MSIX_TABLE_ENTRY_SIZE) else {
                break;
            };
            let Some(e) = self.entries.get_mut(idx) else {
                break;
            };
            let dw = e.dword_mut((o % MSIX_TABLE_ENTRY_SIZE) / 4);
            let mut bytes = dw.to_le_bytes();
            if let Some(slot) = bytes.get_mut((o % 4) as usize) {
                *slot = *b;
            }
            *dw = u32::from_le_bytes(bytes);
            touched = Some(touched.map_or((idx, idx), |(lo, _)| (lo, idx)));
        }
        if let Some((lo, hi)) = touched {
            for v in lo..=hi {
                self.refresh(v);
            }
        }
    }

    /// Guest read of the PBA at `offset` (bytes outside it read as zero).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let w = self.pending.get(usize::try_from(o / 8).ok()?)?;
                    w.to_le_bytes().get((o % 8) as usize).copied()
                })
                .unwrap_or(0);
        }
    }

    /// Back to the reset state: disabled, entries masked, nothing pending.
    /// Routes the VMM had are withdrawn.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        for e in &mut self.entries {
            *e = Entry {
                control: ENTRY_VECTOR_CONTROL_MASKED,
                ..Entry::default()
            };
        }
        self.pending.fill(0);
        self.refresh_all();
    }
}

/// Test helpers shared with the virtio tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::Mutex;

    /// What a [`Recorder`] saw.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Event {
        Route(u16, Option<MsiMessage>),
        Trigger(u16),
    }

    /// An [`MsiInterrupts`] that records every call.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<Event>>);

    impl Recorder {
        pub fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl MsiInterrupts for Recorder {
        fn update_route(&self, vector: u16, msg: Option<MsiMessage>) {
            self.0.lock().unwrap().push(Event::Route(vector, msg));
        }
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.0.lock().unwrap().push(Event::Trigger(vector));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Event, Recorder};
    use super::*;

    fn program(m: &mut MsixConfig, v: u64, addr: u64, data: u32) {
        m.write_table(v * 16, &addr.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
    }

    #[test]
    fn capability_body_layout() {
        let b = msix_capability_body(3, 0, 0x4000, 0, 0x5000);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 2);
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 0x4000);
        assert_eq!(u32::from_le_bytes([b[6], b[7], b[8], b[9]]), 0x5000);
    }

    #[test]
    fn routes_masks_and_pending_bits() {
        let rec = Arc::new(Recorder::default());
        let mut m = MsixConfig::new(3, rec.clone());
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
        // Table programming while disabled: no routes yet.
        program(&mut m, 1, 0xfee0_0000, 0x41);
        m.write_table(16 + 12, &0u32.to_le_bytes());
        assert!(rec.take().is_empty());
        // Disabled: triggers are dropped, not pended.
        m.trigger(1);
        assert!(!m.is_pending(1));
        // Enable with function mask, then clear it: vector 1 gets routed.
        m.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        m.trigger(1);
        assert!(m.is_pending(1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        assert!(rec.take().is_empty());
        m.set_control(MSIX_CONTROL_ENABLE);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(
            rec.take(),
            vec![Event::Route(1, Some(msg)), Event::Trigger(1)]
        );
        assert!(!m.is_pending(1));
        m.trigger(1);
        assert_eq!(rec.take(), vec![Event::Trigger(1)]);
        // Masking the entry withdraws the route; triggers pend; unmask delivers.
        m.write_table(16 + 12, &1u32.to_le_bytes());
        m.trigger(1);
        assert_eq!(rec.take(), vec![Event::Route(1, None)]);
        m.write_table(16 + 12, &0u32.to_le_bytes());
        assert_eq!(
            rec.take(),
            vec![Event::Route(1, Some(msg)), Event::Trigger(1)]
        );
        // Changing the message of a live vector re-routes it.
        m.write_table(16 + 8, &0x42u32.to_le_bytes());
        assert_eq!(
            rec.take(),
            vec![Event::Route(
                1,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x42
                })
            )]
        );
        let mut e = [0u8; 16];
        m.read_table(16, &mut e);
        assert_eq!(&e[8..12], &0x42u32.to_le_bytes());
        // Reset withdraws.
        m.reset();
        assert_eq!(rec.take(), vec![Event::Route(1, None)]);
        assert!(!m.enabled());
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let rec = Arc::new(Recorder::default());
        let mut m = MsixConfig::new(2, rec.clone());
        m.write_table(30, &[0xff; 16]);
        m.write_table(u64::MAX - 2, &[1; 8]);
        let mut b = [0xaau8; 8];
        m.read_table(u64::MAX - 2, &mut b);
        assert_eq!(b, [0; 8]);
        m.read_pba(8, &mut b);
        assert_eq!(b, [0; 8]);
        m.trigger(7);
        m.set_control(MSIX_CONTROL_ENABLE);
        m.trigger(9);
        assert!(rec.take().is_empty());
    }
}
