//! A [`VmConfig`] as the `nubo-vmm run` command line: the inverse of the
//! VMM's CLI parser (each part in the form its `FromStr` reads).

use std::ffi::OsString;
use std::path::Path;

use crate::config::{CacheMode, DiskConfig, IoEngineKind, NetConfig, SerialConfig, VmConfig};

impl VmConfig {
    /// The `nubo-vmm` arguments (after the binary: `run` and the guest's
    /// options) that make this guest, with the control API on `api_socket`
    /// if given. The VMM process's own options (`--on-reboot`, `--seccomp`,
    /// `--user`, `--group`, `--jail`) are the caller's to add.
    ///
    /// Every option is `--name=value`, so a value starting with '-' is never
    /// taken for an option. Paths are passed as they are: a disk path with a
    /// comma cannot be said in `--disk`'s form (the caller checks).
    pub fn run_args(&self, api_socket: Option<&Path>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into(), opt("kernel", self.kernel.as_os_str())];
        if let Some(initrd) = &self.initrd {
            args.push(opt("initrd", initrd.as_os_str()));
        }
        args.push(format!("--cmdline={}", self.cmdline).into());
        args.push(format!("--cpus={}", self.vcpus).into());
        args.push(format!("--memory={}", memory_text(self.memory_bytes)).into());
        args.push(opt("serial", &serial_text(&self.serial)));
        if let Some(socket) = api_socket {
            args.push(opt("api-socket", socket.as_os_str()));
        }
        args.extend(self.disks.iter().map(|d| opt("disk", &disk_text(d))));
        args.extend(self.nets.iter().map(|n| opt("net", &net_text(n))));
        args
    }
}

/// `--name=value`.
fn opt(name: &str, value: &std::ffi::OsStr) -> OsString {
    let mut s = OsString::from(format!("--{name}="));
    s.push(value);
    s
}

/// Whole MiB as `NM` (what people write), anything else as `NK` (a valid
/// configuration is a whole number of 4 KiB pages).
fn memory_text(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes >> 10)
    }
}

fn serial_text(serial: &SerialConfig) -> OsString {
    let with_path = |kind: &str, path: &Path| {
        let mut s = OsString::from(kind);
        s.push(path.as_os_str());
        s
    };
    match serial {
        SerialConfig::Stdio => "stdio".into(),
        SerialConfig::Off => "off".into(),
        SerialConfig::File(path) => with_path("file=", path),
        SerialConfig::Socket(path) => with_path("socket=", path),
    }
}

fn disk_text(disk: &DiskConfig) -> OsString {
    let mut s = OsString::from("path=");
    s.push(disk.path.as_os_str());
    s.push(format!(",format={}", disk.format.name()));
    if disk.read_only {
        s.push(",readonly=on");
    }
    if let Some(id) = &disk.id {
        s.push(format!(",id={id}"));
    }
    if disk.queues > 1 {
        s.push(format!(",queues={}", disk.queues));
    }
    if disk.cache != CacheMode::default() {
        s.push(",cache=none");
    }
    match disk.engine {
        IoEngineKind::Auto => {}
        IoEngineKind::IoUring => s.push(",engine=io_uring"),
        IoEngineKind::Threads => s.push(",engine=threads"),
    }
    s
}

fn net_text(net: &NetConfig) -> OsString {
    let mut s = match (&net.tap, net.fd) {
        (Some(tap), _) => format!("tap={tap}"),
        (None, Some(fd)) => format!("fd={fd}"),
        (None, None) => String::new(),
    };
    if let Some(m) = net.mac {
        s.push_str(&format!(
            ",mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ));
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImageFormat;

    #[test]
    fn parts_render_in_their_parsed_form() {
        let disk = DiskConfig {
            path: "/i/a.qcow2".into(),
            read_only: true,
            id: Some("vol-1".into()),
            format: ImageFormat::Qcow2,
            ..Default::default()
        };
        let text = disk_text(&disk).into_string().unwrap();
        assert_eq!(text, "path=/i/a.qcow2,format=qcow2,readonly=on,id=vol-1");
        assert_eq!(text.parse(), Ok(disk));
        for net in ["tap=nubo0,mac=52:54:00:0a:bc:de", "fd=3"] {
            let parsed: NetConfig = net.parse().unwrap();
            assert_eq!(net_text(&parsed).into_string().unwrap(), net);
        }
        for serial in ["stdio", "off", "file=/d/c.log", "socket=/d/c.sock"] {
            let parsed: SerialConfig = serial.parse().unwrap();
            assert_eq!(serial_text(&parsed).into_string().unwrap(), serial);
        }
        assert_eq!(memory_text(512 << 20), "512M");
        assert_eq!(memory_text((16 << 20) + 4096), "16388K");
    }

    #[test]
    fn run_args_order() {
        let config = VmConfig::builder("/k/vmlinuz")
            .cmdline("-x")
            .serial(SerialConfig::Off)
            .build()
            .unwrap();
        let args: Vec<_> = config
            .run_args(Some(Path::new("/d/api.sock")))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "run",
                "--kernel=/k/vmlinuz",
                "--cmdline=-x",
                "--cpus=1",
                "--memory=512M",
                "--serial=off",
                "--api-socket=/d/api.sock",
            ]
        );
    }
}
