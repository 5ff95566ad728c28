//! Entry point of the `dpop` fuzz target (`fuzz/fuzz_targets/dpop.rs`)
//! and of the corpus replay in the tests: any bytes as a proof must give an
//! answer, never a panic.

use url::Url;

use crate::{check, Expected, Htu};

/// Checks `data` as a proof for a fixed endpoint and token.
pub fn run(data: &[u8]) {
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = Url::parse("https://relay.example.com/v1/tunnel") else {
        return;
    };
    for htu in [
        Htu::Exact(url),
        Htu::HostAndPath {
            authority: "relay.example.com".into(),
            path: "/v1/tunnel".into(),
        },
    ] {
        let _ = check(
            proof,
            &Expected {
                htm: "GET",
                htu,
                access_token: Some("token"),
                now: 1_800_000_000,
                window: 30,
            },
        );
    }
}
