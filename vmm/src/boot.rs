//! Linux boot without firmware: load the kernel (bzImage or ELF vmlinux),
//! the initramfs and the command line into guest memory, and write the boot
//! structures (`boot_params` or PVH `hvm_start_info`) that describe them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{
    load_cmdline, BzImage, Cmdline, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::cpu::regs::BootEntry;
use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_RAM_START,
    MEM_32BIT_GAP_START, PVH_INFO_START, PVH_MEMMAP_START, RESET_VECTOR, ZERO_PAGE_START,
};
use crate::memory::{e820_map, E820Entry};

/// Errors of loading the guest's kernel, initramfs and command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Io {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("{0} is not a Linux kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        source: linux_loader::loader::Error,
    },
    /// The initramfs does not fit in guest memory below the kernel's limit.
    #[error("initrd of {size} bytes does not fit in guest memory (free low RAM ends at {limit:#x}, kernel ends at {kernel_end:#x})")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Highest address the initrd may end at.
        limit: u64,
        /// Where the kernel image ends.
        kernel_end: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing boot structures failed.
    #[error("cannot write the boot parameters: {0}")]
    BootParams(String),
    /// Writing into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// What the boot vCPU needs once everything is in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How to enter the kernel.
    pub entry: BootEntry,
}

/// The kernel image formats we boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux (PVH entry).
    Elf,
    /// A bzImage (64-bit boot protocol).
    BzImage,
}

/// Tells the format of a kernel image from its first bytes.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let io = |source| BootError::Io {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x208];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::NotAKernel(path.to_path_buf()))
    }
}

/// The kernel and initramfs files, opened once, before the VMM gives up
/// its privileges and its view of the host's files, and read again from the
/// start on every boot (`--on-reboot restart`, `PUT /vm/reboot`).
#[derive(Debug)]
pub struct BootFiles {
    /// The kernel image.
    pub kernel: File,
    /// The initramfs.
    pub initrd: Option<File>,
}

impl BootFiles {
    /// Opens the kernel and initramfs for reading.
    pub fn open(kernel: &Path, initrd: Option<&Path>) -> Result<Self, BootError> {
        let open = |what, path: &Path| {
            File::open(path).map_err(|source| BootError::Io {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Self {
            kernel: open("kernel", kernel)?,
            initrd: initrd.map(|p| open("initrd", p)).transpose()?,
        })
    }
}

/// Where the guest's kernel, initramfs and command line come from.
pub struct BootSource<'a> {
    /// Kernel image path (for messages).
    pub kernel: &'a Path,
    /// Initramfs path (for messages).
    pub initrd: Option<&'a Path>,
    /// The open kernel and initramfs.
    pub files: &'a BootFiles,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM size (for the memory map).
    pub memory_bytes: u64,
    /// Where the ACPI RSDP is.
    pub rsdp: GuestAddress,
}

/// Loads kernel, initramfs and command line, and writes the boot structures.
pub fn load(mem: &GuestMemoryMmap, src: &BootSource<'_>) -> Result<LoadedKernel, BootError> {
    let kernel_path = src.kernel;
    // A duplicate shares the file position, which every reader here sets.
    let mut kernel = src
        .files
        .kernel
        .try_clone()
        .map_err(|source| BootError::Io {
            what: "kernel",
            path: kernel_path.to_path_buf(),
            source,
        })?;
    let format = detect_format(&mut kernel, kernel_path)?;
    let load_err = |source| BootError::Load {
        path: kernel_path.to_path_buf(),
        source,
    };
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut kernel, Some(HIGH_RAM_START)),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut kernel, Some(HIGH_RAM_START)),
    }
    .map_err(load_err)?;

    let cmdline = build_cmdline(src.cmdline)?;
    load_cmdline(mem, CMDLINE_START, &cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let initrd_limit = initrd_limit(&loaded, src.memory_bytes);
    let initrd = match (src.initrd, &src.files.initrd) {
        (Some(path), Some(file)) => Some(load_initrd(
            mem,
            path,
            file,
            initrd_limit,
            loaded.kernel_end,
        )?),
        _ => None,
    };
    let e820 = e820_map(src.memory_bytes);
    write_reset_vector(mem)?;

    match (format, loaded.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_pvh_start_info(mem, &e820, cmdline_len, initrd, src.rsdp)?;
            Ok(LoadedKernel {
                entry: BootEntry::Pvh {
                    entry,
                    start_info: PVH_INFO_START,
                },
            })
        }
        (format, _) => {
            // bzImage: its own setup header; ELF without PVH: the 64-bit entry
            // with a header we make up, as Firecracker boots a vmlinux.
            let mut params = boot_params::default();
            match (format, loaded.setup_header) {
                (KernelFormat::BzImage, Some(header)) => params.hdr = header,
                (KernelFormat::BzImage, None) => {
                    return Err(BootError::BootParams(
                        "the bzImage loader returned no setup header".into(),
                    ))
                }
                _ => params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT,
            }
            fill_boot_params(&mut params, &e820, cmdline_len, initrd, src.rsdp)?;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, ZERO_PAGE_START),
                mem,
            )
            .map_err(|e| BootError::BootParams(e.to_string()))?;
            Ok(LoadedKernel {
                entry: BootEntry::Linux64 {
                    // A bzImage's 64-bit entry is 0x200 past its protected-mode
                    // code; an ELF's is its entry point.
                    entry: match format {
                        KernelFormat::BzImage => loaded.kernel_load.unchecked_add(0x200),
                        KernelFormat::Elf => loaded.kernel_load,
                    },
                    zero_page: ZERO_PAGE_START,
                },
            })
        }
    }
}

