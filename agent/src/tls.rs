//! TLS client settings for talking to the relay.

use std::path::Path;
use std::sync::Arc;

use crate::AgentError;

/// Trusts the system's roots, plus `extra_ca` (PEM) when given — e.g. a
/// company CA, or the demo's self-signed certificate.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let what = || format!("CA file {}", path.display());
        let pem = std::fs::read(path).map_err(|e| AgentError::tls(what(), Some(e.into())))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| AgentError::tls(what(), Some(e.into())))?;
            roots
                .add(cert)
                .map_err(|e| AgentError::tls(what(), Some(e.into())))?;
            n += 1;
        }
        if n == 0 {
            return Err(AgentError::tls(
                format!("CA file {} holds no certificate", path.display()),
                None,
            ));
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AgentError::tls("protocol versions", Some(e.into())))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
