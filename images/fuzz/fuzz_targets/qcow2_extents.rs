//! Fuzz target: 8 selector bytes and a qcow2 file; where the image reports host extents
//! for a range they must cover it, lie inside the file (reads) or clear of its metadata
//! (writes), and read back exactly what `read_at` returns.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    images::fuzz_qcow2_extents(data);
});
