//! A minimal i8042 keyboard controller: enough for Linux to probe it quickly
//! (self-test, the configuration byte, keyboard ACKs) and for `reboot=k` to
//! reset the machine with command 0xFE. No keys are ever pressed.

use std::collections::VecDeque;

use vm_superio::Trigger;

use crate::trigger::EventFdTrigger;
use crate::PioDevice;

/// Offset of the data register (port 0x60) from the device's base.
pub const DATA_OFFSET: u16 = 0;
/// Offset of the command/status register (port 0x64) from the device's base.
pub const COMMAND_OFFSET: u16 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Set when the keyboard is not inhibited (no key lock).
const STATUS_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_INTERFACE_TEST: u8 = 0xab;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const CTR_KBD_INT: u8 = 0x01;
const KBD_ACK: u8 = 0xfa;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// Largest number of replies kept for the guest; more are dropped.
const OUTPUT_CAPACITY: usize = 16;

/// What the next byte written to the data port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    ControlRegister,
    Aux,
}

/// The i8042 controller on the port I/O bus (ports 0x60-0x64).
pub struct I8042Device {
    reset: EventFdTrigger,
    interrupt: EventFdTrigger,
    control: u8,
    status: u8,
    output: VecDeque<u8>,
    data_target: DataTarget,
}

impl I8042Device {
    /// Creates a controller that raises `reset` when the guest asks for a CPU
    /// reset and `interrupt` (IRQ 1) when it has a byte for the guest.
    pub fn new(reset: EventFdTrigger, interrupt: EventFdTrigger) -> Self {
        Self {
            reset,
            interrupt,
            control: CTR_KBD_INT,
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            output: VecDeque::new(),
            data_target: DataTarget::Keyboard,
        }
    }

    fn push_output(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_CAPACITY {
            self.output.push_back(byte);
        }
        self.status |= STATUS_OUTPUT_FULL;
        if self.control & CTR_KBD_INT != 0 {
            if let Err(e) = self.interrupt.trigger() {
                tracing::debug!(error = %e, "i8042 interrupt failed");
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        tracing::debug!(cmd, "i8042 command");
        self.status |= STATUS_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push_output(self.control),
            CMD_WRITE_CTR => self.data_target = DataTarget::ControlRegister,
            CMD_SELF_TEST => self.push_output(0x55),
            CMD_KBD_INTERFACE_TEST => self.push_output(0x00),
            CMD_WRITE_AUX => self.data_target = DataTarget::Aux,
            CMD_RESET_CPU => {
                tracing::info!("guest sent the i8042 CPU reset command");
                if let Err(e) = self.reset.trigger() {
                    tracing::warn!(error = %e, "i8042 reset event failed");
                }
            }
            // Enable/disable the ports and anything else: accepted, no effect.
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match std::mem::replace(&mut self.data_target, DataTarget::Keyboard) {
            DataTarget::ControlRegister => self.control = byte,
            // No mouse: bytes for it vanish, as with nothing plugged in.
            DataTarget::Aux => {}
            DataTarget::Keyboard => {
                self.push_output(KBD_ACK);
                if byte == KBD_CMD_RESET {
                    self.push_output(KBD_SELF_TEST_OK);
                }
            }
        }
    }
}

impl PioDevice for I8042Device {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => {
                let byte = self.output.pop_front().unwrap_or(0);
                if self.output.is_empty() {
                    self.status &= !STATUS_OUTPUT_FULL;
                }
                byte
            }
            COMMAND_OFFSET => self.status,
            _ => 0,
        };
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        match offset {
            DATA_OFFSET => self.data(byte),
            COMMAND_OFFSET => self.command(byte),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (I8042Device, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042Device::new(
            EventFdTrigger::new(reset.try_clone().unwrap()),
            EventFdTrigger::new(irq),
        );
        (dev, reset)
    }

    fn read(dev: &mut I8042Device, off: u16) -> u8 {
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    #[test]
    fn self_test_and_control_register() {
        let (mut dev, _) = device();
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x55);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x45]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x45);
    }

    #[test]
    fn keyboard_reset_and_cpu_reset() {
        let (mut dev, reset) = device();
        dev.write(DATA_OFFSET, &[KBD_CMD_RESET]);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_SELF_TEST_OK);
        assert!(reset.read().is_err(), "no reset yet");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn output_is_bounded() {
        let (mut dev, _) = device();
        for _ in 0..1000 {
            dev.write(DATA_OFFSET, &[0x01]);
        }
        assert!(dev.output.len() <= OUTPUT_CAPACITY);
        dev.write(7, &[]);
    }
}
