//! What the `config` fuzz target (`fuzz/`) and its corpus replay check:
//! any text, parsed as a relay config, is a config or an error naming the
//! file — never a panic.

use std::path::Path;

/// Parses `text` as `fuzz.toml`; panics (for the fuzzer) only when an error
/// does not name the file.
pub fn run(text: &str) {
    if let Err(e) = super::RelayConfig::parse(Path::new("fuzz.toml"), text) {
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.toml: "), "{msg}");
    }
}
