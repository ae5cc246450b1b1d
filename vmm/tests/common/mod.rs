//! Helpers shared by the VMM's integration tests (and, included with
//! `#[path]`, by the orchestrator's: `orchestrator/tests/common/kvm.rs`).

/// Whether /dev/kvm is usable; in CI its absence is a failure, elsewhere a
/// skip (the caller returns early).
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
