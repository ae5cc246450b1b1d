//! KVM and the `nubo-vmm` binary for the orchestrator's tests: shared by the
//! integration tests (`tests/common`) and the VMM agent's unit tests
//! (`host/vmm/tests.rs`, included with `#[path]`); `kvm_available` is the
//! VMM's tests' own (`vmm/tests/common/mod.rs`, included the same way).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// The VMM's tests' own check, so both crates skip (or fail in CI) alike.
#[path = "../../../vmm/tests/common/mod.rs"]
mod vmm_common;

pub use vmm_common::kvm_available;

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
