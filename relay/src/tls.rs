//! TLS for the relay's listener, from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Builds a server config from a certificate chain and key in PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = {
        let pem = std::fs::read(cert).map_err(|e| file_err(cert, e.to_string()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(cert, format!("bad PEM: {e}")))?
    };
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in file"));
    }
    let key: PrivateKeyDer<'static> = {
        let pem = std::fs::read(key).map_err(|e| file_err(key, e.to_string()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| file_err(key, format!("bad PEM: {e}")))?
            .ok_or_else(|| file_err(key, "no private key in file"))?
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