/// Real-mode code at the reset vector: `mov al, RESET_VALUE; mov dx,
/// RESET_PORT; out dx, al; hlt; jmp hlt`. With hardware-reduced ACPI and no
/// EFI, Linux's default reboot method jumps to the BIOS at F000:FFF0; there
/// is no BIOS, so this stub asks for the reset the kernel wanted.
fn reset_vector_stub() -> [u8; 9] {
    let [port_lo, port_hi] = ACPI_RESET_PORT.to_le_bytes();
    [
        0xb0,
        ACPI_RESET_VALUE,
        0xba,
        port_lo,
        port_hi,
        0xee,
        0xf4,
        0xeb,
        0xfd,
    ]
}

/// Writes [`reset_vector_stub`] at the reset vector.
pub fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&reset_vector_stub(), RESET_VECTOR)
        .map_err(|source| BootError::GuestMemory {
            what: "the reset vector stub",
            source,
        })
}

/// Parses the user's command line into linux-loader's bounded form.
fn build_cmdline(s: &str) -> Result<Cmdline, BootError> {
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    let trimmed = s.trim();
    if !trimmed.is_empty() {
        cmdline
            .insert_str(trimmed)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Highest address (exclusive) the initramfs may end at.
fn initrd_limit(loaded: &KernelLoaderResult, memory_bytes: u64) -> u64 {
    let low_ram_end = memory_bytes.min(MEM_32BIT_GAP_START);
    match loaded.setup_header {
        // initrd_addr_max is the highest address the initrd's last byte may have.
        Some(h) if h.initrd_addr_max != 0 => low_ram_end.min(u64::from(h.initrd_addr_max) + 1),
        _ => low_ram_end,
    }
}

/// Address and size of the initramfs in guest memory.
#[derive(Debug, Clone, Copy)]
struct InitrdPlacement {
    addr: u64,
    size: u64,
}

/// Puts the initramfs at the top of low RAM (page aligned, below `limit`, above the kernel).
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &File,
    limit: u64,
    kernel_end: u64,
) -> Result<InitrdPlacement, BootError> {
    let io = |source| BootError::Io {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = file.try_clone().map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let too_large = BootError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    };
    let addr = match limit.checked_sub(size) {
        Some(a) => a & !0xfff,
        None => return Err(too_large),
    };
    if addr < kernel_end || size == 0 && addr == 0 {
        return Err(too_large);
    }
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| BootError::GuestMemory {
            what: "the initrd",
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// Fills the zero page's fields that the VMM owns.
fn fill_boot_params(
    params: &mut boot_params,
    e820: &[E820Entry],
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    const KERNEL_LOADER_OTHER: u8 = 0xff;
    const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START.raw_value() as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    params.acpi_rsdp_addr = rsdp.raw_value();
    if e820.len() > params.e820_table.len() {
        return Err(BootError::BootParams("too many e820 entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind as u32;
    }
    params.e820_entries = e820.len() as u8;
    Ok(())
}

/// Alignment the kernel asks for when an ELF comes without a setup header.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PVH_MODLIST_START: GuestAddress = GuestAddress(0x6400);

/// Writes `hvm_start_info`, its memory map and module list (field by field,
/// little endian, as the PVH ABI lays them out).
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    _cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let err = |source| BootError::GuestMemory {
        what: "the PVH start info",
        source,
    };
    let mut memmap = Vec::with_capacity(e820.len() * 24);
    for e in e820 {
        memmap.extend_from_slice(&e.addr.to_le_bytes());
        memmap.extend_from_slice(&e.size.to_le_bytes());
        memmap.extend_from_slice(&(e.kind as u32).to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    if PVH_MEMMAP_START.raw_value() + memmap.len() as u64 > PVH_MODLIST_START.raw_value() {
        return Err(BootError::BootParams("PVH memory map too large".into()));
    }
    mem.write_slice(&memmap, PVH_MEMMAP_START).map_err(err)?;

    let nr_modules = u32::from(initrd.is_some());
    if let Some(i) = initrd {
        let mut module = Vec::with_capacity(32);
        module.extend_from_slice(&i.addr.to_le_bytes());
        module.extend_from_slice(&i.size.to_le_bytes());
        module.extend_from_slice(&0u64.to_le_bytes()); // cmdline_paddr
        module.extend_from_slice(&0u64.to_le_bytes()); // reserved
        mem.write_slice(&module, PVH_MODLIST_START).map_err(err)?;
    }

    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&nr_modules.to_le_bytes());
    info.extend_from_slice(&PVH_MODLIST_START.raw_value().to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.raw_value().to_le_bytes());
    info.extend_from_slice(&rsdp.raw_value().to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP_START.raw_value().to_le_bytes());
    info.extend_from_slice(&(e820.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // reserved
    debug_assert_eq!(info.len(), 56);
    mem.write_slice(&info, PVH_INFO_START).map_err(err)?;
    // The memory map must lie in RAM the guest will not reuse before reading it.
    debug_assert!(mem.address_in_range(PVH_MEMMAP_START));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn temp_file(bytes: &[u8]) -> (PathBuf, File) {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "nubo-boot-test-{}-{}",
            std::process::id(),
            bytes.len() ^ bytes.first().copied().unwrap_or(0) as usize
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        (path.clone(), File::open(&path).unwrap())
    }

    #[test]
    fn detects_formats_and_rejects_garbage() {
        let (p, mut f) = temp_file(b"\x7fELF\x02\x01\x01");
        assert_eq!(detect_format(&mut f, &p).unwrap(), KernelFormat::Elf);
        let _ = std::fs::remove_file(&p);

        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (p, mut f) = temp_file(&bz);
        assert_eq!(detect_format(&mut f, &p).unwrap(), KernelFormat::BzImage);
        let _ = std::fs::remove_file(&p);

        let (p, mut f) = temp_file(&[0x55; 4096]);
        assert!(matches!(
            detect_format(&mut f, &p),
            Err(BootError::NotAKernel(_))
        ));
        let _ = std::fs::remove_file(&p);

        let (p, mut f) = temp_file(b"");
        assert!(detect_format(&mut f, &p).is_err());
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn reset_vector_stub_writes_the_reset_register() {
        let m = mem();
        write_reset_vector(&m).unwrap();
        let mut b = [0u8; 9];
        m.read_slice(&mut b, RESET_VECTOR).unwrap();
        assert_eq!(b, [0xb0, 0x01, 0xba, 0x02, 0x06, 0xee, 0xf4, 0xeb, 0xfd]);
        // It fits below 1 MiB.
        assert!(RESET_VECTOR.raw_value() + b.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn cmdline_bounds() {
        assert!(build_cmdline("console=ttyS0 quiet").is_ok());
        assert!(build_cmdline("").is_ok());
        assert!(build_cmdline(&"a".repeat(CMDLINE_MAX_SIZE + 1)).is_err());
        assert!(build_cmdline("bad\u{7}char").is_err());
    }

    #[test]
    fn boot_params_fields() {
        let mut p = boot_params::default();
        let e820 = e820_map(512 << 20);
        fill_boot_params(
            &mut p,
            &e820,
            12,
            Some(InitrdPlacement {
                addr: 0x1000_0000,
                size: 0x2000,
            }),
            GuestAddress(0xe0000),
        )
        .unwrap();
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 12);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x2000);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(usize::from(p.e820_entries), e820.len());
        let t = p.e820_table;
        assert_eq!({ t[1].addr }, 0x10_0000);
        assert_eq!({ t[1].r#type }, 1);
    }

    #[test]
    fn initrd_goes_to_top_of_low_ram() {
        let m = mem();
        let (p, f) = temp_file(&[7u8; 5000]);
        let placed = load_initrd(&m, &p, &f, 64 << 20, 0x20_0000).unwrap();
        assert_eq!(placed.addr % 4096, 0);
        assert!(placed.addr + placed.size <= 64 << 20);
        let b: u8 = m.read_obj(GuestAddress(placed.addr + 4999)).unwrap();
        assert_eq!(b, 7);
        // Too large to fit above the kernel.
        assert!(matches!(
            load_initrd(&m, &p, &f, 0x20_1000, 0x20_0000),
            Err(BootError::InitrdTooLarge { .. })
        ));
        // Read again from the start on the next boot.
        let again = load_initrd(&m, &p, &f, 64 << 20, 0x20_0000).unwrap();
        assert_eq!(again.size, 5000);
        let _ = std::fs::remove_file(&p);
        assert!(matches!(
            BootFiles::open(
                Path::new("/dev/null"),
                Some(Path::new("/nonexistent/initrd"))
            ),
            Err(BootError::Io { what: "initrd", .. })
        ));
    }

    #[test]
    fn pvh_start_info_layout() {
        let m = mem();
        let e820 = e820_map(64 << 20);
        write_pvh_start_info(
            &m,
            &e820,
            5,
            Some(InitrdPlacement {
                addr: 0x300_0000,
                size: 0x1234,
            }),
            GuestAddress(0xe0000),
        )
        .unwrap();
        let magic: u32 = m.read_obj(PVH_INFO_START).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC);
        let nr: u32 = m.read_obj(PVH_INFO_START.unchecked_add(12)).unwrap();
        assert_eq!(nr, 1);
        let rsdp: u64 = m.read_obj(PVH_INFO_START.unchecked_add(32)).unwrap();
        assert_eq!(rsdp, 0xe0000);
        let entries: u32 = m.read_obj(PVH_INFO_START.unchecked_add(48)).unwrap();
        assert_eq!(entries as usize, e820.len());
        let mod_addr: u64 = m.read_obj(PVH_MODLIST_START).unwrap();
        assert_eq!(mod_addr, 0x300_0000);
        let second_type: u32 = m.read_obj(PVH_MEMMAP_START.unchecked_add(24 + 16)).unwrap();
        assert_eq!(second_type, 1);
    }
}
