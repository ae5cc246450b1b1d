//! Fuzz target: any byte string, laid out as a 16-entry virtio-net TX queue and a 16-entry
//! RX queue (descriptors, available rings, negotiated features, frames waiting in the
//! backend, and the bytes frames and indirect tables come from), processed by virtio-net
//! over an in-memory backend, must not panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::fuzz_net_tx(data);
});
