//! Arbitrary bytes as handshake frames, fed to both sides of the
//! handshake state machine at every step. Nothing may panic, and no
//! sequence of frames without the cookie may establish a connection.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    foundation_transport::fuzzing::handshake(data);
});
