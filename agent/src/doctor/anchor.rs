//! The TLS chain the relay presents and which trusted root accepted it:
//! rustls' own WebPKI verifier, wrapped to record what it was shown, over
//! the roots the agent trusts (the system's, plus the environment's
//! `ca_file`), kept apart so the root that accepted can be named.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::AgentError;

/// The roots the agent trusts for one environment, by where they come from.
pub struct Trust {
    pub system: Vec<CertificateDer<'static>>,
    pub file: Vec<CertificateDer<'static>>,
    pub ca_file: Option<PathBuf>,
}

/// Where the root that accepted the relay's chain comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// The environment's `ca_file`.
    CaFile { path: PathBuf, name: String },
    /// The system's trust store.
    System { name: String },
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Anchor::CaFile { path, name } => {
                write!(
                    f,
                    "{name} from the environment's ca_file {}",
                    path.display()
                )
            }
            Anchor::System { name } => write!(f, "{name} from the system trust store"),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn store(certs: &[CertificateDer<'static>]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in certs {
        let _ = roots.add(c.clone());
    }
    roots
}

impl Trust {
    /// The system's roots and those in `ca_file` (as [`crate::tls`] reads them).
    pub fn load(ca_file: Option<&Path>) -> Result<Self, AgentError> {
        let system = rustls_native_certs::load_native_certs().certs;
        let mut file = Vec::new();
        if let Some(path) = ca_file {
            let what = || format!("CA file {}", path.display());
            let pem = std::fs::read(path).map_err(|e| AgentError::tls(what(), Some(e.into())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                file.push(cert.map_err(|e| AgentError::tls(what(), Some(e.into())))?);
            }
            if file.is_empty() {
                return Err(AgentError::tls(
                    format!("CA file {} holds no certificate", path.display()),
                    None,
                ));
            }
        }
        Ok(Trust {
            system,
            file,
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }

    fn verifier_for(
        &self,
        certs: &[CertificateDer<'static>],
    ) -> Result<Arc<WebPkiServerVerifier>, String> {
        WebPkiServerVerifier::builder_with_provider(Arc::new(store(certs)), provider())
            .build()
            .map_err(|e| format!("no usable trusted root: {e}"))
    }

    /// rustls' verifier over every root.
    pub fn verifier(&self) -> Result<Arc<WebPkiServerVerifier>, String> {
        let all: Vec<_> = self.file.iter().chain(&self.system).cloned().collect();
        self.verifier_for(&all)
    }

    /// A client config that verifies with `capture`.
    pub fn client_config(&self, capture: Arc<Capture>) -> Result<rustls::ClientConfig, String> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(capture)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// The root that accepts `seen`'s chain for `name`: tried one at a
    /// time, the `ca_file`'s first (as the agent's own check accepts
    /// either, this names one that does).
    pub fn accepted_by(&self, seen: &Seen) -> Option<Anchor> {
        let (end, rest) = seen.chain.split_first()?;
        let accepts = |root: &CertificateDer<'static>| {
            self.verifier_for(std::slice::from_ref(root))
                .ok()
                .is_some_and(|v| {
                    v.verify_server_cert(end, rest, &seen.name, &[], UnixTime::now())
                        .is_ok()
                })
        };
        if let Some(root) = self.file.iter().find(|r| accepts(r)) {
            return Some(Anchor::CaFile {
                path: self.ca_file.clone().unwrap_or_default(),
                name: subject_name(root),
            });
        }
        self.system
            .iter()
            .find(|r| accepts(r))
            .map(|r| Anchor::System {
                name: subject_name(r),
            })
    }
}

/// What the relay presented, and what rustls made of it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub chain: Vec<CertificateDer<'static>>,
    pub name: ServerName<'static>,
    pub verdict: Result<(), rustls::Error>,
}

/// rustls' verifier, recording the chain it is shown.
#[derive(Debug)]
pub struct Capture {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl Capture {
    pub fn new(inner: Arc<WebPkiServerVerifier>) -> Self {
        Capture {
            inner,
            seen: Mutex::new(None),
        }
    }

    /// The last chain shown, if a handshake got that far.
    pub fn seen(&self) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Seen {
            chain,
            name: server_name.to_owned(),
            verdict: verdict.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// ------------------------------------------------------------ names (DER)

/// One DER element: its tag, its contents, and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject Name (DER contents) of a certificate: Certificate →
/// TBSCertificate → [version] serial signature issuer validity subject.
fn subject_der(cert: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(certificate)?;
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        rest = tlv(rest)?.2; // serial
    }
    let rest = tlv(rest)?.2; // signature algorithm
    let rest = tlv(rest)?.2; // issuer
    let rest = tlv(rest)?.2; // validity
    let (tag, subject, _) = tlv(rest)?;
    (tag == 0x30).then_some(subject)
}

/// The `CN` (else `O`) of a Name's contents.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    let mut org = None;
    while let Some((_, set, rest)) = tlv(name) {
        name = rest;
        let mut attrs = set;
        while let Some((_, attr, more)) = tlv(attrs) {
            attrs = more;
            let Some((0x06, oid, value)) = tlv(attr) else {
                continue;
            };
            let Some((_, text, _)) = tlv(value) else {
                continue;
            };
            let text = String::from_utf8_lossy(text).into_owned();
            if oid == CN {
                return Some(text);
            }
            if oid == O {
                org = Some(text);
            }
        }
    }
    org
}

/// "CN=…" of a certificate, for messages; "(unnamed certificate)" if it
/// has neither a CN nor an O.
pub fn subject_name(cert: &[u8]) -> String {
    match subject_der(cert).and_then(common_name) {
        Some(n) => format!("\"{}\"", n.chars().take(80).collect::<String>()),
        None => "(unnamed certificate)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> rcgen::CertifiedKey {
        let mut params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Org");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        rcgen::CertifiedKey { cert, key_pair }
    }

    #[test]
    fn names_the_subject_not_the_issuer() {
        let ck = cert("Example Relay CA");
        assert_eq!(subject_name(ck.cert.der()), "\"Example Relay CA\"");
        assert_eq!(subject_name(b"\x30\x03\x02\x01"), "(unnamed certificate)");
        assert_eq!(subject_name(&[]), "(unnamed certificate)");
    }

    #[test]
    fn the_ca_file_root_is_named_as_the_one_that_accepted() {
        let ck = cert("Relay Self-Signed");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let trust = Trust::load(Some(&ca)).unwrap();
        let capture = Capture::new(trust.verifier().unwrap());
        let name = ServerName::try_from("relay.test").unwrap();
        capture
            .verify_server_cert(ck.cert.der(), &[], &name, &[], UnixTime::now())
            .unwrap();
        let seen = capture.seen().unwrap();
        assert_eq!(seen.chain.len(), 1);
        assert_eq!(
            trust.accepted_by(&seen),
            Some(Anchor::CaFile {
                path: ca.clone(),
                name: "\"Relay Self-Signed\"".into()
            })
        );
        // Another name: refused, and the refusal recorded.
        let other = ServerName::try_from("other.test").unwrap();
        assert!(capture
            .verify_server_cert(ck.cert.der(), &[], &other, &[], UnixTime::now())
            .is_err());
        assert!(capture.seen().unwrap().verdict.is_err());
    }
}
