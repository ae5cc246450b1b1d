//! The byte store underneath a qcow2 image: a host file, or memory (fuzzing, tests).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Positional I/O on the container of an image.
pub(crate) trait Storage: Send {
    /// Reads into `buf` at `offset` until `buf` is full or end of file; returns the bytes read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the store if needed.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Makes written data durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// The host file underneath, if there is one (for I/O that bypasses the image layer).
    fn file(&self) -> Option<&File> {
        None
    }
}

fn overflow() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "offset overflow")
}

impl Storage for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.checked_add(done as u64).ok_or_else(overflow)?;
            match FileExt::read_at(self, &mut buf[done..], pos) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        offset.checked_add(buf.len() as u64).ok_or_else(overflow)?;
        self.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn file(&self) -> Option<&File> {
        Some(self)
    }
}

/// An in-memory store, bounded so a hostile image cannot make us allocate without limit.
pub(crate) struct MemStorage {
    pub(crate) data: Vec<u8>,
}

/// Largest in-memory store (fuzzing only).
const MEM_LIMIT: u64 = 256 << 20;

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = self.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(overflow)?;
        if end > MEM_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "in-memory image too large",
            ));
        }
        let end = end as usize;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}
