//! The hardware-reduced ACPI power management registers: the sleep control
//! and status registers (soft-off) and the reset register, in I/O space.

use vm_superio::Trigger;

use crate::trigger::EventFdTrigger;
use crate::PioDevice;

/// Offset of the sleep control register from the device's base.
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// Offset of the sleep status register from the device's base.
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// Offset of the reset register from the device's base.
pub const RESET_OFFSET: u16 = 2;
/// Number of ports the device occupies.
pub const PORT_COUNT: u16 = 3;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// Wake status bit of the sleep status register.
const WAK_STS: u8 = 1 << 7;

/// The power management device: raises `power_off` when the guest enters S5
/// and `reset` when it writes the reset value.
pub struct AcpiPmDevice {
    power_off: EventFdTrigger,
    reset: EventFdTrigger,
    s5_slp_typ: u8,
    reset_value: u8,
}

impl AcpiPmDevice {
    /// Creates the device; `s5_slp_typ` is the value of the DSDT's `\_S5`
    /// package and `reset_value` the FADT's `RESET_VALUE`.
    pub fn new(
        power_off: EventFdTrigger,
        reset: EventFdTrigger,
        s5_slp_typ: u8,
        reset_value: u8,
    ) -> Self {
        Self {
            power_off,
            reset,
            s5_slp_typ,
            reset_value,
        }
    }
}

impl PioDevice for AcpiPmDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS_OFFSET {
            if let Some(b) = data.first_mut() {
                // Never asleep, so always "awake".
                *b = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        let event = match offset {
            SLEEP_CONTROL_OFFSET
                if value & SLP_EN != 0
                    && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == self.s5_slp_typ =>
            {
                tracing::info!("guest entered ACPI S5 (power off)");
                &self.power_off
            }
            RESET_OFFSET if value == self.reset_value => {
                tracing::info!("guest wrote the ACPI reset register");
                &self.reset
            }
            _ => return,
        };
        if let Err(e) = event.trigger() {
            tracing::warn!(error = %e, "ACPI power event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn s5_and_reset() {
        let off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let rst = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = AcpiPmDevice::new(
            EventFdTrigger::new(off.try_clone().unwrap()),
            EventFdTrigger::new(rst.try_clone().unwrap()),
            5,
            1,
        );
        // S3 (SLP_TYP 3) is not soft-off; SLP_TYP 5 without SLP_EN does nothing.
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]);
        dev.write(SLEEP_CONTROL_OFFSET, &[5 << 2]);
        assert!(off.read().is_err());
        dev.write(SLEEP_CONTROL_OFFSET, &[(5 << 2) | SLP_EN]);
        assert_eq!(off.read().unwrap(), 1);
        dev.write(RESET_OFFSET, &[2]);
        assert!(rst.read().is_err());
        dev.write(RESET_OFFSET, &[1]);
        assert_eq!(rst.read().unwrap(), 1);
        let mut b = [0u8; 2];
        dev.read(SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b, [WAK_STS, 0]);
    }
}
