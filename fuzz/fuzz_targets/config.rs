//! `cargo fuzz run config`: any text, as a relay config file, is either a
//! config or an error naming file, key and reason; never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        gangway_relay::config::fuzzing::run(text);
    }
});
