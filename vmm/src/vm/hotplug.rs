//! PCI hot-plug in the VM's control loop: adding disks and NICs while the
//! guest runs, asking the guest to eject one and finishing the removal when
//! it has (`_EJ0` writes the hot-plug registers), growing a disk, and the
//! device list `GET /vm` shows. The ACPI side is in `crate::acpi`, the
//! registers in `devices::pci_hotplug`.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::mpsc::SyncSender;

use images::BlockBackend;
use vmm_api::config::{check_device_id, DeviceInfo, DeviceKind};

use super::VmHandle;
use crate::config::{DiskConfig, NetConfig};
use crate::control::{open_tap, Attached, AttachedDisk, AttachedNet, ControlError};
use crate::device_manager::DeviceManager;
use crate::disk::SharedDisk;

impl VmHandle {
    /// Hot-adds a disk: opens its image (over the given files, or its
    /// path), puts it on the PCI bus and tells the guest.
    pub(super) fn add_disk(
        &mut self,
        disk: DiskConfig,
        files: Option<Vec<File>>,
    ) -> Result<DeviceInfo, ControlError> {
        let name = disk
            .id
            .clone()
            .ok_or_else(|| ControlError::Invalid("a hot-added disk needs an id".into()))?;
        self.check_new_name(&name)?;
        let image = match files {
            Some(files) => SharedDisk::from_files(files, &disk),
            None => SharedDisk::open(&disk),
        }
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let id = self
            .devices
            .add_block(&disk, &image, name.clone())
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        let slot = self.devices.slot(id).unwrap_or(0);
        self.control.attached().disks.push(AttachedDisk {
            name: name.clone(),
            config: disk,
            image,
        });
        self.plugged(slot);
        tracing::info!(disk = %name, slot, "disk hot-added");
        Ok(DeviceInfo {
            id: name,
            kind: DeviceKind::Disk,
            slot,
            bdf: DeviceInfo::bdf_of(slot),
            path: None,
            tap: None,
        })
    }

    /// Hot-adds a NIC on `tap` (or the TAP `net.tap` names) and tells the guest.
    pub(super) fn add_net(
        &mut self,
        mut net: NetConfig,
        id: Option<String>,
        tap: Option<OwnedFd>,
    ) -> Result<DeviceInfo, ControlError> {
        let name = match id {
            Some(name) => {
                self.check_new_name(&name)?;
                name
            }
            None => {
                let attached = self.control.attached();
                (0..)
                    .map(|n| format!("net{n}"))
                    .find(|name| !attached.has(name))
                    .unwrap_or_default()
            }
        };
        net.fd = None;
        let tap = match tap {
            Some(fd) => {
                let tap = netstack::Tap::from_fd(fd)
                    .map_err(|e| ControlError::Invalid(format!("not a TAP: {e}")))?;
                if let Err(e) = tap.set_up(true) {
                    tracing::debug!(error = %e, "cannot bring the handed-over TAP up");
                }
                tap
            }
            None if net.tap.is_some() => {
                open_tap(&net).map_err(|e| ControlError::Invalid(e.to_string()))?
            }
            None => {
                return Err(ControlError::Invalid(
                    "pass the TAP's descriptor with the request, or name it with tap".into(),
                ))
            }
        };
        net.tap = Some(tap.name().to_string());
        let id = self
            .devices
            .add_net(&net, &tap, name.clone())
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        let slot = self.devices.slot(id).unwrap_or(0);
        let tap_name = tap.name().to_string();
        self.control.attached().nets.push(AttachedNet {
            name: name.clone(),
            config: net,
            tap,
        });
        self.plugged(slot);
        tracing::info!(nic = %name, tap = %tap_name, slot, "NIC hot-added");
        Ok(DeviceInfo {
            id: name,
            kind: DeviceKind::Net,
            slot,
            bdf: DeviceInfo::bdf_of(slot),
            path: None,
            tap: None,
        })
    }

    /// Refuses a bad or taken device id.
    fn check_new_name(&self, name: &str) -> Result<(), ControlError> {
        check_device_id(name).map_err(|e| ControlError::Invalid(e.to_string()))?;
        if self.control.attached().has(name) {
            return Err(ControlError::Invalid(format!(
                "a device with id '{name}' exists already"
            )));
        }
        Ok(())
    }

    /// Tells the guest that `slot` has a new device, and records the change.
    fn plugged(&mut self, slot: u8) {
        self.hotplug.slot_up(slot);
        self.raise_hotplug();
        self.publish_devices();
    }

    /// Raises the GED's hot-plug interrupt: the guest reads the registers.
    fn raise_hotplug(&self) {
        if let Err(e) = self.hotplug_irq.write(1) {
            tracing::error!(error = %e, "cannot raise the hot-plug interrupt");
        }
    }

