//! COM1: a 16550 UART (vm-superio) whose interrupt is an `EventFd` and whose
//! output goes to any writer (stdout, a file, nowhere).

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::trigger::EventFdTrigger;
use crate::PioDevice;

/// The 16550 UART device on the port I/O bus.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// Creates a UART that raises `interrupt` and writes the guest's output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Serial::new(interrupt, out),
        }
    }

    /// Feeds bytes typed by the user to the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.inner.fifo_capacity().min(bytes.len());
        match self.inner.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = ?e, "serial input dropped");
                0
            }
        }
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.inner.write(off, value) {
            // The only failures are the output sink or the interrupt: log, keep the guest going.
            tracing::debug!(error = ?e, "serial write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            Box::new(sink.clone()),
        );
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt, then feed input.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(&b, b"x");
        // Odd accesses are ignored, never a panic.
        dev.write(0x100, &[1]);
        dev.write(0, &[]);
        dev.read(0, &mut []);
    }
}
