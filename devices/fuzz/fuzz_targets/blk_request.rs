//! Fuzz target: any byte string, laid out as a 16-entry split virtqueue (descriptors,
//! available ring, and the bytes headers, data and indirect tables come from), processed
//! by virtio-blk over an in-memory disk, must not panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::fuzz_blk_request(data);
});
