//! `O_DIRECT` helpers for `cache=none`: switching a descriptor's mode, a
//! 4096-aligned bounce buffer, and aligned positional I/O through it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use crate::ImageError;

/// Alignment of offsets, lengths and buffers of `O_DIRECT` I/O done here
/// (the largest logical block size in common use).
pub(crate) const ALIGN: u64 = 4096;

/// Largest bounce buffer used by one step of a direct read or write.
const CHUNK: u64 = 1 << 20;

/// The error for a filesystem that refuses `O_DIRECT`.
pub(crate) fn refused(e: &io::Error) -> ImageError {
    ImageError::Unsupported(format!(
        "cache=none: the filesystem refuses O_DIRECT ({e}); use cache=writeback or put \
         the image on a filesystem that supports direct I/O (ext4, xfs, a block device)"
    ))
}

/// Sets or clears `O_DIRECT` on `file`'s open file description.
pub(crate) fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL only reads the flags of a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    if new == flags {
        return Ok(());
    }
    // SAFETY: F_SETFL only changes the status flags of a descriptor `file` owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that direct I/O really works on `file` (some filesystems accept
/// the flag and fail every read): one aligned read at offset 0.
pub(crate) fn probe(file: &File) -> io::Result<()> {
    let mut buf = AlignedBuf::new(ALIGN as usize);
    loop {
        match file.read_at(buf.as_mut_slice(), 0) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A zeroed byte buffer whose start is [`ALIGN`]-aligned (over-allocated
/// `Vec`, no `unsafe`).
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` zero bytes.
    pub(crate) fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN as usize];
        let start = raw.as_ptr().align_offset(ALIGN as usize);
        AlignedBuf { raw, start, len }
    }

    /// The aligned bytes.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

fn align_down(x: u64) -> u64 {
    x - x % ALIGN
}

/// Reads from an `O_DIRECT` file at `offset` until `buf` is full or the end
/// of file (the rest reads as zeros).
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // A short direct read ends at end of file or leaves the rest
        // unaligned: stop and zero-fill.
        if done as u64 % ALIGN != 0 {
            break;
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Reads `buf.len()` bytes at any `offset` from an `O_DIRECT` file through
/// an aligned bounce buffer.
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0u64;
    let total = buf.len() as u64;
    let mut bounce = AlignedBuf::new((CHUNK + 2 * ALIGN) as usize);
    while done < total {
        let pos = offset + done;
        let start = align_down(pos);
        let n = (total - done).min(CHUNK);
        let end = (pos + n).div_ceil(ALIGN) * ALIGN;
        let b = &mut bounce.as_mut_slice()[..(end - start) as usize];
        read_full(file, b, start)?;
        let skip = (pos - start) as usize;
        buf[done as usize..(done + n) as usize].copy_from_slice(&b[skip..skip + n as usize]);
        done += n;
    }
    Ok(())
}

/// Writes `buf` at any `offset` into an `O_DIRECT` file of `size` bytes
/// through an aligned bounce buffer, reading the partial blocks at either
/// end first. A block that reaches past `size` (a file whose size is not a
/// multiple of [`ALIGN`]) is written whole and the file cut back to `size`.
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64, size: u64) -> io::Result<()> {
    let mut done = 0u64;
    let total = buf.len() as u64;
    let mut bounce = AlignedBuf::new((CHUNK + 2 * ALIGN) as usize);
    let mut grew = false;
    while done < total {
        let pos = offset + done;
        let start = align_down(pos);
        let n = (total - done).min(CHUNK);
        let end = (pos + n).div_ceil(ALIGN) * ALIGN;
        let b = &mut bounce.as_mut_slice()[..(end - start) as usize];
        if pos != start || (pos + n) % ALIGN != 0 {
            // Read-modify-write of the partial blocks (simplest: the whole span).
            if pos != start {
                read_full(file, &mut b[..ALIGN as usize], start)?;
            }
            let last = b.len() - ALIGN as usize;
            if (pos + n) % ALIGN != 0 && (last != 0 || pos == start) {
                read_full(file, &mut b[last..], end - ALIGN)?;
            }
        }
        let skip = (pos - start) as usize;
        b[skip..skip + n as usize].copy_from_slice(&buf[done as usize..(done + n) as usize]);
        file.write_all_at(b, start)?;
        grew |= end > size;
        done += n;
    }
    if grew && file.metadata()?.is_file() {
        file.set_len(size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::io::AsRawFd;
    use std::path::{Path, PathBuf};

    use crate::{BlockBackend, CacheMode, HostExtent, RawImage};

    struct Dir(PathBuf);

    impl Dir {
        fn new(base: &Path, tag: &str) -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let p = base.join(format!("nubo-direct-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn flags(fd: i32) -> i32 {
        // SAFETY: F_GETFL only reads the flags of an open descriptor.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    #[test]
    fn raw_host_extents_are_the_file_itself() {
        let dir = Dir::new(&std::env::temp_dir(), "ext");
        let p = dir.0.join("d.raw");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let mut img = RawImage::open(&p, false).unwrap();
        let e = img.host_extents(100, 5000, true).unwrap().unwrap();
        assert_eq!(
            e,
            vec![HostExtent {
                fd: e[0].fd,
                offset: 100,
                len: 5000
            }]
        );
        assert!(img.host_extents(4096, 4097, false).is_err());
        let mut ro = RawImage::open(&p, true).unwrap();
        assert!(ro.host_extents(0, 1, true).is_err());
        assert!(ro.host_extents(0, 1, false).unwrap().is_some());
    }

    #[test]
    fn raw_cache_none_bounces_unaligned_io() {
        let dir = Dir::new(&std::env::temp_dir(), "none");
        let p = dir.0.join("d.raw");
        // Not a multiple of 4096: the tail block must not grow the file.
        let size = 3 * 4096 + 512;
        let mut model: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &model).unwrap();
        // Over a descriptor opened elsewhere, as a jailed VMM gets it.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut img = RawImage::from_file(f, false).unwrap();
        img.set_cache_mode(CacheMode::None).unwrap();
        let e = img.host_extents(0, 4096, false).unwrap().unwrap();
        assert_ne!(flags(e[0].fd) & libc::O_DIRECT, 0);
        for (off, len) in [
            (0usize, 4096usize),
            (1, 3),
            (4000, 200),
            (4095, 8194),
            (size - 5, 5),
            (3 * 4096, 512),
            (7, size - 7),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + off) as u8).collect();
            img.write_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
            let mut back = vec![0u8; len];
            img.read_at(&mut back, off as u64).unwrap();
            assert_eq!(back, data, "at {off}+{len}");
        }
        img.write_zeroes(10, 20).unwrap();
        model[10..30].fill(0);
        let mut all = vec![0u8; size];
        img.read_at(&mut all, 0).unwrap();
        assert_eq!(all, model);
        img.flush().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), size as u64);
        assert_eq!(std::fs::read(&p).unwrap(), model);
        img.set_cache_mode(CacheMode::Writeback).unwrap();
        assert_eq!(flags(img.file.as_raw_fd()) & libc::O_DIRECT, 0);
        img.read_at(&mut all[..3], 1).unwrap();
        assert_eq!(all[..3], model[1..4]);
    }

    #[test]
    fn raw_cache_none_on_tmpfs_is_a_clear_error() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let dir = Dir::new(shm, "tmpfs");
        let p = dir.0.join("d.raw");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let mut img = RawImage::open(&p, false).unwrap();
        match img.set_cache_mode(CacheMode::None) {
            // tmpfs accepts O_DIRECT since Linux 6.6.
            Ok(()) => {}
            Err(e) => {
                assert!(e.to_string().contains("refuses O_DIRECT"), "{e}");
                // Still usable, buffered.
                img.write_at(&[1], 3).unwrap();
            }
        }
    }
}
