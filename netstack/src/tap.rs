//! TAP devices with a virtio-net header (`IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`), the host end of a guest's virtio-net device.
//!
//! Every frame read from or written to a [`Tap`] starts with a 12-byte
//! `struct virtio_net_hdr_v1` (`TUNSETVNETHDRSZ` = [`VNET_HDR_LEN`]), so the
//! device can pass the guest's header through unchanged and the kernel does
//! the checksum / segmentation offloads. The descriptor is non-blocking.
//!
//! A TAP is created with [`Tap::open`] (needs `CAP_NET_ADMIN` unless the
//! interface already exists and belongs to the caller) or adopted from an
//! orchestrator with [`Tap::from_fd`] (no privileges needed). A TAP that is
//! not persistent disappears when its last descriptor is closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use crate::{NetBackend, VNET_HDR_LEN};

/// Offload flag: the guest accepts frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// Offload flag: the guest accepts TCPv4 segmentation offload (needs CSUM).
pub const TUN_F_TSO4: u32 = 0x02;
/// Offload flag: the guest accepts TCPv6 segmentation offload (needs CSUM).
pub const TUN_F_TSO6: u32 = 0x04;
/// Offload flag: TSO with ECN bits.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// Offload flag: UDP fragmentation offload (ignored by Linux since 4.14).
pub const TUN_F_UFO: u32 = 0x10;

const TUN_PATH: &str = "/dev/net/tun";
const IFNAMSIZ: usize = 16;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TAP_FLAGS: libc::c_short = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

/// Request numbers from `<linux/if_tun.h>` (type 'T').
mod ioctls {
    use std::os::raw::{c_int, c_uint};
    const TUNTAP: c_uint = 0x54;
    vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
    vmm_sys_util::ioctl_iow_nr!(TUNSETPERSIST, TUNTAP, 203, c_int);
    vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
    vmm_sys_util::ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, c_uint);
    vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);
}

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on
/// 64-bit Linux, like the kernel's).
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: &str) -> Result<Self, TapError> {
        let bad = name.is_empty()
            || name.len() >= IFNAMSIZ
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace());
        if bad {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let mut req = Self::zeroed();
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s;
        }
        Ok(req)
    }

    fn zeroed() -> Self {
        Self {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(self.name.get(..end).unwrap_or_default()).into_owned()
    }
}

