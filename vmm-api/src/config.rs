//! The typed configuration of one guest, built with [`VmConfigBuilder`].

use std::path::PathBuf;
use std::str::FromStr;

/// Least guest RAM accepted: the kernel is loaded at 1 MiB, and below this
/// even a small kernel with its initramfs has no room to boot (the
/// orchestrator gives no server less either).
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// Most vCPUs a guest may have (one MADT entry and APIC id each, below the IOAPIC's id).
pub const MAX_VCPUS: u8 = 254;

/// Where the guest's serial console (COM1) goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialConfig {
    /// Output to this process's stdout, input from its stdin.
    #[default]
    Stdio,
    /// Output appended to a log file capped at 16 MiB (oldest output
    /// dropped); no input.
    File(PathBuf),
    /// A Unix socket that `nubo-vmm console PATH` attaches to; the guest
    /// runs whether or not a client is attached.
    Socket(PathBuf),
    /// The UART exists but its output is dropped.
    Off,
}

impl FromStr for SerialConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "off" => Ok(Self::Off),
            _ => match (s.strip_prefix("file="), s.strip_prefix("socket=")) {
                (Some(path), _) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                (_, Some(path)) if !path.is_empty() => Ok(Self::Socket(PathBuf::from(path))),
                _ => Err(ConfigError::Serial(s.to_string())),
            },
        }
    }
}

/// The format of a disk image the VMM opens (never probed: a guest could
/// write a qcow2 header into a raw disk): the images crate's one type.
pub use images::ImageFormat;

/// How a disk's data goes through the host's page cache: the images crate's
/// one type (`writeback` or `none`).
pub use images::CacheMode;

/// Which engine does a disk's asynchronous I/O: the images crate's one type
/// (`auto`, `io_uring` or `threads`).
pub use images::IoEngineKind;

/// Most request queues of one disk (`queues=`; the VMM also caps it at the
/// vCPU count).
pub const MAX_DISK_QUEUES: u16 = 4;

/// One virtio-blk disk: `path=FILE[,readonly=on][,id=SERIAL][,format=raw|qcow2]`
/// `[,queues=N][,cache=writeback|none][,engine=auto|io_uring|threads]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Serial the guest reads with GET_ID (`/sys/block/vdX/serial`), at most 20 bytes.
    pub id: Option<String>,
    /// The image format.
    pub format: ImageFormat,
    /// Request queues, 1 to [`MAX_DISK_QUEUES`] (0 counts as 1).
    #[serde(default = "one_queue")]
    pub queues: u16,
    /// Page-cache mode of the disk's data I/O.
    #[serde(default)]
    pub cache: CacheMode,
    /// The asynchronous I/O engine.
    #[serde(default)]
    pub engine: IoEngineKind,
}

fn one_queue() -> u16 {
    1
}

impl Default for DiskConfig {
    /// A writable raw disk with one queue, the page cache and the automatic engine.
    fn default() -> Self {
        DiskConfig {
            path: PathBuf::new(),
            read_only: false,
            id: None,
            format: ImageFormat::default(),
            queues: one_queue(),
            cache: CacheMode::default(),
            engine: IoEngineKind::default(),
        }
    }
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Disk(format!("'{s}': {why}"));
        let mut disk = DiskConfig::default();
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match key {
                "path" if !value.is_empty() => disk.path = PathBuf::from(value),
                "readonly" | "ro" => {
                    disk.read_only = match value {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => return Err(bad("readonly takes on or off")),
                    }
                }
                "id" if value.len() <= 20 && value.is_ascii() => disk.id = Some(value.to_string()),
                "id" => return Err(bad("id is at most 20 ASCII characters")),
                "format" => {
                    disk.format = value.parse().map_err(|_| bad("format is raw or qcow2"))?
                }
                "queues" => {
                    disk.queues = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_DISK_QUEUES).contains(n))
                        .ok_or_else(|| bad(&format!("queues is 1 to {MAX_DISK_QUEUES}")))?
                }
                "cache" => disk.cache = value.parse().map_err(|e: String| bad(&e))?,
                "engine" => disk.engine = value.parse().map_err(|e: String| bad(&e))?,
                _ => return Err(bad(&format!("unknown or empty option '{key}'"))),
            }
        }
        if disk.path.as_os_str().is_empty() {
            return Err(bad("path= is required"));
        }
        Ok(disk)
    }
}

