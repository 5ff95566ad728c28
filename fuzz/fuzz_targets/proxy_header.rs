//! `cargo fuzz run proxy_header`: `gangway_relay::proxy_protocol::parse` on
//! any bytes: no panic, and a whole header never claims more bytes than
//! it was given.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = gangway_relay::proxy_protocol::parse(data) {
        assert!(used <= data.len() && used <= gangway_relay::proxy_protocol::MAX_HEADER);
    }
});
