//! DPoP (RFC 9449): tokens bound to a key the laptop holds.
//!
//! The agent keeps one P-256 key pair per environment ([`ProofKey`]) and
//! signs a fresh proof — a small JWS, `typ: dpop+jwt`, carrying the HTTP
//! method (`htm`), the URL (`htu`), the time (`iat`), a unique id (`jti`)
//! and, when a token goes with it, the token's hash (`ath`) — for every
//! token request to the identity provider and every presentation of the
//! access token to the relay. The provider puts the key's RFC 7638
//! thumbprint into the token (`cnf.jkt`); the relay checks each proof
//! ([`check`]) and that its key's thumbprint is the token's `cnf.jkt`, so a
//! token copied off the laptop opens nothing without the private key.
//!
//! Only ES256 is made or accepted. Everything here is pure: no clock (the
//! caller passes `now`), no I/O, no replay memory (the relay remembers
//! `jti`s; [`Verified::jti`]). Every length is bounded before parsing.

#![forbid(unsafe_code)]

mod check;
#[doc(hidden)]
pub mod fuzzing;
mod jwk;
mod key;

pub use check::{check, Expected, Htu, ProofError, Verified};
pub use jwk::PublicJwk;
pub use key::{KeyError, ProofKey};

use base64::Engine;

/// Largest proof accepted, in bytes, checked before any parsing. A proof of
/// ours is about 600 bytes (header with the JWK ~190, claims with a long
/// `htu` and `ath` ~250, signature 86, base64 overhead).
pub const MAX_PROOF_LEN: usize = 4096;

/// The only signature algorithm made or accepted.
pub const ALG: &str = "ES256";

/// The proof's JOSE `typ`.
pub const TYP: &str = "dpop+jwt";

/// `ath`: base64url(SHA-256(access token)), as a proof carries it.
pub fn ath(access_token: &str) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes()).as_ref())
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url without padding (non-canonical trailing bits refused).
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .ok()
}
