//! Fuzz target: any byte string, treated as a qcow2 file, must not panic, hang or
//! allocate without bound when opened and read (and written, on an in-memory copy).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    images::fuzz_qcow2_open_read(data);
});
