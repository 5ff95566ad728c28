//! `[tls]`: the relay's certificate and key, or plain HTTP when the config
//! says a TLS-terminating balancer sits in front.

use std::path::PathBuf;

use super::raw::RawTls;
use super::{ConfigError, Source};

/// How the relay serves its listener.
#[derive(Debug, Clone)]
pub enum TlsMode {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Plain HTTP, allowed by config for use behind a TLS-terminating balancer.
    Plaintext,
}

impl TlsMode {
    /// Validates `[tls]`: a certificate and key, or `insecure_plaintext`
    /// alone; a missing section is an error.
    pub(super) fn from_raw(raw: Option<RawTls>, src: &Source<'_>) -> Result<Self, ConfigError> {
        match raw {
            Some(RawTls {
                insecure_plaintext: true,
                cert: None,
                key: None,
            }) => Ok(TlsMode::Plaintext),
            Some(RawTls {
                insecure_plaintext: true,
                ..
            }) => Err(src.err(
                "tls.insecure_plaintext",
                "cannot be combined with tls.cert/tls.key",
            )),
            Some(RawTls {
                cert: Some(cert),
                key: Some(key),
                ..
            }) => Ok(TlsMode::Files {
                cert: src.resolve(&cert),
                key: src.resolve(&key),
            }),
            Some(RawTls { cert: None, .. }) => {
                Err(src.err("tls.cert", "missing (PEM certificate chain)"))
            }
            Some(RawTls { key: None, .. }) => Err(src.err("tls.key", "missing (PEM private key)")),
            None => Err(src.err(
                "tls",
                "missing: set tls.cert and tls.key (or tls.insecure_plaintext = true behind a TLS-terminating balancer)",
            )),
        }
    }
}
