//! What the fuzz targets (`fuzz/`) and their corpus replay
//! (`wire/tests/fuzz_corpus.rs`) check, in one place: every decoder, fed
//! any bytes, returns (never panics, never loops), and whatever it decodes
//! encodes back to bytes that decode to the same value.

use bytes::BytesMut;

use crate::{Control, Hello, HelloReply, OpenResult, OpenStream, WireError};

/// The decoders, by fuzz target name.
pub const TARGETS: &[&str] = &["handshake", "open", "control"];

/// Runs target `name` on `data`. Panics (for the fuzzer to catch) when a
/// decoded value does not survive an encode/decode round trip.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "handshake" => {
            all(data, Hello::decode, |v, b| v.encode(b));
            all(data, HelloReply::decode, |v, b| v.encode(b));
        }
        "open" => {
            all(data, OpenStream::decode, |v, b| v.encode(b));
            all(data, OpenResult::decode, |v, b| v.encode(b));
        }
        "control" => all(data, Control::decode, |v, b| v.encode(b)),
        _ => {}
    }
}

/// Decodes frame after frame from `data` until it is used up, incomplete
/// or invalid; each frame must round-trip and consume bytes.
fn all<T: PartialEq + std::fmt::Debug>(
    data: &[u8],
    decode: fn(&mut BytesMut) -> Result<Option<T>, WireError>,
    encode: fn(&T, &mut BytesMut),
) {
    let mut buf = BytesMut::from(data);
    let mut before = buf.len();
    while let Ok(Some(value)) = decode(&mut buf) {
        let mut again = BytesMut::new();
        encode(&value, &mut again);
        let back = decode(&mut again);
        assert!(
            matches!(&back, Ok(Some(v)) if *v == value),
            "{value:?} encodes to bytes that decode to {back:?}"
        );
        assert!(
            again.is_empty(),
            "{value:?}: {} bytes left over",
            again.len()
        );
        assert!(buf.len() < before, "{value:?} decoded from no bytes");
        before = buf.len();
    }
}
