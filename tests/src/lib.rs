//! End-to-end test support for Nubo: the testbed runner lives in tests/tests.

/// Why the testbed VM's own kernel (L1) failed, from its console log: a
/// soft lockup, or a panic whose report names QEMU's q35 machine (an L2
/// guest's panic names nubo-vmm's or QEMU microvm's). None if neither.
pub fn l1_kernel_trouble(console: &str) -> Option<&'static str> {
    if console.contains("soft lockup - CPU#") {
        Some("L1 reported a soft lockup")
    } else if console.contains("Kernel panic - not syncing")
        && console.contains("Hardware name: QEMU Standard PC (Q35")
    {
        Some("L1's kernel panicked")
    } else {
        None
    }
}
