//! Interrupt routing for PCI devices: each MSI-X vector gets its own GSI,
//! an irqfd on it, and a KVM routing entry that KVM_SET_GSI_ROUTING installs
//! whenever the guest programs or masks the vector. Legacy lines (GSIs
//! 0-23) go to the IOAPIC only, never to the in-kernel 8259 PIC: Linux on
//! hardware-reduced ACPI never programs the PIC, whose reset vector base is
//! 0, so an edge on its line N reached the guest through LINT0 (ExtINT) as
//! exception vector N (seen: the serial or GED line arriving as #BR,
//! "bounds", during early boot).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::pci::{MsiInterrupts, MsiMessage};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::layout::IOAPIC_NUM_PINS;

/// Errors of setting up interrupt routes.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// No GSIs left.
    #[error("out of interrupt lines (GSIs)")]
    OutOfGsis,
    /// KVM refused an irqfd or the routing table.
    #[error("KVM failed to {0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// An eventfd could not be made.
    #[error("cannot create an eventfd: {0}")]
    Event(#[source] std::io::Error),
}

/// Highest GSI we hand out (KVM's default routing table holds 1024).
const MAX_GSI: u32 = 1023;

/// The VM's GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

struct RouterState {
    next_gsi: u32,
    // GSIs given back by removed devices, handed out again first.
    free: Vec<u32>,
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouter {
    /// A router for `vm`; MSI GSIs start after the IOAPIC's pins.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: IOAPIC_NUM_PINS,
                free: Vec::new(),
                msi: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a GSI for one MSI vector.
    fn allocate(&self) -> Result<u32, InterruptError> {
        let mut state = self.lock();
        if let Some(gsi) = state.free.pop() {
            return Ok(gsi);
        }
        if state.next_gsi > MAX_GSI {
            return Err(InterruptError::OutOfGsis);
        }
        let gsi = state.next_gsi;
        state.next_gsi += 1;
        Ok(gsi)
    }

    /// Gives `gsi` back (its device is gone): its route goes, and the next
    /// [`GsiRouter::allocate`] may hand it out again.
    fn release(&self, gsi: u32) {
        let mut state = self.lock();
        let routed = state.msi.remove(&gsi).is_some();
        state.free.push(gsi);
        if routed {
            if let Err(e) = self.apply(&state.msi) {
                tracing::warn!(gsi, error = %e, "cannot remove an MSI route");
            }
        }
    }

    /// Installs the table with no MSI routes yet, replacing KVM's default
    /// (which also routes the legacy lines to the PIC). Called once when the
    /// VM is built, before any device can raise a line.
    pub fn install(&self) -> Result<(), InterruptError> {
        let state = self.lock();
        self.apply(&state.msi)
    }

    /// Points `gsi` at `msg`, or removes its route.
    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        let mut state = self.lock();
        match msg {
            Some(m) => state.msi.insert(gsi, m),
            None => state.msi.remove(&gsi),
        };
        self.apply(&state.msi)
    }

    /// Hands KVM the whole table: the IOAPIC pins plus `msi`. The caller
    /// holds the state lock, so tables reach KVM in the order they changed.
    fn apply(&self, msi: &BTreeMap<u32, MsiMessage>) -> Result<(), InterruptError> {
        let entries = routing_entries(msi);
        let routing =
            KvmIrqRouting::from_entries(&entries).map_err(|_| InterruptError::OutOfGsis)?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| InterruptError::Kvm("set the GSI routing", e))
    }
}

/// The IOAPIC's pins plus one MSI route per programmed vector.
fn routing_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::with_capacity(40 + msi.len());
    let chip = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    for gsi in 0..IOAPIC_NUM_PINS {
        entries.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    entries
}

/// The MSI-X vectors of one PCI device: vector `i` raises its own GSI
/// through an irqfd.
pub struct DeviceMsi {
    router: Arc<GsiRouter>,
    vectors: Vec<(u32, EventFd)>,
}

impl DeviceMsi {
    /// Allocates `count` vectors on `router`, each with a GSI and an irqfd.
    pub fn new(router: Arc<GsiRouter>, count: u16) -> Result<Self, InterruptError> {
        let mut vectors = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let gsi = router.allocate()?;
            let evt = EventFd::new(EFD_NONBLOCK).map_err(InterruptError::Event)?;
            router
                .vm
                .register_irqfd(&evt, gsi)
                .map_err(|e| InterruptError::Kvm("register an MSI irqfd", e))?;
            vectors.push((gsi, evt));
        }
        Ok(Self { router, vectors })
    }
}

impl Drop for DeviceMsi {
    /// A removed device's vectors: irqfds unregistered, GSIs given back.
    fn drop(&mut self) {
        for (gsi, evt) in &self.vectors {
            if let Err(e) = self.router.vm.unregister_irqfd(evt, *gsi) {
                tracing::debug!(gsi, error = %e, "cannot unregister an MSI irqfd");
            }
            self.router.release(*gsi);
        }
    }
}

impl MsiInterrupts for DeviceMsi {
    fn update_route(&self, vector: u16, msg: Option<MsiMessage>) {
        let Some((gsi, _)) = self.vectors.get(usize::from(vector)) else {
            return;
        };
        if let Err(e) = self.router.set_route(*gsi, msg) {
            tracing::warn!(vector, gsi, error = %e, "cannot route an MSI-X vector");
        }
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        match self.vectors.get(usize::from(vector)) {
            Some((_, evt)) => evt.write(1),
            None => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A removed device's GSIs are handed out again (hot-plug cycles do not
    /// use the table up); needs /dev/kvm.
    #[test]
    fn gsis_of_a_dropped_device_are_reused() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: /dev/kvm is not usable here");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(vm));
        router.install().unwrap();
        let gsis = |msi: &DeviceMsi| {
            let mut v: Vec<u32> = msi.vectors.iter().map(|(g, _)| *g).collect();
            v.sort_unstable();
            v
        };
        let first = DeviceMsi::new(router.clone(), 3).unwrap();
        first.update_route(
            0,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41,
            }),
        );
        let used = gsis(&first);
        drop(first);
        assert!(router.lock().msi.is_empty(), "its route went with it");
        let second = DeviceMsi::new(router.clone(), 3).unwrap();
        assert_eq!(gsis(&second), used);
        let third = DeviceMsi::new(router, 1).unwrap();
        assert_eq!(gsis(&third), vec![used[2] + 1], "new ones after the reused");
    }

    #[test]
    fn ioapic_routes_and_msi_entries_no_pic() {
        let mut msi = BTreeMap::new();
        msi.insert(
            30,
            MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x4041,
            },
        );
        let entries = routing_entries(&msi);
        // 24 IOAPIC routes + 1 MSI; nothing reaches the 8259.
        assert_eq!(entries.len(), 24 + 1);
        let last = entries.last().unwrap();
        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: reading the union member this entry was written with.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_0000, 1, 0x4041)
        );
        let ioapic_pins = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip entries were written with the irqchip member.
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .count();
        assert_eq!(ioapic_pins, 24);
    }
}
