//! `cargo fuzz run handshake`: see `gangway_wire::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gangway_wire::fuzzing::run("handshake", data));
