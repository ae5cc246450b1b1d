//! KVM and the `nubo-vmm` binary for the orchestrator's tests: shared by the
//! integration tests (`tests/common`) and the agent's unit tests (included
//! with `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Whether /dev/kvm is usable; its absence is a failure when `CI=true`,
/// elsewhere a skip (the caller returns early).
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/dev/kvm is not usable and CI=true: KVM tests must run"
        );
        eprintln!("skipped: /dev/kvm is not usable here");
    }
    ok
}

/// `$NUBO_VMM`, else the newer of `target/{release,debug}/nubo-vmm`, else
/// built with `cargo build -p vmm --bin nubo-vmm`.
pub fn vmm_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("NUBO_VMM") {
                return PathBuf::from(p);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let newest = ["release", "debug"]
                .iter()
                .map(|profile| root.join("target").join(profile).join("nubo-vmm"))
                .filter_map(|p| {
                    let modified = std::fs::metadata(&p).ok()?.modified().ok()?;
                    Some((modified, p))
                })
                .max();
            if let Some((_, p)) = newest {
                return p;
            }
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "vmm", "--bin", "nubo-vmm"])
                .current_dir(&root)
                .status()
                .expect("run cargo to build nubo-vmm");
            assert!(status.success(), "cargo build -p vmm --bin nubo-vmm failed");
            root.join("target/debug/nubo-vmm")
        })
        .clone()
}
