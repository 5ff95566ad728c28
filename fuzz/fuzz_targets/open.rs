//! `cargo fuzz run open`: see `gangway_wire::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gangway_wire::fuzzing::run("open", data));