/// One virtio-net NIC on a TAP: `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`
/// (an already open TAP, e.g. handed over by an orchestrator).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// TAP interface name (created if missing), or None with `fd`.
    pub tap: Option<String>,
    /// An open TAP file descriptor this process inherited.
    pub fd: Option<i32>,
    /// The guest's MAC; a locally administered one is made up when absent.
    pub mac: Option<[u8; 6]>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl FromStr for NetConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Net(format!("'{s}': {why}"));
        let mut net = NetConfig {
            tap: None,
            fd: None,
            mac: None,
        };
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            match key {
                "tap" if !value.is_empty() && value.len() < 16 => net.tap = Some(value.to_string()),
                "tap" => return Err(bad("tap names are 1 to 15 characters")),
                "fd" => net.fd = Some(value.parse().map_err(|_| bad("fd takes a number"))?),
                "mac" => {
                    let mac =
                        parse_mac(value).ok_or_else(|| bad("mac is like 52:54:00:12:34:56"))?;
                    if mac[0] & 1 == 1 {
                        return Err(bad("a multicast mac"));
                    }
                    net.mac = Some(mac);
                }
                _ => return Err(bad(&format!("unknown option '{key}'"))),
            }
        }
        if net.tap.is_some() == net.fd.is_some() {
            return Err(bad("give exactly one of tap= and fd="));
        }
        Ok(net)
    }
}

/// A memory size given as `512M`, `2G`, `1048576K` or a plain number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl FromStr for MemorySize {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::MemorySize(s.to_string());
        let t = s.trim();
        let (digits, shift) = match t.char_indices().last() {
            Some((i, 'K' | 'k')) => (&t[..i], 10),
            Some((i, 'M' | 'm')) => (&t[..i], 20),
            Some((i, 'G' | 'g')) => (&t[..i], 30),
            Some((i, 'T' | 't')) => (&t[..i], 40),
            Some(_) => (t, 20),
            None => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift).map(MemorySize).ok_or_else(bad)
    }
}

/// Errors in a guest's configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The memory size could not be parsed.
    #[error("invalid memory size '{0}': use a number with K, M, G or T (e.g. 512M)")]
    MemorySize(String),
    /// The memory size is below what a guest can boot with.
    #[error(
        "guest memory must be at least {} MiB (--memory {}M), got {}",
        MIN_MEMORY_BYTES >> 20,
        MIN_MEMORY_BYTES >> 20,
        bytes_text(*.0)
    )]
    MemoryTooSmall(u64),
    /// The memory size is not a whole number of 4 KiB pages.
    #[error("guest memory must be a multiple of 4 KiB, got {0} bytes")]
    MemoryUnaligned(u64),
    /// The vCPU count is out of range.
    #[error("the number of vCPUs must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// A --net option could not be parsed.
    #[error("invalid net {0}")]
    Net(String),
    /// A --disk option could not be parsed.
    #[error("invalid disk {0}")]
    Disk(String),
    /// The serial option could not be parsed.
    #[error("invalid serial option '{0}': use stdio, off, file=PATH or socket=PATH")]
    Serial(String),
    /// A device id is empty, too long or not printable ASCII.
    #[error("invalid device id '{0}': 1 to 20 printable ASCII characters")]
    DeviceId(String),
}

/// `n` bytes as "N MiB" when a whole number of MiB, else "N bytes".
fn bytes_text(n: u64) -> String {
    if n > 0 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Everything needed to boot one guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// Kernel image: a bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Where COM1 goes.
    pub serial: SerialConfig,
    /// virtio-blk disks, in PCI slot order (the first is /dev/vda).
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs, after the disks on the PCI bus.
    pub nets: Vec<NetConfig>,
}

impl VmConfig {
    /// Starts a configuration for `kernel` with 1 vCPU, 512 MiB and the
    /// console on stdio.
    pub fn builder(kernel: impl Into<PathBuf>) -> VmConfigBuilder {
        VmConfigBuilder {
            config: VmConfig {
                kernel: kernel.into(),
                initrd: None,
                cmdline: DEFAULT_CMDLINE.to_string(),
                vcpus: 1,
                memory_bytes: 512 << 20,
                serial: SerialConfig::Stdio,
                disks: Vec::new(),
                nets: Vec::new(),
            },
            vcpus: 1,
        }
    }
}

/// The kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Builds a [`VmConfig`], checking it in [`VmConfigBuilder::build`].
#[derive(Debug, Clone)]
pub struct VmConfigBuilder {
    config: VmConfig,
    vcpus: u64,
}

