//! Arbitrary bytes through the frame decoder: header checks, then payload
//! validation as a message type with strings, vectors and enums. Nothing
//! may panic or read out of bounds; whatever is accepted must read back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    foundation_transport::fuzzing::decode_frames(data);
});
