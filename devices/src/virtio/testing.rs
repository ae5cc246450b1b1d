//! Test doubles for the virtio devices: an in-memory disk, an in-memory
//! network backend and an interrupt that goes nowhere. Built for tests and
//! for the `fuzzing` feature only, never into the VMM.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use images::{BlockBackend, ImageError};
use netstack::NetBackend;

use super::{VirtioInterrupt, VirtioInterruptType};

/// An in-memory disk for tests and the fuzzing harness.
pub struct MemDisk(pub Vec<u8>);

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or(ImageError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.0.len() as u64,
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        let size = self.0.len() as u64;
        let dst = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get_mut(o..o.checked_add(buf.len())?))
            .ok_or(ImageError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size,
            })?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let size = self.0.len() as u64;
        let dst = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| self.0.get_mut(o..o.checked_add(l)?))
            .ok_or(ImageError::OutOfRange { offset, len, size })?;
        dst.fill(0);
        Ok(())
    }
}

/// An in-memory backend for the fuzzing harness: frames to receive come
/// from a list, sent frames are only counted.
pub struct MemBackend {
    /// Frames the device will read, in order.
    pub rx: VecDeque<Vec<u8>>,
    /// How many frames the device wrote.
    pub sent: usize,
}

impl std::os::fd::AsRawFd for MemBackend {
    fn as_raw_fd(&self) -> RawFd {
        // Not a real descriptor; the device never uses it for I/O.
        -1
    }
}

impl NetBackend for MemBackend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self
            .rx
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sent += 1;
        Ok(buf.len())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// An interrupt that is never delivered.
pub struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _kind: VirtioInterruptType) -> io::Result<()> {
        Ok(())
    }
}