impl VmConfigBuilder {
    /// Sets the initramfs.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.initrd = Some(path.into());
        self
    }

    /// Sets the kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = cmdline.into();
        self
    }

    /// Sets the number of vCPUs.
    pub fn vcpus(mut self, n: u64) -> Self {
        self.vcpus = n;
        self
    }

    /// Sets guest RAM in bytes.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.config.memory_bytes = bytes;
        self
    }

    /// Sets where the serial console goes.
    pub fn serial(mut self, serial: SerialConfig) -> Self {
        self.config.serial = serial;
        self
    }

    /// Adds a virtio-blk disk.
    pub fn disk(mut self, disk: DiskConfig) -> Self {
        self.config.disks.push(disk);
        self
    }

    /// Adds a virtio-net NIC.
    pub fn net(mut self, net: NetConfig) -> Self {
        self.config.nets.push(net);
        self
    }

    /// Checks the configuration and returns it.
    pub fn build(mut self) -> Result<VmConfig, ConfigError> {
        self.config.vcpus = u8::try_from(self.vcpus)
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or(ConfigError::VcpuCount(self.vcpus))?;
        let mem = self.config.memory_bytes;
        if mem < MIN_MEMORY_BYTES {
            return Err(ConfigError::MemoryTooSmall(mem));
        }
        if !mem.is_multiple_of(4096) {
            return Err(ConfigError::MemoryUnaligned(mem));
        }
        Ok(self.config)
    }
}

/// What kind of device a [`DeviceInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A virtio-blk disk.
    Disk,
    /// A virtio-net NIC.
    Net,
}

/// One PCI device of a guest: the answer of `PUT /vm/add-disk` and
/// `PUT /vm/add-net`, and an entry of `GET /vm`'s `devices`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    /// The device's id (for a disk also its serial); boot devices without
    /// one are `diskN` / `netN`.
    pub id: String,
    /// Disk or NIC.
    pub kind: DeviceKind,
    /// The PCI slot on bus 0 (1..=31).
    pub slot: u8,
    /// The guest's PCI address, `0000:00:SS.0`.
    pub bdf: String,
    /// A disk's image path (as given; absent when only descriptors were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A NIC's TAP interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
}

impl DeviceInfo {
    /// The PCI address of function 0 of `slot` on bus 0 of segment 0.
    pub fn bdf_of(slot: u8) -> String {
        format!("0000:00:{slot:02x}.0")
    }
}

/// The body of `PUT /vm/add-net`: a [`NetConfig`] (`tap` or, with a
/// descriptor passed along, neither) and the NIC's id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddNetRequest {
    /// The NIC (its `fd` field is ignored: the descriptor comes with the request).
    #[serde(flatten)]
    pub net: NetConfig,
    /// The device id (unique among the guest's devices, at most 20 ASCII
    /// characters); `netN` when absent.
    #[serde(default)]
    pub id: Option<String>,
}

/// The body of `PUT /vm/remove-device`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceRequest {
    /// The device's id.
    pub id: String,
    /// How long to wait for the guest to eject it (default 10000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The body of `PUT /vm/resize-disk`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeDiskRequest {
    /// The disk's id.
    pub id: String,
    /// The new size in bytes (grow only).
    pub size: u64,
}

/// Longest device id (a virtio-blk serial is 20 bytes).
pub const MAX_DEVICE_ID: usize = 20;

