//! `cargo fuzz run dpop`: see `gangway_dpop::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gangway_dpop::fuzzing::run(data));