    /// Records the current devices for `GET /vm` and metrics.
    fn publish_devices(&self) {
        self.control
            .set_devices(device_list(&self.devices, &self.control.attached()));
        self.control.set_disks(&self.devices.disk_stats());
        self.control.set_nets(self.devices.net_stats());
    }

    /// Asks the guest to release device `name`; `waiter` hears when it did.
    pub(super) fn remove_device(
        &mut self,
        name: String,
        waiter: SyncSender<Result<(), ControlError>>,
    ) -> Result<(), ControlError> {
        let id = self
            .devices
            .find(&name)
            .ok_or_else(|| ControlError::NoDevice(name.clone()))?;
        let slot = self.devices.slot(id).unwrap_or(0);
        self.removals.entry(slot).or_default().push(waiter);
        self.hotplug.slot_down(slot);
        self.raise_hotplug();
        tracing::info!(device = %name, slot, "asked the guest to eject a device");
        Ok(())
    }

    /// Takes the devices the guest ejected off the bus.
    pub(super) fn serve_ejects(&mut self) {
        let _ = self.hotplug.eject_event().read();
        let ejected = self.hotplug.take_ejected();
        for slot in 1..32u8 {
            if ejected & (1 << slot) != 0 {
                self.finish_removal(slot);
            }
        }
    }

    /// Takes the device in `slot` off the bus, flushes and closes its files,
    /// forgets it for later boots, and answers whoever waits for that.
    pub(super) fn finish_removal(&mut self, slot: u8) {
        let result = self.unplug(slot);
        for waiter in self.removals.remove(&slot).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }

    fn unplug(&mut self, slot: u8) -> Result<(), ControlError> {
        let Some(id) = self.devices.at_slot(slot) else {
            return Ok(());
        };
        let name = self.devices.name(id).unwrap_or_default().to_string();
        self.devices
            .remove_device(id)
            .map_err(|e| ControlError::Failed(e.to_string()))?;
        let removed = {
            let mut attached = self.control.attached();
            let disk = attached
                .disks
                .iter()
                .position(|d| d.name == name)
                .map(|i| attached.disks.remove(i));
            let net = attached
                .nets
                .iter()
                .position(|n| n.name == name)
                .map(|i| attached.nets.remove(i));
            (disk, net)
        };
        let mut result = Ok(());
        if let (Some(disk), _) = &removed {
            if let Err(e) = disk.image.clone().flush() {
                tracing::error!(disk = %name, error = %e, "cannot flush a removed disk");
                result = Err(ControlError::Failed(format!(
                    "device {name} was removed but flushing its image failed: {e}"
                )));
            }
        }
        // The image (or TAP) is closed here, when the last reference goes.
        drop(removed);
        self.publish_devices();
        tracing::info!(device = %name, slot, "device removed");
        result
    }

    /// Grows disk `name` to `size` bytes and tells the guest.
    pub(super) fn resize_disk(&mut self, name: &str, size: u64) -> Result<(), ControlError> {
        let id = self
            .devices
            .find(name)
            .filter(|id| self.devices.is_disk(*id))
            .ok_or_else(|| ControlError::NoDevice(name.to_string()))?;
        let image = self
            .control
            .attached()
            .disks
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.image.clone())
            .ok_or_else(|| ControlError::NoDevice(name.to_string()))?;
        let mut image = image;
        let current = image.size();
        if size < current {
            return Err(ControlError::Invalid(format!(
                "disks only grow: {name} has {current} bytes, asked for {size}"
            )));
        }
        if size > current {
            image
                .resize(size)
                .map_err(|e| ControlError::Invalid(format!("cannot resize {name}: {e}")))?;
        }
        if self.devices.config_changed(id) {
            tracing::info!(disk = %name, size, "disk resized; the guest was told");
        }
        Ok(())
    }
}

/// The devices of `attached` as `GET /vm` lists them, by slot.
pub(super) fn device_list(devices: &DeviceManager, attached: &Attached) -> Vec<DeviceInfo> {
    let slot_of = |name: &str| devices.find(name).and_then(|id| devices.slot(id));
    let mut list: Vec<DeviceInfo> = attached
        .disks
        .iter()
        .filter_map(|d| {
            let slot = slot_of(&d.name)?;
            Some(DeviceInfo {
                id: d.name.clone(),
                kind: DeviceKind::Disk,
                slot,
                bdf: DeviceInfo::bdf_of(slot),
                path: Some(d.config.path.clone()).filter(|p| !p.as_os_str().is_empty()),
                tap: None,
            })
        })
        .chain(attached.nets.iter().filter_map(|n| {
            let slot = slot_of(&n.name)?;
            Some(DeviceInfo {
                id: n.name.clone(),
                kind: DeviceKind::Net,
                slot,
                bdf: DeviceInfo::bdf_of(slot),
                path: None,
                tap: Some(n.tap.name().to_string()),
            })
        }))
        .collect();
    list.sort_by_key(|d| d.slot);
    list
}