/// Checks a device id: 1 to [`MAX_DEVICE_ID`] printable ASCII characters.
pub fn check_device_id(id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::DeviceId(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!("512M".parse(), Ok(MemorySize(512 << 20)));
        assert_eq!("2G".parse(), Ok(MemorySize(2 << 30)));
        assert_eq!("2g".parse(), Ok(MemorySize(2 << 30)));
        assert_eq!("1024K".parse(), Ok(MemorySize(1 << 20)));
        assert_eq!("256".parse(), Ok(MemorySize(256 << 20)));
        assert_eq!("0".parse(), Ok(MemorySize(0)));
        for bad in ["", "M", "12X", "-1G", "1.5G", "99999999999999T"] {
            assert!(bad.parse::<MemorySize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_options() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("off".parse(), Ok(SerialConfig::Off));
        assert_eq!(
            "file=/tmp/x".parse(),
            Ok(SerialConfig::File(PathBuf::from("/tmp/x")))
        );
        assert!("file=".parse::<SerialConfig>().is_err());
        assert_eq!(
            "socket=/run/c.sock".parse(),
            Ok(SerialConfig::Socket(PathBuf::from("/run/c.sock")))
        );
        assert!("socket=".parse::<SerialConfig>().is_err());
        assert!("tcp".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn disk_options() {
        let d: DiskConfig = "path=/a.img,readonly=on,id=disk-1,format=qcow2"
            .parse()
            .unwrap();
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("disk-1"));
        assert_eq!(d.format, ImageFormat::Qcow2);
        let d: DiskConfig = "path=/b.img".parse().unwrap();
        assert_eq!((d.read_only, d.format), (false, ImageFormat::Raw));
        for bad in [
            "",
            "readonly=on",
            "path=",
            "path=/a,format=vmdk",
            "path=/a,id=123456789012345678901",
            "path=/a,bogus=1",
            "path=/a,readonly=maybe",
            "/a.img",
        ] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn net_options() {
        let n: NetConfig = "tap=nubo0,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(n.tap.as_deref(), Some("nubo0"));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let n: NetConfig = "fd=3".parse().unwrap();
        assert_eq!(n.fd, Some(3));
        for bad in [
            "",
            "tap=",
            "tap=a,fd=3",
            "mac=52:54:00:12:34:56",
            "tap=x,mac=01:00:00:00:00:01",
            "tap=x,mac=52:54:00:12:34",
            "tap=waytoolongname00",
            "fd=x",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn builder_checks() {
        let ok = VmConfig::builder("k")
            .vcpus(16)
            .memory_bytes(512 << 20)
            .build();
        assert_eq!(ok.map(|c| c.vcpus), Ok(16));
        assert_eq!(
            VmConfig::builder("k").memory_bytes(0).build(),
            Err(ConfigError::MemoryTooSmall(0))
        );
        assert_eq!(
            VmConfig::builder("k").memory_bytes(1 << 20).build(),
            Err(ConfigError::MemoryTooSmall(1 << 20))
        );
        assert_eq!(
            ConfigError::MemoryTooSmall(1 << 20).to_string(),
            "guest memory must be at least 16 MiB (--memory 16M), got 1 MiB"
        );
        assert_eq!(
            VmConfig::builder("k").memory_bytes((16 << 20) + 1).build(),
            Err(ConfigError::MemoryUnaligned((16 << 20) + 1))
        );
        assert_eq!(
            VmConfig::builder("k").vcpus(0).build(),
            Err(ConfigError::VcpuCount(0))
        );
        assert_eq!(
            VmConfig::builder("k").vcpus(300).build(),
            Err(ConfigError::VcpuCount(300))
        );
    }

    #[test]
    fn json_both_ways() {
        let config = VmConfig::builder("/k/vmlinuz")
            .initrd("/k/initrd")
            .serial(SerialConfig::Socket("/d/c.sock".into()))
            .disk("path=/i/a.qcow2,format=qcow2,id=a".parse().unwrap())
            .net("tap=nubo0,mac=52:54:00:12:34:56".parse().unwrap())
            .build()
            .unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert!(
            json.contains(r#""serial":{"socket":"/d/c.sock"}"#),
            "{json}"
        );
        assert!(json.contains(r#""format":"qcow2""#), "{json}");
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), config);
    }

    #[test]
    fn hot_plug_bodies_and_answers() {
        let add: AddNetRequest =
            serde_json::from_str(r#"{"id":"port-1","mac":[82,84,0,1,2,3]}"#).unwrap();
        assert_eq!(add.id.as_deref(), Some("port-1"));
        assert_eq!(add.net.mac, Some([82, 84, 0, 1, 2, 3]));
        assert_eq!((add.net.tap, add.net.fd), (None, None));
        let add: AddNetRequest = serde_json::from_str(r#"{"tap":"tap0"}"#).unwrap();
        assert_eq!((add.id, add.net.tap.as_deref()), (None, Some("tap0")));

        let remove: RemoveDeviceRequest = serde_json::from_str(r#"{"id":"vol-1"}"#).unwrap();
        assert_eq!(remove.timeout_ms, None);
        assert!(serde_json::from_str::<RemoveDeviceRequest>(r#"{"id":"a","x":1}"#).is_err());
        assert!(serde_json::from_str::<ResizeDiskRequest>(r#"{"id":"a"}"#).is_err());

        let info = DeviceInfo {
            id: "vol-1".into(),
            kind: DeviceKind::Disk,
            slot: 10,
            bdf: DeviceInfo::bdf_of(10),
            path: None,
            tap: None,
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"id":"vol-1","kind":"disk","slot":10,"bdf":"0000:00:0a.0"}"#
        );

        assert!(check_device_id("vol-1").is_ok());
        assert!(check_device_id(&"x".repeat(20)).is_ok());
        for bad in ["", "a b", "é", &"x".repeat(21)] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
    }
}