/// Errors of setting up a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened (missing, or no permission).
    #[error("cannot open {TUN_PATH}: {0}")]
    OpenTun(#[source] io::Error),
    /// The interface name is empty, too long (15 bytes max) or contains
    /// characters Linux rejects.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// `TUNSETIFF` failed (no `CAP_NET_ADMIN`, the interface is busy or of
    /// another kind, ...).
    #[error("cannot attach to TAP {name:?} (TUNSETIFF): {source}")]
    SetIff {
        /// Requested name.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `TUNGETIFF` failed: the descriptor is not an attached TUN/TAP.
    #[error("descriptor is not an attached TUN/TAP device (TUNGETIFF): {0}")]
    GetIff(#[source] io::Error),
    /// The descriptor is a TUN/TAP without the flags Nubo needs.
    #[error("{name:?} has flags {flags:#x}; need IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    WrongFlags {
        /// Interface name.
        name: String,
        /// Its `ifr_flags`.
        flags: i16,
    },
    /// `TUNSETPERSIST` failed.
    #[error("cannot change the persistence of TAP {name:?} (TUNSETPERSIST): {source}")]
    SetPersist {
        /// Interface name.
        name: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("cannot set the vnet header size (TUNSETVNETHDRSZ): {0}")]
    SetVnetHdrSize(#[source] io::Error),
    /// Making the descriptor non-blocking failed.
    #[error("cannot make the TAP descriptor non-blocking: {0}")]
    NonBlocking(#[source] io::Error),
    /// `TUNSETOFFLOAD` failed (e.g. TSO without CSUM).
    #[error("cannot set offloads {flags:#x} (TUNSETOFFLOAD): {source}")]
    SetOffload {
        /// Requested `TUN_F_*` flags.
        flags: u32,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Reading or changing the interface flags (`SIOC[GS]IFFLAGS`) failed.
    #[error("cannot change the link state of {name:?}: {source}")]
    LinkState {
        /// Interface name.
        name: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// A non-blocking TAP device with a 12-byte virtio-net header on every frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens `/dev/net/tun` and attaches to (or creates) the TAP `name`,
    /// which may be a pattern such as `"nubo%d"`; [`Tap::name`] tells the
    /// actual name.
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::open_with_flags(name, TAP_FLAGS)
    }

    fn open_with_flags(name: &str, flags: libc::c_short) -> Result<Self, TapError> {
        let mut req = IfReq::new(name)?;
        req.flags = flags;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
        // (40 bytes, the kernel's size) and lives across the call. `file` is
        // an open /dev/net/tun descriptor.
        let ret = unsafe { ioctl_with_mut_ref(&file, ioctls::TUNSETIFF(), &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Self {
            file,
            name: req.name(),
        };
        if flags & IFF_VNET_HDR != 0 {
            tap.set_vnet_hdr_size()?;
        }
        tracing::debug!(name = %tap.name, "TAP attached");
        Ok(tap)
    }

    /// Adopts an already attached TAP descriptor (e.g. passed by an
    /// orchestrator over a Unix socket). It must have been attached with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; the descriptor is made
    /// non-blocking (which affects every duplicate of it) and its vnet
    /// header size set to 12. Needs no privileges.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let file = File::from(fd);
        let mut req = IfReq::zeroed();
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is one
        // and lives across the call. On a descriptor that is not a TUN/TAP
        // the ioctl fails without writing.
        let ret = unsafe { ioctl_with_mut_ref(&file, ioctls::TUNGETIFF(), &mut req) };
        if ret < 0 {
            return Err(TapError::GetIff(io::Error::last_os_error()));
        }
        let name = req.name();
        // TUNGETIFF reports IFF_TUN/IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, ...
        if req.flags & TAP_FLAGS != TAP_FLAGS || req.flags & IFF_TUN != 0 {
            return Err(TapError::WrongFlags {
                name,
                flags: req.flags,
            });
        }
        set_nonblocking(file.as_fd()).map_err(TapError::NonBlocking)?;
        let tap = Self { file, name };
        tap.set_vnet_hdr_size()?;
        tracing::debug!(name = %tap.name, "TAP adopted from a descriptor");
        Ok(tap)
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `size`
        // lives across the call.
        let ret = unsafe { ioctl_with_ref(&self.file, ioctls::TUNSETVNETHDRSZ(), &size) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sets the offloads (`TUN_F_*`) frames read from the TAP may use: what
    /// the guest negotiated (`GUEST_CSUM` → [`TUN_F_CSUM`], ...). TSO flags
    /// need [`TUN_F_CSUM`]; 0 turns all offloads off.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                ioctls::TUNSETOFFLOAD(),
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::SetOffload {
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Brings the interface up or down (`SIOCSIFFLAGS`; needs
    /// `CAP_NET_ADMIN`). A TAP drops the frames written to it while down.
    pub fn set_up(&self, up: bool) -> Result<(), TapError> {
        let err = |source| TapError::LinkState {
            name: self.name.clone(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new(&self.name)?;
        // SAFETY: SIOCGIFFLAGS writes the `ifr_flags` of a `struct ifreq`;
        // `req` is one and lives across the call.
        let ret = unsafe { ioctl_with_mut_ref(&sock, libc::SIOCGIFFLAGS, &mut req) };
        if ret < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let iff_up = libc::IFF_UP as libc::c_short;
        req.flags = if up {
            req.flags | iff_up
        } else {
            req.flags & !iff_up
        };
        // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`; `req` is one.
        let ret = unsafe { ioctl_with_ref(&sock, libc::SIOCSIFFLAGS, &req) };
        if ret < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Makes the TAP persistent (it outlives its descriptors, so it can be
    /// enslaved to a bridge before a VMM attaches, and survives a VMM
    /// restart) or not (deleted with its last descriptor). A persistent
    /// TAP is removed with `link::Netlink::delete_link`.
    pub fn set_persistent(&self, persistent: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its argument by value; no memory is
        // passed.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                ioctls::TUNSETPERSIST(),
                libc::c_ulong::from(persistent),
            )
        };
        if ret < 0 {
            return Err(TapError::SetPersist {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Gives up the descriptor, e.g. for a VMM to inherit (`--net fd=N`).
    /// It is non-blocking, attached with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR` and has `FD_CLOEXEC` set: the spawner clears
    /// close-on-exec on the child's copy (or `dup2`s it into place, which
    /// clears it), so the descriptor never leaks into other children.
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }

    /// The interface name (the actual one when opened with a pattern).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame, vnet header included. Returns
    /// [`io::ErrorKind::WouldBlock`] when none is queued. A frame longer
    /// than `buf` is truncated.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, vnet header included.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd`: a spawner clears it on the TAP
/// descriptor it hands a VMM (in the child, from `pre_exec`, so no other
/// child inherits it; `fcntl` is async-signal-safe).
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD on a valid descriptor takes no pointer argument.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: F_SETFD on a valid descriptor takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL on a valid descriptor takes no pointer argument.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a valid descriptor takes an int argument.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl NetBackend for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read(self, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Tap::write(self, buf)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(|e| match e {
            TapError::SetOffload { source, .. } => source,
            other => io::Error::other(other),
        })
    }
}

/// Test support shared with the devices crate: runs `f` on a fresh thread
/// inside a new, empty network namespace, so TAPs created there never touch
/// the host's interfaces. Returns `None` (after printing why) when that is
/// impossible here (not root, no `/dev/net/tun`); under `CI=true` it panics
/// instead, so CI cannot silently skip.
#[doc(hidden)]
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let skip = |why: String| {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("TAP test cannot run under CI=true: {why}");
        }
        eprintln!("skipped: {why}");
    };
    if !std::path::Path::new(TUN_PATH).exists() {
        skip(format!("{TUN_PATH} is missing"));
        return None;
    }
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET only moves this thread (which
        // runs nothing else) into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    });
    match handle.join() {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            skip(format!("cannot create a network namespace: {e}"));
            None
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Test support: `(rx_packets, tx_packets)` of interface `name` as seen by
/// the calling thread's network namespace (`/proc/thread-self/net/dev`).
#[doc(hidden)]
pub fn thread_netns_packets(name: &str) -> Option<(u64, u64)> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
    dev.lines().find_map(|line| {
        let (ifname, rest) = line.split_once(':')?;
        if ifname.trim() != name {
            return None;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
        Some((*v.get(1)?, *v.get(9)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal Ethernet frame (broadcast, ethertype 0x88b5 "local
    /// experimental") behind an all-zero vnet header.
    fn frame() -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(&[0x5a; 46]);
        f
    }

    #[test]
    fn tap_lifecycle_in_private_netns() {
        in_private_netns(|| {
            let tap = Tap::open("nubotest%d").unwrap();
            assert!(tap.name().starts_with("nubotest"), "{}", tap.name());
            assert!(tap.name().len() > "nubotest".len());
            let name = tap.name().to_string();
            tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                .unwrap();
            tap.set_offload(0).unwrap();
            // TSO without checksum offload is refused by the kernel.
            assert!(matches!(
                tap.set_offload(TUN_F_TSO4),
                Err(TapError::SetOffload { .. })
            ));
            // Nothing to read: non-blocking.
            let mut buf = [0u8; 2048];
            assert_eq!(
                tap.read(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            // A frame written while the link is up shows up as received
            // by the host side.
            tap.set_up(true).unwrap();
            let (rx0, _) = thread_netns_packets(&name).unwrap();
            assert_eq!(tap.write(&frame()).unwrap(), frame().len());
            let (rx1, _) = thread_netns_packets(&name).unwrap();
            assert_eq!(rx1, rx0 + 1);

            // Adopting a duplicate descriptor (what an orchestrator hands over).
            let dup = tap.file.try_clone().unwrap();
            let adopted = Tap::from_fd(OwnedFd::from(dup)).unwrap();
            assert_eq!(adopted.name(), name);
            adopted.set_offload(TUN_F_CSUM).unwrap();
            drop(adopted);
            assert!(thread_netns_packets(&name).is_some());

            // Closing the last descriptor deletes the (non-persistent) TAP.
            drop(tap);
            assert!(thread_netns_packets(&name).is_none());

            // A persistent TAP outlives its descriptor and can be reopened
            // by name (what the agent does before handing it to a VMM).
            let tap = Tap::open("nubotest%d").unwrap();
            let name = tap.name().to_string();
            tap.set_persistent(true).unwrap();
            let fd = tap.into_fd();
            drop(fd);
            assert!(thread_netns_packets(&name).is_some());
            let again = Tap::open(&name).unwrap();
            let adopted = Tap::from_fd(again.into_fd()).unwrap();
            assert_eq!(adopted.name(), name);
            adopted.set_persistent(false).unwrap();
            drop(adopted);
            assert!(thread_netns_packets(&name).is_none());
        });
    }

    #[test]
    fn from_fd_rejects_taps_without_vnet_hdr() {
        in_private_netns(|| {
            let plain = Tap::open_with_flags("nubotest%d", IFF_TAP | IFF_NO_PI).unwrap();
            let fd = OwnedFd::from(plain.file.try_clone().unwrap());
            match Tap::from_fd(fd) {
                Err(TapError::WrongFlags { name, .. }) => assert_eq!(name, plain.name()),
                other => panic!("{other:?}"),
            }
            let tun =
                Tap::open_with_flags("nubotest%d", IFF_TUN | IFF_NO_PI | IFF_VNET_HDR).unwrap();
            let fd = OwnedFd::from(tun.file.try_clone().unwrap());
            assert!(matches!(Tap::from_fd(fd), Err(TapError::WrongFlags { .. })));
        });
    }

    #[test]
    fn from_fd_rejects_other_files() {
        let null = File::open("/dev/null").unwrap();
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(null)),
            Err(TapError::GetIff(_))
        ));
    }

    #[test]
    fn cloexec_toggles() {
        let f = File::open("/dev/null").unwrap();
        // SAFETY: F_GETFD on an open descriptor.
        let get = |f: &File| unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(get(&f) & libc::FD_CLOEXEC, 0, "std opens with O_CLOEXEC");
        set_cloexec(f.as_fd(), false).unwrap();
        assert_eq!(get(&f) & libc::FD_CLOEXEC, 0);
        set_cloexec(f.as_fd(), true).unwrap();
        assert_ne!(get(&f) & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn invalid_names() {
        for name in ["", "0123456789abcdef", "a/b", "a b", "a\0b"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName(_))),
                "{name:?}"
            );
        }
        assert_eq!(IfReq::new("nubo%d").unwrap().name(), "nubo%d");
        assert_eq!(IfReq::new("0123456789abcde").unwrap().name().len(), 15);
    }
}
